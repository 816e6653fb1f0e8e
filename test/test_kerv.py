"""Mode ``kerv``: the kinematic threshold and Kalman compensation in the engine."""

from dataclasses import replace

import numpy as np
import pytest
from drafters import ScriptedDrafter
from models import SMALL

from kerv_ros.actions import NormStats
from kerv_ros.bench import synthetic_observations
from kerv_ros.config import PANDA_ARM_JOINTS, EngineConfig, KervConfig
from kerv_ros.decoding.engine import DecodeEngine, TokenSource
from kerv_ros.motion import MotionTracker
from kerv_ros.policy.backend import Observation
from kerv_ros.policy.vla import DefaultVLA

IMAGE = np.zeros((8, 8, 3), dtype=np.uint8)
TRUSTING = KervConfig(
    dynamic_threshold=False,
    compensation_every=1,
    compensation_max_std=2.0,
    compensation_max_nis=1000.0,
)
"""Compensate whenever a verify leaves dimensions to decode (to test the mechanism)."""


@pytest.fixture(scope="module")
def model():
    backend = DefaultVLA.random(SMALL, seed=3)
    observations = synthetic_observations(6, seed=5, size=backend.config.image_size)
    ar = DecodeEngine(backend, None, EngineConfig(mode="ar"))
    return backend, observations, [ar.step(o).tokens for o in observations]


def _engine(model, kerv, index, threshold=0):
    backend, _, ar_tokens = model
    drafter = ScriptedDrafter("adversarial", lambda: ar_tokens[index], depth=6, offset=40)
    config = EngineConfig(mode="kerv", relaxed_threshold=threshold, kerv=kerv)
    return DecodeEngine(backend, drafter, config)


def test_rejection_is_filled_from_the_filter_instead_of_target_passes(model):
    backend, observations, ar_tokens = model
    engine = _engine(model, TRUSTING, 0)
    first = engine.step(observations[0])  # no innovation seen yet: the filter is not trusted
    assert first.compensated_dims == [] and first.target_forwards == 7
    second = engine.step(observations[0])
    # The prefill's token, then the verifier's correction of the rejected draft; the rest is
    # the filter's prediction, after one verify instead of six.
    assert second.target_forwards == 2
    assert second.compensated_dims == [2, 3, 4, 5, 6]
    assert second.tokens[:2] == ar_tokens[0][:2]
    assert second.sources == [TokenSource.VERIFIER] * 2 + [TokenSource.KALMAN] * 5
    # The same filter, fed the same history, predicts exactly the compensated tokens.
    twin = MotionTracker(TRUSTING, backend.norm_stats, 0.1)
    twin.begin(observations[0])
    twin.executed(first.action, compensated=False)
    prior = twin.begin(observations[0])
    assert second.tokens[2:] == backend.action_tokenizer.encode(prior.mean[2:]).tolist()


def test_compensation_is_intermittent(model):
    _, observations, _ = model
    engine = _engine(model, replace(TRUSTING, compensation_every=3), 1)
    compensated = [bool(engine.step(observations[1]).compensated_dims) for _ in range(8)]
    assert compensated == [False, True, False, False, True, False, False, True]


def test_unsure_filter_falls_back_to_re_inference(model):
    _, observations, ar_tokens = model
    engine = _engine(model, replace(TRUSTING, compensation_max_std=1e-4), 2)
    for _ in range(3):
        result = engine.step(observations[2])
        assert result.compensated_dims == [] and result.tokens == ar_tokens[2]
        assert result.target_forwards == 7


def test_compensation_off_and_threshold_zero_is_ar(model):
    _, observations, ar_tokens = model
    exact = KervConfig(dynamic_threshold=False, compensation=False)
    for index, observation in enumerate(observations):
        engine = _engine(model, exact, index)
        for _ in range(2):
            assert engine.step(observation).tokens == ar_tokens[index]


def _tracker(**changes):
    config = replace(KervConfig(), **changes)
    return MotionTracker(config, NormStats.identity(), period_s=0.1)


def _run(tracker, actions, instruction="go"):
    priors = []
    for action in actions:
        priors.append(tracker.begin(Observation(IMAGE, instruction)))
        tracker.executed(np.asarray(action, dtype=float), compensated=False)
    return priors


def test_threshold_is_wide_for_slow_steady_motion_and_narrow_for_fast_changes():
    slow = _run(_tracker(), [np.r_[np.full(6, 0.02), 1.0]] * 15)[-1]
    jerky = _run(_tracker(), [np.r_[np.full(6, 0.6 * (-1) ** i), 1.0] for i in range(15)])[-1]
    fast = _run(_tracker(), [np.r_[np.full(6, 0.8), 1.0]] * 15)[-1]
    assert slow.threshold >= 13
    assert jerky.threshold == 5
    assert 5 <= fast.threshold < slow.threshold
    assert slow.twist_source == "none"  # no kinematics: executed actions only


def test_gripper_change_narrows_the_threshold_for_its_window():
    steady = [np.r_[np.full(6, 0.02), 1.0]] * 10
    closing = [np.r_[np.full(6, 0.02), -1.0]] * 6
    priors = _run(_tracker(gripper_window=3), steady + closing)
    after_close = [p.threshold for p in priors[11:]]
    assert after_close[:3] == [5, 5, 5]
    assert after_close[-1] > 10


def test_threshold_formula_and_range_follow_the_parameters():
    priors = _run(
        _tracker(r_min=2, r_max=30, w_speed=0.0, w_accel=0.0, w_innovation=0.0),
        [np.r_[np.full(6, 0.9), 1.0]] * 3,
    )
    assert [p.threshold for p in priors] == [30, 30, 30]  # no variability counted: r_max


def test_new_instruction_or_stamp_gap_starts_a_new_trajectory():
    tracker = _tracker()
    _run(tracker, [np.r_[np.full(6, 0.3), 1.0]] * 10)
    assert tracker.filter.std[0] < 0.1
    tracker.begin(Observation(IMAGE, "something else"))
    assert tracker.filter.std[0] > 0.5


def test_tracker_seeds_from_the_arm_twist_through_the_jacobian():
    from kerv_ros.kinematics import ArmKinematics

    kinematics = ArmKinematics(PANDA_ARM_JOINTS)
    stats = NormStats(q01=-np.full(7, 0.05), q99=np.full(7, 0.05), mask=np.ones(7, dtype=bool))
    tracker = MotionTracker(KervConfig(), stats, 0.1, kinematics)
    q = np.array([0.0, -0.25, 0.0, -2.3, 0.0, 2.05, 0.785])
    velocity = np.array([0.1, 0.05, 0.0, -0.05, 0.0, 0.05, 0.0])
    state = Observation(IMAGE, "go", q, velocity, stamp=0.0)
    prior = tracker.begin(state)
    assert prior.twist_source == "joint velocities"
    expected = tracker.twist_to_action(kinematics.twist(q, velocity))
    # One measurement from a wide prior: the prediction lands close to the measured motion.
    np.testing.assert_allclose(prior.mean[:6], expected[:6], atol=0.05)
    moved = Observation(IMAGE, "go", q + 0.1 * velocity, None, stamp=0.1)
    assert tracker.begin(moved).twist_source == "finite difference"
