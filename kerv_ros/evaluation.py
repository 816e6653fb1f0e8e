"""Closed-loop evaluation in the simulator, in one process (no ROS): success per task and mode.

The loop does what kerv_node and sim_node do across processes, with the same conversions
(``control.action_to_twist``, ``control.gripper_opening``): observe (image, instruction, arm joint
positions and velocities, the tick's time), decode one action step, command the arm for one
control period. Seeds are fixed,
so two runs give the same episodes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from kerv_ros import report
from kerv_ros.actions import GRIPPER
from kerv_ros.config import PANDA_ARM_JOINTS, ControlConfig, EngineConfig
from kerv_ros.control import action_to_twist, gripper_opening
from kerv_ros.decoding.drafter import Drafter
from kerv_ros.decoding.engine import DecodeEngine, StepResult
from kerv_ros.kinematics import ArmKinematics
from kerv_ros.policy.backend import Observation, PolicyBackend
from kerv_ros.sim.tasks import new_episode, succeeded
from kerv_ros.sim.world import PandaWorld, SimConfig

EVAL_SEED = 1000
"""First evaluation seed: demonstrations for the default model use seeds below it."""


@dataclass
class EpisodeResult:
    task: str
    seed: int
    mode: str
    success: bool
    steps: int
    results: list[StepResult] = field(default_factory=list, repr=False)


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a success rate."""
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = (
        z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    )
    return max(0.0, centre - half), min(1.0, centre + half)


def _policy_command(
    world: PandaWorld,
    engine: DecodeEngine,
    instruction: str,
    control: ControlConfig,
    stamp: float | None = None,
) -> tuple[StepResult, tuple[np.ndarray, np.ndarray, float]]:
    """Observe, decode one step, and convert it as kerv_node does: (linear, angular, gripper)."""
    joints = world.joints()
    observation = Observation(
        world.render(), instruction, joints.positions[:7], joints.velocities[:7], stamp
    )
    decoded = engine.step(observation)
    linear, angular = action_to_twist(
        decoded.raw_action, control.period_s, control.max_linear_speed, control.max_angular_speed
    )
    normalised_gripper = not bool(np.asarray(engine.backend.norm_stats.mask)[GRIPPER])
    return decoded, (linear, angular, gripper_opening(decoded.raw_action, normalised_gripper))


def policy_driver(engine: DecodeEngine, control: ControlConfig | None = None):
    """The policy as a driver of :func:`kerv_ros.sim.collect.run_expert` (DAgger)."""
    control = control or ControlConfig()

    def drive(world: PandaWorld, instruction: str) -> tuple[np.ndarray, np.ndarray, float]:
        return _policy_command(world, engine, instruction, control)[1]

    return drive


def run_episode(
    world: PandaWorld, engine: DecodeEngine, task: str, seed: int, control: ControlConfig
) -> EpisodeResult:
    """One policy episode until success or the task's step limit."""
    episode = new_episode(world, task, seed)
    instruction = episode.task.instruction(episode.layout.target)
    result = EpisodeResult(task, seed, engine.config.mode, False, 0)
    engine.reset()  # a new episode: the motion tracker and verify-skip start over
    for step in range(episode.task.max_steps):
        stamp = step * control.period_s
        decoded, command = _policy_command(world, engine, instruction, control, stamp)
        result.results.append(decoded)
        world.apply(*command)
        result.steps = step + 1
        if succeeded(world, episode):
            result.success = True
            break
    return result


def closed_loop(
    backend: PolicyBackend,
    drafter: Drafter | None,
    config: EngineConfig,
    tasks: list[str],
    episodes: int,
    seed: int = EVAL_SEED,
    progress: bool = True,
    datastore=None,
    label: str = "",
) -> list[EpisodeResult]:
    """``episodes`` seeded episodes per task in the configured mode.

    ``datastore`` is the retrieval datastore ``heisd`` needs and ``hybrid`` uses; ``label``
    names the run on the progress bar (the row, such as ``ar+dyq``; default: the mode).
    """
    control = ControlConfig()
    world = PandaWorld(SimConfig(image_size=128, control_rate_hz=control.control_rate_hz))
    engine = DecodeEngine(
        backend, drafter, config, ArmKinematics(PANDA_ARM_JOINTS), control.period_s, datastore
    )
    out = []
    try:
        jobs = [(task, seed + i) for task in tasks for i in range(episodes)]
        bar = tqdm(
            jobs, desc=f"closed loop {label or config.mode}", unit="episode", disable=not progress
        )
        for task, episode_seed in bar:
            out.append(run_episode(world, engine, task, episode_seed, control))
            bar.set_postfix(success=f"{sum(r.success for r in out)}/{len(out)}")
    finally:
        world.close()
    return out


def summarise(results: list[EpisodeResult]) -> dict[str, dict[str, float]]:
    """Per task: success rate with its Wilson interval, mean steps, step ms, forwards."""
    summary = {}
    for task in sorted({r.task for r in results}):
        runs = [r for r in results if r.task == task]
        steps = [s for r in runs for s in r.results]
        wins = sum(r.success for r in runs)
        low, high = wilson_interval(wins, len(runs))
        accepted = [n for s in steps for n in s.accepted_lengths]
        summary[task] = {
            "episodes": len(runs),
            "successes": wins,
            "success_rate": wins / len(runs),
            "success_ci95": [low, high],
            "mean_episode_steps": float(np.mean([r.steps for r in runs])),
            **report.step_figures(
                [s.timings.total_ms for s in steps], [s.target_forwards for s in steps], accepted
            ),
        }
    return summary
