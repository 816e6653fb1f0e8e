"""The bring-your-own-OpenVLA journey of the README, end to end on the fixture checkpoint.

As a robotics engineer does with their own checkpoint and bags, through the real commands:
``kerv sim collect`` (standing in for ``kerv record`` on the arm) -> ``kerv datastore build
--relabel`` -> ``kerv train drafter`` -> ``kerv eval`` on every mode -> ``kerv-node -p model:=DIR``
commanding. The checkpoint is copied with OpenVLA's three ``.py`` files made poisonous: if any
stage ran code from the directory, the marker file would appear.
"""

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from kerv_cli import run_kerv
from ros_probe import Probe, as_array, start_node, stop_node

from kerv_ros.loading import DATASTORE_FILE, DRAFTER_FILE

CHECKPOINT = Path(__file__).parent / "data" / "openvla_tiny" / "checkpoint"
MODES = ("ar", "spec", "spec_relaxed", "kerv", "heisd", "hybrid")


def _stage(times: dict, name: str, *args: str) -> str:
    start = time.perf_counter()
    result = run_kerv(*args)
    times[name] = time.perf_counter() - start
    assert result.returncode == 0, f"{name}: {result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def journey(tmp_path_factory):
    root = tmp_path_factory.mktemp("byo")
    model = root / "my-openvla"
    shutil.copytree(CHECKPOINT, model)
    marker = root / "ran-checkpoint-code"
    for name in ("modeling_prismatic.py", "configuration_prismatic.py", "processing_prismatic.py"):
        (model / name).write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    bags = root / "bags"
    times: dict[str, float] = {}
    key = ("--unnorm-key", "bridge_orig")
    _stage(
        times,
        "collect",
        "sim",
        "collect",
        "--task",
        "reach",
        "--episodes",
        "2",
        "--seed",
        "3",
        "-o",
        str(bags),
    )
    _stage(
        times,
        "datastore",
        "datastore",
        "build",
        str(bags),
        "--relabel",
        "--model",
        str(model),
        *key,
        "-o",
        str(model / DATASTORE_FILE),
    )
    _stage(
        times,
        "drafter",
        "train",
        "drafter",
        str(bags),
        "--model",
        str(model),
        *key,
        "--epochs",
        "1",
        "--max-samples",
        "24",
        "-o",
        str(model / DRAFTER_FILE),
    )
    out = root / "eval"
    table = _stage(
        times,
        "eval",
        "eval",
        str(bags),
        "--model",
        str(model),
        *key,
        "--modes",
        ",".join(MODES),
        "-o",
        str(out),
    )
    print("journey stage times (s):", {k: round(v, 1) for k, v in times.items()})
    return {"root": root, "model": model, "marker": marker, "eval": out, "table": table}


def test_every_stage_runs_on_the_checkpoint_without_its_code(journey):
    assert not journey["marker"].exists()
    assert (journey["model"] / DATASTORE_FILE).is_file()
    assert (journey["model"] / DRAFTER_FILE).is_file()


def test_eval_reports_every_mode_against_ar(journey):
    results = json.loads((journey["eval"] / "results.json").read_text())
    modes = results["modes"]
    assert set(MODES) <= set(modes)
    assert modes["ar"]["target_forwards_per_step"] == pytest.approx(7.0)
    assert modes["spec"]["action_error_vs_ar"] == 0.0  # exact speculative decoding is lossless
    for mode in MODES:
        assert modes[mode]["target_forwards_per_step"] >= 1.0, mode
    # The datastore holds the model's own greedy steps on these very bags: retrieval drafts.
    assert modes["heisd"]["mean_accepted_length"] > 1.0


def test_the_node_commands_from_the_checkpoint(journey, tmp_path):
    log = tmp_path / "kerv_node.log"
    proc = start_node(
        log,
        f"model:={journey['model']}",
        "unnorm_key:=bridge_orig",
        "autostart:=true",
        name="kerv_byo",
    )
    probe = Probe("kerv_byo")
    try:
        probe.instruct("put spoon on towel")
        probe.feeding = True
        stats = probe.wait_for(probe.stats, lambda m: True, timeout=120)
        assert stats.mode == "hybrid" and len(stats.tokens) == 7
        assert all(31744 <= t < 32000 for t in stats.tokens)  # OpenVLA's action token ids
        twist = probe.wait_for(probe.twists, lambda m: True, t0=time.monotonic())
        linear = as_array([twist.twist.linear.x, twist.twist.linear.y, twist.twist.linear.z])
        assert np.all(np.isfinite(linear))
        text = log.read_text(errors="replace")
        assert "OpenVLABackend" in text and "peak RSS" in text
    finally:
        probe.close()
        stop_node(proc)
    assert not journey["marker"].exists()
