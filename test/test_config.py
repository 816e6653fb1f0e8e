"""Engine configuration: bad values are refused with a reason."""

from pathlib import Path

import pytest

from kerv_ros.bench import synthetic_observations
from kerv_ros.config import (
    MODES,
    PARAMETER_FIELDS,
    DraftConfig,
    EngineConfig,
    engine_config_from_params,
    engine_params,
)
from kerv_ros.decoding.engine import DecodeEngine
from kerv_ros.policy.vla import DefaultVLA, VLAConfig


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        (EngineConfig(mode="fast"), "unknown mode 'fast'"),
        (EngineConfig(relaxed_threshold=-1), "relaxed_threshold -1"),
        (EngineConfig(relaxed_threshold=256), "relaxed_threshold 256"),
        (EngineConfig(draft=DraftConfig(depth=7)), "depth 7"),
        (EngineConfig(draft=DraftConfig(depth=0)), "depth 0"),
        (EngineConfig(draft=DraftConfig(top_k=0)), "top_k 0"),
        (EngineConfig(draft=DraftConfig(node_budget=0)), "node_budget 0"),
    ],
)
def test_invalid_values_are_refused(config, reason):
    with pytest.raises(ValueError, match=reason):
        config.validate()


def test_every_problem_is_reported():
    config = EngineConfig(mode="x", relaxed_threshold=999, draft=DraftConfig(depth=9))
    assert len(config.problems()) == 3


def test_threshold_is_zero_outside_relaxed_mode():
    assert EngineConfig(mode="spec", relaxed_threshold=5).threshold == 0
    assert EngineConfig(mode="spec_relaxed", relaxed_threshold=5).threshold == 5


def test_engine_refuses_speculation_without_drafter_and_keeps_old_config():
    backend = DefaultVLA.random(
        VLAConfig(
            image_size=32,
            text_hidden=64,
            text_layers=1,
            vision_hidden=32,
            vision_layers=1,
            text_intermediate=128,
        )
    )
    engine = DecodeEngine(backend, None, EngineConfig(mode="ar"))
    with pytest.raises(ValueError, match="needs a drafter"):
        engine.configure(EngineConfig(mode="spec"))
    with pytest.raises(ValueError, match="unknown mode"):
        engine.configure(EngineConfig(mode="warp"))
    assert engine.config.mode == "ar"
    result = engine.step(synthetic_observations(1, 0, 32)[0])
    assert result.mode == "ar"
    assert result.target_forwards == 7
    assert result.accepted_lengths == [1] * 6
    timings = result.timings
    assert timings.total_ms >= timings.prefill_ms + timings.verify_ms
    assert timings.decode_ms == pytest.approx(timings.total_ms - timings.prefill_ms)


def test_modes_are_the_documented_ones():
    assert MODES == ("ar", "spec", "spec_relaxed")


def test_yaml_repeats_the_dataclass_defaults():
    import yaml

    path = Path(__file__).resolve().parents[1] / "config" / "kerv.yaml"
    params = yaml.safe_load(path.read_text())["kerv_node"]["ros__parameters"]
    engine = {k: v for k, v in params.items() if k in PARAMETER_FIELDS}
    assert engine == engine_params(EngineConfig())


def test_flat_parameters_round_trip_and_validate():
    base = EngineConfig()
    changed = engine_config_from_params({"draft_top_k": 1, "mode": "spec_relaxed"}, base)
    assert changed.draft.top_k == 1
    assert changed.mode == "spec_relaxed"
    assert changed.draft.depth == base.draft.depth
    assert engine_config_from_params(engine_params(changed), base) == changed
    with pytest.raises(ValueError, match="relaxed_threshold 300"):
        engine_config_from_params({"relaxed_threshold": 300}, base)
    with pytest.raises(ValueError, match="unknown engine parameters: speed"):
        engine_config_from_params({"speed": 1}, base)
