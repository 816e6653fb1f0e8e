"""The KERV Kalman filter over action motion: convergence, recovery, refusal of NaN."""

import numpy as np
import pytest

from kerv_ros.config import KalmanConfig
from kerv_ros.kalman import ActionKalmanFilter

NOISE = 0.05


def _one_step_errors(filter_, truth, seed):
    """Run predict/update over ``truth`` (T x 7) with noisy measurements; errors of each
    one-step-ahead prediction against the true next action."""
    rng = np.random.default_rng(seed)
    errors = []
    for action in truth:
        filter_.predict()
        errors.append(np.abs(filter_.mean - action))
        filter_.update(action + rng.normal(0.0, NOISE, size=7), NOISE)
    return np.array(errors)


@pytest.mark.parametrize(("model", "bound"), [("cv", 0.6), ("ca", 0.95)])
@pytest.mark.parametrize("seed", [0, 1])
def test_prediction_error_on_constant_velocity_falls_below_measurement_noise(model, bound, seed):
    # The constant-acceleration model fits one more derivative to the same noise: it settles
    # slower on a constant-velocity motion, but still below the noise.
    config = KalmanConfig(model=model, process_std=0.002, action_std=NOISE)
    t = np.arange(120)[:, None]
    truth = -0.9 + 0.012 * t * np.linspace(0.5, 1.0, 7)
    errors = _one_step_errors(ActionKalmanFilter(config), truth, seed)
    assert errors[:3].mean() > NOISE  # it starts ignorant ...
    assert np.sqrt(np.mean(errors[-40:] ** 2)) < bound * NOISE  # ... and ends inside the noise


def test_recovers_within_a_few_steps_of_a_step_change():
    filter_ = ActionKalmanFilter(KalmanConfig(action_std=NOISE))
    truth = np.concatenate([np.full((30, 7), 0.2), np.full((20, 7), -0.4)])
    errors = _one_step_errors(filter_, truth, seed=1).mean(axis=1)
    assert errors[30] > 0.4  # the change itself is a surprise
    assert np.all(errors[35:] < 2 * NOISE)


def test_non_finite_measurements_never_enter_the_state():
    filter_ = ActionKalmanFilter(KalmanConfig())
    filter_.predict()
    filter_.update(np.full(7, 0.3), NOISE)
    before_x, before_p = filter_.x.copy(), filter_.P.copy()
    measurement = np.array([np.nan, 0.5, np.inf, 0.5, -np.inf, 0.5, np.nan])
    nis = filter_.update(measurement, NOISE)
    bad = ~np.isfinite(measurement)
    assert filter_.skipped == 4
    assert np.all(np.isnan(nis[bad])) and np.all(np.isfinite(nis[~bad]))
    np.testing.assert_array_equal(filter_.x[bad], before_x[bad])
    np.testing.assert_array_equal(filter_.P[bad], before_p[bad])
    assert np.all(np.isfinite(filter_.x)) and np.all(np.isfinite(filter_.P))
    filter_.update(np.full(7, np.nan), NOISE)
    assert filter_.skipped == 11 and np.all(np.isfinite(filter_.x))


def test_uncertainty_grows_without_measurements_and_shrinks_with_them():
    filter_ = ActionKalmanFilter(KalmanConfig())
    for _ in range(20):
        filter_.predict()
        filter_.update(np.zeros(7), NOISE)
    settled = filter_.std.copy()
    assert np.all(settled < NOISE)
    for _ in range(5):
        filter_.predict()
    assert np.all(filter_.std > 2 * settled)


def test_measurement_of_the_wrong_size_is_refused():
    with pytest.raises(ValueError, match="7 values"):
        ActionKalmanFilter(KalmanConfig()).update(np.zeros(6), NOISE)
