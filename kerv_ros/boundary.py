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

HeiSD's own boundary reads the end effector's path instead (:func:`curvature_score`): over a
window of positions, the radius of curvature R (the points projected on their best plane, a
circle fitted to them) and the cumulative displacement D, ``F = a * Norm(R) + (1 - a) *
Norm(D)``; large F (fast, straight transit) goes to retrieval, small F (slow or curving,
fine manipulation) to the drafter. HeiSD normalises min-max with the 95th percentile per task
suite; here ``Norm(x) = min(x / ref, 1)`` with the references as parameters, measured on
recordings (``docs/benchmarks.md``).
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


def radius_of_curvature(points: np.ndarray, iterations: int = 20) -> float:
    """R of a window of 3-D points: mean distance to the centre of a circle fitted in their plane.

    The points, centred, are projected on their two principal directions; the centre starts
    at the algebraic (Kasa) fit and is refined by Landau's iteration (the geometric fit).
    Straight or too few points: infinite.
    """
    if len(points) < 3:
        return float("inf")
    centred = points - points.mean(axis=0)
    _, sing, axes = np.linalg.svd(centred, full_matrices=False)
    if sing[0] <= 1e-12 or sing[1] <= 1e-6 * sing[0]:
        return float("inf")
    flat = centred @ axes[:2].T
    a = np.column_stack([2 * flat, np.ones(len(flat))])
    solution = np.linalg.lstsq(a, (flat**2).sum(axis=1), rcond=None)[0]
    centre = solution[:2]
    for _ in range(iterations):
        offsets = flat - centre
        distances = np.maximum(np.linalg.norm(offsets, axis=1), 1e-12)
        radius = distances.mean()
        centre = flat.mean(axis=0) - radius * (offsets / distances[:, None]).mean(axis=0)
    return float(np.linalg.norm(flat - centre, axis=1).mean())


def curvature_score(points: np.ndarray, config: HeisdConfig) -> float:
    """HeiSD's F over the window (0..1): high on fast, straight motion.

    Fewer than three positions, or none apart (an arm at rest): 0, the drafter's side.
    """
    displacement = float(np.linalg.norm(np.diff(points, axis=0), axis=1).sum())
    if len(points) < 3 or displacement <= 1e-9:
        return 0.0
    radius = radius_of_curvature(points)
    norm_r = min(radius / config.radius_ref, 1.0)
    norm_d = min(displacement / config.displacement_ref, 1.0)
    return config.curvature_alpha * norm_r + (1.0 - config.curvature_alpha) * norm_d
