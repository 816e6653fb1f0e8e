"""Offline evaluation (``kerv eval BAG...``): every mode on the same recorded control ticks.

A bag of a run on the arm (``kerv record``, ``ros2 bag record`` or the simulator's) holds what
the node saw and, if it ran, what it commanded. Each control tick is rebuilt from the bag (the
camera image, the newest joint state at or before it by header stamp, the instruction in
force) and decoded by every mode in turn, so that every mode meets the same inputs and the same
machine load. Per mode the report gives forwards, accepted lengths, the first token that
differs from ``ar`` (AFEP), action error against ``ar`` and against the recorded command, per
dimension, in action units and bins, skipped and compensated steps, the draft source mix, and
step and decode times with speed-ups against ``ar``, all from this one run; plots show the
action traces, accepted lengths, the speed / error trade-off and ``kerv``'s threshold.

Ticks are keyed by the messages' header stamps, not by when a recorder received them, so a bag
written by ``kerv record`` and one written directly with the same messages give the same ticks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from kerv_ros import bags, report
from kerv_ros.actions import NormStats
from kerv_ros.config import PANDA_ARM_JOINTS
from kerv_ros.decoding.engine import StepResult
from kerv_ros.policy.backend import Observation
from kerv_ros.retrieval import to_bins
from kerv_ros.ros_io import InputError, image_to_rgb, joint_sample, stamp_seconds

REQUIRED = {
    bags.IMAGE_TOPIC: bags.IMAGE,
    bags.JOINT_STATES_TOPIC: bags.JOINT_STATE,
    bags.INSTRUCTION_TOPIC: bags.STRING,
}
OPTIONAL = {bags.TWIST_TOPIC: bags.TWIST_STAMPED, bags.GRIPPER_TOPIC: bags.FLOAT64}


@dataclass
class Ticks:
    """One bag's control ticks: observations and, where recorded, the commanded action."""

    bag: Path
    observations: list[Observation] = field(default_factory=list)
    commands: list[np.ndarray | None] = field(default_factory=list)
    """Raw 7-D action the recorded command amounts to (None where the bag has none)."""


def read_ticks(
    path: Path,
    control_rate_hz: float = 10.0,
    joint_names: tuple[str, ...] = PANDA_ARM_JOINTS,
    image_size: int | None = None,
) -> Ticks:
    """The control ticks of one bag: one per camera image, thinned to the control rate.

    Images closer than 0.9 control periods to the previous tick (a faster camera) are skipped.
    Each tick takes the newest joint state at or before the image, the instruction in force
    (a latched one may arrive just after the first image), and the first command in its period,
    all on the bag's one alignment clock (``bags.read_streams``).
    """
    streams = bags.read_streams(path, {**REQUIRED, **OPTIONAL}, required=REQUIRED)
    period_ns = int(1e9 / control_rate_hz)
    commands = bags.command_stream(streams, 1.0 / control_rate_hz)
    instructions = streams[bags.INSTRUCTION_TOPIC]
    if not len(instructions):
        raise ValueError(f"{path}: no message on {bags.INSTRUCTION_TOPIC}")
    ticks = Ticks(Path(path))
    last = None
    for index, image in enumerate(streams[bags.IMAGE_TOPIC]):
        if last is not None and image.t - last < 0.9 * period_ns:
            continue
        joints = streams[bags.JOINT_STATES_TOPIC].at(image.t)
        if joints is None:
            continue  # no joint state yet: the node would not command either
        instruction = instructions.at(image.t) or instructions.messages[0]
        last = image.t
        try:
            rgb = image_to_rgb(image.msg)
            sample = joint_sample(joints.msg, joint_names)
        except InputError as err:
            raise ValueError(f"{path}: message {index} of {bags.IMAGE_TOPIC}: {err}") from err
        if image_size and rgb.shape[:2] != (image_size, image_size):
            rgb = cv2.resize(rgb, (image_size, image_size), interpolation=cv2.INTER_AREA)
        ticks.observations.append(
            Observation(
                rgb,
                instruction.msg.data,
                sample.positions,
                sample.velocities,
                stamp=stamp_seconds(joints.msg.header.stamp),
            )
        )
        command = commands.first_from(image.t, image.t + period_ns)
        ticks.commands.append(None if command is None else command.msg)
    if not ticks.observations:
        raise ValueError(f"{path}: no control ticks (no image with a joint state before it)")
    return ticks


def recorded_errors(
    steps: list[StepResult], commands: list[np.ndarray | None], norm_stats: NormStats
) -> dict[str, object]:
    """|action - recorded command| per dimension (action units, bins) and over all dimensions.

    None where the bags hold no command to compare with.
    """
    pairs = [(r.action, c) for r, c in zip(steps, commands, strict=True) if c is not None]
    if not pairs:
        return {
            "action_error_vs_recorded_per_dim": None,
            "bin_error_vs_recorded_per_dim": None,
            "action_error_vs_recorded": None,
        }
    actions = np.array([a for a, _ in pairs])
    recorded = norm_stats.normalize(np.array([c for _, c in pairs]))
    bins = np.abs(to_bins(actions).astype(int) - to_bins(recorded).astype(int))
    per_dim = np.abs(actions - recorded).mean(axis=0)
    return {
        "action_error_vs_recorded_per_dim": per_dim.tolist(),
        "bin_error_vs_recorded_per_dim": bins.mean(axis=0).tolist(),
        "recorded_steps": len(pairs),
        "action_error_vs_recorded": float(per_dim.mean()),
    }


