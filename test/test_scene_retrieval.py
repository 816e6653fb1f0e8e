"""HeiSD's scene key: the datastore looked up by the policy's own feature of the observation.

A scene-keyed lookup must pick, among the same first-bin pool, the steps recorded in the most
similar scenes; the engine must draft from them (and stay exact at the lossless settings); the
file must keep the features; and features made by another model must not be used.
"""

import logging
from dataclasses import replace

import numpy as np
import pytest
from drafters import ScriptedDrafter
from models import SMALL, random_model_with_ar

from kerv_ros.actions import NormStats
from kerv_ros.config import EngineConfig, HeisdConfig, KervConfig
from kerv_ros.decoding.engine import DecodeEngine, TokenSource
from kerv_ros.policy.vla import DefaultVLA
from kerv_ros.retrieval import Datastore
from kerv_ros.scene import adopt_features, probe_feature, scene_feature

CALM = HeisdConfig(w_speed=0.0, w_accel=0.0, w_innovation=0.0, w_neighbour=0.0, w_gripper=0.0)
EXACT_KERV = KervConfig(dynamic_threshold=False, compensation=False)
IDENTITY = NormStats.identity()


def _two_scene_store(first_bin_action: float = 0.0) -> Datastore:
    """Two stored steps with the same first bin and context, continuing differently, in two
    scenes (features along x and along y)."""
    a = np.array([[first_bin_action, 0.5, 0.5, 0.5, 0.5, 0.5, 1.0]])
    b = np.array([[first_bin_action, -0.5, -0.5, -0.5, -0.5, -0.5, -1.0]])
    features = [np.array([[1.0, 0.0, 0.0]]), np.array([[0.0, 1.0, 0.0]])]
    return Datastore.from_episodes([a, b], IDENTITY, features=features, probe=np.ones(3))


def test_a_scene_lookup_ranks_the_pool_by_similarity_and_keeps_the_motion_distance():
    store = _two_scene_store()
    context = store.contexts[0]
    first = [int(store.bins[0, 0])]
    near_y = store.lookup(context, first, neighbours=1, scene=np.array([0.1, 0.9, 0.0]))
    near_x = store.lookup(context, first, neighbours=1, scene=np.array([2.0, 0.1, 0.0]))
    assert near_y.steps[0][1] < 128 < near_x.steps[0][1]  # y-scene stored -0.5, x-scene +0.5
    assert near_x.distance == pytest.approx(0.0, abs=1e-3)  # same context: motion distance 0
    with pytest.raises(ValueError, match="no scene features"):
        Datastore.from_episodes([np.zeros((2, 7))], IDENTITY).lookup(
            context, first, scene=np.ones(3)
        )


def test_features_survive_the_file_and_need_their_probe(tmp_path):
    store = _two_scene_store()
    store.save(tmp_path / "ds.safetensors")
    loaded = Datastore.load(tmp_path / "ds.safetensors")
    assert np.allclose(loaded.features, store.features, atol=1e-3)
    assert np.allclose(loaded.probe, store.probe)
    with pytest.raises(ValueError, match="probe"):
        Datastore.from_episodes([np.zeros((1, 7))], IDENTITY, features=[np.ones((1, 3))])


@pytest.fixture(scope="module")
def model():
    backend, observations, ar = random_model_with_ar("small", 7, 3, 30)
    return backend, observations, [r.tokens for r in ar], [r.action for r in ar]


def _scene_store(backend, observations, actions, swap: bool) -> Datastore:
    """One stored episode per observation, keyed by its real scene feature; ``swap`` files
    each observation's action under another observation's scene."""
    features = [scene_feature(backend, o)[None] for o in observations]
    if swap:
        actions = actions[1:] + actions[:1]
    episodes = [backend.norm_stats.unnormalize(a)[None] for a in actions]
    return Datastore.from_episodes(
        episodes, backend.norm_stats, features=features, probe=probe_feature(backend)
    )


def test_the_engine_drafts_what_was_done_in_the_most_similar_scene(model):
    backend, observations, ar_tokens, ar_actions = model
    store = _scene_store(backend, observations, ar_actions, swap=False)
    heisd = replace(
        CALM, verify_skip=False, retrieval_key="scene", neighbours=1, prefix_tolerance=255
    )
    config = EngineConfig(mode="heisd", heisd=heisd)
    drafter = ScriptedDrafter("adversarial", lambda: ar_tokens[0])
    engine = DecodeEngine(backend, drafter, config, datastore=store)
    for observation, expected in zip(observations, ar_tokens, strict=True):
        result = engine.step(observation)
        assert result.tokens == expected
        # The scene's own greedy step was retrieved: all six drafted tokens held.
        assert result.target_forwards == 2
        assert result.sources[1:] == [TokenSource.RETRIEVAL] * 6


