"""A Kalman filter over the end-effector motion in action units (KERV).

The state of each action dimension d is its value per control period and its change per
period (``cv``, constant velocity) or also the change of that (``ca``, constant acceleration):
the commanded end-effector delta moves smoothly along a trajectory, so the next action is
predictable from the motion so far. The seven dimensions are independent filters sharing one
motion model, run as one vectorised filter.

Two kinds of measurement condition the state, each with its own noise (``KalmanConfig``): the
action that was executed, and the end-effector twist the arm actually made (``J(q) q_dot``
converted to action units by the caller); the twist is what ties the filter to the robot
rather than to the token history alone. Non-finite measurements never enter the state: those
dimensions are skipped and counted.
"""

from __future__ import annotations

import numpy as np

from kerv_ros.config import KalmanConfig


def _motion_model(order: int) -> tuple[np.ndarray, np.ndarray]:
    """Transition F and the process-noise shape G (noise enters the highest derivative)."""
    if order == 2:
        return np.array([[1.0, 1.0], [0.0, 1.0]]), np.array([0.5, 1.0])
    return (
        np.array([[1.0, 1.0, 0.5], [0.0, 1.0, 1.0], [0.0, 0.0, 1.0]]),
        np.array([1.0 / 6.0, 0.5, 1.0]),
    )


class ActionKalmanFilter:
    """Per-dimension linear Kalman filter over (action, change[, change of change]).

    Call :meth:`predict` once per control period, :meth:`update` with each measurement of the
    current period. ``mean`` and ``std`` are the current estimate of the action dimensions.
    """

    def __init__(self, config: KalmanConfig, dims: int = 7, initial_std: float = 1.0) -> None:
        self.config = config
        self.dims = dims
        self.order = 2 if config.model == "cv" else 3
        self.transition, shape = _motion_model(self.order)
        self.process = np.outer(shape, shape) * config.process_std**2
        self.initial_std = initial_std
        self.skipped = 0
        """Non-finite measurement values refused so far."""
        self.reset()

    def reset(self) -> None:
        """Forget the motion: zero state, wide covariance (nothing will look confident)."""
        self.x = np.zeros((self.dims, self.order))
        self.P = np.tile(np.eye(self.order) * self.initial_std**2, (self.dims, 1, 1))
        self.last_nis = np.full(self.dims, np.nan)

    @property
    def mean(self) -> np.ndarray:
        return self.x[:, 0].copy()

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.P[:, 0, 0])

    def predict(self) -> None:
        """Advance one control period under the motion model."""
        f = self.transition
        self.x = self.x @ f.T
        self.P = f @ self.P @ f.T + self.process

    def update(self, measurement: np.ndarray, noise_std: float) -> np.ndarray:
        """Condition the current action estimate on a measurement of it.

        Returns the normalised innovation squared per dimension (NaN where skipped): how
        surprising the measurement was given the filter's own uncertainty.
        """
        z = np.asarray(measurement, dtype=np.float64)
        if z.shape != (self.dims,):
            raise ValueError(f"measurement must have {self.dims} values, got {z.shape}")
        ok = np.isfinite(z)
        self.skipped += int(np.count_nonzero(~ok))
        nis = np.full(self.dims, np.nan)
        if not ok.any():
            return nis
        x, cov = self.x[ok], self.P[ok]
        innovation = z[ok] - x[:, 0]
        s = cov[:, 0, 0] + noise_std**2
        gain = cov[:, :, 0] / s[:, None]
        self.x[ok] = x + gain * innovation[:, None]
        self.P[ok] = cov - gain[:, :, None] * cov[:, None, 0, :]
        nis[ok] = innovation**2 / s
        self.last_nis = nis
        return nis
