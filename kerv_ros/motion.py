"""What the engine knows of the arm's motion between steps: KERV's filter, seed and threshold.

Each step, :meth:`MotionTracker.begin` reads the observation's joint state, turns the measured
end-effector twist ``J(q) q_dot`` into action units (the twist over one control period, through
the model's own normalisation statistics) and conditions the Kalman filter on it, then predicts
the next action. The prediction's mean and std are what compensation fills rejected dimensions
with; the motion's speed and change, the filter's surprise and gripper changes set the step's
acceptance threshold (formula in :class:`kerv_ros.config.KervConfig`). After the step,
:meth:`MotionTracker.executed` conditions the filter on the action that was sent.

Without kinematics (no URDF loaded, or observations without joint states) the filter still runs
on the executed actions alone, as KERV's published code does on its token history; the prior
then says so (``twist_source``).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from kerv_ros.actions import ACTION_DIMS, GRIPPER, MOTION_DIMS, REST_ACTION, NormStats
from kerv_ros.boundary import kerv_threshold, motion_variability
from kerv_ros.config import KervConfig
from kerv_ros.kalman import ActionKalmanFilter
from kerv_ros.observation import Observation

GRIPPER_CHANGE = 0.5
"""A change of the gripper action larger than this (normalised units, range 2) is an event."""
MAX_GAP_PERIODS = 5.0
"""Readings further apart than this many control periods start a new trajectory."""
PATH_WINDOW = 64
"""End-effector positions kept for HeiSD's curvature boundary (its window is a parameter)."""


@dataclass(frozen=True)
class MotionPrior:
    """The filter's prediction of the coming action and the step's kinematic threshold."""

    mean: np.ndarray
    """Predicted action, normalised units."""
    std: np.ndarray
    nis: float
    """Mean normalised innovation squared of the last measurements (motion dims; NaN if none)."""
    speed: float
    """|m|: size of the measured motion (6 motion dims, action units)."""
    accel: float
    """|m - m_prev|: its change since the previous step."""
    variability: float
    gripper_event: bool
    threshold: int
    twist_source: str
    """``joint velocities``, ``finite difference`` or ``none`` (executed actions only)."""
    motion: np.ndarray | None = None
    """The measured motion from standing still (6 motion dims, action units), or None."""
    steps_since_gripper_change: int = 10**9


