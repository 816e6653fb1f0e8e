"""The native OpenVLA backend computes what OpenVLA's own code computes, and every mode runs on it.

``test/data/openvla_tiny`` holds a small checkpoint in openvla-7b's published layout and, for 30
observations, what OpenVLA's ``predict_action(do_sample=False)`` returned (its README says how).
In float32 the backend must give the same prompt ids, the same 7 tokens, bitwise the same actions
and action logits within 1e-4 (tanh GELU or a wrong LayerNorm eps show only there). In bfloat16
(where greedy ties reorder) every mode must run and the lossless modes must agree with ``ar``.
"""

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from kerv_ros.config import DyqConfig, EngineConfig, HeisdConfig, KervConfig, ModelConfig
from kerv_ros.decoding.engine import DecodeEngine, TokenSource
from kerv_ros.loading import ModelLoadError, load_models, load_policy
from kerv_ros.policy.backend import Observation
from kerv_ros.policy.openvla import OpenVLABackend
from kerv_ros.policy.prismatic import CheckpointError
from kerv_ros.retrieval import Datastore

DATA = Path(__file__).parent / "data" / "openvla_tiny"
CHECKPOINT = DATA / "checkpoint"
EXPECTED = json.loads((DATA / "expected.json").read_text())["observations"]
IMAGES = np.load(DATA / "observations" / "images.npz")
EXACT_KERV = KervConfig(dynamic_threshold=False, compensation=False)


@pytest.fixture(scope="module")
def backends():
    return {
        key: OpenVLABackend.load(CHECKPOINT, unnorm_key=key, dtype=torch.float32)
        for key in ("bridge_orig", "fractal20220817_data")
    }


def _observation(expected: dict) -> Observation:
    return Observation(IMAGES[expected["image"]], expected["instruction"])


def test_reproduces_openvla_tokens_actions_and_logits(backends):
    logits = np.load(DATA / "expected_action_logits.npz")["action_logits"]
    ids = tokens = actions = 0
    worst = 0.0
    for i, expected in enumerate(EXPECTED):
        backend = backends[expected["unnorm_key"]]
        ids += backend.prompt_ids(expected["instruction"]) == expected["input_ids"]
        engine = DecodeEngine(backend, None, EngineConfig(mode="ar"))
        result = engine.step(_observation(expected))
        tokens += result.tokens == expected["generated_token_ids"]
        actions += np.array_equal(result.raw_action, np.array(expected["actions"]))
        # The logits of each of the 7 greedy steps, recomputed through the backend contract.
        state = backend.prefill(_observation(expected))
        steps = [state.action_logits]
        for token in result.tokens[:-1]:
            steps.append(backend.forward_tree(state, [token], [-1]).action_logits[0])
            backend.keep_path(state, [0])
        worst = max(worst, float(np.abs(torch.stack(steps).numpy() - logits[i]).max()))
    print(
        f"ids equal {ids}/30, tokens equal {tokens}/30, actions equal {actions}/30, "
        f"max action-logit difference {worst:.2e}"
    )
    assert (ids, tokens, actions) == (30, 30, 30)
    assert worst < 1e-4


def test_empty_instruction_is_decoded_as_openvla_does(backends):
    expected = next(e for e in EXPECTED if e["instruction"] == "")
    result = DecodeEngine(backends["bridge_orig"], None, EngineConfig(mode="ar")).step(
        _observation(expected)
    )
    assert result.tokens == expected["generated_token_ids"]


def test_nothing_from_the_checkpoint_directory_runs(tmp_path):
    """A .py file beside the weights (as OpenVLA ships them) is never imported."""
    checkpoint = tmp_path / "ckpt"
    shutil.copytree(CHECKPOINT, checkpoint)
    marker = tmp_path / "imported"
    for name in ("modeling_prismatic.py", "configuration_prismatic.py", "processing_prismatic.py"):
        (checkpoint / name).write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    load_policy(str(checkpoint), unnorm_key="bridge_orig")
    assert not marker.exists()


def _mutated(tmp_path, change) -> Path:
    checkpoint = tmp_path / "ckpt"
    shutil.copytree(CHECKPOINT, checkpoint)
    tensors = load_file(str(checkpoint / "model.safetensors"))
    change(tensors)
    save_file(tensors, str(checkpoint / "model.safetensors"))
    return checkpoint


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda t: t.pop("projector.fc2.weight"), "projector.fc2.weight"),
        (lambda t: t.update(extra=torch.zeros(3)), "extra"),
        (
            lambda t: t.update({"projector.fc3.bias": torch.zeros(5)}),
            r"projector.*fc3.bias.*\(5,\)",
        ),
        (
            lambda t: t.pop("vision_backbone.featurizer.blocks.0.ls1.scale_factor"),
            "featurizer.blocks.0.ls1.scale_factor",
        ),
    ],
    ids=["missing", "unexpected", "mis-shaped", "missing-layerscale"],
)
def test_a_tensor_that_does_not_fit_is_named(tmp_path, change, message):
    checkpoint = _mutated(tmp_path, change)
    with pytest.raises(CheckpointError, match=message):
        OpenVLABackend.load(checkpoint, unnorm_key="bridge_orig")
    # Through the loader every entry point uses: one line naming the model, never a traceback.
    with pytest.raises(ModelLoadError, match=f"cannot load model {checkpoint}") as err:
        load_models(ModelConfig(model=str(checkpoint), unnorm_key="bridge_orig"))
    assert "\n" not in str(err.value)


