"""Conversions between ROS messages and the core's types, with the checks a robot needs.

Pure functions over message objects (duck-typed, so they need no rclpy and are unit-testable):
every function either returns clean numpy data or raises :class:`InputError` with a reason
that the node logs, reports on ``/diagnostics`` and answers with a zero twist.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from kerv_ros.config import MAX_INSTRUCTION_CHARS

CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}
TO_RGB = {
    "bgr8": cv2.COLOR_BGR2RGB,
    "rgba8": cv2.COLOR_RGBA2RGB,
    "bgra8": cv2.COLOR_BGRA2RGB,
    "mono8": cv2.COLOR_GRAY2RGB,
}


MAX_JOINTS = 256
"""More names than any arm's JointState carries: refused at once, whatever their content."""


def name_some(items, shown: int = 5) -> str:
    """A few items and a count of the rest: reasons stay short whatever the message held."""
    items = list(items)
    head = ", ".join(repr(i) if isinstance(i, str) else str(i) for i in items[:shown])
    more = len(items) - shown
    return f"[{head}{f', ... and {more} more' if more > 0 else ''}]"


def instruction_problem(text: str) -> str:
    """Why an instruction is refused ('' when it is taken)."""
    if len(text) > MAX_INSTRUCTION_CHARS:
        return (
            f"instruction of {len(text)} characters refused (at most {MAX_INSTRUCTION_CHARS}): "
            f"{text[:40]!r}..."
        )
    return ""


def quick_image_problem(msg) -> str:
    """Checks of an Image that cost the same whatever its size (done in the callback)."""
    if msg.encoding not in CHANNELS:
        return (
            f"image encoding {msg.encoding[:32]!r} not supported (use one of {', '.join(CHANNELS)})"
        )
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        return f"image has no pixels ({width}x{height})"
    if step < width * CHANNELS[msg.encoding]:
        return f"image step {step} < width {width} x {CHANNELS[msg.encoding]} bytes per pixel"
    if len(msg.data) != step * height:
        return (
            f"image data has {len(msg.data)} bytes, expected step {step} x height {height} = "
            f"{step * height}"
        )
    return ""


def quick_joints_problem(msg) -> str:
    """Checks of a JointState that cost the same whatever its size (done in the callback)."""
    names, positions, velocities = len(msg.name), len(msg.position), len(msg.velocity)
    if names > MAX_JOINTS:
        return f"joint_states has {names} joints (at most {MAX_JOINTS} are read)"
    if positions != names:
        return f"joint_states has {names} names but {positions} positions"
    if velocities not in (0, names):
        return f"joint_states has {names} names but {velocities} velocities"
    return ""


GENERIC_POSITION_LIMIT = 4 * np.pi
GENERIC_VELOCITY_LIMIT = 20.0


def generic_limit_problem(positions: np.ndarray, velocities: np.ndarray | None) -> str:
    """Why a reading is no arm's, without a robot description ('' when it may be one).

    Positions beyond two turns or velocities beyond 20 rad/s; the URDF's own limits are checked
    instead when the kinematics are loaded.
    """
    if np.any(np.abs(positions) > GENERIC_POSITION_LIMIT):
        shown = name_some(positions.tolist())
        return f"joint positions beyond {GENERIC_POSITION_LIMIT:.1f} rad: {shown}"
    if velocities is not None and np.any(np.abs(velocities) > GENERIC_VELOCITY_LIMIT):
        shown = name_some(velocities.tolist())
        return f"joint velocities beyond {GENERIC_VELOCITY_LIMIT} rad/s: {shown}"
    return ""


@dataclass(frozen=True)
class JointRule:
    """What ``joint_names`` must be for the loaded policy and arm.

    ``chain``: the URDF's joints from the base to the end-effector frame, in that order (the
    kinematics' and the policy's joint state order), or None when no kinematics are loaded;
    ``state_dim``: how many joint positions the policy reads (0: it reads none).
    """

    chain: tuple[str, ...] | None
    state_dim: int

    def problems(self, joint_names: tuple[str, ...]) -> list[str]:
        out = []
        if self.state_dim and len(joint_names) != self.state_dim:
            out.append(
                f"joint_names has {len(joint_names)} names, the policy reads {self.state_dim} "
                "joint positions"
            )
        if self.chain is not None and tuple(joint_names) != self.chain:
            out.append(
                f"joint_names must be the arm's joints from base to end effector, in the URDF's "
                f"order {list(self.chain)}; got {name_some(joint_names)}"
            )
        return out


def raise_problems(problems: list[str]) -> None:
    if problems:
        raise ValueError("; ".join(problems))


class InputError(ValueError):
    """An input message the node cannot act on; the message says why."""


class StaleInputError(InputError):
    """An input that is missing or too old (a warning: it usually recovers by itself)."""


def image_to_rgb(msg) -> np.ndarray:
    """sensor_msgs/Image -> H x W x 3 uint8 RGB, honouring ``step`` row padding.

    Handles rgb8, bgr8, rgba8, bgra8 and mono8 (8-bit encodings, so ``is_bigendian`` does not
    matter); anything else is refused rather than guessed.
    """
    problem = quick_image_problem(msg)
    if problem:
        raise InputError(problem)
    channels = CHANNELS[msg.encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    data = np.frombuffer(
        bytes(msg.data) if not isinstance(msg.data, bytes) else msg.data, dtype=np.uint8
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
    problem = quick_joints_problem(msg)
    if problem:
        raise InputError(problem)
    names = list(msg.name)
    positions = np.asarray(msg.position, dtype=np.float64)
    velocities = np.asarray(msg.velocity, dtype=np.float64)
    index = {name: i for i, name in enumerate(names)}
    missing = [name for name in joint_names if name not in index]
    if missing:
        raise InputError(f"joint_states lacks joints {name_some(missing)} (has {name_some(names)})")
    order = [index[name] for name in joint_names]
    arm_positions = positions[order]
    if not np.all(np.isfinite(arm_positions)):
        raise InputError(f"joint_states positions not finite: {name_some(arm_positions.tolist())}")
    if len(velocities) == 0:
        return JointSample(arm_positions, None, "no joint velocities in joint_states")
    arm_velocities = velocities[order]
    if not np.all(np.isfinite(arm_velocities)):
        return JointSample(arm_positions, None, "joint velocities not finite")
    return JointSample(arm_positions, arm_velocities)


def check_stamp(name: str, stamp, clock_s: float, tolerance_s: float) -> None:
    """Refuse a reading stamped unset, or further than ``tolerance_s`` from the node's clock.

    StaleInputError for a stamp in the past (it usually recovers), InputError otherwise.
    """
    if tolerance_s <= 0:
        return
    seconds = stamp_seconds(stamp)
    if seconds <= 0:
        raise InputError(
            f"{name} header stamp is {seconds:g}: unstamped (stamp_tolerance_s {tolerance_s})"
        )
    offset = seconds - clock_s
    if offset > tolerance_s:
        raise InputError(
            f"{name} stamped {offset:.2f} s in the future (stamp_tolerance_s {tolerance_s})"
        )
    if offset < -tolerance_s:
        raise StaleInputError(
            f"{name} stamped {-offset:.2f} s in the past (stamp_tolerance_s {tolerance_s})"
        )


def stamp_seconds(stamp) -> float:
    """builtin_interfaces/Time -> seconds (0.0 for an unset stamp)."""
    return stamp.sec + stamp.nanosec * 1e-9
