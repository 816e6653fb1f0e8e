"""The embedded default VLA: a Llava-style transformers model built from a config.

Vision tower (SigLIP) -> projector -> Llama decoder, OpenVLA's prompt and action tokens. It is
small enough to run and train on a CPU, and shaped like the real target so that the engine's
cost ratios carry over: prefill of image + prompt costs a few decode steps.

Vocabulary layout: ``text_vocab`` text tokens (a byte-level BPE, ``tokenizer.json``), then
``bos``, ``image placeholder``, ``state placeholder``, then the 256 action tokens at the top.
The BPE (Hugging Face ``tokenizers``) is trained on the training instructions' prompts: the
OpenVLA template and the task words become one token each (~17 tokens instead of ~67 bytes),
so prefill stays a few decode steps long as on the real target, and any other text still
encodes, byte by byte.

Sequence: ``bos, image tokens, state token, prompt``. The state token is the arm's joint
positions through a linear projection: many VLAs read proprioception beside the image, and a
small policy trained on a CPU learns where the gripper is far faster from it than from pixels.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from torch import nn
from transformers import (
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    SiglipVisionConfig,
)

from kerv_ros.actions import N_BINS, ActionTokenizer, NormStats
from kerv_ros.policy.backend import Observation
from kerv_ros.policy.hf_backend import HFDecoderBackend, cast_keeping_rope

POLICY_FILE = "kerv_policy.json"
STATE_FILE = "state_projector.safetensors"
STATS_FILE = "dataset_statistics.json"
TOKENIZER_FILE = "tokenizer.json"
FORMAT_VERSION = 2

# What a tokenizer is trained on when no instructions are given (random models, tests).
DEFAULT_INSTRUCTIONS = (
    "reach the red cube",
    "push the green block to the left",
    "pick up the blue cube",
)


def policy_prompt(instruction: str) -> str:
    """OpenVLA's prompt template with the instruction stripped: the default model's training.

    OpenVLA itself does not strip; its backend uses its own prompt.
    """
    return f"In: What action should the robot take to {instruction.strip().lower()}?\nOut:"


def train_text_tokenizer(instructions: list[str] | tuple[str, ...], vocab_size: int) -> Tokenizer:
    """A byte-level BPE over the OpenVLA prompts of ``instructions``, at most ``vocab_size``."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(sorted({policy_prompt(t) for t in instructions}), trainer)
    if tokenizer.get_vocab_size() > vocab_size:
        raise ValueError(f"tokenizer has {tokenizer.get_vocab_size()} tokens, over {vocab_size}")
    return tokenizer


@dataclass(frozen=True)
class VLAConfig:
    """Sizes of the default VLA. The defaults give ~5 M parameters and 64 image tokens."""

    image_size: int = 128
    patch_size: int = 16
    vision_hidden: int = 192
    vision_layers: int = 3
    vision_heads: int = 4
    text_hidden: int = 256
    text_layers: int = 4
    text_heads: int = 4
    text_intermediate: int = 688
    max_positions: int = 256
    initializer_range: float = 0.02
    state_dim: int = 7
    """Length of the proprioceptive state (arm joint positions); 0 = no state token."""
    text_vocab: int = 384
    """Text token ids (BPE, including its 256 byte tokens); the special ids follow them."""

    @property
    def image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def bos_id(self) -> int:
        return self.text_vocab

    @property
    def image_id(self) -> int:
        return self.text_vocab + 1

    @property
    def state_id(self) -> int:
        return self.text_vocab + 2

    @property
    def vocab_size(self) -> int:
        return self.text_vocab + 3 + N_BINS

    def to_hf(self) -> LlavaConfig:
        vision = SiglipVisionConfig(
            hidden_size=self.vision_hidden,
            intermediate_size=2 * self.vision_hidden,
            num_hidden_layers=self.vision_layers,
            num_attention_heads=self.vision_heads,
            image_size=self.image_size,
            patch_size=self.patch_size,
        )
        text = LlamaConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.text_hidden,
            intermediate_size=self.text_intermediate,
            num_hidden_layers=self.text_layers,
            num_attention_heads=self.text_heads,
            num_key_value_heads=self.text_heads,
            max_position_embeddings=self.max_positions,
            initializer_range=self.initializer_range,
            bos_token_id=self.bos_id,
            eos_token_id=None,
            pad_token_id=None,
        )
        config = LlavaConfig(
            vision_config=vision,
            text_config=text,
            image_token_index=self.image_id,
            image_seq_length=self.image_tokens,
            vision_feature_select_strategy="full",
            vision_feature_layer=-1,
        )
        config._attn_implementation = "sdpa"
        return config


