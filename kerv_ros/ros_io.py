"""Conversions between ROS messages and the core's types, with the checks a robot needs.

Pure functions over message objects (duck-typed, so they need no rclpy and are unit-testable):
every function either returns clean numpy data or raises :class:`InputError` with a reason
that the node logs, reports on ``/diagnostics`` and answers with a zero twist.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}
TO_RGB = {
    "bgr8": cv2.COLOR_BGR2RGB,
    "rgba8": cv2.COLOR_RGBA2RGB,
    "bgra8": cv2.COLOR_BGRA2RGB,
    "mono8": cv2.COLOR_GRAY2RGB,
}


class InputError(ValueError):
    """An input message the node cannot act on; the message says why."""


class StaleInputError(InputError):
    """An input that is missing or too old (a warning: it usually recovers by itself)."""


def image_to_rgb(msg) -> np.ndarray:
    """sensor_msgs/Image -> H x W x 3 uint8 RGB, honouring ``step`` row padding.

    Handles rgb8, bgr8, rgba8, bgra8 and mono8 (8-bit encodings, so ``is_bigendian`` does not
    matter); anything else is refused rather than guessed.
    """
    if msg.encoding not in CHANNELS:
        raise InputError(
            f"image encoding {msg.encoding!r} not supported (use one of {', '.join(CHANNELS)})"
        )
    channels = CHANNELS[msg.encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise InputError(f"image has no pixels ({width}x{height})")
    if step < width * channels:
        raise InputError(f"image step {step} < width {width} x {channels} bytes per pixel")
    data = np.frombuffer(
        bytes(msg.data) if not isinstance(msg.data, bytes) else msg.data, dtype=np.uint8
    )
    if data.size != step * height:
        raise InputError(
            f"image data has {data.size} bytes, expected step {step} x height {height} = "
            f"{step * height}"
        )
    rows = data.reshape(height, step)[:, : width * channels]
    pixels = rows.reshape(height, width, channels)
    if msg.encoding == "rgb8":
        return pixels.copy()  # owned and writable, not a view of the message buffer
    return cv2.cvtColor(np.ascontiguousarray(pixels), TO_RGB[msg.encoding])


def rgb_to_image_fields(rgb: np.ndarray) -> dict:
    """H x W x 3 uint8 RGB -> the fields of an rgb8 sensor_msgs/Image (``data`` as bytes)."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    height, width = rgb.shape[:2]
    return {
        "height": height,
        "width": width,
        "encoding": "rgb8",
        "is_bigendian": 0,
        "step": width * 3,
        "data": rgb.tobytes(),
    }


@dataclass(frozen=True)
class JointSample:
    """Arm joint positions, and velocities when the message had usable ones.

    Both are in the order of the configured joint names.
    """

    positions: np.ndarray
    velocities: np.ndarray | None
    velocity_note: str = ""


def joint_sample(msg, joint_names: tuple[str, ...]) -> JointSample:
    """sensor_msgs/JointState -> the configured joints, in their order.

    Joints may come in any order and extra joints (fingers, other arms) are ignored. Missing
    joints, mismatched array lengths and non-finite positions are errors. Velocities that are
    absent or not finite are reported in ``velocity_note`` (the Kalman filter then falls back to
    finite differences), never silently replaced by zeros.
    """
    names = list(msg.name)
    positions = np.asarray(msg.position, dtype=np.float64)
    velocities = np.asarray(msg.velocity, dtype=np.float64)
    if len(positions) != len(names):
        raise InputError(f"joint_states has {len(names)} names but {len(positions)} positions")
    if len(velocities) not in (0, len(names)):
        raise InputError(f"joint_states has {len(names)} names but {len(velocities)} velocities")
    index = {name: i for i, name in enumerate(names)}
    missing = [name for name in joint_names if name not in index]
    if missing:
        raise InputError(f"joint_states lacks joints {missing} (has {names})")
    order = [index[name] for name in joint_names]
    arm_positions = positions[order]
    if not np.all(np.isfinite(arm_positions)):
        raise InputError(f"joint_states positions not finite: {arm_positions.tolist()}")
    if len(velocities) == 0:
        return JointSample(arm_positions, None, "no joint velocities in joint_states")
    arm_velocities = velocities[order]
    if not np.all(np.isfinite(arm_velocities)):
        return JointSample(arm_positions, None, "joint velocities not finite")
    return JointSample(arm_positions, arm_velocities)


def stamp_seconds(stamp) -> float:
    """builtin_interfaces/Time -> seconds (0.0 for an unset stamp)."""
    return stamp.sec + stamp.nanosec * 1e-9


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
    value = float(raw_action[6])
    if normalised_gripper:
        value = 0.5 * (value + 1.0)
    return float(np.clip(value, 0.0, 1.0)) if np.isfinite(value) else 0.0
