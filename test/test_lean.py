"""The lean verifier path computes what transformers' forward computes, and every mode agrees.

Lean is the default; the transformers path stays selectable. In float32 the two must give
logits within 1e-5 (prefill, a one-token decode, a chain and a tree after a kept path) and the
same tokens in every mode at the lossless settings, on random default-architecture models, the
shipped default model and the OpenVLA fixture. Compiled, the lean path must agree as well and
never compile inside a step once warmed up.
"""

import logging
from pathlib import Path

import pytest
import torch
from models import SMALL

from kerv_ros.bench import synthetic_observations
from kerv_ros.config import EngineConfig, HeisdConfig, KervConfig, ModelConfig
from kerv_ros.decoding.engine import DecodeEngine
from kerv_ros.loading import load_models, load_policy
from kerv_ros.policy.hf_backend import HFDecoderBackend
from kerv_ros.policy.lean import LeanCache, LeanLlama
from kerv_ros.policy.openvla import OpenVLABackend
from kerv_ros.policy.vla import DefaultVLA
from kerv_ros.retrieval import Datastore
from kerv_ros.sim.collect import expert_observations

CHECKPOINT = Path(__file__).parent / "data" / "openvla_tiny" / "checkpoint"
EXACT_KERV = KervConfig(dynamic_threshold=False, compensation=False)
EXACT_HEISD = HeisdConfig(verify_skip=False, sequence_threshold=0.0)
LOSSLESS = [
    EngineConfig(mode="ar"),
    EngineConfig(mode="spec"),
    EngineConfig(mode="spec_relaxed", relaxed_threshold=0),
    EngineConfig(mode="kerv", relaxed_threshold=0, kerv=EXACT_KERV),
    EngineConfig(mode="heisd", relaxed_threshold=0, kerv=EXACT_KERV, heisd=EXACT_HEISD),
    EngineConfig(mode="hybrid", relaxed_threshold=0, kerv=EXACT_KERV, heisd=EXACT_HEISD),
]


def _backend(name: str) -> tuple[HFDecoderBackend, object, list]:
    """A backend, its drafter and observations it reads."""
    if name.startswith("small"):
        backend = DefaultVLA.random(SMALL, seed=int(name[-1]))
        observations = synthetic_observations(3, 5, SMALL.image_size)
        return backend, None, observations
    if name == "openvla":
        backend, drafter = load_policy(str(CHECKPOINT), unnorm_key="bridge_orig")
        return backend, drafter, expert_observations(3, 3, 224)
    backend, drafter = load_policy("default")
    return backend, drafter, expert_observations(3, 1, backend.image_size)


@pytest.fixture(scope="module", params=["small0", "small1", "default", "openvla"])
def model(request):
    return _backend(request.param)


def _forwards(backend: HFDecoderBackend, observation, path: str) -> list[torch.Tensor]:
    """Logits and hidden states of a prefill, a decode, a tree, then a chain after a kept path."""
    backend.set_verifier_path(path)
    first = backend.action_tokenizer.first_token
    state = backend.prefill(observation)
    out = [state.action_logits, state.prefix_hidden]
    decode = backend.forward_tree(state, [first + 3], [-1])
    backend.keep_path(state, [0])
    tree = backend.forward_tree(
        state, [first + 9, first + 4, first + 200, first + 1], [-1, 0, 0, 2]
    )
    backend.keep_path(state, [0, 2, 3])  # a path that is not the first nodes: moved in place
    chain = backend.forward_tree(state, [first + 7, first + 8, first + 9], [-1, 0, 1])
    out += [decode.action_logits, tree.action_logits, tree.hidden, chain.action_logits]
    assert state.length == len(out[1]) + 4
    return out


