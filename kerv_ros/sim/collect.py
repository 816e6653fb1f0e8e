"""Expert demonstrations as rosbag2 files, and the expert's success rate.

One bag per episode (``DIR/<task>_<seed>/``, mcap by default) with the topics a recording of
kerv_node on a real arm has: camera, joint states, instruction, twist and gripper commands,
plus the simulator's success flag. ``DIR/episodes.json`` indexes them (task, seed,
instruction, success, steps).

Noise injection (DART, Laskey et al. 2017): with ``noise > 0`` the executed linear velocity is
the expert's plus gaussian noise, while the recorded twist stays the expert's command. The
expert corrects the drift it causes, so the demonstrations show how to recover from states a
learned policy's own errors lead to, which plain demonstrations never visit.

DAgger (Ross et al. 2011): with a ``driver`` a learned policy moves the arm and the expert
only labels, so the bags hold the expert's command in exactly the states the policy reaches,
its own mistakes included. DART's noise is a guess at those states; DAgger visits them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from kerv_ros import bags
from kerv_ros.policy.backend import Observation
from kerv_ros.sim.tasks import TASKS, Expert, new_episode, succeeded
from kerv_ros.sim.world import PandaWorld, SimConfig

START_NS = 1_700_000_000 * 10**9
COMMAND_DELAY_NS = 1_000_000  # a command is stamped 1 ms after the observation it answers
INDEX = "episodes.json"


@dataclass
class EpisodeRecord:
    task: str
    seed: int
    instruction: str
    success: bool
    steps: int
    bag: str = ""


Driver = Callable[[PandaWorld, str], tuple[np.ndarray, np.ndarray, float]]
"""Who moves the arm instead of the expert: (world, instruction) -> (linear, angular, gripper)."""


def run_expert(
    world: PandaWorld,
    task: str,
    seed: int,
    on_step=None,
    noise: float = 0.0,
    hold: int = 0,
    driver: Driver | None = None,
    beta: float = 0.0,
) -> EpisodeRecord:
    """One expert episode, until success (then ``hold`` more steps) or the task's step limit.

    ``on_step(step, world, episode, command)`` sees every control tick before the command is
    executed (``command`` is None on the final observation), the expert's command, not the
    noisy one executed when ``noise`` (m/s, std per axis) is above 0.

    ``hold``: why record steps after success. An episode that ends the moment the task
    succeeds never shows what to do at the goal; a policy trained on such reach episodes came
    within 5 cm of the goal and then carried on with the push task's motion (measured on 20
    reach episodes of the default model v6). With ``hold`` the expert keeps its last waypoint
    for that many recorded steps; the episode's success is the task's state at its end.

    ``driver``: when given, it moves the arm on each step except a share ``beta`` of them
    (drawn per step, seeded), where the expert's own command is executed; the expert's
    command is what ``on_step`` sees either way (DAgger's mixture, see the module docstring).
    """
    episode = new_episode(world, task, seed)
    expert = Expert(world, episode)
    rng = np.random.default_rng([list(TASKS).index(task), seed, 1])
    instruction = episode.task.instruction(episode.layout.target)
    success = False
    first_success = None
    step = 0
    for step in range(episode.task.max_steps + hold + 1):
        success = succeeded(world, episode)
        if success and first_success is None:
            first_success = step
        if first_success is not None:
            done = step >= first_success + hold
        else:
            done = step == episode.task.max_steps
        if done:
            if on_step:
                on_step(step, world, episode, None)
            break
        command = expert.act()
        if on_step:
            on_step(step, world, episode, command)
        if driver is not None and rng.random() >= beta:
            command = driver(world, instruction)
        linear, angular, gripper = command
        if noise > 0:
            linear = linear + rng.normal(0.0, noise, size=3)
        world.apply(linear, angular, gripper)
    return EpisodeRecord(task, seed, instruction, success, step)


def record_episode(
    world: PandaWorld,
    task: str,
    seed: int,
    path: Path,
    storage: str = "mcap",
    noise: float = 0.0,
    hold: int = 0,
    driver: Driver | None = None,
    beta: float = 0.0,
    driver_name: str = "expert",
) -> EpisodeRecord:
    """Run one expert episode and write it to the rosbag2 directory ``path``.

    ``kerv.driver`` in the bag's metadata names who moved the arm (``expert``, or the policy
    of a DAgger run); the recorded commands are the expert's in both cases.
    """
    period_ns = int(world.config.period_s * 1e9)
    frame = "panda_link0"
    with bags.BagWriter(path, storage) as bag:

        def on_step(step, world, episode, command):
            stamp = START_NS + step * period_ns
            if step == 0:
                instruction = episode.task.instruction(episode.layout.target)
                bag.write(
                    bags.INSTRUCTION_TOPIC,
                    bags.STRING,
                    stamp,
                    bags.scalar_msg(bags.STRING, instruction),
                )
            joints = world.joints()
            bag.write(bags.IMAGE_TOPIC, bags.IMAGE, stamp, bags.image_msg(world.render(), stamp))
            bag.write(
                bags.JOINT_STATES_TOPIC,
                bags.JOINT_STATE,
                stamp,
                bags.joint_state_msg(joints.names, joints.positions, joints.velocities, stamp),
            )
            done = succeeded(world, episode)
            bag.write(bags.SUCCESS_TOPIC, bags.BOOL, stamp, bags.scalar_msg(bags.BOOL, done))
            if command is not None:
                linear, angular, gripper = command
                t = stamp + COMMAND_DELAY_NS
                bag.write(
                    bags.TWIST_TOPIC,
                    bags.TWIST_STAMPED,
                    t,
                    bags.twist_msg(linear, angular, t, frame),
                )
                bag.write(
                    bags.GRIPPER_TOPIC,
                    bags.FLOAT64,
                    t,
                    bags.scalar_msg(bags.FLOAT64, float(gripper)),
                )

        record = run_expert(world, task, seed, on_step, noise, hold, driver, beta)
        bag.set_metadata("kerv.noise", str(noise))
        bag.set_metadata("kerv.hold", str(hold))
        bag.set_metadata("kerv.driver", driver_name if driver is not None else "expert")
        bag.set_metadata("kerv.beta", str(beta))
        for key, value in asdict(record).items():
            if key != "bag":
                bag.set_metadata(f"kerv.{key}", str(value))
    record.bag = path.name
    return record


def collect(
    tasks: list[str],
    episodes: int,
    seed: int,
    out_dir: Path,
    storage: str = "mcap",
    image_size: int = 128,
    progress: bool = True,
    noise: float = 0.0,
    hold: int = 0,
    driver: Driver | None = None,
    beta: float = 0.0,
    driver_name: str = "expert",
) -> list[EpisodeRecord]:
    """``episodes`` expert episodes per task (seeds ``seed .. seed + episodes - 1``).

    With a ``driver`` the episodes are DAgger's: the driver moves the arm, the expert labels
    (see :func:`run_expert`).
    """
    for task in tasks:
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    index_path = out_dir / INDEX
    index = json.loads(index_path.read_text()) if index_path.is_file() else []
    world = PandaWorld(SimConfig(image_size=image_size))
    records = []
    jobs = [(task, seed + i) for task in tasks for i in range(episodes)]
    try:
        for task, episode_seed in tqdm(jobs, desc="collect", unit="episode", disable=not progress):
            path = out_dir / f"{task}_{episode_seed:05d}"
            if path.exists():
                raise FileExistsError(f"{path} exists; collect into a new directory")
            records.append(
                record_episode(
                    world, task, episode_seed, path, storage, noise, hold, driver, beta, driver_name
                )
            )
            index.append(asdict(records[-1]))
            index_path.write_text(json.dumps(index, indent=1))
    finally:
        world.close()
    return records


def expert_success(
    tasks: list[str], episodes: int, seed: int, progress: bool = True, noise: float = 0.0
) -> dict[str, dict[str, float]]:
    """The expert's success rate and mean steps per task, without rendering."""
    world = PandaWorld()
    results: dict[str, list[EpisodeRecord]] = {task: [] for task in tasks}
    try:
        for task in tasks:
            for i in tqdm(range(episodes), desc=f"expert {task}", disable=not progress):
                results[task].append(run_expert(world, task, seed + i, noise=noise))
    finally:
        world.close()
    return {
        task: {
            "episodes": len(records),
            "successes": sum(r.success for r in records),
            "success_rate": sum(r.success for r in records) / len(records),
            "mean_steps": sum(r.steps for r in records) / len(records),
        }
        for task, records in results.items()
    }


