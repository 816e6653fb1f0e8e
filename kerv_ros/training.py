"""Training the default policy and the drafter from rosbag2 demonstrations.

Demonstrations are read the way a real recording is: every twist command (with the gripper
command published beside it) is paired with the newest camera image, joint state and
instruction at or before it on the bag's alignment clock (``bags.read_streams``, which offline
evaluation and the datastore builder read through too), so bags recorded on an arm running
kerv_node (or any MoveIt Servo commander) train the same way as the simulator's.

The policy is trained with teacher forcing on OpenVLA action tokens (cross-entropy over the 256
action rows). The drafter follows Spec-VLA's recipe on the target's own outputs: the target
decodes each observation greedily, and the EAGLE head learns to regress the target's next
hidden state and to predict its next token from it, with noise on its input features.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from kerv_ros import bags
from kerv_ros.actions import ACTION_DIMS, N_BINS, NormStats
from kerv_ros.config import PANDA_ARM_JOINTS, DraftConfig, EngineConfig
from kerv_ros.decoding.drafter import EagleConfig, EagleDrafter
from kerv_ros.decoding.engine import DecodeEngine
from kerv_ros.policy.backend import Observation, PolicyBackend
from kerv_ros.policy.vla import DefaultVLA, VLAConfig
from kerv_ros.ros_io import image_to_rgb

log = logging.getLogger(__name__)


@dataclass
class Demonstrations:
    """Aligned training samples: what the policy saw and what the demonstrator commanded."""

    images: np.ndarray  # N x S x S x 3 uint8
    states: np.ndarray  # N x J float32, arm joint positions
    instructions: list[str]
    actions: np.ndarray  # N x 7 raw: xyz delta (m), rpy delta (rad) per period, gripper 0..1
    episodes: np.ndarray  # N, index of the bag each sample came from
    metadata: list[dict] = field(default_factory=list)  # per bag: rosbag2 custom_data

    def __len__(self) -> int:
        return len(self.instructions)

    def by_episode(self, values: np.ndarray) -> list[np.ndarray]:
        """Per-sample ``values`` split into one array per episode, in episode order."""
        return [values[self.episodes == e] for e in np.unique(self.episodes)]


def load_demonstrations(
    paths: list[Path],
    image_size: int,
    control_rate_hz: float = 10.0,
    joint_names: tuple[str, ...] = PANDA_ARM_JOINTS,
    progress: bool = True,
) -> Demonstrations:
    """Read command-aligned samples from rosbag2 files (see the module docstring)."""
    topics = {
        bags.IMAGE_TOPIC: bags.IMAGE,
        bags.JOINT_STATES_TOPIC: bags.JOINT_STATE,
        bags.INSTRUCTION_TOPIC: bags.STRING,
        bags.TWIST_TOPIC: bags.TWIST_STAMPED,
        bags.GRIPPER_TOPIC: bags.FLOAT64,
    }
    images, states, instructions, actions, episodes, metadata = [], [], [], [], [], []
    for path in tqdm(bags.bag_paths(paths), desc="read bags", disable=not progress):
        meta = bags.custom_data(path)
        if bags.failed_demonstration(meta):
            log.info("%s: skipped, the demonstrator failed (kerv.success False)", path)
            continue
        streams = bags.read_streams(path, topics)
        lacking = [t for t in topics if t != bags.GRIPPER_TOPIC and not len(streams[t])]
        if lacking:
            log.warning("%s: skipped, lacks %s", path, lacking)
            continue
        metadata.append(meta)
        episode = len(metadata) - 1
        for command in bags.command_stream(streams, 1.0 / control_rate_hz):
            image = streams[bags.IMAGE_TOPIC].at(command.t)
            joints = streams[bags.JOINT_STATES_TOPIC].at(command.t)
            instruction = streams[bags.INSTRUCTION_TOPIC].at(command.t)
            if image is None or joints is None or instruction is None:
                continue
            rgb = image_to_rgb(image.msg)
            if rgb.shape[:2] != (image_size, image_size):
                rgb = cv2.resize(rgb, (image_size, image_size), interpolation=cv2.INTER_AREA)
            index = {name: n for n, name in enumerate(joints.msg.name)}
            states.append([joints.msg.position[index[name]] for name in joint_names])
            images.append(rgb)
            instructions.append(instruction.msg.data)
            actions.append(command.msg)
            episodes.append(episode)
    if not images:
        raise ValueError("no command-aligned samples in the bags")
    return Demonstrations(
        np.stack(images),
        np.asarray(states, dtype=np.float32),
        instructions,
        np.asarray(actions),
        np.asarray(episodes),
        metadata,
    )


def dataset_statistics(actions: np.ndarray) -> NormStats:
    """OpenVLA's statistics: 1st/99th percentiles per dimension, every dimension rescaled."""
    return NormStats(
        q01=np.quantile(actions, 0.01, axis=0),
        q99=np.quantile(actions, 0.99, axis=0),
        mask=np.ones(actions.shape[1], dtype=bool),
    )


