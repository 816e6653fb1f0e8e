"""A short run of the soak and fuzz tool (tools/soak.py) against a kerv_node process.

Every named scenario once, followed each time by a clean phase that must command again; the
tool exits 0 only when the node stayed alive, sent only zero twists after each bad input's
grace period, none while inactive, and kept the twist stream at half the control rate or more.
The long run's figures are in docs/benchmarks.md.
"""

import json
import subprocess
import sys
from pathlib import Path

from ros_probe import start_node, stop_node

TOOL = Path(__file__).resolve().parents[1] / "tools" / "soak.py"


def test_short_soak_of_every_scenario(tmp_path):
    proc = start_node(tmp_path / "kerv_node.log", "autostart:=true", "mode:=ar", name="kerv_soaked")
    try:
        report_path = tmp_path / "soak.json"
        result = subprocess.run(
            [
                sys.executable,
                str(TOOL),
                "--node",
                "/kerv_soaked",
                "--seconds",
                "58",
                "--phase-s",
                "2.2",
                # A 1 MB instruction can take half a second to cross a loaded two-core machine.
                "--grace-s",
                "1.0",
                "--mode",
                "ar",
                "--pid",
                str(proc.pid),
                "--json",
                str(report_path),
            ],
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
        report = json.loads(report_path.read_text())
        assert report["alive_at_end"] and report["nonzero_while_inactive"] == 0
        assert set(report["scenarios"]) >= {"bad_images", "huge_joints", "bad_param_types"}
        assert proc.poll() is None
    finally:
        stop_node(proc)
    log = (tmp_path / "kerv_node.log").read_text(errors="replace")
    assert max(len(line) for line in log.splitlines()) < 2000  # reasons stay short
