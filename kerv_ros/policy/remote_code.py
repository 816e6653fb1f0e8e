"""OpenVLA through the checkpoint's own Python classes (``trust_remote_code``).

For Prismatic variants the native loader does not know (another vision backbone or projector).
Used only when the user turns
``trust_remote_code`` on: it imports and runs the ``.py`` files in the checkpoint directory.

The published OpenVLA layout never comes here (see :mod:`kerv_ros.policy.openvla`). OpenVLA's
own files were written for transformers 4.40 and do not run under transformers 5 as published;
a variant whose files do is driven like every other backend: its vision backbone and projector
for the prefill, its Llama for the decode.
"""

from __future__ import annotations

from pathlib import Path

import torch

from kerv_ros.actions import ActionTokenizer, NormStats
from kerv_ros.policy.backend import Observation
from kerv_ros.policy.hf_backend import HFDecoderBackend, cast_keeping_rope
from kerv_ros.policy.openvla import (
    OPENVLA_EMPTY_TOKEN,
    check_checkpoint,
    load_norm_stats,
    openvla_prompt,
)


class RemoteCodeOpenVLA(HFDecoderBackend):
    """A Prismatic model built by its own code, behind the backend interface."""

    def __init__(self, model, processor, norm_stats: NormStats, device: torch.device) -> None:
        self.model = model.eval()
        self.processor = processor
        self.device = device
        self.norm_stats = norm_stats
        self.action_tokenizer = ActionTokenizer(processor.tokenizer.vocab_size)
        self.language_model = model.language_model.model
        self.lm_head = model.language_model.lm_head
        self.text_config = model.language_model.config
        self.hidden_size = self.text_config.hidden_size
        self._init_action_head()
        self._init_verifier()

    @classmethod
    def load(
        cls,
        directory: str | Path,
        unnorm_key: str | None,
        device: str | torch.device,
        dtype: torch.dtype,
    ) -> RemoteCodeOpenVLA:
        import transformers

        directory = Path(directory)
        config = check_checkpoint(directory)
        norm_stats = load_norm_stats(directory, config, unnorm_key)
        auto = getattr(transformers, "AutoModelForVision2Seq", None)
        auto = auto or transformers.AutoModelForImageTextToText
        processor = transformers.AutoProcessor.from_pretrained(
            directory, trust_remote_code=True, local_files_only=True
        )
        model = auto.from_pretrained(directory, trust_remote_code=True, local_files_only=True)
        # from_pretrained's dtype leaves the Llama at text_config's dtype: cast the whole model.
        device = torch.device(device)
        cast_keeping_rope(model, device, dtype)
        return cls(model, processor, norm_stats, device)

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
        return torch.cat([embeds[:, :1], patches.to(embeds.dtype), embeds[:, 1:]], dim=1)
