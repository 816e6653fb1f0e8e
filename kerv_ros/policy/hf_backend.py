"""The part of a policy backend shared by every transformers decoder-only VLA.

Prefill differs between models (how image features and prompt become input embeddings); the
decode side does not: a Llama-style ``language_model`` takes input embeddings, a 4-D boolean
attention mask (passed through to SDPA unchanged) and explicit position ids over a
``DynamicCache``, which is all a tree verification needs. Subclasses implement
:meth:`_prefill_embeds` and point at their language model, lm_head and embedding table.
"""

from __future__ import annotations

from abc import abstractmethod

import torch
from torch import nn
from transformers.cache_utils import DynamicCache

from kerv_ros.policy import kv_cache
from kerv_ros.policy.backend import (
    Observation,
    PolicyBackend,
    PrefillState,
    TreeOutput,
    tree_attention,
)
from kerv_ros.policy.precision import PrecisionSet, build_precisions


def cast_keeping_rope(module: nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """Move and cast ``module`` in place, RoPE's inverse frequencies kept in float32.

    transformers computes them in float32 whatever the model dtype; a plain ``.to(bfloat16)``
    would round them and shift every position's rotation.
    """
    keep = {
        name: buffer.float().clone()
        for name, buffer in module.named_buffers()
        if name.endswith("inv_freq")
    }
    module.to(device=device, dtype=dtype)
    for name, value in keep.items():
        owner, _, attr = name.rpartition(".")
        setattr(module.get_submodule(owner), attr, value.to(device))


class HFDecoderBackend(PolicyBackend):
    """Verifier plumbing over a transformers base decoder (``LlamaModel`` and kin)."""

    language_model: nn.Module  # base decoder returning ``last_hidden_state``
    lm_head: nn.Linear
    text_config: object

    model: nn.Module  # the whole policy network (vision, projector, language model, lm_head)

    def build_precisions(self, names: tuple[str, ...]) -> PrecisionSet:
        """Switch the whole network's linear layers (the action head stays full precision)."""
        self.precisions = build_precisions(self.model, names)
        return self.precisions

    def _init_action_head(self) -> None:
        """Slice the lm_head to the action rows once: the verifier only scores action tokens."""
        first = self.action_tokenizer.first_token
        last = self.action_tokenizer.vocab_size
        self._action_weight = self.lm_head.weight[first:last]
        self._action_bias = None if self.lm_head.bias is None else self.lm_head.bias[first:last]

    @abstractmethod
    def _prefill_embeds(self, observation: Observation) -> torch.Tensor:
        """Input embeddings (1 x L x H) of image and prompt, image features spliced in."""

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.language_model.get_input_embeddings()(tokens.to(self.device))

    def hidden_to_action_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(hidden, self._action_weight, self._action_bias)

    @torch.inference_mode()
    def prefill(self, observation: Observation) -> PrefillState:
        embeds = self._prefill_embeds(observation)
        cache = DynamicCache(config=self.text_config)
        out = self.language_model(inputs_embeds=embeds, past_key_values=cache, use_cache=True)
        hidden = out.last_hidden_state[0]
        return PrefillState(
            cache=cache,
            length=embeds.shape[1],
            prefix_hidden=hidden,
            prefix_embeds=embeds[0],
            action_logits=self.hidden_to_action_logits(hidden[-1]),
        )

    @torch.inference_mode()
    def forward_tree(
        self, state: PrefillState, tokens: list[int], parents: list[int]
    ) -> TreeOutput:
        kv_cache.truncate(state.cache, state.length)  # drop a tree that was never committed
        ancestors, depth = tree_attention(parents)
        n = len(tokens)
        mask = torch.cat([torch.ones(n, state.length, dtype=torch.bool), ancestors], dim=1)
        out = self.language_model(
            inputs_embeds=self.embed_tokens(torch.tensor([tokens], dtype=torch.long)),
            attention_mask=mask[None, None].to(self.device),
            position_ids=(depth + state.length)[None].to(self.device),
            past_key_values=state.cache,
            use_cache=True,
        )
        hidden = out.last_hidden_state[0]
        return TreeOutput(action_logits=self.hidden_to_action_logits(hidden), hidden=hidden)

    def keep_path(self, state: PrefillState, path: list[int]) -> None:
        kv_cache.keep_positions(state.cache, state.length, path)
        state.length += len(path)
