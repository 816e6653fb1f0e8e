"""Instructed tasks: random layouts, success checks, step limits, and a scripted expert each.

Directions are the robot's: +x away from the base, +y to its left. The expert sees the true
object poses (privileged state) and acts through the same command interface as the policy: an
end-effector velocity and a gripper opening per control period.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from kerv_ros.sim.world import COLOURS, CUBE_HALF, Layout, PandaWorld

APPROACH_HEIGHT = 0.12  # m above the table for moves between objects
PUSH_DISTANCE = 0.15  # m the expert pushes
PUSH_SUCCESS = 0.08  # m the block must move to the left


def _up(point: np.ndarray, height: float) -> np.ndarray:
    return point + np.array([0.0, 0.0, height])


@dataclass(frozen=True)
class Task:
    """One instructed task: its instruction, step limit and success rule."""

    name: str
    template: str
    max_steps: int

    def instruction(self, colour: str) -> str:
        return self.template.format(colour=colour)


TASKS = {
    "reach": Task("reach", "reach the {colour} cube", 60),
    "push": Task("push", "push the {colour} block to the left", 110),
    "pick": Task("pick", "pick up the {colour} cube", 110),
}


def sample_layout(task: str, rng: np.random.Generator) -> Layout:
    """Three cubes, at least 10 cm apart, and a target; the push target has room on its left."""
    while True:
        cubes = {
            colour: (float(rng.uniform(0.4, 0.62)), float(rng.uniform(-0.22, 0.18)))
            for colour in COLOURS
        }
        points = np.array(list(cubes.values()))
        gaps = np.linalg.norm(points[:, None] - points[None], axis=-1)
        if np.min(gaps + np.eye(len(points))) < 0.1:
            continue
        target = str(rng.choice(list(COLOURS)))
        if task == "push":
            tx, ty = cubes[target]
            # Nothing in the push corridor or where the gripper starts the push.
            if any(
                abs(x - tx) < 0.08 and -0.12 < y - ty < PUSH_DISTANCE + 0.08
                for c, (x, y) in cubes.items()
                if c != target
            ):
                continue
        return Layout(cubes=cubes, target=target)


@dataclass
class Episode:
    """What a success check needs: the task, the layout and the start of the episode."""

    task: Task
    layout: Layout
    start: dict[str, np.ndarray] = field(default_factory=dict)


def succeeded(world: PandaWorld, episode: Episode) -> bool:
    target = world.cube_position(episode.layout.target)
    name = episode.task.name
    if name == "reach":
        ee, _ = world.ee_pose()
        above = _up(target, 0.05)
        return bool(np.linalg.norm(ee - above) < 0.04)
    if name == "push":
        moved = target - episode.start[episode.layout.target]
        return bool(moved[1] >= PUSH_SUCCESS and abs(moved[0]) < 0.06)
    if name == "pick":
        return bool(target[2] > CUBE_HALF + 0.06)
    raise ValueError(f"unknown task {name!r}")


class Expert:
    """Waypoint following with a proportional controller; one instance per episode."""

    gain = 4.0  # 1/s: speed command per metre of error
    tolerance = 0.008  # m to call a waypoint reached

    def __init__(self, world: PandaWorld, episode: Episode) -> None:
        self.world = world
        self.episode = episode
        self.phase = 0
        self.wait = 0

    def _toward(self, goal: np.ndarray) -> tuple[np.ndarray, bool]:
        ee, _ = self.world.ee_pose()
        error = goal - ee
        velocity = self.gain * error
        limit = self.world.config.max_linear_speed
        norm = np.linalg.norm(velocity)
        if norm > limit:
            velocity *= limit / norm
        return velocity, bool(np.linalg.norm(error) < self.tolerance)

    def act(self) -> tuple[np.ndarray, np.ndarray, float]:
        """(linear m/s, angular rad/s, gripper 0..1) for this control period."""
        name = self.episode.task.name
        cube = self.world.cube_position(self.episode.layout.target)
        plan = getattr(self, f"_{name}")(cube)
        linear, gripper = plan
        return linear, np.zeros(3), gripper

    def _follow(self, waypoints: list[tuple[np.ndarray, float, int]]):
        """Go through (goal, gripper, dwell steps) waypoints in order; hold the last one."""
        goal, gripper, dwell = waypoints[min(self.phase, len(waypoints) - 1)]
        velocity, reached = self._toward(goal)
        if reached and self.phase < len(waypoints) - 1:
            self.wait += 1
            if self.wait > dwell:
                self.phase += 1
                self.wait = 0
        return velocity, gripper

    def _reach(self, cube: np.ndarray):
        return self._follow([(_up(cube, 0.05), 1.0, 0)])

    def _push(self, cube: np.ndarray):
        """Over the spot behind the block, down to the table, push it to the left.

        As for :meth:`_pick`, the phase also follows the state it finds, so that the expert can
        label DAgger episodes: the spot behind the block follows the block until the push
        starts; an arm already over that spot below the approach height goes straight down;
        one already at the table behind the block pushes; one that drifts off the spot on the
        way down goes back up and over. (With a plan fixed in advance, an arm low beside the
        block was labelled "up" in DAgger episodes and "down" in the expert's own: the policy
        trained on both oscillated there, measured on model v7.) The push itself keeps the
        start's line: chasing a block that slides sideways pushed it sideways.
        """
        start = self.episode.start[self.episode.layout.target]
        ee, _ = self.world.ee_pose()
        behind = np.array([cube[0], cube[1] - 0.07, CUBE_HALF])
        off_spot = float(np.linalg.norm(ee[:2] - behind[:2]))
        low = ee[2] < CUBE_HALF + self.tolerance
        in_line = abs(ee[0] - cube[0]) < 0.015 and -0.09 < ee[1] - cube[1] < -0.025
        if self.phase < 2:
            if low and in_line:
                self.phase, self.wait = 2, 0
            else:
                self._approach_phase(off_spot, ee[2], behind)
        return self._follow(
            [
                (_up(behind, APPROACH_HEIGHT), 0.0, 0),
                (behind, 0.0, 0),
                (np.array([start[0], start[1] + PUSH_DISTANCE - 0.05, CUBE_HALF]), 0.0, 0),
            ]
        )

    def _approach_phase(self, off_spot: float, height: float, spot: np.ndarray) -> None:
        """Phases 0 (to above ``spot``) and 1 (down onto it) from the state, not the history.

        An arm over the spot (``off_spot`` m away horizontally) below the approach point goes
        down; one that drifts off the spot on the way down climbs back.
        """
        if self.phase == 0 and off_spot < self.tolerance and height < spot[2] + APPROACH_HEIGHT:
            self.phase, self.wait = 1, 0
        elif self.phase == 1 and off_spot > 2.5 * self.tolerance:
            self.phase, self.wait = 0, 0

    def _holding(self, cube: np.ndarray, ee: np.ndarray) -> bool:
        """The cube sits between the fingers and they close on it (a cube's width apart)."""
        gap = float(np.sum(self.world.joints().positions[7:9]))
        return bool(np.linalg.norm(cube - ee) < 0.02 and 1.5 * CUBE_HALF < gap < 2.3 * CUBE_HALF)

    def _pick(self, cube: np.ndarray):
        """Above the cube, down, close, lift; the phase also follows the state it finds.

        Why: in DAgger episodes (``kerv sim collect --driver``) a policy moves the arm and the
        expert only labels, so its plan must not assume it made the moves. The grasp point
        follows the cube until the fingers close (a policy may nudge it), a cube already held
        skips to closing, and a lifted cube to the lift. An arm already over the cube below
        the approach point goes straight down; one that drifts off the cube on the way down, or
        lifts without it, goes back up and over it. With the expert driving these rules
        change (almost) nothing: it reaches each state through the previous phase.
        """
        ee, _ = self.world.ee_pose()
        lateral = float(np.linalg.norm(ee[:2] - cube[:2]))
        holding = self._holding(cube, ee)
        if self.phase < 2:
            self.grasp_at = cube.copy()
            if holding:
                self.phase, self.wait = 2, 0
            else:
                self._approach_phase(lateral, ee[2], cube)
        if cube[2] > CUBE_HALF + 0.02 and holding:
            self.phase = 3
        elif self.phase == 3 and cube[2] < CUBE_HALF + 0.005 and ee[2] > cube[2] + 0.05:
            self.phase, self.wait = 0, 0  # the arm went up and the cube stayed on the table
        grasp = self.grasp_at
        return self._follow(
            [
                (_up(grasp, APPROACH_HEIGHT), 1.0, 0),
                (grasp, 1.0, 1),
                (grasp, 0.0, 4),  # close and let the fingers settle
                (_up(grasp, 0.15), 0.0, 0),
            ]
        )


def layout_for(task_name: str, seed: int) -> Layout:
    """The seeded layout of a task; same task and seed, same layout."""
    if task_name not in TASKS:
        raise ValueError(f"unknown task {task_name!r}; choose one of {', '.join(TASKS)}")
    task_id = list(TASKS).index(task_name)
    return sample_layout(task_name, np.random.default_rng([task_id, seed]))


def new_episode(world: PandaWorld, task_name: str, seed: int) -> Episode:
    """Reset ``world`` to the seeded layout of a task; same task and seed, same episode."""
    layout = layout_for(task_name, seed)
    world.reset(layout)
    return Episode(TASKS[task_name], layout, {c: world.cube_position(c) for c in layout.cubes})
