r"""A native backend for published OpenVLA checkpoints (openvla/openvla-7b and its fine-tunes).

It reads the checkpoint directory as published (``config.json`` with OpenVLA's keys, safetensors
weights or a sharded index, the tokenizer, ``preprocessor_config.json``, ``norm_stats`` or
``dataset_statistics.json``) into kerv_ros's own definition of the network
(:mod:`kerv_ros.policy.prismatic`, on transformers' Llama, DINOv2 and SigLIP modules). Nothing
from the checkpoint directory is executed: the three ``.py`` files OpenVLA ships beside its
weights are never imported, and ``trust_remote_code`` is not needed.

What it computes is OpenVLA's ``predict_action`` (checked token for token and logit for logit
against OpenVLA's own code in ``test/test_openvla_conformance.py``): each tower's PIL-bicubic
resize and mean/std, the prompt ``In: What action should the robot take to {instruction.lower()}?
\nOut:`` (not stripped), BOS, the 256 projected patches, the prompt ids with 29871 appended.
"""

from __future__ import annotations

import json
import logging
import resource
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from kerv_ros.actions import ActionTokenizer, NormStats
from kerv_ros.policy.backend import Observation
from kerv_ros.policy.hf_backend import HFDecoderBackend
from kerv_ros.policy.prismatic import (
    WEIGHTS_FILE,
    WEIGHTS_INDEX,
    CheckpointError,
    build_model,
)

log = logging.getLogger(__name__)

OPENVLA_EMPTY_TOKEN = 29871
"""OpenVLA's ``predict_action`` appends this (Llama-2's empty piece) after ``Out:``."""
PREPROCESSOR_FILE = "preprocessor_config.json"


def openvla_prompt(instruction: str) -> str:
    """OpenVLA's prompt (``get_openvla_prompt`` in its deploy script): lowercased, not stripped."""
    return f"In: What action should the robot take to {instruction.lower()}?\nOut:"


def is_openvla_checkpoint(directory: Path) -> bool:
    """A transformers directory whose config.json says it is OpenVLA."""
    try:
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return config.get("model_type") == "openvla"


