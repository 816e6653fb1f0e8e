"""Closed-loop summaries: the success interval is Wilson's."""

import pytest

from kerv_ros.evaluation import wilson_interval


def test_wilson_interval_known_values():
    low, high = wilson_interval(5, 10)
    assert low == pytest.approx(0.2366, abs=1e-4)
    assert high == pytest.approx(0.7634, abs=1e-4)
    assert wilson_interval(0, 6)[0] == 0.0
    assert wilson_interval(6, 6)[1] == pytest.approx(1.0)
    assert wilson_interval(0, 0) == (0.0, 1.0)
