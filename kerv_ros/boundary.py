"""HeiSD's kinematic fused metric: is this motion familiar enough to draft from retrieval?

Retrieval drafts well where the arm repeats what the demonstrations did: steady motion, a
filter that is not surprised, a state close to stored ones, no grasp in progress. The metric
adds one term per signal (weights in :class:`kerv_ros.config.HeisdConfig`, all parameters):

    M = w_speed * |m| + w_accel * |m - m_prev| + w_innovation * sqrt(nis)
        + w_neighbour * d_nn + w_gripper * gripper_event

with m the measured end-effector motion in action units and nis the Kalman filter's normalised
innovation squared (``motion.MotionPrior``), d_nn the mean context distance of the retrieved
neighbours (``retrieval.Candidates``), and gripper_event 1 within ``kerv_gripper_window`` steps
of a gripper change. Low M is familiar motion: retrieval drafts and, lower still, may skip the
verifier; high M is new or changing motion, where the learned drafter generalises better.
"""

from __future__ import annotations

import numpy as np

from kerv_ros.config import HeisdConfig
from kerv_ros.motion import MotionPrior


def fused_metric(prior: MotionPrior, neighbour_distance: float, config: HeisdConfig) -> float:
    """M for one step; infinite when retrieval found no neighbours."""
    if not np.isfinite(neighbour_distance):
        return float("inf")
    innovation = np.sqrt(prior.nis) if np.isfinite(prior.nis) else 0.0
    return float(
        config.w_speed * prior.speed
        + config.w_accel * prior.accel
        + config.w_innovation * innovation
        + config.w_neighbour * neighbour_distance
        + config.w_gripper * float(prior.gripper_event)
    )
