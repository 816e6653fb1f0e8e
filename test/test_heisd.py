"""Modes ``heisd`` and ``hybrid``: retrieval drafts, the boundary, verify-skip, exactness."""

from dataclasses import replace

import numpy as np
import pytest
from drafters import ScriptedDrafter
from models import random_model_with_ar

from kerv_ros.config import EngineConfig, HeisdConfig, KervConfig
from kerv_ros.decoding.drafter import EagleConfig, EagleDrafter
from kerv_ros.decoding.engine import DecodeEngine, TokenSource
from kerv_ros.retrieval import Datastore

CALM = HeisdConfig(w_speed=0.0, w_accel=0.0, w_innovation=0.0, w_neighbour=0.0, w_gripper=0.0)
"""A metric of 0 everywhere: every step counts as familiar motion (the boundary is tested
on its own below)."""
EXACT_KERV = KervConfig(dynamic_threshold=False, compensation=False)


@pytest.fixture(scope="module", params=[("small", 0), ("small", 1), ("default", 2)])
def model(request):
    size, seed = request.param
    backend, observations, ar = random_model_with_ar(size, seed, 3, 20 + seed)
    return backend, observations, [r.tokens for r in ar], [r.action for r in ar]


def _raw(backend, action):
    return backend.norm_stats.unnormalize(action)


def _oracle_store(backend, actions, repeats=10, copies=1, noise_bins=0, seed=0):
    """Episodes that repeat each ``ar`` action (optionally a few bins off, to mislead)."""
    rng = np.random.default_rng(seed)
    episodes = []
    for action in actions:
        for _ in range(copies):
            shift = rng.integers(-noise_bins, noise_bins + 1, size=7) * (2.0 / 255)
            episodes.append(np.array([_raw(backend, np.clip(action + shift, -1, 1))] * repeats))
    return Datastore.from_episodes(episodes, backend.norm_stats)


@pytest.mark.parametrize("mode", ["heisd", "hybrid"])
@pytest.mark.parametrize("acceptance", ["sequence", "token"])
@pytest.mark.parametrize("use_boundary", [True, False])
def test_thresholds_zero_no_skip_no_compensation_is_ar(model, mode, acceptance, use_boundary):
    backend, observations, ar_tokens, ar_actions = model
    store = _oracle_store(backend, ar_actions, copies=3, noise_bins=3)
    heisd = replace(
        CALM,
        use_boundary=use_boundary,
        boundary=0.0 if use_boundary else 2.0,
        verify_skip=False,
        acceptance=acceptance,
        sequence_threshold=0.0,
    )
    config = EngineConfig(mode=mode, relaxed_threshold=0, kerv=EXACT_KERV, heisd=heisd)
    drafter = EagleDrafter(EagleConfig.for_target(backend.text_config)).eval()
    engine = DecodeEngine(backend, drafter, config, datastore=store)
    sources = set()
    for _ in range(3):  # the context moves on with each executed step
        for observation, expected in zip(observations, ar_tokens, strict=True):
            result = engine.step(observation)
            assert result.tokens == expected
            sources |= set(result.sources)
    assert TokenSource.RETRIEVAL in sources  # retrieval did draft (and was checked)


def test_exact_retrieval_needs_one_verify(model):
    backend, observations, ar_tokens, ar_actions = model
    store = _oracle_store(backend, ar_actions[:1])
    config = EngineConfig(mode="heisd", heisd=replace(CALM, verify_skip=False))
    engine = DecodeEngine(
        backend, ScriptedDrafter("adversarial", lambda: ar_tokens[0]), config, datastore=store
    )
    result = engine.step(observations[0])
    assert result.tokens == ar_tokens[0]
    assert result.target_forwards == 2 and result.draft_forwards == 0
    assert result.sources == [TokenSource.VERIFIER] + [TokenSource.RETRIEVAL] * 6


def test_verify_skip_takes_a_unanimous_familiar_step_without_the_verifier(model):
    backend, observations, ar_tokens, ar_actions = model
    store = _oracle_store(backend, ar_actions[:1], copies=10)
    config = EngineConfig(mode="heisd", heisd=replace(CALM, max_skipped_run=1))
    drafter = ScriptedDrafter("adversarial", lambda: ar_tokens[0])
    engine = DecodeEngine(backend, drafter, config, datastore=store)
    results = [engine.step(observations[0]) for _ in range(5)]
    # Skipped, verified (the audit: retrieval held), skipped, ...: never two in a row.
    assert [r.verify_skipped for r in results] == [True, False, True, False, True]
    for r in results:
        assert r.tokens == ar_tokens[0]
        assert r.target_forwards == (1 if r.verify_skipped else 2)
    assert results[0].sources[1:] == [TokenSource.RETRIEVAL] * 6


