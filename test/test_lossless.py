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


@pytest.mark.parametrize(
    "change",
    [{"depth": 1}, {"top_k": 1}, {"node_budget": 2}],
    ids=["draft_depth", "draft_top_k", "draft_node_budget"],
)
def test_each_draft_setting_changes_the_next_step(model, change):
    """The engine's draft settings (the node's draft_* parameters) shape the very next tree."""
    from dataclasses import replace

    backend, observations, ar_tokens = model
    drafter = EagleDrafter(EagleConfig.for_target(backend.text_config)).eval()
    engine = DecodeEngine(backend, drafter, EngineConfig(mode="spec"))
    before, before_trees = _step_with_tree_sizes(engine, observations[0])
    base = engine.config
    engine.configure(replace(base, draft=replace(base.draft, **change)))
    after, after_trees = _step_with_tree_sizes(engine, observations[0])
    assert after.tokens == before.tokens == ar_tokens[0]
    if "depth" in change:  # one drafter forward per tree level: one per verify at depth 1
        assert after.draft_forwards == len(after.accepted_lengths) < before.draft_forwards
        assert max(after_trees) <= 1 + base.draft.top_k < max(before_trees)
    elif "top_k" in change:  # a chain of at most depth nodes below the root
        assert max(after_trees) <= 1 + base.draft.depth < max(before_trees)
    else:
        assert max(after_trees) <= 1 + 2 < max(before_trees)


def _step_with_tree_sizes(engine, observation):
    """One step, and the size of every tree the verifier ran over (root + draft nodes)."""
    sizes = []
    forward_tree = engine.backend.forward_tree

    def counting(state, tokens, parents):
        sizes.append(len(tokens))
        return forward_tree(state, tokens, parents)

    engine.backend.forward_tree = counting
    try:
        return engine.step(observation), sizes
    finally:
        del engine.backend.forward_tree