def test_scene_keyed_modes_stay_exact_at_the_lossless_settings(model):
    backend, observations, ar_tokens, ar_actions = model
    store = _scene_store(backend, observations, ar_actions, swap=True)  # misleading drafts
    heisd = replace(CALM, verify_skip=False, retrieval_key="scene", sequence_threshold=0.0)
    for mode in ("heisd", "hybrid"):
        config = EngineConfig(mode=mode, relaxed_threshold=0, kerv=EXACT_KERV, heisd=heisd)
        drafter = ScriptedDrafter("random", lambda: ar_tokens[0], seed=3)
        engine = DecodeEngine(backend, drafter, config, datastore=store)
        assert [engine.step(o).tokens for o in observations] == ar_tokens


def test_scene_key_is_refused_without_features_and_another_models_are_dropped(model, caplog):
    backend, observations, _, ar_actions = model
    plain = Datastore.from_episodes([np.zeros((2, 7))], backend.norm_stats)
    config = EngineConfig(mode="heisd", heisd=replace(CALM, retrieval_key="scene"))
    with pytest.raises(ValueError, match="scene features"):
        DecodeEngine(backend, None, config, datastore=plain)
    store = _scene_store(backend, observations, ar_actions, swap=False)
    adopt_features(store, backend)  # its own model: kept
    assert store.features is not None
    other = DefaultVLA.random(SMALL, seed=99)
    with caplog.at_level(logging.WARNING):
        adopt_features(store, other)
    assert store.features is None and "another model" in caplog.text


def test_similar_scenes_skip_the_verifier_by_heisds_rule(model):
    backend, observations, ar_tokens, ar_actions = model
    feature = scene_feature(backend, observations[0])
    # Each stored step came after another motion than the engine's first step (at rest), so
    # the neighbours' motion distance, and with it the metric, is far from 0.
    before = backend.norm_stats.unnormalize(np.clip(0.9 - ar_actions[0], -1, 1))
    raw = np.stack([before, backend.norm_stats.unnormalize(ar_actions[0])])
    store = Datastore.from_episodes(
        [raw] * 10,
        backend.norm_stats,
        features=[np.stack([feature, feature])] * 10,
        probe=probe_feature(backend),
    )
    feature = feature[None]
    # The metric rule alone would never skip (skip boundary 0 and a large neighbour weight).
    heisd = replace(CALM, retrieval_key="scene", skip_boundary=0.0, w_neighbour=100.0)
    drafter = ScriptedDrafter("adversarial", lambda: ar_tokens[0])

    def skipped(similarity: float, observation) -> bool:
        config = EngineConfig(mode="heisd", heisd=replace(heisd, skip_similarity=similarity))
        return (
            DecodeEngine(backend, drafter, config, datastore=store).step(observation).verify_skipped
        )

    assert skipped(0.99, observations[0])  # its own scene: similarity 1
    assert not skipped(0.0, observations[0])  # 0: the metric decides
    others = [scene_feature(backend, o) for o in observations[1:]]
    unit = feature[0] / np.linalg.norm(feature[0])
    far = min(float(o @ unit / np.linalg.norm(o)) for o in others)
    index = 1 + int(np.argmin([float(o @ unit / np.linalg.norm(o)) for o in others]))
    assert not skipped(min(1.0, far + 1e-3), observations[index])


def test_skip_calibration_reports_reach_and_audit_pass_per_threshold(model):
    from kerv_ros.scene import skip_calibration

    backend, observations, ar_tokens, ar_actions = model
    right = _scene_store(backend, observations, ar_actions, swap=False)
    wrong = _scene_store(backend, observations, ar_actions, swap=True)
    heisd = replace(CALM, sequence_threshold=0.0, prefix_tolerance=255, neighbours=1)
    config = EngineConfig(mode="heisd", heisd=heisd)
    drafter = ScriptedDrafter("adversarial", lambda: ar_tokens[0])
    rows = {}
    for name, store in (("right", right), ("wrong", wrong)):
        engine = DecodeEngine(backend, drafter, config, datastore=store)
        rows[name] = skip_calibration(engine, [observations], (0.5, 0.9999), progress=False)
    # Each scene finds itself (similarity 1): every tick reaches both thresholds.
    assert [r["skip_share"] for r in rows["right"]] == [1.0, 1.0]
    assert [r["audit_pass"] for r in rows["right"]] == [1.0, 1.0]
    # Stored under the wrong scenes, the retrieved steps are other observations' steps.
    assert all(r["audit_pass"] < 1.0 for r in rows["wrong"])
