"""Closed loop without launch_ros: start sim_node and kerv_node as processes and run episodes.

What ``launch/demo.launch.py`` does on a machine with ROS 2, for machines without launch_ros
(``kerv sim run``). Both processes and this one get the loopback-only DDS environment.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import rclpy
from lifecycle_msgs.srv import GetState
from std_msgs.msg import String

from kerv_ros import loopback, processes

REPO_CONFIG = Path(__file__).resolve().parents[2] / "config" / "kerv.yaml"


def _script(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def run(
    tasks: list[str],
    episodes: int,
    seed: int,
    model: str,
    node_params: list[str],
    expert: bool,
    log_dir: Path,
    timeout_s: float = 600.0,
) -> list[dict]:
    """Episodes per task in closed loop; returns sim_node's episode reports."""
    loopback.apply()
    log_dir.mkdir(parents=True, exist_ok=True)
    rclpy.init()
    listener = rclpy.create_node("kerv_sim_run")
    reports: list[dict] = []
    listener.create_subscription(
        String, "/kerv_sim/episode", lambda m: reports.append(json.loads(m.data)), 100
    )
    kerv = None
    try:
        if not expert:
            params = [f"model:={model}", "autostart:=true", *node_params]
            args = [_script("kerv-node"), "--ros-args", "--params-file", str(REPO_CONFIG)]
            for param in params:
                args += ["-p", param]
            kerv = processes.start(args, log_dir / "kerv_node.log")
            _wait_active(listener, kerv, timeout_s)
        for task in tasks:
            before = len(reports)
            sim = processes.start(
                [
                    _script("kerv-sim-node"),
                    "--ros-args",
                    "-p",
                    f"task:={task}",
                    "-p",
                    f"seed:={seed}",
                    "-p",
                    f"episodes:={episodes}",
                    "-p",
                    f"expert:={'true' if expert else 'false'}",
                ],
                log_dir / f"sim_node_{task}.log",
            )
            deadline = time.monotonic() + timeout_s
            try:
                while len(reports) - before < episodes:
                    if time.monotonic() > deadline or sim.poll() is not None:
                        raise RuntimeError(
                            f"sim_node for {task} stopped or timed out; see {log_dir}"
                        )
                    rclpy.spin_once(listener, timeout_sec=0.1)
            finally:
                processes.stop(sim)
    finally:
        if kerv is not None:
            processes.stop(kerv)
        listener.destroy_node()
        rclpy.try_shutdown()
    return reports


def _wait_active(node, proc: subprocess.Popen, timeout_s: float) -> None:
    """Until kerv_node reports the active lifecycle state (configure loads the model)."""
    client = node.create_client(GetState, "/kerv_node/get_state")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("kerv_node exited during start-up; see its log")
        if client.wait_for_service(timeout_sec=0.5):
            future = client.call_async(GetState.Request())
            rclpy.spin_until_future_complete(node, future, timeout_sec=2.0)
            if future.done() and future.result().current_state.label == "active":
                return
        time.sleep(0.2)
    raise RuntimeError("kerv_node did not become active")
