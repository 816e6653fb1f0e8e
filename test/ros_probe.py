"""A test-side rclpy node that feeds kerv_node and watches what it publishes.

It runs in the pytest process (one of the processes of each cross-process test); kerv_node
runs in its own process, started from its console script.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import TwistStamped
from kerv_ros.msg import DecodeStats
from lifecycle_msgs.srv import ChangeState, GetState
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
from rclpy.duration import Duration
from rclpy.executors import MultiThreadedExecutor
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.time import Time
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float64, String

from kerv_ros import processes
from kerv_ros.bench import synthetic_observations
from kerv_ros.config import PANDA_ARM_JOINTS
from kerv_ros.ros_io import rgb_to_image_fields
from kerv_ros.sim.world import HOME

REPO = Path(__file__).resolve().parents[1]
NODE_SCRIPT = Path(sys.executable).parent / "kerv-node"
LATCHED = QoSProfile(
    depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
)


def start_node(log_path: Path, *params: str, name: str = "kerv_node") -> subprocess.Popen:
    """kerv_node from its console script, with config/kerv.yaml and a random model."""
    args = [
        str(NODE_SCRIPT),
        "--ros-args",
        "--params-file",
        str(REPO / "config" / "kerv.yaml"),
        "-r",
        f"__node:={name}",
        "-p",
        "model:=random",
    ]
    for param in params:
        args += ["-p", param]
    return processes.start(args, log_path)


def stop_node(proc: subprocess.Popen) -> None:
    processes.stop(proc)


def good_image(width=640, height=480) -> Image:
    rgb = synthetic_observations(1, 0, max(width, height))[0].image[:height, :width]
    return Image(**rgb_to_image_fields(rgb))


def good_joints() -> JointState:
    names = [*PANDA_ARM_JOINTS, "panda_finger_joint1"]
    return JointState(name=names, position=[*HOME, 0.02], velocity=[0.01] * 8, effort=[])


class Probe:
    """Feeds inputs at ``rate_hz`` (what to feed can be swapped) and records the outputs."""

    def __init__(
        self, node_name: str = "kerv_node", rate_hz: float = 10.0, namespace: str = ""
    ) -> None:
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(
            f"kerv_probe_{namespace}_{node_name}".replace("__", "_"), context=self.context
        )
        self.node_name = f"{namespace}/{node_name}" if namespace else node_name
        n = self.node
        self.image_pub = n.create_publisher(Image, "/camera/image_raw", qos_profile_sensor_data)
        self.joint_pub = n.create_publisher(JointState, "/joint_states", qos_profile_sensor_data)
        self.instruction_pub = n.create_publisher(String, f"/{node_name}/instruction", LATCHED)
        self.lock = threading.Lock()
        self.twists: list[tuple[float, TwistStamped]] = []
        self.grippers: list[tuple[float, Float64]] = []
        self.stats: list[tuple[float, DecodeStats]] = []
        self.diagnostics: list[tuple[float, DiagnosticArray]] = []
        base = f"/{node_name}"
        n.create_subscription(
            TwistStamped, f"{base}/delta_twist_cmds", lambda m: self._record(self.twists, m), 10
        )
        n.create_subscription(
            Float64, f"{base}/gripper_command", lambda m: self._record(self.grippers, m), 10
        )
        n.create_subscription(
            DecodeStats, f"{base}/decode_stats", lambda m: self._record(self.stats, m), 10
        )
        n.create_subscription(
            DiagnosticArray, "/diagnostics", lambda m: self._record(self.diagnostics, m), 10
        )
        self.set_params = n.create_client(SetParameters, f"{base}/set_parameters")
        self.change_state = n.create_client(ChangeState, f"{base}/change_state")
        self.get_state = n.create_client(GetState, f"{base}/get_state")
        self.image: Image | None = good_image()
        self.joints: JointState | None = good_joints()
        self.feeding = False
        self.stamp_offset_s: float | None = 0.0  # joint_states stamped now + this; None: 0
        n.create_timer(1.0 / rate_hz, self._feed)
        self.executor = MultiThreadedExecutor(num_threads=2, context=self.context)
        self.executor.add_node(n)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)

    def _record(self, store, msg) -> None:
        with self.lock:
            store.append((time.monotonic(), msg))

    def _feed(self) -> None:
        if not self.feeding:
            return
        stamp = self.node.get_clock().now().to_msg()
        if self.image is not None:
            self.image.header.stamp = stamp
            self.image_pub.publish(self.image)
        if self.joints is not None:
            if self.stamp_offset_s is None:
                self.joints.header.stamp = Time().to_msg()
            else:
                shifted = self.node.get_clock().now() + Duration(seconds=self.stamp_offset_s)
                self.joints.header.stamp = shifted.to_msg()
            self.joint_pub.publish(self.joints)

    def instruct(self, text: str) -> None:
        self.instruction_pub.publish(String(data=text))

    def since(self, store, t0: float) -> list:
        with self.lock:
            return [m for t, m in store if t >= t0]

    def wait_for(self, store, predicate, timeout: float = 20.0, t0: float | None = None):
        """First message in ``store`` after ``t0`` that satisfies ``predicate``, or fail."""
        t0 = time.monotonic() if t0 is None else t0
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for msg in self.since(store, t0):
                if predicate(msg):
                    return msg
            time.sleep(0.05)
        raise AssertionError(f"no matching message within {timeout} s")

    def call(self, client, request, timeout: float = 20.0):
        assert client.wait_for_service(timeout_sec=timeout), f"{client.srv_name} not available"
        future = client.call_async(request)
        deadline = time.monotonic() + timeout
        while not future.done() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert future.done(), f"{client.srv_name} did not answer"
        return future.result()

    def set_param(self, name: str, value):
        """What `ros2 param set` does: one SetParameters request; returns the result."""
        pv = ParameterValue()
        if isinstance(value, bool):
            pv.type, pv.bool_value = ParameterType.PARAMETER_BOOL, value
        elif isinstance(value, int):
            pv.type, pv.integer_value = ParameterType.PARAMETER_INTEGER, value
        elif isinstance(value, float):
            pv.type, pv.double_value = ParameterType.PARAMETER_DOUBLE, value
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            pv.type, pv.string_array_value = ParameterType.PARAMETER_STRING_ARRAY, value
        elif isinstance(value, list):
            pv.type, pv.double_array_value = ParameterType.PARAMETER_DOUBLE_ARRAY, value
        else:
            pv.type, pv.string_value = ParameterType.PARAMETER_STRING, value
        request = SetParameters.Request(parameters=[Parameter(name=name, value=pv)])
        return self.call(self.set_params, request).results[0]

    def transition(self, transition_id: int) -> bool:
        request = ChangeState.Request()
        request.transition.id = transition_id
        return self.call(self.change_state, request).success

    def state(self) -> str:
        return self.call(self.get_state, GetState.Request()).current_state.label


def is_zero(twist: TwistStamped) -> bool:
    t = twist.twist
    return not any((t.linear.x, t.linear.y, t.linear.z, t.angular.x, t.angular.y, t.angular.z))


def diag_status(diag: DiagnosticArray, node: str = "/kerv_node"):
    for status in diag.status:
        if status.name == "kerv_node: decoding" and status.hardware_id == node:
            return status
    return None


def as_array(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float64)
