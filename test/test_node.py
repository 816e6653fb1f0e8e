"""kerv_node across processes with real rclpy: commands, parameters, lifecycle, bad input.

The node runs in its own process (started from its console script with
``--ros-args --params-file config/kerv.yaml``); inputs come from a feeder process or from the
probe in the pytest process, which also receives and checks the outputs.
"""

import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from lifecycle_msgs.msg import Transition
from ros_probe import Probe, as_array, diag_status, good_image, good_joints, is_zero, start_node
from ros_probe import stop_node as stop
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String

from kerv_ros.config import PANDA_ARM_JOINTS
from kerv_ros.sim.world import HOME

HERE = Path(__file__).resolve().parent
RATE = 5.0
STALE = 0.6


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    log = tmp_path_factory.mktemp("node") / "kerv_node.log"
    proc = start_node(
        log,
        "autostart:=true",
        f"control_rate_hz:={RATE}",
        f"stale_timeout_s:={STALE}",
        "max_linear_speed:=0.2",
    )
    probe = Probe("kerv_node")
    yield SimpleNamespace(proc=proc, probe=probe, log=log)
    probe.close()
    stop(proc)


def log_text(log: Path) -> str:
    return log.read_text(errors="replace")


def commanding(probe, timeout=30.0):
    """Wait for the next DecodeStats: the node decoded and commanded a step."""
    return probe.wait_for(probe.stats, lambda m: True, timeout=timeout)


def test_no_instruction_holds_then_commands(node):
    t0 = time.monotonic()
    node.probe.feeding = True
    node.probe.wait_for(node.probe.twists, is_zero, t0=t0, timeout=30)
    status = node.probe.wait_for(
        node.probe.diagnostics,
        lambda d: diag_status(d) is not None and "no instruction" in diag_status(d).message,
        t0=t0,
    )
    assert status is not None
    assert node.probe.since(node.probe.stats, t0) == []
    node.probe.instruct("pick up the red cube")
    stats = commanding(node.probe)
    assert stats.mode == "hybrid"
    assert "no instruction" in log_text(node.log)


def test_a_plain_volatile_publisher_delivers_the_instruction(node):
    """What ``ros2 topic pub -1 /kerv_node/instruction std_msgs/String ...`` offers: volatile."""
    publisher = node.probe.node.create_publisher(String, "/kerv_node/instruction", 10)
    try:
        deadline = time.monotonic() + 10
        while publisher.get_subscription_count() == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert publisher.get_subscription_count() >= 1, "QoS incompatible: no subscription"
        publisher.publish(String(data="push the green block to the left"))
        deadline = time.monotonic() + 10
        while "push the green block to the left" not in log_text(node.log):
            assert time.monotonic() < deadline, "instruction never arrived"
            time.sleep(0.05)
    finally:
        node.probe.node.destroy_publisher(publisher)
        node.probe.instruct("pick up the red cube")


def test_a_request_with_an_undefined_parameter_type_does_not_end_the_process(node):
    """rclpy's parameter service raises on type codes 10, 11, 42, 255: the node spins on."""
    from rcl_interfaces.msg import Parameter as ParameterMsg
    from rcl_interfaces.msg import ParameterValue
    from rcl_interfaces.srv import SetParameters, SetParametersAtomically

    plain = node.probe.node.create_client(SetParameters, "/kerv_node/set_parameters")
    atomic = node.probe.node.create_client(
        SetParametersAtomically, "/kerv_node/set_parameters_atomically"
    )
    assert plain.wait_for_service(timeout_sec=10) and atomic.wait_for_service(timeout_sec=10)
    for code in (10, 11, 42, 255):
        for name in ("relaxed_threshold", "not_declared"):
            bad = [ParameterMsg(name=name, value=ParameterValue(type=code))]
            plain.call_async(SetParameters.Request(parameters=bad))
            atomic.call_async(SetParametersAtomically.Request(parameters=bad))
    time.sleep(1.0)
    assert node.proc.poll() is None, "the node process ended"
    assert node.probe.set_param("relaxed_threshold", 9).successful
    commanding(node.probe)
    assert "refused: ValueError in a callback" in log_text(node.log)


