"""Closed loop across processes: sim_node and kerv_node, real rclpy, loopback DDS.

What ``launch/demo.launch.py`` does on a machine with ROS 2, for machines without launch_ros
(``kerv sim run``, ``make demo``). For each decode mode, kerv_node is started with that mode; for
each task, sim_node runs the episodes and reports them. Everything kerv_node publishes
(commands, DecodeStats) and its inputs (camera, joint states, instruction) are recorded into one
rosbag2 with raw subscriptions, and the per-mode table (success, step time, forwards, accepted
length, speed-up vs ``ar``) is computed from the DecodeStats of that same run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rclpy
from lifecycle_msgs.srv import GetState
from rclpy.serialization import deserialize_message
from std_msgs.msg import String

from kerv_ros import bags, loopback, processes, report
from kerv_ros.msg import DecodeStats
from kerv_ros.recording import NODE_TOPICS, subscribe_raw
from kerv_ros.sim.sim_node import EPISODE_QOS

REPO_CONFIG = Path(__file__).resolve().parents[2] / "config" / "kerv.yaml"


def _script(name: str) -> str:
    return str(Path(sys.executable).parent / name)


@dataclass
class ModeRun:
    """One decode mode's episodes and the DecodeStats published meanwhile."""

    mode: str
    episodes: list[dict] = field(default_factory=list)
    stats: list[DecodeStats] = field(default_factory=list)


def run(
    tasks: list[str],
    episodes: int,
    seed: int,
    model: str,
    node_params: list[str],
    expert: bool,
    log_dir: Path,
    modes: tuple[str, ...] = ("ar",),
    bag_path: Path | None = None,
    timeout_s: float = 900.0,
    progress=None,
) -> list[ModeRun]:
    """Episodes per task for every mode; see the module docstring."""
    loopback.apply()
    log_dir.mkdir(parents=True, exist_ok=True)
    rclpy.init()
    listener = rclpy.create_node("kerv_sim_run")
    current: list[ModeRun] = []
    listener.create_subscription(
        String,
        "/kerv_sim/episode",
        lambda m: current[-1].episodes.append(json.loads(m.data)),
        EPISODE_QOS,
    )
    writer = bags.BagWriter(bag_path).__enter__() if bag_path else None

    def record(topic: str, msgtype: str, raw: bytes) -> None:
        if writer is not None:
            writer.write_raw(topic, msgtype, time.time_ns(), raw)
        if topic == bags.DECODE_STATS_TOPIC and current:
            current[-1].stats.append(deserialize_message(raw, DecodeStats))

    # What kerv record records: the bag replays into kerv eval like one from the arm.
    subscribe_raw(listener, NODE_TOPICS, record)
    try:
        for mode in ["expert"] if expert else modes:
            current.append(ModeRun(mode))
            kerv = None
            if not expert:
                params = [f"model:={model}", f"mode:={mode}", "autostart:=true", *node_params]
                args = [_script("kerv-node"), "--ros-args", "--params-file", str(REPO_CONFIG)]
                for param in params:
                    args += ["-p", param]
                kerv = processes.start(args, log_dir / f"kerv_node_{mode}.log")
                _wait_active(listener, kerv, timeout_s)
            try:
                for task in tasks:
                    _run_task(
                        listener,
                        current[-1],
                        task,
                        episodes,
                        seed,
                        expert,
                        log_dir,
                        timeout_s,
                        progress,
                    )
            finally:
                if kerv is not None:
                    processes.stop(kerv)
    finally:
        if writer is not None:
            writer.__exit__(None, None, None)
        listener.destroy_node()
        rclpy.try_shutdown()
    return current


def _run_task(
    listener,
    mode_run: ModeRun,
    task: str,
    episodes: int,
    seed: int,
    expert: bool,
    log_dir: Path,
    timeout_s: float,
    progress,
) -> None:
    before = len(mode_run.episodes)
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
        log_dir / f"sim_node_{mode_run.mode}_{task}.log",
    )
    deadline = time.monotonic() + timeout_s
    try:
        while len(mode_run.episodes) - before < episodes:
            if time.monotonic() > deadline or sim.poll() is not None:
                raise RuntimeError(f"sim_node for {task} stopped or timed out; see {log_dir}")
            count = len(mode_run.episodes)
            rclpy.spin_once(listener, timeout_sec=0.1)
            if progress is not None and len(mode_run.episodes) > count:
                progress(mode_run.mode, mode_run.episodes[-1])
    finally:
        processes.stop(sim)


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


def summarise(runs: list[ModeRun]) -> dict[str, dict[str, float]]:
    """Per mode: success, step time, target forwards per step, accepted length, speed-up vs ar.

    ``step_ms_mean`` and ``speedup_vs_ar`` (over mean step times) are kept for the readers of
    earlier results; ``speedup_vs_ar_step`` is over medians, as in every other report.
    """
    table = {}
    for run_ in runs:
        stats = run_.stats
        step_ms = [s.total_ms for s in stats]
        accepted = [n for s in stats for n in s.accepted_lengths]
        table[run_.mode] = {
            "episodes": len(run_.episodes),
            "successes": sum(e["success"] for e in run_.episodes),
            "steps": len(stats),
            **report.step_figures(step_ms, [s.target_forwards for s in stats], accepted),
            "step_ms_mean": float(np.mean(step_ms)) if step_ms else 0.0,
        }
    reference = table.get("ar", {})
    for row in table.values():
        measured = bool(reference.get("steps")) and bool(row["steps"])
        row["speedup_vs_ar_step"] = (
            reference["step_ms_median"] / row["step_ms_median"] if measured else 0.0
        )
        row["speedup_vs_ar"] = reference["step_ms_mean"] / row["step_ms_mean"] if measured else 0.0
    return table


def plot(runs: list[ModeRun], path: Path) -> None:
    """Step time per mode (box plot) and accepted-length histogram, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    with_stats = [r for r in runs if r.stats]
    if with_stats:
        left.boxplot(
            [[s.total_ms for s in r.stats] for r in with_stats],
            tick_labels=[r.mode for r in with_stats],
        )
    else:
        left.text(0.5, 0.5, "no DecodeStats (the expert drove)", ha="center")
    left.set_ylabel("step time (ms)")
    left.set_title("kerv_node step time per mode")
    for r in with_stats:
        accepted = [n for s in r.stats for n in s.accepted_lengths]
        if accepted:
            right.hist(accepted, bins=np.arange(0.5, 7.5), alpha=0.6, label=r.mode)
    right.set_xlabel("tokens gained per verifier pass")
    right.set_ylabel("count")
    right.set_title("accepted length")
    if with_stats:
        right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