class DefaultVLA(HFDecoderBackend):
    """Backend over a :class:`VLAConfig` model; see the module docstring for the layout."""

    def __init__(
        self,
        model: LlavaForConditionalGeneration,
        config: VLAConfig,
        norm_stats: NormStats,
        device: str | torch.device = "cpu",
        state_projector: nn.Linear | None = None,
        *,
        text_tokenizer: Tokenizer,
    ) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.config = config
        self.norm_stats = norm_stats
        self.action_tokenizer = ActionTokenizer(config.vocab_size)
        self.text_tokenizer = text_tokenizer
        self.language_model = model.model.language_model
        self.lm_head = model.lm_head
        self.text_config = model.config.text_config
        self.hidden_size = config.text_hidden
        if config.state_dim and state_projector is None:
            state_projector = nn.Linear(config.state_dim, config.text_hidden)
        self.state_projector = state_projector.to(self.device) if state_projector else None
        self._init_action_head()
        self._init_verifier()

    @property
    def state_dim(self) -> int:
        return self.config.state_dim

    @property
    def image_size(self) -> int:
        return self.config.image_size

    def to(self, device: str | torch.device, dtype: torch.dtype = torch.float32) -> DefaultVLA:
        """The whole policy (model and state projector) on ``device`` in ``dtype``."""
        self.device = torch.device(device)
        cast_keeping_rope(self.model, self.device, dtype)
        if self.state_projector is not None:
            self.state_projector.to(device=self.device, dtype=dtype)
        self._init_action_head()
        return self

    def parameters(self):
        """Every trainable tensor: the transformers model and the state projector."""
        yield from self.model.parameters()
        if self.state_projector is not None:
            yield from self.state_projector.parameters()

    @classmethod
    def random(
        cls,
        config: VLAConfig | None = None,
        seed: int = 0,
        norm_stats: NormStats | None = None,
        instructions: list[str] | None = None,
    ) -> DefaultVLA:
        """A randomly initialised model: for tests, benchmarks of the engine, and training.

        Its text tokenizer is trained on ``instructions`` (default: a few task phrases).
        """
        config = config or VLAConfig()
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config.to_hf())
        tokenizer = train_text_tokenizer(instructions or DEFAULT_INSTRUCTIONS, config.text_vocab)
        return cls(model, config, norm_stats or NormStats.identity(), text_tokenizer=tokenizer)

    @classmethod
    def load(
        cls,
        directory: str | Path,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> DefaultVLA:
        """Load a model saved by :meth:`save`; errors name the missing or broken file."""
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"model directory not found: {directory}")
        for name in (POLICY_FILE, STATS_FILE, TOKENIZER_FILE, "config.json", "model.safetensors"):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"{directory} is not a kerv_ros policy: {name} missing")
        meta = json.loads((directory / POLICY_FILE).read_text(encoding="utf-8"))
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{directory / POLICY_FILE}: format_version {meta.get('format_version')}, "
                f"this kerv_ros reads {FORMAT_VERSION}"
            )
        config = VLAConfig(**meta["vla_config"])
        model = LlavaForConditionalGeneration.from_pretrained(directory, attn_implementation="sdpa")
        projector = None
        if config.state_dim:
            if not (directory / STATE_FILE).is_file():
                raise FileNotFoundError(
                    f"{directory} is not a kerv_ros policy: {STATE_FILE} missing"
                )
            projector = nn.Linear(config.state_dim, config.text_hidden)
            projector.load_state_dict(load_file(str(directory / STATE_FILE)))
        stats = NormStats.from_json(directory / STATS_FILE)
        tokenizer = Tokenizer.from_file(str(directory / TOKENIZER_FILE))
        backend = cls(model, config, stats, device, projector, text_tokenizer=tokenizer)
        return backend if dtype == torch.float32 else backend.to(device, dtype)

    def save(self, directory: str | Path, dataset_name: str = "kerv_sim") -> None:
        """Safetensors + transformers config + our config + OpenVLA-layout statistics."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(directory)
        if self.state_projector is not None:
            tensors = {k: v.contiguous() for k, v in self.state_projector.state_dict().items()}
            save_file(tensors, str(directory / STATE_FILE))
        meta = {"format_version": FORMAT_VERSION, "vla_config": asdict(self.config)}
        (directory / POLICY_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
        self.text_tokenizer.save(str(directory / TOKENIZER_FILE))
        stats = {dataset_name: {"action": self.norm_stats.to_dict()}}
        (directory / STATS_FILE).write_text(json.dumps(stats, indent=2), encoding="utf-8")

    def prompt_ids(self, instruction: str) -> list[int]:
        """``bos, image placeholders, state, prompt tokens``.

        The image comes right after BOS as in OpenVLA, then the proprioceptive state.
        """
        c = self.config
        text = self.text_tokenizer.encode(policy_prompt(instruction)).ids
        state = [c.state_id] if c.state_dim else []
        return [c.bos_id] + [c.image_id] * c.image_tokens + state + text

    def pixel_values(self, images: np.ndarray) -> torch.Tensor:
        """uint8 RGB (H x W x 3 or B x H x W x 3, any size) -> B x 3 x S x S in [-1, 1]."""
        images = images[None] if images.ndim == 3 else images
        size = self.config.image_size
        if images.shape[1:3] != (size, size):
            images = np.stack(
                [cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA) for im in images]
            )
        pixels = torch.from_numpy(np.array(images, dtype=np.uint8)).to(self.device)
        pixels = (pixels.permute(0, 3, 1, 2).float() / 127.5) - 1.0
        return pixels.to(self.lm_head.weight.dtype)

    def encode(
        self, images: np.ndarray, instructions: list[str], states: np.ndarray | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A batch of observations -> input embeddings, attention mask, position ids.

        Prompts of different lengths are left-padded; position ids start at 0 on each row's BOS,
        so a padded row is computed exactly as it would be alone.
        """
        rows = [self.prompt_ids(text) for text in instructions]
        length = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), length, dtype=torch.long, device=self.device)
        mask = torch.zeros(len(rows), length, dtype=torch.long, device=self.device)
        for i, row in enumerate(rows):
            ids[i, length - len(row) :] = torch.tensor(row, device=self.device)
            mask[i, length - len(row) :] = 1
        position_ids = (mask.cumsum(dim=1) - 1).clamp(min=0)
        embeds = self.embed_tokens(ids)
        features = self.model.model.get_image_features(pixel_values=self.pixel_values(images))
        features = torch.cat(list(features.pooler_output), dim=0).to(embeds.dtype)
        embeds = embeds.masked_scatter((ids == self.config.image_id)[..., None], features)
        if self.state_projector is not None:
            if states is None:
                raise ValueError("this policy reads the joint state; the observation has none")
            state = torch.as_tensor(np.asarray(states), dtype=embeds.dtype, device=self.device)
            projected = self.state_projector(state.reshape(len(rows), -1)).to(embeds.dtype)
            embeds = embeds.masked_scatter((ids == self.config.state_id)[..., None], projected)
        return embeds, mask, position_ids

    def _prefill_embeds(self, observation: Observation) -> torch.Tensor:
        states = None if observation.state is None else observation.state[None]
        return self.encode(observation.image, [observation.instruction], states)[0]