def test_commands_from_a_feeder_process(node):
    node.probe.feeding = False
    # 20 s of feeding from whenever the process is up: a loaded machine can take long to start
    # a Python process with rclpy.
    feeder = subprocess.Popen([sys.executable, str(HERE / "feeder.py"), "kerv_node", "20", "10"])
    try:
        t0 = time.monotonic()
        stats = node.probe.wait_for(node.probe.stats, lambda m: True, t0=t0 + 0.5, timeout=60)
        assert len(stats.tokens) == 7
        assert len(stats.token_sources) == 7
        assert len(stats.action) == 7
        assert stats.target_forwards >= 1
        assert sum(stats.accepted_lengths) == 6
        assert stats.total_ms >= stats.prefill_ms > 0
        twist = node.probe.wait_for(node.probe.twists, lambda m: True, t0=t0 + 0.5)
        assert twist.header.frame_id == "panda_link0"
        linear = as_array([twist.twist.linear.x, twist.twist.linear.y, twist.twist.linear.z])
        assert np.linalg.norm(linear) <= 0.2 + 1e-9
        gripper = node.probe.wait_for(node.probe.grippers, lambda m: True, t0=t0 + 0.5)
        assert 0.0 <= gripper.data <= 1.0
        feeder.wait(timeout=60)
        assert feeder.returncode == 0
    finally:
        feeder.kill()
        node.probe.feeding = True  # the module's later tests need the probe's inputs


def test_parameter_change_applies_next_step(node):
    commanding(node.probe)
    assert node.probe.set_param("relaxed_threshold", 3).successful
    result = node.probe.set_param("mode", "spec_relaxed")
    assert result.successful, result.reason
    stats = node.probe.wait_for(node.probe.stats, lambda m: m.mode == "spec_relaxed")
    assert stats.threshold == 3.0
    assert node.probe.set_param("draft_top_k", 1).successful


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("mode", "warp", "unknown mode 'warp'"),
        ("relaxed_threshold", 400, "relaxed_threshold"),
        ("relaxed_threshold", "three", "type"),
        ("draft_depth", 9, "draft_depth"),
        ("control_rate_hz", -1.0, "control_rate_hz"),
        ("model", "/elsewhere", "read-only"),
        ("kerv_r_max", 256, "kerv_r_max"),
        ("kalman_model", "jerk", "unknown kalman_model"),
        ("urdf", "/elsewhere.urdf", "read-only"),
        ("mode", "heisd", "needs a retrieval datastore"),
        ("heisd_sequence_weights", [1.0, 2.0], "heisd_sequence_weights must be 7 values"),
        ("dyq_fixed", "int4", "unknown dyq_fixed 'int4'"),
        ("dyq_coarse_below", 2.0, "dyq_coarse_below"),
        ("dyq_precisions", "bfloat16", "read-only"),
    ],
)
def test_bad_parameters_are_refused_and_change_nothing(node, name, value, reason):
    before = commanding(node.probe)
    result = node.probe.set_param(name, value)
    assert not result.successful
    assert reason.lower() in result.reason.lower()
    after = commanding(node.probe)
    assert (after.mode, after.threshold) == (before.mode, before.threshold)


