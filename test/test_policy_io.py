"""Loading and saving models; clear errors for bad inputs and broken checkpoints."""

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from models import TINY

from kerv_ros.actions import NormStats
from kerv_ros.bench import synthetic_observations
from kerv_ros.config import DraftConfig, EngineConfig, ModelConfig
from kerv_ros.decoding.drafter import EagleConfig, EagleDrafter
from kerv_ros.decoding.engine import DecodeEngine
from kerv_ros.loading import DRAFTER_FILE, ModelLoadError, load_models, load_policy
from kerv_ros.policy.backend import Observation
from kerv_ros.policy.openvla import OpenVLABackend, check_checkpoint
from kerv_ros.policy.vla import DefaultVLA


def test_default_vla_save_load_round_trip(tmp_path):
    stats = NormStats(q01=np.full(7, -0.1), q99=np.full(7, 0.2), mask=np.array([1] * 6 + [0]))
    backend = DefaultVLA.random(TINY, seed=4, norm_stats=stats)
    drafter = EagleDrafter(EagleConfig.for_target(backend.text_config), DraftConfig(depth=3))
    backend.save(tmp_path)
    drafter.save(tmp_path / DRAFTER_FILE)

    loaded, loaded_drafter = load_policy(str(tmp_path))
    np.testing.assert_allclose(loaded.norm_stats.q99, stats.q99)
    assert loaded_drafter.draft_config == DraftConfig(depth=3)
    observation = synthetic_observations(1, 0, TINY.image_size)[0]
    config = EngineConfig(mode="spec")
    before = DecodeEngine(backend, drafter, config).step(observation)
    after = DecodeEngine(loaded, loaded_drafter, config).step(observation)
    assert before.tokens == after.tokens
    assert before.draft_forwards == after.draft_forwards
    np.testing.assert_allclose(after.raw_action, stats.unnormalize(after.action))


def test_missing_model_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        DefaultVLA.load(tmp_path / "nope")
    DefaultVLA.random(TINY).save(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors missing"):
        DefaultVLA.load(tmp_path)


def test_bad_format_version_is_refused(tmp_path):
    DefaultVLA.random(TINY).save(tmp_path)
    meta = json.loads((tmp_path / "kerv_policy.json").read_text())
    meta["format_version"] = 99
    (tmp_path / "kerv_policy.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="format_version 99"):
        DefaultVLA.load(tmp_path)


@pytest.mark.parametrize(
    ("image", "instruction", "message"),
    [
        (np.zeros((32, 32), np.uint8), "go", "H x W x 3"),
        (np.zeros((32, 32, 4), np.uint8), "go", "H x W x 3"),
        (np.zeros((32, 32, 3), np.float32), "go", "uint8"),
        (np.zeros((4, 4, 3), np.uint8), "go", "too small"),
        (np.zeros((32, 32, 3), np.uint8), None, "must be a string"),
    ],
)
def test_bad_observations_are_refused(image, instruction, message):
    with pytest.raises(ValueError, match=message):
        Observation(image, instruction)


def test_any_image_size_is_resized():
    backend = DefaultVLA.random(TINY)
    big = synthetic_observations(1, 0, 96)[0]
    assert backend.pixel_values(big.image).shape == (1, 3, 32, 32)
    assert len(DecodeEngine(backend, None, EngineConfig(mode="ar")).step(big).tokens) == 7


def test_prompt_is_openvlas():
    backend = DefaultVLA.random(TINY)
    ids = backend.prompt_ids("Pick up the Red cube")
    text = backend.text_tokenizer.decode(ids[2 + TINY.image_tokens :])  # bos, image, state
    assert text == "In: What action should the robot take to pick up the red cube?\nOut:"


def write_openvla_like(directory, shards=("model-00001-of-00002.safetensors",)):
    directory.mkdir(exist_ok=True)
    stats = {"bridge_orig": {"action": {"q01": [0.0] * 7, "q99": [1.0] * 7}}}
    (directory / "config.json").write_text(
        json.dumps({"model_type": "openvla", "norm_stats": stats})
    )
    weight_map = {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}
    (directory / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    for shard in shards:
        (directory / shard).write_bytes(b"")
    (directory / "tokenizer.model").write_bytes(b"")


def test_openvla_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="directory not found"):
        OpenVLABackend.load(tmp_path / "openvla-7b")


def test_openvla_incomplete_download_names_the_shard(tmp_path):
    write_openvla_like(tmp_path / "ckpt")
    with pytest.raises(FileNotFoundError, match="model-00002-of-00002"):
        check_checkpoint(tmp_path / "ckpt")


def test_openvla_needs_config_tokenizer_preprocessor_and_statistics(tmp_path):
    (tmp_path / "ckpt").mkdir()
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        check_checkpoint(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        check_checkpoint(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "config.json").write_text("{}")
    (tmp_path / "ckpt" / "model.safetensors").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="tokenizer"):
        check_checkpoint(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "tokenizer.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="preprocessor_config"):
        check_checkpoint(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "preprocessor_config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="statistics"):
        check_checkpoint(tmp_path / "ckpt")


def test_a_directory_of_another_kind_is_one_line_naming_it(tmp_path):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text('{"model_type": "llava"}')
    with pytest.raises(ModelLoadError, match="neither a kerv_ros policy"):
        load_models(ModelConfig(model=str(tmp_path / "ckpt")))


def test_remote_code_is_only_a_fallback_the_user_turns_on(tmp_path):
    """An OpenVLA variant the native loader does not know: refused unless trust_remote_code,
    and then its own (here absent) code is what fails, as one line."""
    checkpoint = tmp_path / "ckpt"
    shutil.copytree(Path(__file__).parent / "data" / "openvla_tiny" / "checkpoint", checkpoint)
    config = json.loads((checkpoint / "config.json").read_text())
    config["vision_backbone_id"] = "siglip-vit-so400m"
    (checkpoint / "config.json").write_text(json.dumps(config))
    options = ModelConfig(model=str(checkpoint), unnorm_key="bridge_orig")
    with pytest.raises(ModelLoadError, match="native loader knows") as refused:
        load_models(options)
    with pytest.raises(ModelLoadError) as remote:
        load_models(replace(options, trust_remote_code=True))
    assert "native loader knows" not in str(remote.value)
    assert "\n" not in str(refused.value) + str(remote.value)


def test_default_model_absent_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr("kerv_ros.loading.DEFAULT_MODEL_DIR", tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no default model"):
        load_policy("default")
