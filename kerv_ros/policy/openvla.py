"""A backend for real OpenVLA checkpoints from a local directory.

OpenVLA's model classes (Prismatic) are not part of transformers: they ship as Python files
inside the checkpoint and load through ``trust_remote_code``. Running code from a directory is
the user's decision, so it stays off unless they turn it on. Everything that can be checked
without running that code (the directory, the config, the weight shards, the tokenizer, the
dataset statistics) is checked first, so that a broken download fails with a precise message.

The decode path does not use Prismatic's ``forward`` (its cached branch takes one token at a
time); it drives the Llama language model inside it directly, as for every other backend.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from kerv_ros.actions import ActionTokenizer, NormStats
from kerv_ros.policy.backend import Observation, openvla_prompt
from kerv_ros.policy.hf_backend import HFDecoderBackend

OPENVLA_EMPTY_TOKEN = 29871
"""OpenVLA's ``predict_action`` appends this (Llama-2's empty piece) after ``Out:``."""


def check_checkpoint(directory: str | Path) -> dict:
    """Validate an OpenVLA checkpoint directory without importing its code; return config.json.

    Raises FileNotFoundError or ValueError naming what is missing or broken.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"OpenVLA checkpoint directory not found: {directory}")
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{directory} has no config.json: not a transformers checkpoint")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{config_path} is not valid JSON: {err}") from err
    index_path = directory / "model.safetensors.index.json"
    if index_path.is_file():
        shards = set(json.loads(index_path.read_text(encoding="utf-8"))["weight_map"].values())
        missing = sorted(s for s in shards if not (directory / s).is_file())
        if missing:
            raise FileNotFoundError(f"{directory} is incomplete: weight shards missing: {missing}")
    elif not (directory / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"{directory} has no weights (model.safetensors or model.safetensors.index.json)"
        )
    if not any((directory / name).is_file() for name in ("tokenizer.model", "tokenizer.json")):
        raise FileNotFoundError(f"{directory} has no tokenizer (tokenizer.model/tokenizer.json)")
    if "norm_stats" not in config and not (directory / "dataset_statistics.json").is_file():
        raise FileNotFoundError(
            f"{directory} has no action statistics (config.json norm_stats or "
            "dataset_statistics.json): actions cannot be un-normalised"
        )
    return config


def load_norm_stats(directory: Path, config: dict, unnorm_key: str | None) -> NormStats:
    stats = config.get("norm_stats")
    if stats is None:
        stats = json.loads((directory / "dataset_statistics.json").read_text(encoding="utf-8"))
    return NormStats.from_dict(stats, unnorm_key)


class OpenVLABackend(HFDecoderBackend):
    """OpenVLA (Prismatic: vision backbone + projector + Llama-2) behind the backend interface."""

    def __init__(self, model, processor, norm_stats: NormStats) -> None:
        self.model = model.eval()
        self.processor = processor
        self.device = next(model.parameters()).device
        self.norm_stats = norm_stats
        self.action_tokenizer = ActionTokenizer(processor.tokenizer.vocab_size)
        self.language_model = model.language_model.model
        self.lm_head = model.language_model.lm_head
        self.text_config = model.language_model.config
        self.hidden_size = self.text_config.hidden_size
        self._init_action_head()

    @classmethod
    def load(
        cls,
        directory: str | Path,
        unnorm_key: str | None = None,
        trust_remote_code: bool = False,
        device: str = "cpu",
        dtype: torch.dtype = torch.bfloat16,
    ) -> OpenVLABackend:
        directory = Path(directory)
        config = check_checkpoint(directory)
        norm_stats = load_norm_stats(directory, config, unnorm_key)
        if not trust_remote_code:
            raise PermissionError(
                f"{directory} holds an OpenVLA checkpoint whose model classes are Python files "
                "inside it; kerv_ros runs them only when you allow it (trust_remote_code=true)"
            )
        import transformers

        # transformers 5 renamed the auto class OpenVLA registers under.
        auto = getattr(transformers, "AutoModelForVision2Seq", None)
        auto = auto or transformers.AutoModelForImageTextToText
        processor = transformers.AutoProcessor.from_pretrained(
            directory, trust_remote_code=True, local_files_only=True
        )
        model = auto.from_pretrained(
            directory, trust_remote_code=True, local_files_only=True, torch_dtype=dtype
        ).to(device)
        return cls(model, processor, norm_stats)

    def _prefill_embeds(self, observation: Observation) -> torch.Tensor:
        from PIL import Image

        inputs = self.processor(
            openvla_prompt(observation.instruction), Image.fromarray(observation.image)
        )
        ids = inputs["input_ids"].to(self.device)
        if ids[0, -1].item() != OPENVLA_EMPTY_TOKEN:
            ids = torch.cat([ids, torch.tensor([[OPENVLA_EMPTY_TOKEN]], device=self.device)], 1)
        pixels = inputs["pixel_values"].to(self.device, self.lm_head.weight.dtype)
        patches = self.model.projector(self.model.vision_backbone(pixels))
        embeds = self.embed_tokens(ids)
        # Prismatic puts the image patches right after BOS.
        return torch.cat([embeds[:, :1], patches.to(embeds.dtype), embeds[:, 1:]], dim=1)
