"""The embedded default VLA: a Llava-style transformers model built from a config.

Vision tower (SigLIP) -> projector -> Llama decoder, OpenVLA's prompt and action tokens. It is
small enough to run and train on a CPU, and shaped like the real target so that the engine's
cost ratios carry over: prefill of image + prompt costs a few decode steps.

Vocabulary layout (text is byte-level, so no tokenizer file is needed):
``0 pad, 1 eos, 2 unk, 3..258 UTF-8 bytes`` (transformers' ``ByT5Tokenizer``), ``259 bos``,
``260 image placeholder``, then the 256 action tokens at the top: ``261 .. 516``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from transformers import (
    ByT5Tokenizer,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    SiglipVisionConfig,
)

from kerv_ros.actions import N_BINS, ActionTokenizer, NormStats
from kerv_ros.policy.backend import Observation, openvla_prompt
from kerv_ros.policy.hf_backend import HFDecoderBackend

BYTE_VOCAB = 259  # ByT5: pad, eos, unk + 256 bytes
BOS_ID = 259
IMAGE_ID = 260
TEXT_VOCAB = 261
VOCAB_SIZE = TEXT_VOCAB + N_BINS

POLICY_FILE = "kerv_policy.json"
STATS_FILE = "dataset_statistics.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class VLAConfig:
    """Sizes of the default VLA. The defaults give ~4 M parameters and 64 image tokens."""

    image_size: int = 128
    patch_size: int = 16
    vision_hidden: int = 128
    vision_layers: int = 2
    vision_heads: int = 4
    text_hidden: int = 256
    text_layers: int = 4
    text_heads: int = 4
    text_intermediate: int = 688
    max_positions: int = 256
    initializer_range: float = 0.02

    @property
    def image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2

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
            vocab_size=VOCAB_SIZE,
            hidden_size=self.text_hidden,
            intermediate_size=self.text_intermediate,
            num_hidden_layers=self.text_layers,
            num_attention_heads=self.text_heads,
            num_key_value_heads=self.text_heads,
            max_position_embeddings=self.max_positions,
            initializer_range=self.initializer_range,
            bos_token_id=BOS_ID,
            eos_token_id=1,
            pad_token_id=0,
        )
        config = LlavaConfig(
            vision_config=vision,
            text_config=text,
            image_token_index=IMAGE_ID,
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
    ) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.config = config
        self.norm_stats = norm_stats
        self.action_tokenizer = ActionTokenizer(VOCAB_SIZE)
        self.text_tokenizer = ByT5Tokenizer(extra_ids=0)
        self.language_model = model.model.language_model
        self.lm_head = model.lm_head
        self.text_config = model.config.text_config
        self.hidden_size = config.text_hidden
        self._init_action_head()

    @classmethod
    def random(
        cls, config: VLAConfig | None = None, seed: int = 0, norm_stats: NormStats | None = None
    ) -> DefaultVLA:
        """A randomly initialised model: for tests and for benchmarking the engine itself."""
        config = config or VLAConfig()
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config.to_hf())
        return cls(model, config, norm_stats or NormStats.identity())

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> DefaultVLA:
        """Load a model saved by :meth:`save`; errors name the missing or broken file."""
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"model directory not found: {directory}")
        for name in (POLICY_FILE, STATS_FILE, "config.json", "model.safetensors"):
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
        return cls(model, config, NormStats.from_json(directory / STATS_FILE), device)

    def save(self, directory: str | Path, dataset_name: str = "kerv_sim") -> None:
        """Safetensors + transformers config + our config + OpenVLA-layout statistics."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(directory)
        meta = {"format_version": FORMAT_VERSION, "vla_config": asdict(self.config)}
        (directory / POLICY_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
        stats = {dataset_name: {"action": self.norm_stats.to_dict()}}
        (directory / STATS_FILE).write_text(json.dumps(stats, indent=2), encoding="utf-8")

    def prompt_ids(self, instruction: str) -> list[int]:
        """``bos, image placeholders, prompt bytes``: OpenVLA's order (image right after BOS)."""
        text = self.text_tokenizer(openvla_prompt(instruction), add_special_tokens=False)
        return [BOS_ID] + [IMAGE_ID] * self.config.image_tokens + text["input_ids"]

    def pixel_values(self, image: np.ndarray) -> torch.Tensor:
        """uint8 RGB (any size) -> 1 x 3 x S x S in [-1, 1], SigLIP's normalisation."""
        size = self.config.image_size
        if image.shape[:2] != (size, size):
            image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
        pixels = torch.from_numpy(np.ascontiguousarray(image)).to(self.device)
        return (pixels.permute(2, 0, 1)[None].float() / 127.5) - 1.0

    def _prefill_embeds(self, observation: Observation) -> torch.Tensor:
        ids = torch.tensor([self.prompt_ids(observation.instruction)], device=self.device)
        embeds = self.embed_tokens(ids)
        features = self.model.model.get_image_features(
            pixel_values=self.pixel_values(observation.image)
        ).pooler_output
        features = torch.cat(list(features), dim=0).to(embeds.dtype)
        return embeds.masked_scatter((ids == IMAGE_ID)[..., None], features)
