#!/usr/bin/env python3
"""Soak and fuzz a running kerv_node from another process, and say whether it kept its contract.

    .venv/bin/python tools/soak.py --node /kerv_node --seconds 60 [--pid PID] [--scenarios ...]

The run is a sequence of phases of ``--phase-s`` seconds, cycling through the scenarios. In a
``clean`` phase good camera images, joint states and the instruction go out and the node must
command; in every other phase one input is bad in one named way and every twist the node sends
after ``--grace-s`` must be zero. Throughout: the node must stay alive and answer, publish at
the control rate, never send a non-zero twist while not active. At the end it prints a report
(and ``--json``): phases passed, twist rate, zero-twist violations, RSS over time (with
``--pid``), step-time percentiles from ``~/decode_stats``; exit code 1 if anything failed.

Scenarios (issues 19 and 20 of the project, each one named):
  clean          good inputs (the soak itself: RSS and step times over many steps)
  bad_images     unknown encodings, sizes that do not match step, truncated and empty data
  bad_joints     NaN/inf positions, missing arm joints, name/position length mismatches
  huge_joints    10,000 joints (none of the arm's), at 60 Hz
  absurd_joints  positions of 1e6 and 1e30 rad, velocities up to 1e300
  stamps         joint states stamped an hour ahead, an hour behind, at zero
  stale_camera   the camera stops (killed camera)
  stall_joints   joint states stop
  image_burst    1,000 images in one second (then good inputs: it must command again)
  big_instruction  a 1 MB instruction (refused; the next good one resumes)
  params         random parameter sets, valid and invalid, plain and atomic
  bad_param_types  SetParameters requests with undefined type codes (10, 11, 42, 255)
  lifecycle      deactivate / activate while stepping

DDS stays on loopback: the tool applies kerv_ros.loopback's environment before rclpy starts.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kerv_ros import loopback

loopback.apply()

import numpy as np  # noqa: E402
import rclpy  # noqa: E402
from geometry_msgs.msg import TwistStamped  # noqa: E402
from kerv_ros.msg import DecodeStats  # noqa: E402
from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetState  # noqa: E402
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue  # noqa: E402
from rcl_interfaces.srv import SetParameters, SetParametersAtomically  # noqa: E402
from rclpy.duration import Duration  # noqa: E402
from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from rclpy.qos import (  # noqa: E402
    DurabilityPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)
from sensor_msgs.msg import Image, JointState  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from kerv_ros.config import PANDA_ARM_JOINTS  # noqa: E402
from kerv_ros.ros_io import rgb_to_image_fields  # noqa: E402

SCENARIOS = (
    "clean",
    "bad_images",
    "bad_joints",
    "huge_joints",
    "absurd_joints",
    "stamps",
    "stale_camera",
    "stall_joints",
    "image_burst",
    "big_instruction",
    "params",
    "bad_param_types",
    "lifecycle",
)
# Scenarios whose bad input must get only zero twists once the grace period has passed.
EXPECT_ZERO = {
    "bad_images",
    "bad_joints",
    "huge_joints",
    "absurd_joints",
    "stamps",
    "stale_camera",
    "stall_joints",
    "big_instruction",
}
HOME = (0.0, -0.25, 0.0, -2.3, 0.0, 2.05, 0.785)
INSTRUCTION = "pick up the red cube"
LATCHED = QoSProfile(
    depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
)
# Parameters a fuzzer may set and values to draw from (valid and not).
FUZZ_PARAMS = {
    "mode": ["ar", "spec", "spec_relaxed", "kerv", "hybrid", "warp", ""],
    "relaxed_threshold": [0, 3, 9, 15, 255, 256, -1],
    "draft_depth": [1, 3, 6, 7, 0],
    "draft_top_k": [1, 4, 8, 0],
    "draft_node_budget": [1, 8, 24, 0],
    "kerv_r_min": [0, 5, 20, 300],
    "kerv_r_max": [5, 15, 30, 300],
    "max_linear_speed": [0.0, 0.1, 0.25, 5.0],
    "stale_timeout_s": [0.3, 0.5, 0.0],
    "heisd_sequence_weights": [[1.0] * 7, [1.0] * 6, [-1.0] * 7],
    "joint_names": [list(PANDA_ARM_JOINTS), list(reversed(PANDA_ARM_JOINTS)), ["a"]],
}


@dataclass
class Phase:
    scenario: str
    start: float
    end: float
    twists: int = 0
    nonzero: int = 0  # non-zero twists after the grace period in a phase that expects zeros
    commanded: int = 0
    notes: list[str] = field(default_factory=list)

    def passed(self) -> bool:
        if self.scenario in EXPECT_ZERO:
            return self.nonzero == 0
        if self.scenario == "clean":
            return self.commanded > 0
        return True  # params / lifecycle / bursts: judged by liveness and recovery


def _is_zero(msg: TwistStamped) -> bool:
    t = msg.twist
    return not any((t.linear.x, t.linear.y, t.linear.z, t.angular.x, t.angular.y, t.angular.z))


def _value(value) -> ParameterValue:
    pv = ParameterValue()
    if isinstance(value, bool):
        pv.type, pv.bool_value = ParameterType.PARAMETER_BOOL, value
    elif isinstance(value, int):
        pv.type, pv.integer_value = ParameterType.PARAMETER_INTEGER, value
    elif isinstance(value, float):
        pv.type, pv.double_value = ParameterType.PARAMETER_DOUBLE, value
    elif isinstance(value, list) and value and isinstance(value[0], str):
        pv.type, pv.string_array_value = ParameterType.PARAMETER_STRING_ARRAY, value
    elif isinstance(value, list):
        pv.type, pv.double_array_value = ParameterType.PARAMETER_DOUBLE_ARRAY, value
    else:
        pv.type, pv.string_value = ParameterType.PARAMETER_STRING, value
    return pv


def _rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        rclpy.init()
        self.node = rclpy.create_node("kerv_soak")
        n, base = self.node, args.node.rstrip("/")
        self.image_pub = n.create_publisher(Image, args.image_topic, qos_profile_sensor_data)
        self.joint_pub = n.create_publisher(JointState, args.joints_topic, qos_profile_sensor_data)
        self.instruction_pub = n.create_publisher(String, f"{base}/instruction", LATCHED)
        self.lock = threading.Lock()
        self.twists: list[tuple[float, bool]] = []  # (monotonic time, is zero)
        self.step_ms: list[float] = []
        n.create_subscription(TwistStamped, f"{base}/delta_twist_cmds", self._on_twist, 50)
        n.create_subscription(DecodeStats, f"{base}/decode_stats", self._on_stats, 50)
        self.get_state = n.create_client(GetState, f"{base}/get_state")
        self.change_state = n.create_client(ChangeState, f"{base}/change_state")
        self.set_params = n.create_client(SetParameters, f"{base}/set_parameters")
        self.set_atomic = n.create_client(
            SetParametersAtomically, f"{base}/set_parameters_atomically"
        )
        self.executor = MultiThreadedExecutor(num_threads=2)
        self.executor.add_node(n)
        threading.Thread(target=self.executor.spin, daemon=True).start()
        rgb = np.zeros((240, 320, 3), np.uint8)
        rgb[60:120, 100:160] = (220, 30, 30)
        self.good_image = rgb_to_image_fields(rgb)
        self.scenario = "clean"
        self.rss: list[tuple[float, float]] = []
        self.unanswered = 0
        self.inactive_nonzero = 0
        self.inactive_since: float | None = None

    def _on_twist(self, msg: TwistStamped) -> None:
        now = time.monotonic()
        with self.lock:
            self.twists.append((now, _is_zero(msg)))
            # Sent after the deactivate transition had returned (plus DDS latency).
            if self.inactive_since is not None and now > self.inactive_since + 0.05:
                self.inactive_nonzero += not _is_zero(msg)

    def _on_stats(self, msg: DecodeStats) -> None:
        with self.lock:
            self.step_ms.append(msg.total_ms)

    # --- inputs -----------------------------------------------------------------------------

    def _stamp(self, offset_s: float = 0.0):
        return (self.node.get_clock().now() + Duration(seconds=offset_s)).to_msg()

    def _image(self) -> Image:
        msg = Image(**self.good_image)
        msg.header.stamp = self._stamp()
        if self.scenario == "bad_images":
            kind = self.rng.choice(["encoding", "step", "truncated", "empty", "zero"])
            if kind == "encoding":
                msg.encoding = self.rng.choice(["16UC1", "yuv422", "bayer_rggb8", "x" * 300])
            elif kind == "step":
                msg.step = msg.step - 3
            elif kind == "truncated":
                msg.data = msg.data[: len(msg.data) // 2]
            elif kind == "empty":
                msg.data = b""
            else:
                msg.width = msg.height = 0
        return msg

    def _joints(self) -> JointState:
        names = [*PANDA_ARM_JOINTS, "panda_finger_joint1"]
        positions = [*HOME, 0.02]
        velocities = [0.0] * 8
        offset = 0.0
        s = self.scenario
        if s == "bad_joints":
            kind = self.rng.choice(["nan", "inf", "missing", "lengths"])
            if kind == "nan":
                positions[2] = float("nan")
            elif kind == "inf":
                positions[4] = float("inf")
            elif kind == "missing":
                names, positions, velocities = names[3:], positions[3:], velocities[3:]
            else:
                positions = positions[:5]
        elif s == "huge_joints":
            names = [f"joint_{i}" for i in range(10_000)]
            positions, velocities = [0.0] * 10_000, []
        elif s == "absurd_joints":
            kind = self.rng.choice(["1e6", "1e30", "v"])
            if kind == "v":
                velocities = [10.0 ** self.rng.uniform(3, 300)] * 8
            else:
                positions = [float(kind)] * 8
        elif s == "stamps":
            offset = self.rng.choice([3600.0, -3600.0, None])
        msg = JointState(name=names, position=positions, velocity=velocities)
        msg.header.stamp = self._stamp(offset) if offset is not None else self._stamp(-1e9)
        if offset is None:
            msg.header.stamp.sec, msg.header.stamp.nanosec = 0, 0
        return msg

    def _feed_loop(self, stop: threading.Event) -> None:
        period = 1.0 / self.args.rate
        joint_every = max(1, round(self.args.joint_rate / self.args.rate))
        tick = 0
        while not stop.is_set():
            s = self.scenario
            if s != "stale_camera":
                self.image_pub.publish(self._image())
            if s != "stall_joints":
                for _ in range(joint_every):
                    self.joint_pub.publish(self._joints())
            tick += 1
            time.sleep(period)

    # --- services ---------------------------------------------------------------------------

    def _call(self, client, request, timeout: float = 5.0):
        if not client.wait_for_service(timeout_sec=timeout):
            self.unanswered += 1
            return None
        future = client.call_async(request)
        deadline = time.monotonic() + timeout
        while not future.done() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not future.done():
            self.unanswered += 1
            return None
        return future.result()

    def alive(self) -> str | None:
        result = self._call(self.get_state, GetState.Request())
        return None if result is None else result.current_state.label

    def _transition(self, transition_id: int) -> None:
        request = ChangeState.Request()
        request.transition.id = transition_id
        self._call(self.change_state, request)

    def _fuzz_params(self, phase: Phase, until: float) -> None:
        sets = 0
        while time.monotonic() < until:
            name = self.rng.choice(sorted(FUZZ_PARAMS))
            parameter = Parameter(name=name, value=_value(self.rng.choice(FUZZ_PARAMS[name])))
            if self.rng.random() < 0.3:
                other = self.rng.choice(sorted(FUZZ_PARAMS))
                extra = Parameter(name=other, value=_value(self.rng.choice(FUZZ_PARAMS[other])))
                self._call(
                    self.set_atomic,
                    SetParametersAtomically.Request(parameters=[parameter, extra]),
                )
            else:
                self._call(self.set_params, SetParameters.Request(parameters=[parameter]))
            sets += 1
            time.sleep(0.02)
        phase.notes.append(f"{sets} parameter requests")
        self._restore_params()

    def _restore_params(self) -> None:
        defaults = {
            "mode": self.args.mode,
            "relaxed_threshold": 9,
            "draft_depth": 6,
            "draft_top_k": 4,
            "draft_node_budget": 24,
            "kerv_r_min": 5,
            "kerv_r_max": 15,
            "max_linear_speed": 0.25,
            "stale_timeout_s": 0.5,
            "heisd_sequence_weights": [1.0] * 6 + [2.0],
            "joint_names": list(PANDA_ARM_JOINTS),
        }
        params = [Parameter(name=k, value=_value(v)) for k, v in defaults.items()]
        self._call(self.set_params, SetParameters.Request(parameters=params))

    def _bad_types(self, phase: Phase) -> None:
        for code in (10, 11, 42, 255):
            for name in ("relaxed_threshold", "no_such_parameter"):
                bad = [Parameter(name=name, value=ParameterValue(type=code))]
                self.set_params.call_async(SetParameters.Request(parameters=bad))
                self.set_atomic.call_async(SetParametersAtomically.Request(parameters=bad))
        phase.notes.append("16 requests with undefined type codes")

    def _burst(self, phase: Phase) -> None:
        start = time.monotonic()
        for _ in range(1000):
            self.image_pub.publish(self._image())
        phase.notes.append(f"1000 images in {time.monotonic() - start:.2f} s")

    def _lifecycle(self, phase: Phase, until: float) -> None:
        count = 0
        while time.monotonic() < until - 0.6:
            self._transition(Transition.TRANSITION_DEACTIVATE)
            with self.lock:
                self.inactive_since = time.monotonic()
            time.sleep(0.3)
            with self.lock:
                self.inactive_since = None
            self._transition(Transition.TRANSITION_ACTIVATE)
            count += 2
            time.sleep(0.3)
        phase.notes.append(f"{count} transitions")

    # --- the run ----------------------------------------------------------------------------

    def run(self) -> dict:
        args = self.args
        deadline = time.monotonic() + args.wait_active_s
        while self.alive() != "active":  # configure loads the model: wait, then soak
            if time.monotonic() > deadline:
                raise SystemExit(f"{args.node} is not active after {args.wait_active_s} s")
            time.sleep(0.5)
        self.unanswered = 0
        stop = threading.Event()
        self.instruction_pub.publish(String(data=INSTRUCTION))
        feeder = threading.Thread(target=self._feed_loop, args=(stop,), daemon=True)
        feeder.start()
        time.sleep(1.0)
        phases: list[Phase] = []
        t_end = time.monotonic() + args.seconds
        # Every bad phase is followed by a clean one: recovery is checked each time.
        order = [p for s in args.scenarios for p in ([s] if s == "clean" else [s, "clean"])]
        for scenario in itertools.cycle(order):
            if time.monotonic() >= t_end:
                break
            start = time.monotonic()
            phase = Phase(scenario, start, start + args.phase_s)
            self.scenario = scenario if scenario not in ("params", "lifecycle") else "clean"
            if scenario == "big_instruction":
                self.instruction_pub.publish(String(data="x" * 1_000_000))
            elif scenario == "bad_param_types":
                self._bad_types(phase)
            elif scenario == "image_burst":
                self._burst(phase)
            if scenario == "params":
                self._fuzz_params(phase, phase.end)
            elif scenario == "lifecycle":
                self._lifecycle(phase, phase.end)
            else:
                while time.monotonic() < phase.end:
                    time.sleep(0.05)
            if scenario == "big_instruction":
                self.instruction_pub.publish(String(data=INSTRUCTION))
            state = self.alive()
            if state is None:
                phase.notes.append("node did not answer get_state")
            elif state != "active":
                self._transition(Transition.TRANSITION_ACTIVATE)
            if args.pid:
                rss = _rss_mib(args.pid)
                if rss is not None:
                    self.rss.append((time.monotonic() - phases[0].start if phases else 0.0, rss))
            phases.append(phase)
        stop.set()
        feeder.join(timeout=2)
        return self._report(phases)

    def _report(self, phases: list[Phase]) -> dict:
        grace = self.args.grace_s
        with self.lock:
            twists = list(self.twists)
            step_ms = list(self.step_ms)
        for phase in phases:
            inside = [(t, zero) for t, zero in twists if phase.start <= t < phase.end]
            phase.twists = len(inside)
            phase.commanded = sum(not zero for _, zero in inside)
            if phase.scenario in EXPECT_ZERO:
                phase.nonzero = sum(not z for t, z in inside if t >= phase.start + grace)
        span = (phases[-1].end - phases[0].start) if phases else 1.0
        alive = self.alive() is not None
        by_scenario: dict[str, dict] = {}
        for phase in phases:
            entry = by_scenario.setdefault(
                phase.scenario, {"phases": 0, "passed": 0, "nonzero_after_grace": 0, "notes": []}
            )
            entry["phases"] += 1
            entry["passed"] += phase.passed()
            entry["nonzero_after_grace"] += phase.nonzero
            entry["notes"] += phase.notes
        failed = [
            {
                "phase": i,
                "scenario": p.scenario,
                "after": phases[i - 1].scenario if i else None,
                "twists": p.twists,
                "commanded": p.commanded,
                "nonzero_after_grace": p.nonzero,
            }
            for i, p in enumerate(phases)
            if not p.passed()
        ]
        report = {
            "node": self.args.node,
            "seconds": round(span, 1),
            "alive_at_end": alive,
            "unanswered_requests": self.unanswered,
            "twists": len(twists),
            "twist_rate_hz": round(len(twists) / span, 2),
            "nonzero_while_inactive": self.inactive_nonzero,
            "control_steps": len(step_ms),
            "step_ms_p50": round(float(np.percentile(step_ms, 50)), 1) if step_ms else None,
            "step_ms_p99": round(float(np.percentile(step_ms, 99)), 1) if step_ms else None,
            "rss_mib": [round(r, 1) for _, r in self.rss],
            "scenarios": by_scenario,
            "failed_phases": failed,
        }
        report["ok"] = bool(
            alive
            and self.inactive_nonzero == 0
            and all(p.passed() for p in phases)
            and report["twist_rate_hz"] >= 0.5 * self.args.control_rate
        )
        return report

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--node", default="/kerv_node", help="the node's full name")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--phase-s", type=float, default=3.0, help="length of each phase")
    parser.add_argument("--grace-s", type=float, default=0.6, help="time to react to bad input")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma list")
    parser.add_argument("--rate", type=float, default=30.0, help="camera Hz")
    parser.add_argument("--joint-rate", type=float, default=60.0, help="joint_states Hz")
    parser.add_argument("--control-rate", type=float, default=10.0, help="the node's rate")
    parser.add_argument("--mode", default="hybrid", help="mode restored after fuzzing")
    parser.add_argument("--image-topic", default="/camera/image_raw")
    parser.add_argument("--joints-topic", default="/joint_states")
    parser.add_argument("--pid", type=int, help="the node's process id (RSS over time)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--wait-active-s", type=float, default=120.0, help="wait this long for active first"
    )
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args()
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = sorted(set(args.scenarios) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenarios {unknown}; choose from {', '.join(SCENARIOS)}")
    soak = Soak(args)
    try:
        report = soak.run()
    finally:
        soak.close()
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    print("SOAK OK" if report["ok"] else "SOAK FAILED")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