def check_checkpoint(directory: str | Path) -> dict:
    """Validate an OpenVLA checkpoint directory; return its config.json.

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
    index_path = directory / WEIGHTS_INDEX
    if index_path.is_file():
        try:
            shards = set(json.loads(index_path.read_text(encoding="utf-8"))["weight_map"].values())
        except (json.JSONDecodeError, KeyError, AttributeError) as err:
            raise ValueError(f"{index_path} is not a safetensors index: {err!r}") from err
        missing = sorted(s for s in shards if not (directory / s).is_file())
        if missing:
            raise FileNotFoundError(f"{directory} is incomplete: weight shards missing: {missing}")
    elif not (directory / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"{directory} has no weights ({WEIGHTS_FILE} or {WEIGHTS_INDEX})")
    if not any((directory / name).is_file() for name in ("tokenizer.model", "tokenizer.json")):
        raise FileNotFoundError(f"{directory} has no tokenizer (tokenizer.model/tokenizer.json)")
    if not (directory / PREPROCESSOR_FILE).is_file():
        raise FileNotFoundError(f"{directory} has no {PREPROCESSOR_FILE}: image sizes unknown")
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


class ImagePreprocessor:
    """Each tower's input as OpenVLA's ``PrismaticImageProcessor`` makes it (``resize-naive``).

    PIL bicubic resize to the tower's size (aspect ratio ignored), /255, then the tower's own
    mean and std, subtracted and divided in float32 exactly as torchvision's ``normalize`` does.
    """

    def __init__(self, config: dict) -> None:
        strategy = config.get("image_resize_strategy")
        if strategy != "resize-naive":
            raise ValueError(f"image_resize_strategy {strategy!r}: only 'resize-naive' is read")
        interpolations = set(config.get("interpolations", ["bicubic"]))
        if interpolations != {"bicubic"}:
            raise ValueError(f"interpolations {sorted(interpolations)}: only 'bicubic' is read")
        self.sizes = [tuple(s[1:]) for s in config["input_sizes"]]
        self.means = [torch.tensor(m, dtype=torch.float32)[:, None, None] for m in config["means"]]
        self.stds = [torch.tensor(s, dtype=torch.float32)[:, None, None] for s in config["stds"]]

    @classmethod
    def from_file(cls, path: Path) -> ImagePreprocessor:
        try:
            return cls(json.loads(path.read_text(encoding="utf-8")))
        except (KeyError, TypeError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: not an OpenVLA image processor config ({err!r})") from err

    def __call__(self, image: np.ndarray) -> list[torch.Tensor]:
        pil = Image.fromarray(image).convert("RGB")
        out = []
        for (height, width), mean, std in zip(self.sizes, self.means, self.stds, strict=True):
            resized = pil.resize((width, height), Image.BICUBIC)
            pixels = torch.from_numpy(np.asarray(resized).copy()).permute(2, 0, 1).float() / 255
            out.append(((pixels - mean) / std)[None])
        return out


class OpenVLABackend(HFDecoderBackend):
    """OpenVLA (two ViT towers + fused GELU projector + Llama-2) behind the backend interface."""

    def __init__(
        self,
        model,
        tokenizer,
        preprocessor: ImagePreprocessor,
        norm_stats: NormStats,
        text_vocab: int,
        device: torch.device,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.preprocessor = preprocessor
        self.norm_stats = norm_stats
        self.device = device
        self.dtype = model.lm_head.weight.dtype
        self.action_tokenizer = ActionTokenizer(text_vocab)
        self.language_model = model.language_model
        self.lm_head = model.lm_head
        self.text_config = model.text_config
        self.hidden_size = self.text_config.hidden_size
        self._init_action_head()
        self._init_verifier()

    @classmethod
    def load(
        cls,
        directory: str | Path,
        unnorm_key: str | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
    ) -> OpenVLABackend:
        """Load a checkpoint directory; errors name the file or tensor that is wrong.

        ``dtype`` applies to the whole network (default: bfloat16 on a GPU, float32 on the CPU).
        """
        from transformers import LlamaTokenizer

        start = time.perf_counter()
        directory = Path(directory)
        device = torch.device(device)
        dtype = dtype or (torch.float32 if device.type == "cpu" else torch.bfloat16)
        config = check_checkpoint(directory)
        norm_stats = load_norm_stats(directory, config, unnorm_key)
        preprocessor = ImagePreprocessor.from_file(directory / PREPROCESSOR_FILE)
        try:
            tokenizer = LlamaTokenizer.from_pretrained(directory, local_files_only=True)
        except Exception as err:  # transformers and tokenizers raise many types here
            raise ValueError(f"{directory}: the tokenizer does not load ({err})") from err
        image_size = preprocessor.sizes[0][0]
        model = build_model(directory, config, image_size, dtype, device)
        vocab = model.text_config.vocab_size - int(config.get("pad_to_multiple_of", 0) or 0)
        if vocab != tokenizer.vocab_size:
            raise CheckpointError(
                f"{directory}: embedding rows {model.text_config.vocab_size} minus padding "
                f"{config.get('pad_to_multiple_of')} = {vocab}, but the tokenizer has "
                f"{tokenizer.vocab_size} tokens: action ids would be misplaced"
            )
        backend = cls(model, tokenizer, preprocessor, norm_stats, vocab, device)
        params = sum(p.numel() for p in model.parameters())
        log.info(
            "OpenVLA %s: %.1f M parameters, %s on %s, loaded in %.1f s, peak RSS %.0f MiB",
            directory,
            params / 1e6,
            str(dtype).removeprefix("torch."),
            device,
            time.perf_counter() - start,
            peak_rss_mib(),
        )
        return backend

    def parameters(self):
        return self.model.parameters()

    def prompt_ids(self, instruction: str) -> list[int]:
        """What ``predict_action`` hands to ``generate``: BOS, prompt, then 29871."""
        ids = self.tokenizer(openvla_prompt(instruction))["input_ids"]
        if ids[-1] != OPENVLA_EMPTY_TOKEN:
            ids = [*ids, OPENVLA_EMPTY_TOKEN]
        return ids

    def _prefill_embeds(self, observation: Observation) -> torch.Tensor:
        pixels = [p.to(self.device, self.dtype) for p in self.preprocessor(observation.image)]
        patches = self.model.image_patches(pixels)
        ids = torch.tensor([self.prompt_ids(observation.instruction)], device=self.device)
        embeds = self.embed_tokens(ids)
        # Prismatic puts the image patches right after BOS.
        return torch.cat([embeds[:, :1], patches.to(embeds.dtype), embeds[:, 1:]], dim=1)


def peak_rss_mib() -> float:
    """Peak resident memory of this process in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