def test_a_failed_audit_stops_skipping_for_the_cooldown(model):
    backend, observations, ar_tokens, ar_actions = model
    # Unanimous but wrong in the last dims (5 bins off): skipped once, then caught.
    wrong = ar_actions[0].copy()
    wrong[4:] = np.clip(wrong[4:] + 5 * 2.0 / 255, -1, 1)
    store = _oracle_store(backend, [wrong], copies=10)
    heisd = replace(CALM, skip_cooldown=3, sequence_threshold=0.0, prefix_tolerance=0)
    config = EngineConfig(mode="heisd", heisd=heisd)
    drafter = ScriptedDrafter("adversarial", lambda: ar_tokens[0])
    engine = DecodeEngine(backend, drafter, config, datastore=store)
    skipped = [engine.step(observations[0]).verify_skipped for _ in range(6)]
    assert skipped == [True, False, False, False, False, True]


def test_boundary_sends_unfamiliar_motion_to_the_drafter(model):
    backend, observations, ar_tokens, ar_actions = model
    store = _oracle_store(backend, ar_actions[:1])
    drafter = ScriptedDrafter("oracle", lambda: ar_tokens[0])
    heisd = replace(CALM, verify_skip=False, w_gripper=1.0, boundary=0.5)

    def first_sources(config_heisd):
        config = EngineConfig(mode="heisd", heisd=config_heisd)
        engine = DecodeEngine(backend, drafter, config, datastore=store)
        result = engine.step(observations[0])
        return set(result.sources[1:]), result.metric

    sources, metric = first_sources(heisd)
    assert sources == {TokenSource.RETRIEVAL} and metric == 0.0
    # The neighbours' context distance weighted up: the metric crosses the boundary and the
    # drafter drafts.
    sources, metric = first_sources(replace(heisd, w_neighbour=100.0))
    assert metric > 0.5 and sources == {TokenSource.DRAFTER}
    # The same with the boundary off: retrieval regardless.
    sources, _ = first_sources(replace(heisd, w_neighbour=100.0, use_boundary=False))
    assert sources == {TokenSource.RETRIEVAL}


def test_heisd_without_a_datastore_is_refused_and_hybrid_drafts_alone(model):
    backend, observations, ar_tokens, _ = model
    drafter = ScriptedDrafter("oracle", lambda: ar_tokens[0])
    with pytest.raises(ValueError, match="needs a retrieval datastore"):
        DecodeEngine(backend, drafter, EngineConfig(mode="heisd"))
    engine = DecodeEngine(backend, drafter, EngineConfig(mode="hybrid", kerv=EXACT_KERV))
    result = engine.step(observations[0])
    assert set(result.sources[1:]) == {TokenSource.DRAFTER}


def test_datastore_of_another_normalisation_is_refused(model):
    from kerv_ros.actions import NormStats

    backend, _, _, _ar_actions = model
    other = NormStats(q01=-np.full(7, 5.0), q99=np.full(7, 5.0), mask=np.ones(7, dtype=bool))
    store = Datastore.from_episodes([np.zeros((3, 7))], other)
    with pytest.raises(ValueError, match="other normalisation statistics"):
        DecodeEngine(backend, None, EngineConfig(mode="ar"), datastore=store)


def test_radius_of_curvature_and_heisds_score():
    from kerv_ros.boundary import curvature_score, radius_of_curvature

    t = np.linspace(0.0, 1.5, 15)
    arc = np.c_[0.2 * np.cos(t), 0.2 * np.sin(t), np.full(15, 0.1)] @ np.array(
        [[1, 0, 0], [0, 0.6, 0.8], [0, -0.8, 0.6]]
    ) + [1.0, 2.0, 3.0]  # a tilted circle of radius 0.2, anywhere
    assert radius_of_curvature(arc) == pytest.approx(0.2, rel=1e-3)
    line = np.c_[t, 2 * t, -t] * 0.02
    assert radius_of_curvature(line) == float("inf")
    assert radius_of_curvature(line[:2]) == float("inf")
    config = HeisdConfig(radius_ref=0.5, displacement_ref=0.3, curvature_alpha=0.5)
    fast_straight = np.c_[np.arange(15) * 0.03, np.zeros(15), np.zeros(15)]
    slow_tight = 0.01 * np.c_[np.cos(t * 3), np.sin(t * 3), np.zeros(15)]
    assert curvature_score(fast_straight, config) == pytest.approx(1.0)
    assert curvature_score(slow_tight, config) < 0.1


def test_the_curvature_rule_sends_straight_transit_to_retrieval_and_the_rest_to_the_drafter(
    model,
):
    backend, observations, ar_tokens, ar_actions = model
    store = _oracle_store(backend, ar_actions[:1])
    drafter = ScriptedDrafter("oracle", lambda: ar_tokens[0])
    # The fused metric would always choose retrieval here (CALM: M = 0 <= boundary).
    heisd = replace(CALM, verify_skip=False, boundary_rule="curvature")
    config = EngineConfig(mode="heisd", heisd=heisd)
    engine = DecodeEngine(backend, drafter, config, datastore=store)
    at_rest = engine.step(observations[0])  # no path yet: F = 0, the drafter drafts
    assert set(at_rest.sources[1:]) == {TokenSource.DRAFTER}
    raw = np.zeros(7)
    raw[0] = 0.05  # 5 cm a step along x: fast, straight (the trajectory began with that step)
    for _ in range(15):
        engine.motion.executed(backend.norm_stats.normalize(raw), compensated=False)
    transit = engine.step(observations[0])
    assert set(transit.sources[1:]) == {TokenSource.RETRIEVAL}
