"""With threshold 0, every speculative mode returns exactly the greedy ``ar`` tokens.

Checked over several random models, observations (images and instructions), chain and tree
drafts, and drafters that are good (oracle), untrained (random EAGLE head, random tokens) and
adversarial (never right).
"""

import pytest
from drafters import ScriptedDrafter
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from models import random_model_with_ar

from kerv_ros.config import DraftConfig, EngineConfig, KervConfig
from kerv_ros.decoding.drafter import EagleConfig, EagleDrafter
from kerv_ros.decoding.engine import DecodeEngine, TokenSource

EXACT_CONFIGS = [
    EngineConfig(mode="spec"),
    EngineConfig(mode="spec_relaxed", relaxed_threshold=0),
    EngineConfig(
        mode="kerv",
        relaxed_threshold=0,
        kerv=KervConfig(dynamic_threshold=False, compensation=False),
    ),
]
SHAPES = {
    "chain": DraftConfig(depth=6, top_k=1, node_budget=6),
    "tree": DraftConfig(depth=4, top_k=4, node_budget=24),
    "wide": DraftConfig(depth=6, top_k=8, node_budget=50),
}


@pytest.fixture(scope="module", params=[("small", 0), ("small", 1), ("default", 2)])
def model(request):
    size, seed = request.param
    backend, observations, ar = random_model_with_ar(size, seed, 4, 10 + seed)
    return backend, observations, [r.tokens for r in ar]


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("config", EXACT_CONFIGS, ids=lambda c: c.mode)
def test_eagle_drafter_is_lossless(model, shape, config):
    backend, observations, ar_tokens = model
    drafter = EagleDrafter(EagleConfig.for_target(backend.text_config), SHAPES[shape]).eval()
    engine = DecodeEngine(backend, drafter, config)
    for observation, expected in zip(observations, ar_tokens, strict=True):
        result = engine.step(observation)
        assert result.tokens == expected
        assert sum(result.accepted_lengths) == 6  # the first token comes with the prefill
        assert result.target_forwards == 1 + len(result.accepted_lengths)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    kind=st.sampled_from(["oracle", "adversarial", "random"]),
    siblings=st.integers(1, 4),
    depth=st.integers(1, 6),
    offset=st.integers(1, 40),
    obs_index=st.integers(0, 3),
    config=st.sampled_from(EXACT_CONFIGS),
    seed=st.integers(0, 1000),
)
def test_any_drafter_is_lossless(model, kind, siblings, depth, offset, obs_index, config, seed):
    backend, observations, ar_tokens = model
    drafter = ScriptedDrafter(
        kind, lambda: ar_tokens[obs_index], depth, siblings, offset=offset, seed=seed
    )
    result = DecodeEngine(backend, drafter, config).step(observations[obs_index])
    assert result.tokens == ar_tokens[obs_index]


def test_oracle_chain_needs_one_verify(model):
    backend, observations, ar_tokens = model
    drafter = ScriptedDrafter("oracle", lambda: ar_tokens[0], depth=6)
    result = DecodeEngine(backend, drafter, EngineConfig(mode="spec")).step(observations[0])
    assert result.tokens == ar_tokens[0]
    assert result.target_forwards == 2
    assert result.accepted_lengths == [6]
    assert result.sources == [TokenSource.VERIFIER] + [TokenSource.DRAFTER] * 6


def test_adversarial_drafter_costs_ar_forwards(model):
    backend, observations, ar_tokens = model
    drafter = ScriptedDrafter("adversarial", lambda: ar_tokens[1], depth=6, siblings=3)
    result = DecodeEngine(backend, drafter, EngineConfig(mode="spec")).step(observations[1])
    assert result.tokens == ar_tokens[1]
    assert result.target_forwards == 7
    assert result.accepted_lengths == [1] * 6
    assert result.sources == [TokenSource.VERIFIER] * 7


def test_relaxed_threshold_accepts_near_misses(model):
    backend, observations, ar_tokens = model
    drafter = ScriptedDrafter("adversarial", lambda: ar_tokens[2], depth=1, offset=2)
    exact = DecodeEngine(backend, drafter, EngineConfig(mode="spec_relaxed", relaxed_threshold=1))
    relaxed = DecodeEngine(backend, drafter, EngineConfig(mode="spec_relaxed", relaxed_threshold=2))
    # One draft level: the first drafted token is 2 bins off the verifier's.
    assert exact.step(observations[2]).sources[1] == TokenSource.VERIFIER
    result = relaxed.step(observations[2])
    assert result.sources[1] == TokenSource.DRAFTER
    assert abs(result.tokens[1] - ar_tokens[2][1]) == 2
    assert result.threshold == 2