class MotionTracker:
    """Keeps the filter in step with the arm over a stream of observations and actions."""

    def __init__(
        self,
        config: KervConfig,
        norm_stats: NormStats,
        period_s: float,
        kinematics=None,
    ) -> None:
        """``kinematics`` is an :class:`kerv_ros.kinematics.ArmKinematics` or None."""
        self.config = config
        self.norm_stats = norm_stats
        self.period_s = period_s
        self.estimator = None
        if kinematics is not None:
            from kerv_ros.kinematics import TwistEstimator  # pinocchio only when it is used

            self.estimator = TwistEstimator(kinematics)
        self.filter = ActionKalmanFilter(config.kalman, ACTION_DIMS)
        self.trajectory = -1
        """Counts trajectories: per-trajectory state kept elsewhere starts over when it moves."""
        self._reset_history()

    def reset(self) -> None:
        """Start a new trajectory now (a new episode or instruction), not at the next gap."""
        self._reset_history()

    def _reset_history(self) -> None:
        self.trajectory += 1
        self.filter.reset()
        if self.estimator is not None:
            self.estimator.reset()
        self._last_motion: np.ndarray | None = None
        self._last_stamp: float | None = None
        self._instruction = ""
        self._last_gripper: float | None = None
        self._since_gripper_change = 10**9
        self._nis: list[np.ndarray] = []
        self.steps_since_compensation = 10**9
        self._executed: list[np.ndarray] = []
        self._path: deque[np.ndarray] = deque([np.zeros(3)], maxlen=PATH_WINDOW)

    def configure(self, config: KervConfig) -> None:
        """Adopt new thresholds and weights; a new motion model restarts the filter."""
        if config.kalman != self.config.kalman:
            self.filter = ActionKalmanFilter(config.kalman, ACTION_DIMS)
        self.config = config

    def _new_trajectory(self, observation: Observation) -> bool:
        stamp = observation.stamp
        if observation.instruction != self._instruction:
            return True
        if stamp is None or self._last_stamp is None:
            return False
        gap = stamp - self._last_stamp
        return gap < 0 or gap > MAX_GAP_PERIODS * self.period_s

    def twist_to_action(self, twist: np.ndarray) -> np.ndarray:
        """End-effector twist (m/s, rad/s) -> the action that would command it, normalised.

        The gripper is not part of a twist: NaN, which the filter skips.
        """
        raw = np.append(np.asarray(twist, dtype=np.float64) * self.period_s, np.nan)
        return self.norm_stats.normalize(raw)

    def begin(self, observation: Observation) -> MotionPrior:
        """Seed the filter from the observation's measured motion and predict this step."""
        if self._new_trajectory(observation):
            self._reset_history()
        self._instruction = observation.instruction
        self._last_stamp = observation.stamp
        source = "none"
        measured = None
        if self.estimator is not None and observation.state is not None:
            motion = self.estimator.update(
                observation.state, observation.velocities, observation.stamp
            )
            if motion.twist is not None:
                measured = self.twist_to_action(motion.twist)
                self._nis.append(self.filter.update(measured, self.config.kalman.twist_std))
                source = "finite difference" if motion.finite_difference else "joint velocities"
        if measured is None and self._last_gripper is not None:
            measured = self.filter.mean  # the executed action, as the filter holds it
        nis = self._mean_nis()
        self._nis = []
        speed = accel = 0.0
        motion = None
        if measured is not None:
            # Measured from standing still: with asymmetric statistics (or a dimension that never
            # moved in the data) a motionless arm is not at 0 in normalised units.
            still = self.norm_stats.normalize(REST_ACTION)[MOTION_DIMS]
            motion = measured[MOTION_DIMS] - still
            speed = float(np.linalg.norm(motion))
            if self._last_motion is not None:
                accel = float(np.linalg.norm(measured[MOTION_DIMS] - self._last_motion))
            self._last_motion = measured[MOTION_DIMS].copy()
        self.filter.predict()
        config = self.config
        variability = motion_variability(
            speed, accel, nis, config.w_speed, config.w_accel, config.w_innovation
        )
        gripper_event = self._since_gripper_change < config.gripper_window
        return MotionPrior(
            mean=self.filter.mean,
            std=self.filter.std,
            nis=nis,
            speed=speed,
            accel=accel,
            variability=float(variability),
            gripper_event=gripper_event,
            threshold=kerv_threshold(variability, gripper_event, config),
            twist_source=source,
            motion=motion,
            steps_since_gripper_change=self._since_gripper_change,
        )

    def _mean_nis(self) -> float:
        values = [n[MOTION_DIMS] for n in self._nis]
        values = np.concatenate(values) if values else np.array([])
        values = values[np.isfinite(values)]
        return float(values.mean()) if values.size else float("nan")

    def executed(self, action: np.ndarray, compensated: bool) -> None:
        """Condition the filter on the action sent this step (normalised units)."""
        action = np.asarray(action, dtype=np.float64)
        self._nis.append(self.filter.update(action, self.config.kalman.action_std))
        gripper = float(action[GRIPPER])
        if self._last_gripper is not None and abs(gripper - self._last_gripper) > GRIPPER_CHANGE:
            self._since_gripper_change = 0
        else:
            self._since_gripper_change += 1
        self._last_gripper = gripper
        self.steps_since_compensation = 0 if compensated else self.steps_since_compensation + 1
        self._executed = [*self._executed[-1:], action]
        delta = self.norm_stats.unnormalize(action)[:3]
        self._path.append(self._path[-1] + delta)

    def path(self, window: int) -> np.ndarray:
        """The end effector's last ``window`` positions: HeiSD's window.

        In metres from the trajectory's start, as the executed translation deltas add up.
        """
        return np.array(list(self._path)[-window:])

    def previous_actions(self) -> tuple[np.ndarray, np.ndarray]:
        """The last two executed actions of this trajectory (normalised), newest first.

        Before the trajectory's first steps: an arm at rest with the gripper open.
        """
        rest = self.norm_stats.normalize(REST_ACTION)
        padded = [rest, rest, *self._executed]
        return padded[-1], padded[-2]
