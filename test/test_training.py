"""Training pipeline: bags -> aligned samples -> policy -> drafter, on tiny models."""

import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from models import TINY
from rosbags.rosbag2 import Reader

from kerv_ros import bags
from kerv_ros.config import EngineConfig
from kerv_ros.decoding.engine import DecodeEngine
from kerv_ros.policy.backend import Observation
from kerv_ros.policy.vla import DefaultVLA
from kerv_ros.sim.collect import collect
from kerv_ros.training import (
    DrafterTraining,
    PolicyTraining,
    load_demonstrations,
    object_targets,
    observations_of,
    pretrain_vision,
    render_scenes,
    soft_labels,
    train_drafter,
    train_policy,
)


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    out = tmp_path_factory.mktemp("demos")
    records = collect(["reach", "pick"], 1, 3, out, image_size=64, progress=False)
    return out, records, load_demonstrations([out], TINY.image_size, progress=False)


def test_samples_pair_each_command_with_its_observation(demos):
    out, records, data = demos
    assert len(data) == sum(r.steps for r in records)
    assert data.images.shape[1:] == (TINY.image_size, TINY.image_size, 3)
    assert data.states.shape[1] == 7
    assert set(data.instructions) == {r.instruction for r in records}
    first_bag = sorted(out.glob("*/metadata.yaml"))[0].parent  # bags are read in name order
    with Reader(first_bag) as reader:
        twist = next(
            bags.typestore().deserialize_cdr(raw, c.msgtype)
            for c, _, raw in reader.messages()
            if c.topic == bags.TWIST_TOPIC
        )
    np.testing.assert_allclose(
        data.actions[0, :3],
        np.array([twist.twist.linear.x, twist.twist.linear.y, twist.twist.linear.z]) * 0.1,
    )
    assert set(np.unique(data.actions[:, 6])) <= {0.0, 1.0}


def copy_and_edit_pick_bag(out, dest, *edits: tuple[str, str]) -> None:
    """Copy the bags of ``out`` to ``dest`` and apply ``edits`` to the pick bag's metadata."""
    for bag in sorted(out.glob("*/metadata.yaml")):
        shutil.copytree(bag.parent, dest / bag.parent.name)
    meta = sorted(dest.glob("pick_*/metadata.yaml"))[0]
    text = meta.read_text()
    for old, new in edits:
        assert old in text
        text = text.replace(old, new)
    meta.write_text(text)


def test_bags_of_failed_demonstrations_are_skipped(demos, tmp_path):
    out, records, _ = demos
    copy_and_edit_pick_bag(out, tmp_path, ("kerv.success: 'True'", "kerv.success: 'False'"))
    data = load_demonstrations([tmp_path], TINY.image_size, progress=False)
    assert set(data.instructions) == {r.instruction for r in records if r.task == "reach"}


def test_batched_encoding_matches_single_observations():
    backend = DefaultVLA.random(TINY, seed=1)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (2, 32, 32, 3), dtype=np.uint8)
    texts = ["reach the red cube", "push the blue block to the left"]  # different lengths
    states = rng.normal(size=(2, 7)).astype(np.float32)
    embeds, mask, positions = backend.encode(images, texts, states)
    with torch.no_grad():
        batched = backend.language_model(
            inputs_embeds=embeds, attention_mask=mask, position_ids=positions
        ).last_hidden_state[:, -1]
    for i in range(2):
        alone = backend.prefill(Observation(images[i], texts[i], states[i]))
        torch.testing.assert_close(batched[i], alone.prefix_hidden[-1], atol=1e-4, rtol=1e-4)


def test_policy_trains_saves_and_drives_the_engine(demos, tmp_path):
    _, _, data = demos
    config = PolicyTraining(steps=4, batch_size=4, vla=TINY, warmup=2)
    backend, history = train_policy(data, config, progress=False)
    assert len(history) >= 2 and all(np.isfinite(h["loss"]) for h in history)
    np.testing.assert_allclose(backend.norm_stats.q99, np.quantile(data.actions, 0.99, axis=0))
    backend.save(tmp_path)
    loaded = DefaultVLA.load(tmp_path)
    observation = observations_of(data)[0]
    a = DecodeEngine(backend, None, EngineConfig(mode="ar")).step(observation)
    b = DecodeEngine(loaded, None, EngineConfig(mode="ar")).step(observation)
    assert a.tokens == b.tokens
    np.testing.assert_allclose(a.raw_action, b.raw_action)


