#!/usr/bin/env python3
"""Measure kerv_node's overhead per step beyond the core's step time, across processes.

Starts kerv_node (its console script, config/kerv.yaml, the given model and mode) in its own
process, feeds it 640x480 rgb8 images and joint states at 10 Hz from this process, and after
the run prints what the node reports on /diagnostics: core step time and node overhead
(conversion, message building, publishing) percentiles over its last 200 steps, step rate and
overruns. DDS stays on loopback (kerv_ros.loopback).

Usage: .venv/bin/python tools/node_overhead.py [--model random] [--mode ar] [--seconds 40]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from kerv_ros import loopback

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="random")
    parser.add_argument("--mode", default="spec")
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    args = parser.parse_args()
    loopback.apply()

    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import String

    from kerv_ros.bench import synthetic_observations
    from kerv_ros.config import PANDA_ARM_JOINTS
    from kerv_ros.ros_io import rgb_to_image_fields

    node_cmd = [
        str(Path(sys.executable).parent / "kerv-node"),
        "--ros-args",
        "--params-file",
        str(REPO / "config" / "kerv.yaml"),
        "-p",
        f"model:={args.model}",
        "-p",
        f"mode:={args.mode}",
        "-p",
        "autostart:=true",
        "-p",
        f"control_rate_hz:={args.rate}",
    ]
    proc = subprocess.Popen(node_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rclpy.init()
    node = rclpy.create_node("kerv_overhead_feeder")
    image_pub = node.create_publisher(Image, "/camera/image_raw", qos_profile_sensor_data)
    joint_pub = node.create_publisher(JointState, "/joint_states", qos_profile_sensor_data)
    latched = QoSProfile(
        depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
    )
    node.create_publisher(String, "/kerv_node/instruction", latched).publish(
        String(data="pick up the red cube")
    )
    last: dict[str, str] = {}

    def on_diag(msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.hardware_id == "/kerv_node":
                last.clear()
                last.update({kv.key: kv.value for kv in status.values})

    node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 10)
    rgb = synthetic_observations(1, 0, 640)[0].image[: args.height, : args.width]
    image = Image(**rgb_to_image_fields(rgb))
    joints = JointState(name=list(PANDA_ARM_JOINTS), position=[0.0] * 7, velocity=[0.0] * 7)
    end = time.monotonic() + args.seconds
    try:
        while time.monotonic() < end:
            image.header.stamp = joints.header.stamp = node.get_clock().now().to_msg()
            image_pub.publish(image)
            joint_pub.publish(joints)
            rclpy.spin_once(node, timeout_sec=1.0 / args.rate)
        settle = time.monotonic() + 1.5
        while time.monotonic() < settle:
            rclpy.spin_once(node, timeout_sec=0.1)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        node.destroy_node()
        rclpy.shutdown()
    if not last:
        print("no diagnostics received from /kerv_node", file=sys.stderr)
        return 1
    print(
        f"kerv_node, model {args.model}, mode {args.mode}, {args.rate:g} Hz, 640x480 rgb8, "
        f"{args.seconds:g} s"
    )
    for key in (
        "steps",
        "step_rate_hz",
        "overruns",
        "zero_twists",
        "step_ms_p50",
        "step_ms_p99",
        "node_overhead_ms_p50",
        "node_overhead_ms_p99",
    ):
        print(f"  {key:22s} {last.get(key, '?')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
