"""`kerv eval BAG`, `kerv record` and `kerv replay`: bags in, the same results out."""

import json
import signal
import subprocess
import sys
import time

import pytest
from kerv_cli import run_kerv

from kerv_ros import bags
from kerv_ros.sim.collect import collect

SENSORS_AND_COMMANDS = ",".join(
    [
        bags.IMAGE_TOPIC,
        bags.JOINT_STATES_TOPIC,
        bags.INSTRUCTION_TOPIC,
        bags.TWIST_TOPIC,
        bags.GRIPPER_TOPIC,
    ]
)
TIMING = ("ms", "speedup")


@pytest.fixture(scope="module")
def short_bag(tmp_path_factory):
    """One reach demonstration (about 15 control ticks), as the simulator writes it."""
    out = tmp_path_factory.mktemp("bags")
    collect(["reach"], 1, 1000, out, image_size=128, progress=False)
    return next(out.glob("reach_*"))


def _results(out):
    return json.loads((out / "results.json").read_text())["modes"]


def _without_timing(modes):
    return {
        mode: {k: v for k, v in values.items() if not any(t in k for t in TIMING)}
        for mode, values in modes.items()
    }


def test_eval_on_a_short_bag(short_bag, tmp_path):
    out = tmp_path / "eval"
    proc = run_kerv(
        "eval", str(short_bag), "--model", "default", "--modes", "ar,spec", "-o", str(out)
    )
    assert proc.returncode == 0, proc.stderr
    modes = _results(out)
    ar, spec = modes["ar"], modes["spec"]
    assert ar["action_error_vs_ar"] == 0.0 and ar["token_mismatch_vs_ar"] == 0.0
    assert spec["action_error_vs_ar"] == 0.0 and spec["steps_differing_from_ar"] == 0.0
    assert spec["target_forwards_per_step"] < ar["target_forwards_per_step"] == 7.0
    assert ar["recorded_steps"] > 5 and len(ar["action_error_vs_recorded_per_dim"]) == 7
    report = (out / "report.md").read_text()
    assert "| spec |" in report and "AFEP" in report
    for plot in ("actions.png", "accepted_length.png", "tradeoff.png"):
        assert (out / plot).stat().st_size > 0


def test_sweep_adds_a_trade_off_curve(short_bag, tmp_path):
    out = tmp_path / "sweep"
    proc = run_kerv(
        "eval",
        str(short_bag),
        "--model",
        "default",
        "--modes",
        "ar,spec_relaxed",
        "--sweep",
        "r=0,15",
        "-o",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    payload = json.loads((out / "results.json").read_text())
    exact = payload["modes"]["spec_relaxed[relaxed_threshold=0]"]
    assert exact["action_error_vs_ar"] == 0.0
    assert [row for _, row in payload["sweeps"]["spec_relaxed relaxed_threshold"]] == [
        "spec_relaxed[relaxed_threshold=0]",
        "spec_relaxed[relaxed_threshold=15]",
    ]


def _record_a_replay(short_bag, recorded, *replay_args):
    command = [sys.executable, "-m", "kerv_ros.cli", "record", "-o", str(recorded)]
    command += ["--topics", SENSORS_AND_COMMANDS]
    recorder = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        for line in recorder.stderr:  # subscribed before anything is published
            if "recording" in line:
                break
        proc = run_kerv("replay", str(short_bag), "--topics", SENSORS_AND_COMMANDS, *replay_args)
        assert proc.returncode == 0, proc.stderr
        time.sleep(1.0)
        recorder.send_signal(signal.SIGINT)
        _, err = recorder.communicate(timeout=60)
    finally:
        recorder.kill()
    assert recorder.returncode == 0, err
    assert (recorded / "metadata.yaml").is_file()


def test_replay_stamps_sensor_messages_now(short_bag, tmp_path):
    """As a live camera and arm would: a node (and MoveIt Servo) judge readings by stamp."""
    from rosbags.highlevel import AnyReader

    recorded = tmp_path / "restamped"
    _record_a_replay(short_bag, recorded)
    with AnyReader([recorded]) as reader:
        connections = [c for c in reader.connections if c.topic == "/joint_states"]
        offsets = [
            abs(reader.deserialize(raw, c.msgtype).header.stamp.sec + 0.0 - t / 1e9)
            for c, t, raw in reader.messages(connections=connections)
        ]
    assert offsets and max(offsets) < 2.0  # stamped at publish time, received at once


def test_recorded_bag_evaluates_like_the_original(short_bag, tmp_path):
    """kerv record on what kerv replay --keep-stamps publishes: same messages, same results."""
    recorded = tmp_path / "recorded"
    _record_a_replay(short_bag, recorded, "--keep-stamps")
    results = []
    for bag in (short_bag, recorded):
        out = tmp_path / f"eval_{bag.name}"
        proc = run_kerv(
            "eval", str(bag), "--model", "default", "--modes", "ar,hybrid", "-o", str(out)
        )
        assert proc.returncode == 0, proc.stderr
        results.append(_without_timing(_results(out)))
    assert results[0] == results[1]


def _write_bag(path, topics):
    """A bag of (topic, type, message) triples, one message each, written with rosbags."""
    with bags.BagWriter(path) as writer:
        for i, (topic, msgtype, msg) in enumerate(topics):
            writer.write(topic, msgtype, 10**9 + i, msg)


def test_bags_missing_a_topic_corrupt_or_of_other_types_are_clear_errors(short_bag, tmp_path):
    import numpy as np

    image = (bags.IMAGE_TOPIC, bags.IMAGE, bags.image_msg(np.zeros((8, 8, 3), np.uint8), 10**9))
    instruction = (bags.INSTRUCTION_TOPIC, bags.STRING, bags.scalar_msg(bags.STRING, "reach"))
    _write_bag(tmp_path / "no_joints", [image, instruction])
    proc = run_kerv("eval", str(tmp_path / "no_joints"), "--model", "random", "--modes", "ar")
    assert proc.returncode == 2
    assert "bag lacks topic(s) /joint_states" in proc.stderr and "Traceback" not in proc.stderr

    wrong = (bags.JOINT_STATES_TOPIC, bags.STRING, bags.scalar_msg(bags.STRING, "joints?"))
    _write_bag(tmp_path / "wrong_type", [image, instruction, wrong])
    proc = run_kerv("eval", str(tmp_path / "wrong_type"), "--model", "random", "--modes", "ar")
    assert proc.returncode == 2
    assert "/joint_states has type std_msgs/msg/String" in proc.stderr

    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    for file in short_bag.iterdir():
        data = file.read_bytes()
        if file.suffix == ".mcap":  # a recording cut short: no summary, a torn chunk
            data = data[: int(len(data) * 0.6)]
        (corrupt / file.name).write_bytes(data)
    proc = run_kerv("eval", str(corrupt), "--model", "random", "--modes", "ar")
    assert proc.returncode == 2
    assert str(corrupt) in proc.stderr and "Traceback" not in proc.stderr


def test_eval_needs_bags_or_closed_loop():
    proc = run_kerv("eval", "--model", "random")
    assert proc.returncode == 2
    assert "name the bags to evaluate, or pass --closed-loop" in proc.stderr