def write_report(
    out: Path,
    summary: dict[str, dict],
    results: dict[str, list[StepResult]],
    commands: list[np.ndarray | None],
    norm_stats: NormStats,
    header: dict,
    sweeps: dict[str, list[tuple[float, str]]],
) -> None:
    """``results.json``, ``report.md`` and the PNG plots into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    payload = {**header, "modes": summary, "sweeps": sweeps}
    (out / "results.json").write_text(json.dumps(payload, indent=2), encoding="utf-8")
    plots = _plots(out, summary, results, commands, norm_stats, sweeps)
    dims = ["x", "y", "z", "roll", "pitch", "yaw", "gripper"]
    per_dim = [
        f"| {mode} | " + " | ".join(f"{e:.4f}" for e in values["action_error_vs_ar_per_dim"]) + " |"
        for mode, values in summary.items()
    ]
    lines = [
        "# kerv eval",
        "",
        f"Bags: {', '.join(header['bags'])}  ",
        f"Model: {header['model']}; {header['ticks']} control ticks; parameters: "
        f"{header['params'] or 'defaults'}",
        "",
        report.table(summary, report.OFFLINE, markdown=True),
        "",
        "AFEP: 1-based position of the first token that differs from `ar`, over the steps that "
        "differ. `|act-rec|`: against the command recorded in the bag.",
        "",
        "## Action error against `ar` per dimension (action units)",
        "",
        "| mode | " + " | ".join(dims) + " |",
        "|---" * (len(dims) + 1) + "|",
        *per_dim,
        "",
        "## Plots",
        "",
        *[f"![{name}]({name})" for name in plots],
        "",
    ]
    (out / "report.md").write_text("\n".join(lines), encoding="utf-8")


def _save(fig, path: Path) -> str:
    """Write a finished figure, free it, and return its file name for the report."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path.name


def _plots(out, summary, results, commands, norm_stats, sweeps) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    ar = np.array([r.action for r in results["ar"]])
    fig, axes = plt.subplots(7, 1, figsize=(10, 14), sharex=True)
    labels = ["x", "y", "z", "roll", "pitch", "yaw", "gripper"]
    recorded = [norm_stats.normalize(c) if c is not None else np.full(7, np.nan) for c in commands]
    for d, ax in enumerate(axes):
        ax.plot(ar[:, d], color="0.3", linewidth=3, label="ar")
        for mode, steps in results.items():
            if mode != "ar":
                ax.plot([r.action[d] for r in steps], linewidth=1, label=mode)
        ax.plot([c[d] for c in recorded], "k:", linewidth=1, label="recorded")
        ax.set_ylabel(labels[d])
    axes[0].legend(ncol=4, fontsize=7)
    axes[-1].set_xlabel("control tick")
    fig.suptitle("actions (normalised) of each mode over ar")
    names.append(_save(fig, out / "actions.png"))

    fig, ax = plt.subplots(figsize=(7, 4))
    spec_modes = [m for m in results if m != "ar"]
    for mode in spec_modes:
        lengths = [n for r in results[mode] for n in r.accepted_lengths]
        ax.hist(lengths, bins=np.arange(0.5, 7.5), histtype="step", linewidth=1.5, label=mode)
    ax.set_xlabel("tokens gained per verifier pass")
    ax.set_ylabel("verifies")
    if spec_modes:
        ax.legend(fontsize=7)
    names.append(_save(fig, out / "accepted_length.png"))

    fig, ax = plt.subplots(figsize=(7, 5))
    for mode, values in summary.items():
        ax.scatter(values["action_error_vs_ar"], values["speedup_vs_ar_step"])
        ax.annotate(mode, (values["action_error_vs_ar"], values["speedup_vs_ar_step"]), fontsize=7)
    for label, points in sweeps.items():
        xs = [summary[row]["action_error_vs_ar"] for _, row in points]
        ys = [summary[row]["speedup_vs_ar_step"] for _, row in points]
        ax.plot(xs, ys, "-", linewidth=1, label=f"sweep {label}")
    ax.axhline(1.0, color="0.7", linewidth=0.8)
    ax.set_xlabel("mean |action - ar action| (normalised units)")
    ax.set_ylabel("speed-up vs ar (step)")
    if sweeps:
        ax.legend(fontsize=7)
    names.append(_save(fig, out / "tradeoff.png"))

    kinematic = [m for m, steps in results.items() if steps and steps[0].mode in ("kerv", "hybrid")]
    if kinematic:
        fig, ax = plt.subplots(figsize=(9, 3.5))
        for mode in kinematic:
            ax.plot([r.threshold for r in results[mode]], label=mode)
        ax.set_xlabel("control tick")
        ax.set_ylabel("threshold r (bins)")
        ax.legend(fontsize=7)
        names.append(_save(fig, out / "threshold.png"))
    return names
