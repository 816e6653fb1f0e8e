"""The kinematic policies of a step: HeiSD's fused metric and KERV's threshold and gate.

Both papers read the same signal, how variable the arm's motion is, from the motion the
tracker estimates (``motion.py`` keeps the state; the rules are here, in one place):

    v = w_speed * |m| + w_accel * |m - m_prev| + w_innovation * sqrt(nis)

with m the measured end-effector motion in action units and nis the Kalman filter's normalised
innovation squared. **KERV** widens the acceptance threshold on steady motion,
``r = lo + (hi - lo) * exp(-v)`` (``lo`` after a gripper change), and lets the filter fill the
dimensions a rejection left when it is confident (:func:`may_compensate`). **HeiSD** adds the
retrieved neighbours' distance and the gripper to the same terms, with its own weights:

    M = v + w_neighbour * d_nn + w_gripper * gripper_event

Low M is familiar motion: retrieval drafts and, lower still, may skip the verifier; high M is
new or changing motion, where the learned drafter generalises better. Every weight is a
parameter (``KervConfig``, ``HeisdConfig``).
"""

from __future__ import annotations

import numpy as np

from kerv_ros.config import HeisdConfig, KervConfig


def motion_variability(
    speed: float, accel: float, nis: float, w_speed: float, w_accel: float, w_innovation: float
) -> float:
    """v: the weighted size, change and surprise of the measured motion (NaN nis counts 0)."""
    innovation = np.sqrt(nis) if np.isfinite(nis) else 0.0
    return w_speed * speed + w_accel * accel + w_innovation * innovation


def kerv_threshold(variability: float, gripper_event: bool, config: KervConfig) -> int:
    """KERV's acceptance threshold in bins: wide on steady motion, narrow on changes."""
    if gripper_event:
        return config.narrowest
    span = config.widest - config.narrowest
    return round(config.narrowest + span * float(np.exp(-variability)))


def may_compensate(
    nis: float, std: np.ndarray, steps_since_compensation: int, config: KervConfig
) -> bool:
    """KERV's gate on filling dimensions from the filter.

    The filter must be confident on them (``std``: theirs) and unsurprised by the last
    measurements, and ``compensation_every`` steps must have passed since the last
    compensated one.
    """
    return bool(
        config.compensation
        and steps_since_compensation >= config.compensation_every - 1
        and np.isfinite(nis)
        and nis <= config.compensation_max_nis
        and np.all(std <= config.compensation_max_std)
    )


def fused_metric(prior, neighbour_distance: float, config: HeisdConfig) -> float:
    """M for one step (``prior``: a ``motion.MotionPrior``); infinite without neighbours."""
    if not np.isfinite(neighbour_distance):
        return float("inf")
    variability = motion_variability(
        prior.speed, prior.accel, prior.nis, config.w_speed, config.w_accel, config.w_innovation
    )
    return float(
        variability
        + config.w_neighbour * neighbour_distance
        + config.w_gripper * float(prior.gripper_event)
    )