def test_dyq_switches_the_verifier_and_reports_each_steps_precision(node):
    probe = node.probe
    commanding(probe)
    assert probe.set_param("dyq_coarse", "bfloat16").successful  # allowed while dyq is off ...
    refused = probe.set_param("dyq", True)  # ... but dyq cannot switch to a variant not built
    assert not refused.successful and "bfloat16, not built" in refused.reason
    assert probe.set_param("dyq_coarse", "int8_bf16").successful
    assert probe.set_param("dyq_fixed", "int8").successful
    assert probe.set_param("dyq", True).successful
    try:
        t0 = time.monotonic()
        probe.wait_for(probe.stats, lambda m: m.precision == "int8", t0=t0)
        status = probe.wait_for(
            probe.diagnostics,
            lambda d: (
                diag_status(d) is not None
                and {kv.key: kv.value for kv in diag_status(d).values}.get("precision") == "int8"
            ),
            t0=t0,
        )
        values = {kv.key: kv.value for kv in diag_status(status).values}
        assert "int8" in values["precision_share"]
        assert values["precision_map"] == "bounds (no dyq.json beside the model)"  # random
        assert probe.set_param("dyq_table", False).successful
        probe.wait_for(
            probe.diagnostics,
            lambda d: (
                diag_status(d) is not None
                and {kv.key: kv.value for kv in diag_status(d).values}.get("precision_map")
                == "bounds (dyq_table off)"
            ),
            t0=time.monotonic(),
        )
    finally:  # the module's later tests run at the model's own precision
        assert probe.set_param("dyq", False).successful
        assert probe.set_param("dyq_fixed", "").successful
        assert probe.set_param("dyq_table", True).successful
    probe.wait_for(probe.stats, lambda m: m.precision == "float32", t0=time.monotonic())


def test_lifecycle_through_change_state(node):
    commanding(node.probe)
    t0 = time.monotonic()
    assert node.probe.transition(Transition.TRANSITION_DEACTIVATE)
    assert node.probe.state() == "inactive"
    node.probe.wait_for(node.probe.twists, is_zero, t0=t0)
    time.sleep(3 / RATE)
    quiet = time.monotonic()
    time.sleep(3 / RATE)
    assert node.probe.since(node.probe.stats, quiet) == []
    assert node.probe.transition(Transition.TRANSITION_ACTIVATE)
    assert node.probe.state() == "active"
    commanding(node.probe)


def test_stale_inputs_give_zero_twist_within_a_period(node):
    commanding(node.probe)
    node.probe.feeding = False
    try:
        stopped = time.monotonic()
        twist = node.probe.wait_for(node.probe.twists, is_zero, t0=stopped + STALE)
        arrival = next(t for t, m in node.probe.twists if m is twist)
        assert arrival - stopped <= STALE + 1.5 / RATE + 0.3
        assert "old (stale_timeout_s" in log_text(node.log)
    finally:
        node.probe.feeding = True
    commanding(node.probe)


def bad_image(kind: str) -> Image:
    image = good_image(64, 48)
    if kind == "unknown encoding":
        image.encoding = "yuv422"
    elif kind == "short data":
        image.data = bytes(image.data)[:-10]
    elif kind == "empty":
        image.data, image.height, image.width, image.step = b"", 0, 0, 0
    elif kind == "step too small":
        image.step = image.width * 2
    return image


def bad_joints(kind: str) -> JointState:
    joints = good_joints()
    if kind == "nan":
        joints.position = [float("nan"), *list(joints.position)[1:]]
    elif kind == "inf":
        joints.position = [*list(joints.position)[:-2], float("inf"), 0.0]
    elif kind == "mismatched":
        joints.position = list(joints.position)[:-3]
    elif kind == "renamed":
        joints.name = ["joint_a", *list(joints.name)[1:]]
    return joints


@pytest.mark.parametrize(
    ("image_kind", "joint_kind", "reason"),
    [
        ("unknown encoding", None, "encoding 'yuv422' not supported"),
        ("short data", None, "image data has"),
        ("empty", None, "no pixels"),
        ("step too small", None, "step"),
        (None, "nan", "positions not finite"),
        (None, "inf", "positions not finite"),
        (None, "mismatched", "names but"),
        (None, "renamed", "lacks joints ['panda_joint1']"),
    ],
)
def test_bad_input_holds_and_recovers(node, image_kind, joint_kind, reason):
    commanding(node.probe)
    t0 = time.monotonic()
    if image_kind:
        node.probe.image = bad_image(image_kind)
    if joint_kind:
        node.probe.joints = bad_joints(joint_kind)
    try:
        node.probe.wait_for(node.probe.twists, is_zero, t0=t0 + 0.3)
        node.probe.wait_for(
            node.probe.diagnostics,
            lambda d: diag_status(d) is not None and reason in diag_status(d).message,
            t0=t0,
        )
        assert node.proc.poll() is None
        assert node.probe.state() == "active"  # still answering
        assert reason in log_text(node.log)
    finally:
        node.probe.image, node.probe.joints = good_image(), good_joints()
    commanding(node.probe)