@dataclass
class PolicyTraining:
    steps: int = 3000
    batch_size: int = 32
    lr: float = 1e-3
    warmup: int = 200
    weight_decay: float = 0.01
    shift_pixels: int = 1
    """Random image translation. Small on purpose: the camera is fixed and the policy reads the
    arm's state, so pixel position is world position; large shifts blur what it must learn."""
    label_sigma: float = 1.5
    """Std in bins of the gaussian soft labels. Neighbouring bins are neighbouring actions, so a
    near miss is penalised less than a far one; hard labels learned the continuous commands
    of a proportional controller more slowly. 0 = one-hot."""
    validation: float = 0.05  # share of episodes held out to report an honest bin error
    scene_batch: int = 16  # rendered scenes per step when scenes are given
    bf16: bool = True
    seed: int = 0
    aux_weight: float = 1.0
    """Weight of the auxiliary object-position loss (simulator bags only; see
    :func:`object_targets`). It makes the model find the instructed cube in the image, which
    token cross-entropy alone learned too slowly on this CPU (measured: 1/6 reach successes)."""
    vision_steps: int = 0
    """Steps that train the vision tower and projector alone on the rendered scenes before the
    policy is trained (see :func:`pretrain_vision`); needs scenes."""
    vla: VLAConfig = field(default_factory=VLAConfig)