def test_lean_forwards_match_transformers_within_1e5(model):
    backend, _, observations = model
    assert backend.verifier_path == "lean"  # the default where it can run
    for observation in observations:
        reference = _forwards(backend, observation, "transformers")
        lean = _forwards(backend, observation, "lean")
        for want, got in zip(reference, lean, strict=True):
            assert got.shape == want.shape
            assert (got - want).abs().max().item() <= 1e-5
    backend.set_verifier_path("lean")


def _datastore(backend, observations) -> Datastore:
    """Episodes of the model's own greedy actions: retrieval drafts that are often right."""
    ar = DecodeEngine(backend, None, EngineConfig(mode="ar"))
    actions = [backend.norm_stats.unnormalize(ar.step(o).action) for o in observations]
    return Datastore.from_episodes([actions * 3, actions[::-1] * 3], backend.norm_stats)


def _tokens(backend, drafter, store, observations, config, path: str) -> list[list[int]]:
    backend.set_verifier_path(path)
    engine = DecodeEngine(backend, drafter, config, datastore=store)
    return [engine.step(o).tokens for _ in range(2) for o in observations]


def test_every_mode_gives_the_same_tokens_on_both_paths(model):
    backend, drafter, observations = model
    if drafter is None:
        from kerv_ros.decoding.drafter import EagleConfig, EagleDrafter

        drafter = EagleDrafter(EagleConfig.for_target(backend.text_config)).eval()
    store = _datastore(backend, observations)
    reference = _tokens(backend, drafter, store, observations, LOSSLESS[0], "transformers")
    for config in LOSSLESS:
        lean = _tokens(backend, drafter, store, observations, config, "lean")
        assert lean == reference, config.mode
    backend.set_verifier_path("lean")


def test_the_cache_grows_for_a_tree_larger_than_its_room():
    backend, _, observations = _backend("small0")
    first = backend.action_tokenizer.first_token
    results = {}
    for path in ("transformers", "lean"):
        backend.set_verifier_path(path)
        state = backend.prefill(observations[0])
        parents = [-1, *range(150)]  # a 151-deep chain: past the 64 reserved positions
        tokens = [first + (7 * i) % 256 for i in range(151)]
        results[path] = backend.forward_tree(state, tokens, parents).action_logits
        if path == "lean":
            assert isinstance(state.cache, LeanCache)
            assert state.cache.capacity >= state.length + 151
    assert (results["lean"] - results["transformers"]).abs().max().item() <= 1e-5


def test_the_transformers_path_stays_selectable_from_the_model_options():
    loaded = load_models(ModelConfig(model="random", verifier="transformers", dyq_precisions=""))
    assert loaded.backend.verifier_path == "transformers"
    state = loaded.backend.prefill(synthetic_observations(1, 0, 128)[0])
    assert not isinstance(state.cache, LeanCache)
    loaded = load_models(ModelConfig(model="random", dyq_precisions=""))
    assert loaded.backend.verifier_path == "lean"
    assert isinstance(loaded.backend.prefill(synthetic_observations(1, 0, 128)[0]).cache, LeanCache)


def test_a_language_model_the_lean_path_cannot_run_stays_on_transformers(caplog):
    backend = DefaultVLA.random(SMALL, seed=0)
    layer = backend.language_model.layers[0]
    del layer.self_attn.q_proj  # no longer Llama's layout
    with pytest.raises(TypeError, match="not a Llama decoder layer"):
        LeanLlama(backend.language_model)
    backend._lean = None
    backend.verifier_path = "transformers"
    with caplog.at_level(logging.WARNING):
        backend._init_verifier()
    assert backend.verifier_path == "transformers"
    assert "lean verifier cannot run" in caplog.text


def test_a_bad_path_name_is_refused_with_the_choices():
    backend = DefaultVLA.random(SMALL, seed=0)
    with pytest.raises(ValueError, match="lean, transformers"):
        backend.set_verifier_path("fast")


def test_openvla_fixture_loads_on_the_lean_path():
    backend = OpenVLABackend.load(CHECKPOINT, unnorm_key="bridge_orig")
    assert backend.verifier_path == "lean"


