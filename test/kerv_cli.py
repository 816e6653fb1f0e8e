"""Running the `kerv` tool as a user does: a subprocess of this interpreter."""

import subprocess
import sys


def run_kerv(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """``kerv ARGS...`` with captured text output; the caller checks the exit code."""
    return subprocess.run(
        [sys.executable, "-m", "kerv_ros.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