def _warmup_cosine(steps: int, warmup: int):
    """Learning-rate factor: linear warm-up, then a cosine down to 0 at ``steps``."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        done = (step - warmup) / max(1, steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * done))

    return factor


def _shift(images: np.ndarray, pixels: int, rng: np.random.Generator) -> np.ndarray:
    """Translate each image by up to ``pixels`` (edge-padded): cheap position augmentation."""
    if pixels == 0:
        return images
    size = images.shape[1]
    padded = np.pad(images, ((0, 0), (pixels, pixels), (pixels, pixels), (0, 0)), mode="edge")
    out = np.empty_like(images)
    for n, (dy, dx) in enumerate(rng.integers(0, 2 * pixels + 1, size=(len(images), 2))):
        out[n] = padded[n, dy : dy + size, dx : dx + size]
    return out


def teacher_forced(backend: DefaultVLA, embeds, mask, positions, tokens: torch.Tensor):
    """Hidden states over prefix + the first 6 action tokens (B x (L + 6) x H).

    The last 7 positions predict the 7 action tokens; the first of them, the last prefix
    position, is where the policy must already know its target.
    """
    inputs = torch.cat([embeds, backend.embed_tokens(tokens[:, :-1])], dim=1)
    extra = torch.arange(1, ACTION_DIMS, device=positions.device)
    positions = torch.cat([positions, positions[:, -1:] + extra], dim=1)
    mask = torch.cat([mask, torch.ones_like(tokens[:, :-1])], dim=1)
    return backend.language_model(
        inputs_embeds=inputs, attention_mask=mask, position_ids=positions
    ).last_hidden_state


# Position targets are (p - centre) / scale: about [-1, 1] over the workspace.
_CUBE_CENTRE, _CUBE_SCALE = np.array([0.5, -0.02]), np.array([0.12, 0.2])
_EE_CENTRE, _EE_SCALE = np.array([0.5, 0.0, 0.2]), np.array([0.12, 0.2, 0.15])
TARGET_SCALE_M = np.concatenate([np.tile(_CUBE_SCALE, 4), _EE_SCALE])
"""Metres per unit of each column of :func:`object_targets`."""


def _cube_row(layout) -> list[float]:
    """The instructed cube's and all cubes' (x, y), normalised to about [-1, 1]."""
    from kerv_ros.sim.world import COLOURS

    cubes = [layout.cubes[layout.target], *(layout.cubes[c] for c in COLOURS)]
    return ((np.array(cubes) - _CUBE_CENTRE) / _CUBE_SCALE).ravel().tolist()


def _normalise_ee(ee: np.ndarray) -> np.ndarray:
    return (ee - _EE_CENTRE) / _EE_SCALE


def object_targets(demos: Demonstrations) -> np.ndarray | None:
    """Per sample, normalised: cube start positions and the end effector's position (N x 11).

    The instructed cube's and all cubes' start positions (x, y), then the end effector (x, y, z).
    The first teaches the policy where the instructed cube is, the second where the gripper is
    now; the commands are (roughly) their difference, which token cross-entropy alone did not
    find: a policy trained without the gripper target kept the direction of its first command
    and drove past the cube (measured: 2 of 12 reach and push episodes). Only simulator bags
    carry what this needs (task and seed in their custom_data); for other bags it returns None
    and training uses the action tokens alone.
    """
    from kerv_ros.sim.tasks import layout_for
    from kerv_ros.sim.world import PandaWorld

    rows = []
    for meta in demos.metadata:
        if "kerv.task" not in meta or "kerv.seed" not in meta:
            return None
        rows.append(_cube_row(layout_for(meta["kerv.task"], int(meta["kerv.seed"]))))
    world = PandaWorld()
    try:
        world.reset(layout_for("reach", 0))
        ee = np.array([world.forward_kinematics(q) for q in demos.states])
    finally:
        world.close()
    return np.concatenate([np.asarray(rows)[demos.episodes], _normalise_ee(ee)], axis=1).astype(
        np.float32
    )


@dataclass
class Scenes:
    """Rendered scenes with position targets and no actions (see :func:`render_scenes`)."""

    images: np.ndarray
    states: np.ndarray
    instructions: list[str]
    targets: np.ndarray


def render_scenes(
    demos: Demonstrations, count: int, image_size: int, seed: int = 0, progress: bool = True
) -> Scenes:
    """``count`` fresh random layouts, the arm at joint positions taken from ``demos``.

    A few hundred demonstration layouts are too few for a small vision tower to learn where a
    named cube is on a layout it has not seen: it learned the layouts (measured: a linear probe
    of the features of a policy trained without scenes placed the instructed cube on new
    layouts no better than its mean position, 4.6 cm in x and 8.8 cm in y). Still scenes cost
    ~25 ms each with :meth:`PandaWorld.arrange` against ~1 s an episode, so thousands of extra
    layouts teach the position targets of :func:`object_targets`, through the same encoder,
    without actions.
    """
    from kerv_ros.sim.tasks import TASKS, sample_layout
    from kerv_ros.sim.world import PandaWorld, SimConfig

    rng = np.random.default_rng([seed, 7])
    world = PandaWorld(SimConfig(image_size=image_size))
    images, states, instructions, targets = [], [], [], []
    try:
        world.reset(sample_layout("reach", rng))
        for _ in tqdm(range(count), desc="render scenes", disable=not progress):
            task = str(rng.choice(list(TASKS)))
            layout = sample_layout(task, rng)
            q = demos.states[rng.integers(len(demos))]
            world.arrange(layout, q)
            images.append(world.render())
            states.append(q)
            instructions.append(TASKS[task].instruction(layout.target))
            targets.append(_cube_row(layout) + _normalise_ee(world.ee_pose()[0]).tolist())
    finally:
        world.close()
    return Scenes(
        np.stack(images), np.asarray(states), instructions, np.asarray(targets, np.float32)
    )


def soft_labels(bins: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian distributions over the 256 bins centred on ``bins`` (any shape -> shape x 256)."""
    grid = torch.arange(N_BINS, dtype=torch.float32)
    if sigma <= 0:
        return nn.functional.one_hot(bins, N_BINS).float()
    weights = torch.exp(-0.5 * ((grid - bins[..., None].float()) / sigma) ** 2)
    return weights / weights.sum(-1, keepdim=True)