def test_precision_variants_run_on_the_lean_path_and_full_is_bit_identical():
    backend = DefaultVLA.random(SMALL, seed=3)
    observations = synthetic_observations(2, 8, SMALL.image_size)
    before = [_forwards(backend, o, "lean") for o in observations]
    precisions = backend.build_precisions(("int8", "int8_bf16"))
    after = [_forwards(backend, o, "lean") for o in observations]
    for want, got in zip(before, after, strict=True):
        assert all(torch.equal(a, b) for a, b in zip(want, got, strict=True))
    precisions.set("int8_bf16")
    low = _forwards(backend, observations[0], "lean")
    assert not torch.equal(low[0], before[0][0])  # the switch reaches the lean forward
    precisions.set(precisions.full)


def test_compiled_lean_path_agrees_and_never_compiles_inside_a_step(monkeypatch):
    from torch._dynamo.utils import counters
    from torch._inductor import config as inductor

    monkeypatch.setattr(inductor, "compile_threads", 1)  # no worker pool left in this process
    backend = DefaultVLA.random(SMALL, seed=4)
    observations = synthetic_observations(3, 6, SMALL.image_size)
    reference = [_forwards(backend, o, "transformers") for o in observations]
    backend.set_verifier_path("lean")
    seconds = backend.compile_verifier(max_nodes=4, instruction=observations[0].instruction)
    assert seconds > 0 and backend.compile_s == seconds and backend.buckets == (1, 4)
    graphs = counters["stats"]["unique_graphs"]
    for want, observation in zip(reference, observations, strict=True):
        got = _forwards(backend, observation, "lean")  # prefill, 1, 4 and 3 nodes: all bucketed
        for a, b in zip(want, got, strict=True):
            assert (a - b).abs().max().item() <= 1e-5
    # A tree larger than the largest bucket runs eagerly, still right, and compiles nothing.
    state = backend.prefill(observations[1])
    first = backend.action_tokenizer.first_token
    wide = backend.forward_tree(state, [first + 1] * 9, [-1, *range(8)]).action_logits
    backend.set_verifier_path("transformers")
    state = backend.prefill(observations[1])
    expected = backend.forward_tree(state, [first + 1] * 9, [-1, *range(8)]).action_logits
    assert (wide - expected).abs().max().item() <= 1e-5
    assert counters["stats"]["unique_graphs"] == graphs
    backend.set_verifier_path("lean")


def test_bench_rows_name_their_verifier_path_and_ratios_cover_both_baselines(monkeypatch):
    from kerv_ros.bench import row_config, row_path, run_rows, summarise

    backend = DefaultVLA.random(SMALL, seed=5)
    observations = synthetic_observations(3, 7, SMALL.image_size)
    assert row_path("ar@transformers") == "transformers" and row_path("hybrid+dyq") is None
    assert row_config(EngineConfig(), "spec@transformers").mode == "spec"
    with pytest.raises(ValueError, match="lean, transformers"):
        row_path("ar@fast")
    seen = []
    step = DecodeEngine.step

    def spy(engine, observation):
        seen.append((engine.config.mode, backend.verifier_path))
        return step(engine, observation)

    rows = {"ar": EngineConfig(mode="ar"), "ar@transformers": EngineConfig(mode="ar")}
    monkeypatch.setattr(DecodeEngine, "step", spy)
    results = run_rows(backend, None, rows, observations, warmup=0, progress=False)
    assert seen[:2] == [("ar", "lean"), ("ar", "transformers")]
    assert backend.verifier_path == "lean"  # put back after the run
    assert [r.tokens for r in results["ar"]] == [r.tokens for r in results["ar@transformers"]]
    summary = summarise(results)
    assert summary["ar"]["speedup_vs_ar_transformers_step"] > 0
    assert summary["ar@transformers"]["speedup_vs_ar_transformers_step"] == 1.0
