"""Message conversions: images of every handled encoding, joint states, twist limits."""

from types import SimpleNamespace

import numpy as np
import pytest

from kerv_ros.config import PANDA_ARM_JOINTS
from kerv_ros.control import action_to_twist, gripper_opening
from kerv_ros.ros_io import (
    InputError,
    image_to_rgb,
    joint_sample,
    rgb_to_image_fields,
)

RGB = np.random.default_rng(0).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)


def image_msg(pixels: np.ndarray, encoding: str, pad: int = 0):
    h, w = pixels.shape[:2]
    rows = pixels.reshape(h, -1)
    padded = np.concatenate([rows, np.full((h, pad), 77, np.uint8)], axis=1)
    return SimpleNamespace(
        height=h,
        width=w,
        encoding=encoding,
        step=padded.shape[1],
        data=padded.tobytes(),
        is_bigendian=0,
    )


@pytest.mark.parametrize("pad", [0, 5])
def test_encodings_to_rgb(pad):
    np.testing.assert_array_equal(image_to_rgb(image_msg(RGB, "rgb8", pad)), RGB)
    np.testing.assert_array_equal(image_to_rgb(image_msg(RGB[..., ::-1], "bgr8", pad)), RGB)
    alpha = np.full((*RGB.shape[:2], 1), 9, np.uint8)
    rgba = np.concatenate([RGB, alpha], axis=2)
    np.testing.assert_array_equal(image_to_rgb(image_msg(rgba, "rgba8", pad)), RGB)
    bgra = np.concatenate([RGB[..., ::-1], alpha], axis=2)
    np.testing.assert_array_equal(image_to_rgb(image_msg(bgra, "bgra8", pad)), RGB)
    gray = RGB[..., 0]
    out = image_to_rgb(image_msg(gray, "mono8", pad))
    assert out.shape == (5, 7, 3)
    np.testing.assert_array_equal(out[..., 1], gray)


def test_rgb_fields_round_trip():
    fields = rgb_to_image_fields(RGB)
    np.testing.assert_array_equal(image_to_rgb(SimpleNamespace(**fields)), RGB)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"encoding": "16UC1"}, "not supported"),
        ({"step": 10}, "step 10 <"),
        ({"data": b"\x00" * 3}, "3 bytes"),
        ({"width": 0}, "no pixels"),
    ],
)
def test_bad_images(change, reason):
    msg = image_msg(RGB, "rgb8")
    for key, value in change.items():
        setattr(msg, key, value)
    with pytest.raises(InputError, match=reason):
        image_to_rgb(msg)


def joints(**kw):
    base = {"name": list(PANDA_ARM_JOINTS), "position": list(range(7)), "velocity": [0.5] * 7}
    base.update(kw)
    return SimpleNamespace(**base)


def test_joint_sample_order_extras_and_velocities():
    msg = joints(
        name=["finger", *reversed(PANDA_ARM_JOINTS)],
        position=[9.0, *range(6, -1, -1)],
        velocity=[0.0, *[0.1 * i for i in range(6, -1, -1)]],
    )
    sample = joint_sample(msg, PANDA_ARM_JOINTS)
    np.testing.assert_allclose(sample.positions, range(7))
    np.testing.assert_allclose(sample.velocities, [0.1 * i for i in range(7)])
    assert sample.velocity_note == ""


def test_joint_sample_flags_absent_or_nan_velocities():
    assert joint_sample(joints(velocity=[]), PANDA_ARM_JOINTS).velocities is None
    nan = joint_sample(joints(velocity=[float("nan")] * 7), PANDA_ARM_JOINTS)
    assert nan.velocities is None
    assert "not finite" in nan.velocity_note


@pytest.mark.parametrize(
    ("msg", "reason"),
    [
        (joints(position=[0.0] * 6), "7 names but 6 positions"),
        (joints(velocity=[0.0] * 3), "7 names but 3 velocities"),
        (joints(name=["a", *PANDA_ARM_JOINTS[1:]]), "lacks joints"),
        (joints(position=[0, 1, 2, float("inf"), 4, 5, 6]), "not finite"),
    ],
)
def test_bad_joint_states(msg, reason):
    with pytest.raises(InputError, match=reason):
        joint_sample(msg, PANDA_ARM_JOINTS)


def test_twist_is_delta_over_period_clamped_by_norm():
    linear, angular = action_to_twist(np.array([0.01, 0, 0, 0, 0, 0.05, 1]), 0.1, 1.0, 1.0)
    np.testing.assert_allclose(linear, [0.1, 0, 0])
    np.testing.assert_allclose(angular, [0, 0, 0.5])
    linear, _ = action_to_twist(np.array([0.3, 0.4, 0, 0, 0, 0, 0]), 0.1, 1.0, 1.0)
    np.testing.assert_allclose(linear, [0.6, 0.8, 0])  # 5 m/s scaled to 1, direction kept
    linear, _ = action_to_twist(np.array([np.nan, 0, 0, 0, 0, 0, 0]), 0.1, 1.0, 1.0)
    np.testing.assert_array_equal(linear, 0.0)


def test_gripper_mapping():
    assert gripper_opening(np.array([0] * 6 + [-1.0]), normalised_gripper=True) == 0.0
    assert gripper_opening(np.array([0] * 6 + [1.0]), normalised_gripper=True) == 1.0
    assert gripper_opening(np.array([0] * 6 + [0.3]), normalised_gripper=False) == 0.3
    assert gripper_opening(np.array([0] * 6 + [7.0]), normalised_gripper=False) == 1.0
