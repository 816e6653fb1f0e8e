"""Control maths between an action and a robot command, shared by the node and the simulator.

Pure numpy, no messages: the node (``node.py``), the closed-loop evaluation and the simulated
arm all turn a 7-D action into the same end-effector speeds and gripper opening.
"""

from __future__ import annotations

import numpy as np

from kerv_ros.actions import GRIPPER


def clamp_norm(vector: np.ndarray, limit: float) -> np.ndarray:
    """Scale ``vector`` down to norm ``limit`` if it is longer: the direction is kept."""
    norm = float(np.linalg.norm(vector))
    if not np.isfinite(norm):
        return np.zeros_like(vector)
    return vector * (limit / norm) if norm > limit else vector


def action_to_twist(
    raw_action: np.ndarray, period_s: float, max_linear: float, max_angular: float
) -> tuple[np.ndarray, np.ndarray]:
    """The 7-D action's end-effector delta over one control period -> (linear, angular) speed.

    Speeds are clamped by norm to the limits, so a clamped command still points where the
    policy meant.
    """
    linear = clamp_norm(np.asarray(raw_action[:3], dtype=np.float64) / period_s, max_linear)
    angular = clamp_norm(np.asarray(raw_action[3:6], dtype=np.float64) / period_s, max_angular)
    return linear, angular


def gripper_opening(raw_action: np.ndarray, normalised_gripper: bool) -> float:
    """Gripper action -> 0 (closed) .. 1 (open).

    OpenVLA leaves the gripper out of the un-normalisation (its mask is False), so the value is
    still in [-1, 1] and is mapped onto [0, 1]; a gripper that was un-normalised is in [0, 1].
    """
    value = float(raw_action[GRIPPER])
    if normalised_gripper:
        value = 0.5 * (value + 1.0)
    return float(np.clip(value, 0.0, 1.0)) if np.isfinite(value) else 0.0
