"""Kinematics of the simulator's Panda through pinocchio: Jacobian, twist, joint mapping."""

import numpy as np
import pinocchio as pin
import pytest

from kerv_ros.config import PANDA_ARM_JOINTS
from kerv_ros.kinematics import ArmKinematics, TwistEstimator


@pytest.fixture(scope="module")
def panda():
    return ArmKinematics(PANDA_ARM_JOINTS)


def _random_configurations(count, seed):
    rng = np.random.default_rng(seed)
    low = np.array([-2.8, -1.7, -2.8, -3.0, -2.8, 0.0, -2.8])
    high = np.array([2.8, 1.7, 2.8, -0.1, 2.8, 3.7, 2.8])
    return rng.uniform(low, high, size=(count, 7))


def _angular_difference(r_plus, r_minus, span):
    """World-frame angular velocity that turns r_minus into r_plus over ``span`` seconds."""
    return pin.log3(r_plus @ r_minus.T) / span


def test_jacobian_matches_finite_differences_of_forward_kinematics(panda):
    h = 1e-6
    for q in _random_configurations(20, seed=0):
        jacobian = panda.jacobian(q)
        for j in range(7):
            step = np.zeros(7)
            step[j] = h
            p_plus, r_plus = panda.forward(q + step)
            p_minus, r_minus = panda.forward(q - step)
            np.testing.assert_allclose(jacobian[:3, j], (p_plus - p_minus) / (2 * h), atol=1e-6)
            np.testing.assert_allclose(
                jacobian[3:, j], _angular_difference(r_plus, r_minus, 2 * h), atol=1e-6
            )


def test_twist_matches_the_motion_along_a_joint_trajectory(panda):
    q0 = _random_configurations(1, seed=1)[0]
    phase = np.linspace(0.0, 3.0, 7)

    def q(t):
        return q0 + 0.3 * np.sin(2.0 * t + phase)

    def q_dot(t):
        return 0.6 * np.cos(2.0 * t + phase)

    h = 1e-5
    for t in np.linspace(0.0, 3.0, 31):
        twist = panda.twist(q(t), q_dot(t))
        p_plus, r_plus = panda.forward(q(t + h))
        p_minus, r_minus = panda.forward(q(t - h))
        np.testing.assert_allclose(twist[:3], (p_plus - p_minus) / (2 * h), atol=1e-6)
        np.testing.assert_allclose(
            twist[3:], _angular_difference(r_plus, r_minus, 2 * h), atol=1e-6
        )


def test_forward_kinematics_agrees_with_the_simulator():
    from kerv_ros.sim.tasks import layout_for
    from kerv_ros.sim.world import HOME, PandaWorld

    world = PandaWorld()
    try:
        world.reset(layout_for("reach", 0))
        panda = ArmKinematics(PANDA_ARM_JOINTS)
        for q in [np.array(HOME), *_random_configurations(5, seed=2)]:
            np.testing.assert_allclose(panda.forward(q)[0], world.forward_kinematics(q), atol=1e-5)
    finally:
        world.close()


def test_twist_estimator_uses_velocities_then_falls_back_to_flagged_differences(panda):
    estimator = TwistEstimator(panda)
    q0 = _random_configurations(1, seed=3)[0]
    velocity = np.linspace(-0.2, 0.2, 7)
    first = estimator.update(q0, velocity, stamp=10.0)
    assert not first.finite_difference
    np.testing.assert_allclose(first.twist, panda.jacobian(q0) @ velocity)
    # Velocities absent: the difference of positions over the stamps, flagged.
    q1 = q0 + velocity * 0.1
    second = estimator.update(q1, None, stamp=10.1)
    assert second.finite_difference
    np.testing.assert_allclose(second.twist, panda.twist(q0 + velocity * 0.05, velocity), atol=1e-3)
    # Non-finite velocities are not numbers to use either.
    third = estimator.update(q1 + velocity * 0.1, np.full(7, np.nan), stamp=10.2)
    assert third.finite_difference and np.all(np.isfinite(third.twist))


def test_twist_estimator_gives_no_twist_rather_than_zero(panda):
    estimator = TwistEstimator(panda)
    q0 = _random_configurations(1, seed=4)[0]
    assert estimator.update(q0, None, stamp=1.0).twist is None  # nothing to difference yet
    assert estimator.update(q0 + 0.01, None, stamp=1.0).twist is None  # stamp did not advance
    assert estimator.update(q0 + 0.02, None, stamp=None).twist is None


def test_unknown_joints_frames_and_files_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="no joints \\['elbow'\\]"):
        ArmKinematics(("panda_joint1", "elbow"))
    with pytest.raises(ValueError, match="no frame 'tool0'"):
        ArmKinematics(PANDA_ARM_JOINTS, ee_frame="tool0")
    with pytest.raises(FileNotFoundError, match="URDF not found"):
        ArmKinematics(PANDA_ARM_JOINTS, urdf=str(tmp_path / "none.urdf"))
    broken = tmp_path / "broken.urdf"
    broken.write_text("<robot name='x'><link name='a'>", encoding="utf-8")
    with pytest.raises(ValueError, match="cannot load URDF"):
        ArmKinematics(PANDA_ARM_JOINTS, urdf=str(broken))
