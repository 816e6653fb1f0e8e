"""Engine configuration: bad values are refused with a reason."""

from pathlib import Path

import pytest
from models import TINY

from kerv_ros.bench import synthetic_observations
from kerv_ros.config import (
    CONTROL_PARAMS,
    ENGINE_PARAMS,
    MODEL_PARAMS,
    MODES,
    ControlConfig,
    DraftConfig,
    EngineConfig,
    HeisdConfig,
    KalmanConfig,
    KervConfig,
    ModelConfig,
    config_from_params,
    params_of,
)
from kerv_ros.decoding.engine import DecodeEngine
from kerv_ros.policy.vla import DefaultVLA


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
        (EngineConfig(kerv=KervConfig(r_min=256)), "kerv_r_min 256"),
        (EngineConfig(kerv=KervConfig(compensation_every=0)), "kerv_compensation_every 0"),
        (EngineConfig(kerv=KervConfig(w_accel=-1.0)), "kerv_w_accel -1.0"),
        (
            EngineConfig(kerv=KervConfig(kalman=KalmanConfig(model="jerk"))),
            "unknown kalman_model 'jerk'",
        ),
        (EngineConfig(kerv=KervConfig(kalman=KalmanConfig(twist_std=0.0))), "kalman_twist_std"),
    ],
)
def test_invalid_values_are_refused(config, reason):
    with pytest.raises(ValueError, match=reason):
        config.validate()


def test_every_problem_is_reported():
    config = EngineConfig(mode="x", relaxed_threshold=999, draft=DraftConfig(depth=9))
    assert len(config.problems()) == 3


def test_threshold_is_zero_outside_relaxed_modes():
    from kerv_ros.decoding.modes import plan_for

    def fixed(mode):
        return plan_for(EngineConfig(mode=mode, relaxed_threshold=5), True).fixed_threshold

    assert (fixed("ar"), fixed("spec"), fixed("spec_relaxed"), fixed("kerv")) == (0, 0, 5, 5)


def test_engine_refuses_speculation_without_drafter_and_keeps_old_config():
    backend = DefaultVLA.random(TINY)
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
    assert MODES == ("ar", "spec", "spec_relaxed", "kerv", "heisd", "hybrid")


def test_yaml_repeats_the_dataclass_defaults():
    import yaml

    path = Path(__file__).resolve().parents[1] / "config" / "kerv.yaml"
    params = yaml.safe_load(path.read_text())["/**"]["ros__parameters"]
    expected = {
        **params_of(EngineConfig(), ENGINE_PARAMS),
        **params_of(ControlConfig(), CONTROL_PARAMS),
        **params_of(ModelConfig(), MODEL_PARAMS),
    }
    expected["joint_names"] = list(expected["joint_names"])
    expected["heisd_sequence_weights"] = list(expected["heisd_sequence_weights"])
    assert {k: v for k, v in params.items() if k in expected} == expected


def test_flat_parameters_round_trip_and_validate():
    base = EngineConfig()
    changed = config_from_params(base, ENGINE_PARAMS, {"draft_top_k": 1, "mode": "spec_relaxed"})
    assert changed.draft.top_k == 1
    assert changed.mode == "spec_relaxed"
    assert changed.draft.depth == base.draft.depth
    assert config_from_params(base, ENGINE_PARAMS, params_of(changed, ENGINE_PARAMS)) == changed
    with pytest.raises(ValueError, match="relaxed_threshold 300"):
        config_from_params(base, ENGINE_PARAMS, {"relaxed_threshold": 300}).validate()
    with pytest.raises(ValueError, match="unknown parameters: speed"):
        config_from_params(base, ENGINE_PARAMS, {"speed": 1})


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"control_rate_hz": 0.0}, "control_rate_hz 0.0 outside"),
        ({"stale_timeout_s": 50.0}, "stale_timeout_s 50.0 outside"),
        ({"max_linear_speed": -1.0}, "max_linear_speed -1.0 outside"),
        ({"command_frame": " "}, "command_frame is empty"),
        ({"joint_names": ("a", "a")}, "joint_names must be distinct"),
    ],
)
def test_control_values_are_refused(change, reason):
    with pytest.raises(ValueError, match=reason):
        config_from_params(ControlConfig(), CONTROL_PARAMS, change).validate()


@pytest.mark.parametrize("node", ["/kerv_node", "/robot1/kerv_node", "/arm/left/kerv_node"])
def test_yaml_applies_to_the_node_in_any_namespace(node):
    """The wildcard key ROS documents (``/**``): a namespaced launch still reads the file."""
    from rclpy.parameter import parameter_dict_from_yaml_file

    path = Path(__file__).resolve().parents[1] / "config" / "kerv.yaml"
    params = parameter_dict_from_yaml_file(str(path), use_wildcard=True, target_nodes=[node])
    assert params["mode"].value.string_value == EngineConfig().mode
    assert len(params) == len(ENGINE_PARAMS) + len(CONTROL_PARAMS) + len(MODEL_PARAMS) + 1


def test_the_kerv_threshold_range_takes_its_ends_in_either_order():
    """So a non-atomic parameter load that moves both ends works whichever it sets first."""
    assert EngineConfig(kerv=KervConfig(r_min=16, r_max=15)).problems() == []
    assert (KervConfig(r_min=16, r_max=25).narrowest, KervConfig(r_min=16, r_max=25).widest) == (
        16,
        25,
    )
    assert (KervConfig(r_min=25, r_max=16).narrowest, KervConfig(r_min=25, r_max=16).widest) == (
        16,
        25,
    )


def test_every_mode_is_one_row_of_the_mode_table():
    from kerv_ros.decoding.modes import MODE_TABLE, plan_for

    assert tuple(MODE_TABLE) == MODES
    # Switches only turn features off: the plan never does more than its row allows.
    for mode, row in MODE_TABLE.items():
        off = EngineConfig(
            mode=mode,
            kerv=KervConfig(dynamic_threshold=False),
            heisd=HeisdConfig(verify_skip=False, acceptance="token"),
        )
        plan = plan_for(off, has_datastore=True)
        assert not (plan.kinematic_threshold or plan.verify_skip or plan.sequence_acceptance)
        full = plan_for(EngineConfig(mode=mode), has_datastore=True)
        assert full.retrieval == row.retrieval and full.compensation == row.compensation
        assert not plan_for(EngineConfig(mode=mode), has_datastore=False).retrieval


def test_parameter_tables_come_from_the_fields_they_describe():
    """A setting's range and description live on its dataclass field (config.param)."""
    from dataclasses import fields

    from kerv_ros.config import KervConfig

    r_min = next(f for f in fields(KervConfig) if f.name == "r_min").metadata["param"]
    (entry,) = [p for p in ENGINE_PARAMS if p.name == "kerv_r_min"]
    assert entry.path == ("kerv", "r_min")
    assert (entry.description, entry.low, entry.high) == (r_min.description, 0, 255)
    kalman = {p.name: p.path for p in ENGINE_PARAMS if p.name.startswith("kalman_")}
    assert kalman["kalman_model"] == ("kerv", "kalman", "model")
    names = [p.name for p in ENGINE_PARAMS]
    assert len(names) == len(set(names)) and "draft_depth" in names and "mode" in names
    # Every field of every config is a parameter or a nested config, none is left undeclared.
    assert {p.path[0] for p in ENGINE_PARAMS} == {f.name for f in fields(EngineConfig)}
