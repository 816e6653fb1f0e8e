"""DyQ-VLA's switching policy: the precision of each step from the arm's motion.

The two kinematic proxies, their fusion, the three-level table and the asymmetric hysteresis
are in :class:`kerv_ros.config.DyqConfig`'s docstring. The policy sees only what the engine's
motion tracker measured (the end-effector motion in action units, 6 motion dims) and when the
gripper last changed; it never reads the model. Full precision is the answer whenever the
motion cannot be judged: no measurement, an episode's first steps, a grasp.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from kerv_ros.config import DyqConfig

LEVELS = ("coarse", "medium", "full")


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision of one step and why."""

    precision: str
    score: float | None
    """The fused sensitivity score S (None where the motion was not measured)."""
    reason: str
    """``fixed``, ``warmup``, ``gripper``, ``unmeasured``, ``score`` or ``dwell``."""


class PrecisionPolicy:
    """Chooses each step's precision; keeps the proxies' windows of one trajectory."""

    def __init__(self, config: DyqConfig, full: str) -> None:
        self.config = config
        self.full = full
        self.reset()

    def reset(self) -> None:
        """A new episode: windows empty, full precision, warm-up again."""
        self._speeds: deque[float] = deque(maxlen=self.config.window_macro)
        self._angular: deque[np.ndarray] = deque(maxlen=2)
        self._jerks: deque[float] = deque(maxlen=self.config.window_micro)
        self._level = len(LEVELS) - 1
        self._steps_at_level = 0
        self._steps = 0

    def configure(self, config: DyqConfig) -> None:
        """New bounds and weights; new window lengths start the windows over."""
        windows = (config.window_macro, config.window_micro)
        resized = windows != (self.config.window_macro, self.config.window_micro)
        self.config = config
        if resized:
            self.reset()

    def precision_of(self, level: int) -> str:
        return (self.config.coarse, self.config.medium, self.full)[level]

    def score(self, motion: np.ndarray) -> float:
        """Add one step's measured motion (6 dims, action units) to the windows; S for it."""
        c = self.config
        self._speeds.append(float(np.linalg.norm(motion[:3])))
        angular = np.asarray(motion[3:6], dtype=np.float64)
        if len(self._angular) == 2:
            previous, before = self._angular[1], self._angular[0]
            self._jerks.append(float(np.linalg.norm(angular - 2 * previous + before)))
        self._angular.append(angular)
        fineness = c.speed_ref / (c.speed_ref + float(np.mean(self._speeds)))
        jerk = min(1.0, max(self._jerks, default=0.0) / c.jerk_ref)
        return max(0.0, c.fineness_weight * fineness + (1.0 - c.fineness_weight) * jerk)

    def decide(self, motion: np.ndarray | None, steps_since_gripper_change: int) -> PrecisionChoice:
        """The precision of this step; ``motion`` is the measured motion, or None."""
        c = self.config
        self._steps += 1
        self._steps_at_level += 1
        if c.fixed:
            return PrecisionChoice(c.fixed, None, "fixed")
        score = self.score(motion) if motion is not None and np.all(np.isfinite(motion)) else None
        lower, upper = sorted((c.coarse_below, c.full_above))
        if self._steps <= c.warmup_steps:
            return self._hold_full(score, "warmup")
        if steps_since_gripper_change < c.gripper_window:
            return self._hold_full(score, "gripper")
        if score is None:
            return self._hold_full(score, "unmeasured")
        target = 2 if score >= upper else (0 if score < lower else 1)
        if target > self._level:
            self._move(target)
            return PrecisionChoice(self.precision_of(target), score, "score")
        if target < self._level and self._steps_at_level > c.min_dwell:
            # Down to the lowest level whose top the score is clearly below.
            for level in range(target, self._level):
                if score < (lower, upper)[level] - c.hysteresis:
                    self._move(level)
                    return PrecisionChoice(self.precision_of(level), score, "score")
        if target < self._level:
            return PrecisionChoice(self.precision_of(self._level), score, "dwell")
        return PrecisionChoice(self.precision_of(self._level), score, "score")

    def _move(self, level: int) -> None:
        self._level = level
        self._steps_at_level = 0

    def _hold_full(self, score: float | None, reason: str) -> PrecisionChoice:
        self._move(len(LEVELS) - 1)
        return PrecisionChoice(self.full, score, reason)