def test_missing_velocities_still_command_with_a_warning(node):
    commanding(node.probe)
    joints = good_joints()
    joints.velocity = []
    node.probe.joints = joints
    t0 = time.monotonic()
    try:
        commanding(node.probe)
        status = node.probe.wait_for(
            node.probe.diagnostics,
            lambda d: diag_status(d) is not None and "velocities" in diag_status(d).message,
            t0=t0,
        )
        assert diag_status(status).level == b"\x01"  # WARN
    finally:
        node.probe.joints = good_joints()


def test_kerv_follows_the_arm_through_its_kinematics(node):
    commanding(node.probe)
    assert node.probe.set_param("mode", "kerv").successful
    stats = node.probe.wait_for(node.probe.stats, lambda m: m.mode == "kerv")
    assert 5.0 <= stats.threshold <= 15.0  # the kinematic threshold, in its default range

    def twist_source(expected):
        def matches(diag):
            status = diag_status(diag)
            values = {v.key: v.value for v in status.values} if status else {}
            return values.get("twist_source") == expected and "panda.urdf" in values["kinematics"]

        return matches

    try:
        node.probe.wait_for(node.probe.diagnostics, twist_source("joint velocities"))
        joints = good_joints()
        joints.velocity = []
        node.probe.joints = joints
        node.probe.wait_for(node.probe.diagnostics, twist_source("finite difference"))
    finally:
        node.probe.joints = good_joints()
        assert node.probe.set_param("mode", "hybrid").successful


@pytest.mark.parametrize("encoding", ["bgr8", "rgba8", "bgra8", "mono8"])
def test_other_encodings_with_row_padding_command(node, encoding):
    channels = {"bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}[encoding]
    width, height, pad = 80, 60, 12
    step = width * channels + pad
    image = Image(
        height=height,
        width=width,
        encoding=encoding,
        step=step,
        data=bytes(np.full(step * height, 90, np.uint8)),
    )
    node.probe.image = image
    t0 = time.monotonic()
    try:
        node.probe.wait_for(node.probe.stats, lambda m: True, t0=t0 + 0.5)
    finally:
        node.probe.image = good_image()


@pytest.mark.parametrize(
    ("setting", "reason"),
    [
        ("model:=/nonexistent/model", "/nonexistent/model"),
        ("dyq_precisions:=int8,int4", "unknown precision int4"),
    ],
)
def test_configure_failure_keeps_the_node_alive(tmp_path, setting, reason):
    log = tmp_path / "kerv_bad.log"
    proc = start_node(log, setting, name="kerv_bad")
    probe = Probe("kerv_bad")
    try:
        assert probe.state() == "unconfigured"
        assert not probe.transition(Transition.TRANSITION_CONFIGURE)
        assert probe.state() == "unconfigured"
        assert proc.poll() is None
        assert "configure failed" in log_text(log)
        assert reason in log_text(log)
        # Nothing is commanded by a node that was never activated.
        assert [m for m in probe.since(probe.twists, 0) if not is_zero(m)] == []
    finally:
        probe.close()
        stop(proc)


def test_joint_names_config_any_order():
    """Joint order in the message does not matter (unit check of the same conversion)."""
    from kerv_ros.ros_io import joint_sample

    msg = good_joints()
    msg.name = list(reversed(msg.name))
    msg.position = list(reversed(msg.position))
    sample = joint_sample(msg, PANDA_ARM_JOINTS)
    np.testing.assert_allclose(sample.positions, HOME)