def _split(demos: Demonstrations, share: float, rng: np.random.Generator):
    """Sample indices of training and held-out episodes (whole episodes, never split)."""
    episodes = np.unique(demos.episodes)
    held = round(share * len(episodes))
    held_out = set(rng.choice(episodes, held, replace=False).tolist()) if held else set()
    mask = np.isin(demos.episodes, list(held_out))
    return np.flatnonzero(~mask), np.flatnonzero(mask)


@torch.inference_mode()
def _validate(backend: DefaultVLA, demos: Demonstrations, index: np.ndarray, tokens) -> float:
    """Mean |greedy - demonstrated| in bins over the held-out samples (teacher forced)."""
    backend.model.eval()
    errors = []
    for chunk in np.array_split(index, max(1, len(index) // 64)):
        embeds, mask, positions = backend.encode(
            demos.images[chunk], [demos.instructions[i] for i in chunk], demos.states[chunk]
        )
        hidden = teacher_forced(backend, embeds, mask, positions, tokens[chunk])
        predicted = backend.hidden_to_action_logits(hidden[:, -ACTION_DIMS:]).argmax(-1)
        predicted = predicted + backend.action_tokenizer.first_token
        errors.append((predicted - tokens[chunk]).abs().float().mean(-1))
    backend.model.train()
    return torch.cat(errors).mean().item()


def train_policy(
    demos: Demonstrations,
    config: PolicyTraining,
    progress: bool = True,
    scenes: Scenes | None = None,
    init: DefaultVLA | None = None,
):
    """Train the default VLA on ``demos``; returns (backend, history).

    From scratch, or on from ``init`` (its tokenizer and statistics are kept). ``scenes`` add
    position-only samples to every step (see :func:`render_scenes`).
    """
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    if init is None:
        backend = DefaultVLA.random(
            config.vla,
            seed=config.seed,
            norm_stats=dataset_statistics(demos.actions),
            instructions=sorted(set(demos.instructions)),
        )
    else:
        backend = init
    stats = backend.norm_stats
    tokens = torch.as_tensor(backend.action_tokenizer.encode(stats.normalize(demos.actions)))
    first = backend.action_tokenizer.first_token
    train_index, held_out = _split(demos, config.validation, rng)
    # At most 512 held-out samples, evenly spread, so validation stays a small cost.
    held_out = held_out[:: max(1, len(held_out) // 512)]
    targets = object_targets(demos) if config.aux_weight > 0 else None
    aux_head = nn.Linear(config.vla.text_hidden, targets.shape[1]) if targets is not None else None
    params = list(backend.parameters()) + (list(aux_head.parameters()) if aux_head else [])
    optimiser = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)

    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimiser, _warmup_cosine(config.steps, config.warmup)
    )
    history = []
    if scenes is not None and config.vision_steps:
        history += pretrain_vision(backend, scenes, config, progress)
    backend.model.train()
    val = None
    bar = tqdm(range(config.steps), desc="train policy", disable=not progress)
    start = time.perf_counter()
    for step in bar:
        batch = rng.choice(train_index, size=config.batch_size)
        images = _shift(demos.images[batch], config.shift_pixels, rng)
        target = tokens[batch]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16):
            embeds, mask, positions = backend.encode(
                images, [demos.instructions[i] for i in batch], demos.states[batch]
            )
            hidden = teacher_forced(backend, embeds, mask, positions, target)
            logits = backend.hidden_to_action_logits(hidden[:, -ACTION_DIMS:])
        labels = soft_labels(target - first, config.label_sigma)
        loss = nn.functional.cross_entropy(
            logits.float().reshape(-1, N_BINS), labels.reshape(-1, N_BINS)
        )
        aux = torch.zeros(())
        if aux_head is not None:
            where = aux_head(hidden[:, -ACTION_DIMS].float())
            aux = nn.functional.mse_loss(where, torch.as_tensor(targets[batch]))
            if scenes is not None:
                aux = (aux + _scene_loss(backend, aux_head, scenes, config, rng)) / 2
            loss = loss + config.aux_weight * aux
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimiser.step()
        scheduler.step()
        if step % 25 == 0 or step == config.steps - 1:
            predicted = logits.argmax(-1) + first
            bins = (predicted - target).abs().float().mean().item()
            entry = {
                "stage": "policy",
                "step": step,
                "loss": loss.item(),
                "bin_error": bins,
                "aux_loss": aux.item(),
                "seconds": time.perf_counter() - start,
            }
            if len(held_out) and (step % 500 == 0 or step == config.steps - 1):
                entry["val_bin_error"] = _validate(backend, demos, held_out, tokens)
                val = entry["val_bin_error"]
            history.append(entry)
            bar.set_postfix(
                loss=f"{loss.item():.3f}", bins=f"{bins:.1f}", aux=f"{aux.item():.3f}", val=val
            )
    backend.model.eval()
    return backend, history


def _image_features(backend: DefaultVLA, images: np.ndarray) -> torch.Tensor:
    """Projected image tokens as the LM receives them: B x image_tokens x text_hidden."""
    pixels = backend.pixel_values(images)
    return torch.stack(
        list(backend.model.model.get_image_features(pixel_values=pixels).pooler_output)
    )


def pretrain_vision(
    backend: DefaultVLA, scenes: Scenes, config: PolicyTraining, progress: bool = True
) -> list[dict]:
    """Train the vision tower and projector to place every cube and the gripper in still scenes.

    Why a stage of its own: trained end to end on a few hundred demonstration layouts, the
    tower learned the layouts, not where things are (see :func:`render_scenes`). Alone on
    5,000 rendered layouts, the same tower with a linear read-out over its image tokens placed
    the cubes of held-out layouts to ~1.1 cm after 5 minutes on this CPU. The read-out is
    linear in the projected tokens, the features one attention layer of the LM reads, so what
    the tower learns here is in a form the policy can use. The instructed cube is left out: it
    needs the prompt, which the policy stage teaches. 5 % of the scenes are held out and the
    mean error on their cubes, in cm, is reported as ``val_cm``.
    """
    columns = slice(2, None)  # every cube by colour, then the gripper
    targets = torch.as_tensor(scenes.targets[:, columns])
    scale_cm = torch.as_tensor(TARGET_SCALE_M[columns] * 100, dtype=torch.float32)
    rng = np.random.default_rng([config.seed, 11])
    order = rng.permutation(len(targets))
    held = order[: max(1, len(order) // 20)]
    train = order[len(held) :] if len(order) > 1 else order
    c = backend.config
    head = nn.Linear(c.image_tokens * c.text_hidden, targets.shape[1])
    tower = backend.model.model
    params = [
        *tower.vision_tower.parameters(),
        *tower.multi_modal_projector.parameters(),
        *head.parameters(),
    ]
    optimiser = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimiser, _warmup_cosine(config.vision_steps, min(config.warmup, config.vision_steps))
    )

    def read(images: np.ndarray) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16):
            return head(_image_features(backend, images).flatten(1)).float()

    @torch.inference_mode()
    def validate() -> tuple[float, float]:
        backend.model.eval()
        error = torch.cat(
            [
                (read(scenes.images[chunk]) - targets[chunk]).abs() * scale_cm
                for chunk in np.array_split(held, max(1, len(held) // 64))
            ]
        )
        backend.model.train()
        return error[:, :-3].mean().item(), error[:, -3:].mean().item()

    backend.model.train()
    history, val = [], None
    start = time.perf_counter()
    bar = tqdm(range(config.vision_steps), desc="train vision", disable=not progress)
    for step in bar:
        batch = rng.choice(train, size=config.batch_size)
        images = _shift(scenes.images[batch], config.shift_pixels, rng)
        loss = nn.functional.mse_loss(read(images), targets[batch])
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimiser.step()
        scheduler.step()
        if step % 25 == 0 or step == config.vision_steps - 1:
            entry = {"stage": "vision", "step": step, "loss": loss.item()}
            if step % 250 == 0 or step == config.vision_steps - 1:
                val, gripper = validate()
                entry |= {"val_cm": val, "val_gripper_cm": gripper}
            entry["seconds"] = time.perf_counter() - start
            history.append(entry)
            bar.set_postfix(loss=f"{loss.item():.4f}", val_cm=f"{val:.2f}")
    return history


def _scene_loss(backend, aux_head, scenes: Scenes, config, rng) -> torch.Tensor:
    """Position loss on a batch of rendered scenes, read at the last prefix position."""
    pick = rng.integers(0, len(scenes.instructions), size=config.scene_batch)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16):
        embeds, mask, positions = backend.encode(
            scenes.images[pick], [scenes.instructions[i] for i in pick], scenes.states[pick]
        )
        hidden = backend.language_model(
            inputs_embeds=embeds, attention_mask=mask, position_ids=positions
        ).last_hidden_state[:, -1]
    return nn.functional.mse_loss(aux_head(hidden.float()), torch.as_tensor(scenes.targets[pick]))


@dataclass
class DrafterTraining:
    epochs: int = 4
    batch_size: int = 16
    lr: float = 1e-3
    feature_noise: float = 0.1  # std of the gaussian noise on input features (Spec-VLA, EAGLE)
    feature_weight: float = 1.0
    max_samples: int = 3000
    seed: int = 0
    draft: DraftConfig = field(default_factory=DraftConfig)


@torch.inference_mode()
def _target_sequences(backend: PolicyBackend, observations: list[Observation], progress: bool):
    """What the drafter learns to imitate, per observation.

    The target's greedy tokens and, over prefix + those tokens, its hidden states and input
    embeddings.
    """
    engine = DecodeEngine(backend, None, EngineConfig(mode="ar"))
    sequences = []
    for observation in tqdm(observations, desc="target outputs", disable=not progress):
        tokens = engine.step(observation).tokens
        state = backend.prefill(observation)
        out = backend.forward_tree(state, tokens[:-1], list(range(-1, ACTION_DIMS - 2)))
        hidden = torch.cat([state.prefix_hidden, out.hidden]).half()
        fed = backend.embed_tokens(torch.tensor(tokens[:-1]))  # the 7th token is never fed
        embeds = torch.cat([state.prefix_embeds, fed])
        sequences.append((hidden, embeds.half(), torch.tensor(tokens)))
    return sequences


def greedy_episodes(
    backend: PolicyBackend, demos: Demonstrations, progress: bool = True
) -> list[np.ndarray]:
    """The policy's own greedy actions (raw units) on every sample, one array per episode.

    For a retrieval datastore of what *this* policy does in the recorded situations rather than
    what the demonstrator commanded (``kerv datastore build --relabel``).
    """
    engine = DecodeEngine(backend, None, EngineConfig(mode="ar"))
    actions = []
    for i in tqdm(range(len(demos)), desc="relabel", unit="step", disable=not progress):
        observation = Observation(demos.images[i], demos.instructions[i], demos.states[i])
        actions.append(engine.step(observation).raw_action)
    return demos.by_episode(np.array(actions))


def train_drafter(
    backend: PolicyBackend,
    observations: list[Observation],
    config: DrafterTraining,
    progress: bool = True,
):
    """EAGLE-style drafter for ``backend`` from its own greedy decoding of ``observations``."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    if len(observations) > config.max_samples:
        keep = rng.choice(len(observations), config.max_samples, replace=False)
        observations = [observations[i] for i in keep]
    sequences = _target_sequences(backend, observations, progress)
    backend.lm_head.weight.requires_grad_(False)  # shared with the target, not trained here
    drafter = EagleDrafter(EagleConfig.for_target(backend.text_config), config.draft)
    drafter.to(backend.device).train()
    optimiser = torch.optim.AdamW(drafter.parameters(), lr=config.lr)
    first = backend.action_tokenizer.first_token
    history = []
    steps = math.ceil(config.epochs * len(sequences) / config.batch_size)
    bar = tqdm(range(steps), desc="train drafter", disable=not progress)
    order = np.concatenate([rng.permutation(len(sequences)) for _ in range(config.epochs)])
    for step in bar:
        chunk = order[step * config.batch_size : (step + 1) * config.batch_size]
        batch = [sequences[i] for i in chunk]
        loss, accuracy = _drafter_loss(drafter, backend, batch, config, first)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(drafter.parameters(), 1.0)
        optimiser.step()
        if step % 20 == 0 or step == steps - 1:
            history.append({"step": step, "loss": loss.item(), "token_accuracy": accuracy})
            bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{accuracy:.2f}")
    drafter.eval()
    return drafter, history


def _drafter_loss(drafter, backend, batch, config: DrafterTraining, first: int):
    """Feature regression over every position + cross-entropy on the 6 drafted action tokens.

    Sequences are left-padded to one length; position ids restart at 0 on each row.
    """
    length = max(h.shape[0] for h, _, _ in batch)
    size = batch[0][0].shape[1]
    hidden = torch.zeros(len(batch), length, size)
    embeds = torch.zeros(len(batch), length, size)
    mask = torch.zeros(len(batch), length, dtype=torch.long)
    for n, (h, e, _) in enumerate(batch):
        hidden[n, length - h.shape[0] :] = h.float()
        embeds[n, length - e.shape[0] :] = e.float()
        mask[n, length - h.shape[0] :] = 1
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    # EAGLE pairs feature i with the embedding at i + 1 and predicts feature i + 1.
    features = hidden[:, :-1] + config.feature_noise * torch.randn_like(hidden[:, :-1])
    predicted = drafter(features, embeds[:, 1:], mask[:, 1:], positions[:, :-1], None)
    valid = mask[:, 1:].bool() & mask[:, :-1].bool()
    regression = nn.functional.smooth_l1_loss(predicted[valid], hidden[:, 1:][valid])
    # The last 6 predictions (inputs: the feature before each of tokens 1..6) score tokens 2..7.
    logits = backend.hidden_to_action_logits(predicted[:, -(ACTION_DIMS - 1) :])
    targets = torch.stack([t[1:] for _, _, t in batch]) - first
    classification = nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
    )
    accuracy = (logits.argmax(-1) == targets).float().mean().item()
    return config.feature_weight * regression + classification, accuracy


def observations_of(demos: Demonstrations) -> list[Observation]:
    return [
        Observation(demos.images[i], demos.instructions[i], demos.states[i])
        for i in range(len(demos))
    ]