def expert_observations(
    count: int, seed: int, image_size: int = 128, run_length: int = 10
) -> list[Observation]:
    """``count`` observations along expert episodes, in runs of consecutive control ticks.

    What a policy trained on the simulator sees in closed loop: benchmarks on them measure the
    drafter where it is used, not on images it never saw. Each run of ``run_length`` ticks
    (tasks in turn, a fresh episode each, starting at a different tick of it so that approach,
    grasp and transport all appear) carries the joint velocities and stamps a node would get, so
    that ``kerv``'s filter follows the arm through it; runs are an hour apart in stamp time, so
    the filter starts over at each.
    """
    world = PandaWorld(SimConfig(image_size=image_size))
    out: list[Observation] = []
    runs = 0

    def on_step(step, world, episode, command):
        start = (runs * 13) % 40
        if command is not None and start <= step < start + run_length and len(out) < count:
            joints = world.joints()
            out.append(
                Observation(
                    world.render(),
                    episode.task.instruction(episode.layout.target),
                    joints.positions[:7],
                    joints.velocities[:7],
                    stamp=3600.0 * runs + step * world.config.period_s,
                )
            )

    try:
        episode_seed = seed
        while len(out) < count:
            for task in TASKS:
                run_expert(world, task, episode_seed, on_step)
                runs += 1
            episode_seed += 1
    finally:
        world.close()
    return out
