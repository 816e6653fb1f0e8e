"""Child processes with their output in a log file (the node, the simulator, in tools and tests)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def start(args: list[str], log: Path) -> subprocess.Popen:
    """Start ``args`` with this process's environment, stdout and stderr into ``log``."""
    handle = open(log, "w")  # noqa: SIM115 - closed by stop()
    proc = subprocess.Popen(args, stdout=handle, stderr=subprocess.STDOUT, env=os.environ.copy())
    proc.log_handle = handle
    return proc


def stop(proc: subprocess.Popen, timeout_s: float = 20.0) -> None:
    """SIGTERM (the nodes send their last zero twist on it), then SIGKILL if it hangs."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    proc.log_handle.close()
