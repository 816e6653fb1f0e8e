"""DyQ-VLA: precision variants of a model, the switching policy, and dyq as a feature of modes."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from models import SMALL

from kerv_ros.bench import row_config, summarise, synthetic_observations
from kerv_ros.config import DyqConfig, EngineConfig, KervConfig
from kerv_ros.decoding.drafter import EagleConfig, EagleDrafter
from kerv_ros.decoding.engine import DecodeEngine
from kerv_ros.dyq import PrecisionPolicy
from kerv_ros.policy.precision import PrecisionError, build_precisions
from kerv_ros.policy.vla import DefaultVLA

VARIANTS = ("bfloat16", "int8", "int8_bf16", "int4_bf16", "phased")
MODES = ("ar", "spec", "spec_relaxed", "kerv", "hybrid")


def _drafter(backend):
    torch.manual_seed(3)
    return EagleDrafter(EagleConfig.for_target(backend.text_config)).eval()


def _run(backend, config, observations):
    engine = DecodeEngine(backend, _drafter(backend), config)
    return [engine.step(o) for o in observations]


def _same(a, b):
    return (
        a.tokens == b.tokens
        and np.array_equal(a.action, b.action)
        and (a.target_forwards, a.draft_forwards) == (b.target_forwards, b.draft_forwards)
        and a.compensated_dims == b.compensated_dims
    )


@pytest.mark.parametrize("seed", [0, 1])
def test_with_variants_built_every_mode_is_bit_identical_off_and_at_full(seed):
    plain = DefaultVLA.random(SMALL, seed=seed)
    switched = DefaultVLA.random(SMALL, seed=seed)
    switched.build_precisions(VARIANTS)
    observations = synthetic_observations(4, 30 + seed, SMALL.image_size)
    held_full = DyqConfig(fixed="float32")
    for mode in MODES:
        reference = _run(plain, EngineConfig(mode=mode), observations)
        off = _run(switched, EngineConfig(mode=mode), observations)
        full = _run(switched, EngineConfig(mode=mode, dyq=True, precision=held_full), observations)
        assert all(_same(a, b) for a, b in zip(reference, off, strict=True)), mode
        assert all(_same(a, b) for a, b in zip(reference, full, strict=True)), mode
        assert {r.precision for r in full} == {"float32"}


def test_each_variant_runs_near_full_precision_and_counts_its_memory():
    backend = DefaultVLA.random(SMALL, seed=0)
    observation = synthetic_observations(1, 5, SMALL.image_size)[0]
    full = backend.prefill(observation).action_logits
    precisions = backend.build_precisions(VARIANTS)
    assert precisions.names == ("float32", *VARIANTS)
    for name in VARIANTS:
        precisions.set(name)
        logits = backend.prefill(observation).action_logits
        difference = (logits - full).abs().max().item()
        bound = 0.3 if name == "int4_bf16" else 0.05  # int4: 16 levels per group of 32 weights
        assert 0 < difference < bound * full.abs().max().item(), name
    memory = precisions.memory()
    linear = sum(m.linear.weight.numel() for m in precisions._layers if m.linear.weight is not None)
    assert memory["bfloat16"] >= 2 * linear and memory["int8"] >= linear  # 2 and 1 bytes each
    assert memory["int8"] < 0.3 * memory["float32"]  # one int8 copy serves int8 and int8_bf16
    assert linear / 2 <= memory["int4_bf16"] < 0.5 * memory["int8"] + 0.2 * linear
    precisions.set("float32")
    assert torch.equal(backend.prefill(observation).action_logits, full)


def test_phased_runs_wide_forwards_at_bfloat16_and_narrow_ones_on_int8():
    """The prefill (many rows) is bfloat16's to the bit, a one-token decode int8_bf16's."""
    backend = DefaultVLA.random(SMALL, seed=2)
    observation = synthetic_observations(1, 7, SMALL.image_size)[0]
    precisions = backend.build_precisions(("bfloat16", "int8_bf16", "phased"))
    seen = {}
    for name in ("bfloat16", "int8_bf16", "phased"):
        precisions.set(name)
        prefill = backend.prefill(observation).action_logits
        precisions.set("float32")
        state = backend.prefill(observation)  # the same cache under every decode
        token = backend.action_logits_to_tokens(state.action_logits[None])
        precisions.set(name)
        seen[name] = (prefill, backend.forward_tree(state, token, [-1]).action_logits)
    assert torch.equal(seen["phased"][0], seen["bfloat16"][0])
    assert torch.equal(seen["phased"][1], seen["int8_bf16"][1])
    assert not torch.equal(seen["bfloat16"][1], seen["int8_bf16"][1])  # the choice shows
    memory = precisions.memory()
    assert set(memory) == {"float32", "bfloat16", "int8"}  # phased adds no copy of its own


def test_dyq_phased_rows_moves_the_crossover():
    """``dyq_phased_rows`` 1: a one-token decode runs at bfloat16 too; 4096: the prefill at
    int8_bf16 too."""
    backend = DefaultVLA.random(SMALL, seed=2)
    observation = synthetic_observations(1, 7, SMALL.image_size)[0]
    precisions = backend.build_precisions(("bfloat16", "int8_bf16", "phased"))

    def forwards(name, rows=None):
        if rows is not None:  # the engine sets what the parameter says
            config = DyqConfig(fixed=name, phased_rows=rows)
            DecodeEngine(backend, None, EngineConfig(mode="ar", dyq=True, precision=config)).step(
                observation
            )
        else:
            precisions.set(name)
        state = backend.prefill(observation)
        token = backend.action_logits_to_tokens(state.action_logits[None])
        return state.action_logits, backend.forward_tree(state, token, [-1]).action_logits

    bf16, int8 = forwards("bfloat16"), forwards("int8_bf16")
    narrow, wide = forwards("phased", 1), forwards("phased", 4096)
    assert all(torch.equal(a, b) for a, b in zip(narrow, bf16, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(wide, int8, strict=True))
    assert not torch.equal(bf16[0], int8[0])


def test_phased_on_a_bfloat16_model_reads_its_own_weights():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 32)).bfloat16()
    x = torch.randn(20, 64, dtype=torch.bfloat16)
    full = model(x)
    precisions = build_precisions(model, ("phased",))
    assert precisions.names == ("bfloat16", "phased")
    assert set(precisions.memory()) == {"bfloat16", "int8"}  # the model's own, and int8
    precisions.set("phased")
    assert torch.equal(model(x), full)  # 20 rows: wide, the model's own bfloat16 weights
    assert not torch.equal(model(x[:2]), full[:2])  # 2 rows: int8


def test_a_variant_without_its_kernel_is_refused_before_anything_changes(monkeypatch):
    backend = DefaultVLA.random(SMALL, seed=0)
    layers_before = [type(m) for m in backend.model.modules()]

    def missing(*args):
        raise RuntimeError("Could not run '_weight_int8pack_mm' with arguments from the CPU")

    monkeypatch.setattr(torch, "_weight_int8pack_mm", missing)
    with pytest.raises(PrecisionError, match="precision int8 cannot run on cpu: Could not run"):
        backend.build_precisions(("int8",))
    with pytest.raises(PrecisionError, match="precision int8_bf16 cannot run on cpu"):
        backend.build_precisions(("phased",))  # it needs the int8 kernel too
    with pytest.raises(PrecisionError, match="unknown precision int4"):
        build_precisions(backend.model, ("int4",))
    assert [type(m) for m in backend.model.modules()] == layers_before


def _policy(**changes):
    config = replace(DyqConfig(warmup_steps=2, min_dwell=2, gripper_window=2), **changes)
    return PrecisionPolicy(config, "float32")


FAST = np.array([0.3, 0.0, 0.0, 0.0, 0.0, 0.0])
"""Free-space transit: a large translation per step, no rotation (fineness near 0)."""
SLOW = np.array([0.002, 0.0, 0.0, 0.0, 0.0, 0.0])
"""A fine approach: almost no translation (fineness near 1)."""


def _precisions(policy, motions, gripper=None):
    gripper = gripper or [10**9] * len(motions)
    return [policy.decide(m, g).precision for m, g in zip(motions, gripper, strict=True)]


def test_coarse_transit_lowers_precision_after_warmup_and_dwell():
    seen = _precisions(_policy(), [FAST] * 8)
    assert seen[:2] == ["float32", "float32"]  # warm-up
    assert seen[2:4] == ["float32"] * 2  # dwell: min_dwell more steps after the last forced one
    assert seen[4:] == ["phased"] * 4  # the default coarse precision


def test_fine_motion_and_angular_jerk_raise_precision_at_once():
    policy = _policy()
    _precisions(policy, [FAST] * 8)
    # Fineness is a broad trend: one slow step in a window of fast ones changes nothing.
    assert policy.decide(SLOW, 10**9).precision == "phased"
    policy = _policy(window_macro=1)
    assert _precisions(policy, [FAST] * 8)[-1] == "phased"
    assert policy.decide(SLOW, 10**9).precision == "float32"  # fine translation: at once
    policy = _policy(fineness_weight=0.0)  # jerk alone decides
    assert _precisions(policy, [FAST] * 8)[-1] == "phased"
    twist = FAST.copy()
    twist[3] = 0.5  # a rotational spike
    choice = policy.decide(twist, 10**9)
    assert choice.precision == "float32" and choice.score == pytest.approx(1.0)


def test_gripper_changes_unmeasured_motion_and_a_fixed_setting():
    policy = _policy()
    _precisions(policy, [FAST] * 8)
    assert policy.decide(FAST, 0).reason == "gripper"
    assert policy.decide(FAST, 0).precision == "float32"
    assert policy.decide(None, 10**9).reason == "unmeasured"
    fixed = _policy(fixed="int8")
    assert set(_precisions(fixed, [SLOW, FAST, None])) == {"int8"}


def test_hysteresis_keeps_a_score_near_the_bound_where_it_is():
    policy = _policy(window_macro=1, hysteresis=0.2, coarse_below=0.35, full_above=0.6)
    # Score 0.5 * speed_ref / (speed_ref + s): 0.3 at s = 0.0333 (below coarse_below, but not
    # by the hysteresis): the policy comes down to medium, not to coarse.
    near = np.array([0.0333, 0, 0, 0, 0, 0])
    assert _precisions(policy, [near] * 8)[-1] == "int8"


def test_dyq_rows_carry_the_precision_share_and_need_their_variants():
    backend = DefaultVLA.random(SMALL, seed=0)
    observations = synthetic_observations(3, 2, SMALL.image_size)
    config = row_config(EngineConfig(), "ar+dyq")
    assert config.dyq and config.mode == "ar"
    with pytest.raises(ValueError, match="dyq needs precision phased, int8, not built"):
        DecodeEngine(backend, None, config)
    backend.build_precisions(("int8", "phased"))
    fixed = replace(config, precision=DyqConfig(fixed="int8"))
    results = {
        "ar": _run(backend, EngineConfig(mode="ar"), observations),
        "ar+dyq": _run(backend, fixed, observations),
    }
    summary = summarise(results)
    assert summary["ar"]["precision_share"] == {"float32": 1.0}
    assert summary["ar+dyq"]["precision_share"] == {"int8": 1.0}
    kerv = row_config(EngineConfig(kerv=KervConfig()), "kerv_no_comp+dyq")
    assert kerv.dyq and kerv.mode == "kerv" and not kerv.kerv.compensation


def test_engines_sharing_a_backend_each_run_at_their_own_precision():
    """bench and eval interleave rows over one backend: a dyq row must not leave its
    precision to the next row's step."""
    plain = DefaultVLA.random(SMALL, seed=4)
    shared = DefaultVLA.random(SMALL, seed=4)
    shared.build_precisions(("int8_bf16",))
    observations = synthetic_observations(3, 8, SMALL.image_size)
    low = EngineConfig(mode="ar", dyq=True, precision=DyqConfig(fixed="int8_bf16"))
    reference = DecodeEngine(plain, None, EngineConfig(mode="ar"))
    ar, dyq = DecodeEngine(shared, None, EngineConfig(mode="ar")), DecodeEngine(shared, None, low)
    for o in observations:
        assert dyq.step(o).precision == "int8_bf16"
        assert shared.precisions.current == "int8_bf16"
        assert _same(ar.step(o), reference.step(o))
        assert shared.precisions.current == "float32"  # the ar row ran at full precision