def test_policy_without_state_refuses_nothing_and_needs_no_state(demos):
    _, _, data = demos
    backend = DefaultVLA.random(replace(TINY, state_dim=0))
    observation = Observation(data.images[0], data.instructions[0])
    assert len(DecodeEngine(backend, None, EngineConfig(mode="ar")).step(observation).tokens) == 7
    with pytest.raises(ValueError, match="joint state"):
        DefaultVLA.random(TINY).prefill(observation)


def test_trained_drafter_is_lossless_and_learns(demos):
    _, _, data = demos
    backend = DefaultVLA.random(TINY, seed=2)
    observations = observations_of(data)[:13]  # not a multiple of the batch size
    drafter, history = train_drafter(
        backend, observations, DrafterTraining(epochs=3, batch_size=4), progress=False
    )
    assert history[-1]["loss"] < history[0]["loss"]
    ar = DecodeEngine(backend, None, EngineConfig(mode="ar"))
    spec = DecodeEngine(backend, drafter, EngineConfig(mode="spec"))
    for observation in observations[:4]:
        assert spec.step(observation).tokens == ar.step(observation).tokens


def test_soft_labels_are_distributions_peaked_on_the_bin():
    bins = torch.tensor([[0, 100, 255]])
    labels = soft_labels(bins, 1.5)
    assert labels.shape == (1, 3, 256)
    torch.testing.assert_close(labels.sum(-1), torch.ones(1, 3))
    assert labels.argmax(-1).tolist() == bins.tolist()
    torch.testing.assert_close(labels[0, 1, 99], labels[0, 1, 101])
    assert labels[0, 1, 98] < labels[0, 1, 99]
    assert torch.equal(soft_labels(bins, 0), torch.nn.functional.one_hot(bins, 256).float())


def test_rendered_scenes_train_the_position_targets(demos):
    _, _, data = demos
    scenes = render_scenes(data, 6, TINY.image_size, progress=False)
    assert scenes.images.shape == (6, TINY.image_size, TINY.image_size, 3)
    assert scenes.targets.shape == (6, object_targets(data).shape[1])
    assert len(set(scenes.instructions)) > 1 and np.all(np.abs(scenes.targets) < 3)
    # Every scene is a new layout: the cube targets differ from all the demonstrations'.
    assert not np.isin(scenes.targets[:, 0], object_targets(data)[:, 0]).any()
    config = PolicyTraining(steps=3, batch_size=2, vla=TINY, warmup=1, scene_batch=2)
    backend, history = train_policy(data, config, progress=False, scenes=scenes)
    again, _ = train_policy(data, config, progress=False, scenes=scenes, init=backend)
    assert again is backend and all(np.isfinite(h["aux_loss"]) for h in history)


def test_vision_pretraining_learns_positions_on_scenes(demos):
    """The vision stage alone must fit the scenes' positions (here: 24 scenes, overfitting is
    the point) and leave the rest of the model as it was."""
    _, _, data = demos
    scenes = render_scenes(data, 24, TINY.image_size, seed=3, progress=False)
    backend = DefaultVLA.random(TINY, seed=4)
    lm = {k: v.clone() for k, v in backend.language_model.state_dict().items()}
    config = PolicyTraining(vision_steps=200, batch_size=8, lr=3e-3, vla=TINY, warmup=5)
    history = pretrain_vision(backend, scenes, config, progress=False)
    assert all(h["stage"] == "vision" for h in history)
    losses = [h["loss"] for h in history]
    assert losses[-1] < 0.5 * losses[0]
    assert "val_cm" in history[0] and "val_cm" in history[-1]
    for name, tensor in backend.language_model.state_dict().items():
        torch.testing.assert_close(tensor, lm[name])
    config = PolicyTraining(steps=2, batch_size=2, vla=TINY, warmup=1, scene_batch=2)
    _, history = train_policy(data, replace(config, vision_steps=3), progress=False, scenes=scenes)
    assert [h["stage"] for h in history][:2] == ["vision", "vision"]
    assert history[-1]["stage"] == "policy"


def test_dagger_bags_are_kept_when_the_driving_policy_failed(demos, tmp_path):
    """The expert's labels in a DAgger bag are worth learning whoever drove and failed."""
    out, records, _ = demos
    copy_and_edit_pick_bag(
        out,
        tmp_path,
        ("kerv.success: 'True'", "kerv.success: 'False'"),
        ("kerv.driver: expert", "kerv.driver: runs/policy"),
    )
    data = load_demonstrations([tmp_path], TINY.image_size, progress=False)
    assert set(data.instructions) == {r.instruction for r in records}