def test_unknown_backbone_is_refused_and_names_the_way_out(tmp_path):
    checkpoint = tmp_path / "ckpt"
    shutil.copytree(CHECKPOINT, checkpoint)
    config = json.loads((checkpoint / "config.json").read_text())
    config["vision_backbone_id"] = "clip-vit-l-336px"
    (checkpoint / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"clip-vit-l-336px.*dinosiglip-vit-so-224px"):
        OpenVLABackend.load(checkpoint, unnorm_key="bridge_orig")


def test_reduced_towers_take_their_sizes_from_the_weights(backends):
    towers = backends["bridge_orig"].model.towers
    assert [(t.sizes.depth, t.sizes.width, t.sizes.mlp_hidden) for t in towers] == [
        (3, 64, 256),
        (3, 48, 179),
    ]
    assert backends["bridge_orig"].text_config.rms_norm_eps == 1e-6


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_requested_dtype_is_the_whole_models_and_the_drafters(dtype):
    backend, drafter = load_policy(str(CHECKPOINT), unnorm_key="bridge_orig", dtype=dtype)
    want = getattr(torch, dtype)
    assert {p.dtype for p in backend.parameters()} == {want}
    assert {p.dtype for p in drafter.parameters()} == {want}
    rope = backend.language_model.rotary_emb.inv_freq
    assert rope.dtype == torch.float32  # as transformers keeps it


def _fixture_store(backend, engine, observations):
    """A datastore of the model's own greedy steps on the fixture images, several episodes."""
    actions = [backend.norm_stats.unnormalize(engine.step(o).action) for o in observations]
    episodes = [np.array(actions[i:] + actions[:i]) for i in range(len(actions))]
    return Datastore.from_episodes(episodes, backend.norm_stats)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_every_mode_runs_and_the_lossless_settings_reproduce_ar(dtype):
    backend, drafter = load_policy(str(CHECKPOINT), unnorm_key="bridge_orig", dtype=dtype)
    observations = [_observation(e) for e in EXPECTED[:4]]
    ar_engine = DecodeEngine(backend, None, EngineConfig(mode="ar"))
    ar = [ar_engine.step(o).tokens for o in observations]
    store = _fixture_store(
        backend, DecodeEngine(backend, None, EngineConfig(mode="ar")), observations
    )
    exact_heisd = replace(HeisdConfig(), verify_skip=False, sequence_threshold=0.0)
    for mode in ("spec", "spec_relaxed", "kerv", "heisd", "hybrid"):
        lossless = EngineConfig(mode=mode, relaxed_threshold=0, kerv=EXACT_KERV, heisd=exact_heisd)
        engine = DecodeEngine(backend, drafter, lossless, datastore=store)
        results = [engine.step(o) for o in observations]
        assert [r.tokens for r in results] == ar, mode
        if mode in ("heisd", "hybrid"):
            assert TokenSource.RETRIEVAL in {s for r in results for s in r.sources}, mode
        # The mode's own defaults run too (relaxed, compensating, skipping), on any dtype.
        engine = DecodeEngine(backend, drafter, EngineConfig(mode=mode), datastore=store)
        for o in observations:
            result = engine.step(o)
            assert len(result.tokens) == 7 and np.all(np.isfinite(result.raw_action))


def test_precision_variants_switch_the_whole_openvla_model_and_full_stays_its_own():
    """dyq on an OpenVLA checkpoint: the variants build through the loader, cover the vision
    towers, projector and language model, run, and full precision is the model's own."""
    options = ModelConfig(model=str(CHECKPOINT), unnorm_key="bridge_orig")
    variants = ("bfloat16", "int8", "int8_bf16", "int4_bf16")
    plain = load_models(options)
    loaded = load_models(replace(options, dyq_precisions=",".join(variants)))
    precisions = loaded.backend.precisions
    assert precisions.names == ("float32", *variants)
    switched = {id(m) for m in precisions._layers}
    owners = {n.split(".")[0] for n, m in loaded.backend.model.named_modules() if id(m) in switched}
    assert owners == {"towers", "projector", "language_model"}
    memory = precisions.memory()
    assert memory["int8"] < 0.4 * memory["float32"] and memory["int4_bf16"] < memory["int8"]
    expected = [e for e in EXPECTED if e["unnorm_key"] == "bridge_orig"][:6]
    observations = [_observation(e) for e in expected]
    assert [e["generated_token_ids"] for e in expected] == [
        DecodeEngine(loaded.backend, None, EngineConfig(mode="ar")).step(o).tokens
        for o in observations
    ]
    store = _fixture_store(
        plain.backend, DecodeEngine(plain.backend, None, EngineConfig(mode="ar")), observations
    )
    held_full = DyqConfig(fixed="float32")
    for config in (EngineConfig(), EngineConfig(dyq=True, precision=held_full)):  # hybrid
        reference = DecodeEngine(plain.backend, plain.drafter, EngineConfig(), datastore=store)
        engine = DecodeEngine(loaded.backend, plain.drafter, config, datastore=store)
        for o in observations:
            a, b = reference.step(o), engine.step(o)
            assert a.tokens == b.tokens and a.target_forwards == b.target_forwards
    # The fixture's weights are random (greedy ties reorder under any rounding), so nearness
    # is judged on the first action logits against their range: half of it for int4's 16 levels.
    full = [loaded.backend.prefill(o).action_logits for o in observations]
    spread = max((f.max() - f.min()).item() for f in full)
    for name in variants:
        config = EngineConfig(mode="ar", dyq=True, precision=DyqConfig(fixed=name))
        engine = DecodeEngine(loaded.backend, None, config)
        assert {engine.step(o).precision for o in observations} == {name}
        logits = [loaded.backend.prefill(o).action_logits for o in observations]  # still at name
        worst = max((a - b).abs().max().item() for a, b in zip(logits, full, strict=True))
        assert 0 < worst < (0.5 if name == "int4_bf16" else 0.1) * spread, name
