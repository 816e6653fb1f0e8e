"""The part of a policy backend shared by every transformers decoder-only VLA.

Prefill differs between models (how image features and prompt become input embeddings); the
decode side does not. Two verifier paths run the language model over those embeddings:

- ``lean`` (the default): :mod:`kerv_ros.policy.lean`, a plain-PyTorch forward over the same
  modules with a preallocated KV cache, for Llama-family language models;
- ``transformers``: the model's own forward, a 4-D boolean attention mask (passed through to
  SDPA unchanged) and explicit position ids over a ``DynamicCache``.

Both give the same tokens (``test/test_lean.py``); the lean one issues a fraction of the ops.
Subclasses implement :meth:`_prefill_embeds` and point at their language model, lm_head and
embedding table.
"""

from __future__ import annotations

import logging
from abc import abstractmethod

import numpy as np
import torch
from torch import nn
from transformers.cache_utils import DynamicCache

from kerv_ros.config import VERIFIER_PATHS
from kerv_ros.policy import kv_cache
from kerv_ros.policy.backend import (
    Observation,
    PolicyBackend,
    PrefillState,
    TreeOutput,
    tree_attention,
)
from kerv_ros.policy.lean import PREFILL_BLOCK, LeanCache, LeanLlama
from kerv_ros.policy.precision import PrecisionSet, build_precisions

log = logging.getLogger(__name__)

TREE_HEADROOM = 64
"""Cache positions reserved after the prefix at prefill: seven tokens and a tree of drafts."""
INSTRUCTION_SLACK = 128
"""Prompt tokens a compiled cache holds beyond the warm-up prompt's: instructions change live,
and a prefix longer than the cache runs eagerly."""


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
    verifier_path: str = "transformers"
    """Which of :data:`VERIFIER_PATHS` runs the language model (:meth:`set_verifier_path`);
    ``lean`` from construction wherever it can run the model."""
    _lean: LeanLlama | None = None

    def compile_verifier(self, max_nodes: int = 16, instruction: str = "") -> float:
        """``torch.compile`` the lean path's forwards now, at configure.

        One graph per shape at every precision the model can switch to, all compiled and run
        once here: the prefill of ``instruction``'s prompt block and of the next block, and
        verifies of 1, 4, 16, ... nodes up to ``max_nodes``. Any other shape (a longer
        instruction, a larger tree, a precision built later) runs eagerly: never a compile
        inside a control step. Returns the seconds it took.
        Raises what the compiler raised (no C++ compiler, an op it cannot lower), the path
        left eager.
        """
        if self.verifier_path != "lean":
            raise ValueError("only the lean verifier path compiles (verifier: lean)")
        size = self.image_size or 224
        observation = Observation(
            image=np.zeros((size, size, 3), dtype=np.uint8),
            instruction=instruction or "pick up the red cube",
            state=np.zeros(self.state_dim, dtype=np.float32) if self.state_dim else None,
        )
        buckets = [1]
        while buckets[-1] < max_nodes:
            buckets.append(buckets[-1] * 4)
        length = self.prefill(observation).length
        capacity = length + INSTRUCTION_SLACK + buckets[-1]
        block = -(-length // PREFILL_BLOCK) * PREFILL_BLOCK
        prefill_blocks = (block, block + PREFILL_BLOCK)
        dtype, device = self.lm_head.weight.dtype, self.device
        names = self.precisions.names if self.precisions else (None,)
        first = self.action_tokenizer.first_token

        @torch.inference_mode()
        def warm_up() -> None:
            try:
                for name in names:
                    if name is not None:
                        self.precisions.set(name)
                    for block in prefill_blocks:  # the prompt's block and the next one's
                        embeds = torch.zeros(1, block, self.hidden_size, dtype=dtype, device=device)
                        positions = torch.arange(block, device=device)
                        self._lean(embeds, positions, self._lean.new_cache(capacity), 0)
                    state = self.prefill(observation)
                    for n in buckets:
                        self.forward_tree(state, [first] * n, [-1, *range(n - 1)])
            finally:
                if self.precisions:
                    self.precisions.set(self.precisions.full)

        limit = torch._dynamo.config.cache_size_limit
        graphs = (len(buckets) + len(prefill_blocks)) * len(names)
        torch._dynamo.config.cache_size_limit = max(limit, graphs + 2)
        return self._lean.compile(tuple(buckets), capacity, warm_up)

    @property
    def compile_s(self) -> float | None:
        """Seconds the lean verifier took to compile at configure; None where it runs eager."""
        return None if self._lean is None else self._lean.compile_s

    @property
    def buckets(self) -> tuple[int, ...]:
        """Node counts of the compiled verify graphs (empty while eager)."""
        return () if self._lean is None else self._lean.buckets

    def _init_verifier(self) -> None:
        """The lean path where it can run this language model, else transformers' (with why)."""
        try:
            self.set_verifier_path("lean")
        except TypeError as err:
            log.warning("the lean verifier cannot run this language model (%s): transformers", err)

    def set_verifier_path(self, name: str) -> None:
        """Run the language model on ``name`` from the next prefill on.

        ``lean`` refuses a language model it cannot run (not Llama-shaped) with the reason.
        """
        if name not in VERIFIER_PATHS:
            raise ValueError(f"verifier path {name!r}; choose from {', '.join(VERIFIER_PATHS)}")
        if name == "lean" and self._lean is None:
            self._lean = LeanLlama(self.language_model)
        self.verifier_path = name

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
        if self.verifier_path == "lean":
            length = embeds.shape[1]
            cache = self._lean.new_cache(length + TREE_HEADROOM)
            positions = torch.arange(length, device=self.device)
            hidden = self._lean(embeds, positions, cache, 0)[0]
        else:
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
        ancestors, depth = tree_attention(parents)
        embeds = self.embed_tokens(torch.tensor([tokens], dtype=torch.long))
        positions = (depth + state.length).to(self.device)
        if isinstance(state.cache, LeanCache):
            # A tree that was never committed is simply overwritten.
            hidden = self._lean(embeds, positions, state.cache, state.length, ancestors)[0]
        else:
            kv_cache.truncate(state.cache, state.length)  # drop a tree never committed
            n = len(tokens)
            mask = torch.cat([torch.ones(n, state.length, dtype=torch.bool), ancestors], dim=1)
            out = self.language_model(
                inputs_embeds=embeds,
                attention_mask=mask[None, None].to(self.device),
                position_ids=positions[None],
                past_key_values=state.cache,
                use_cache=True,
            )
            hidden = out.last_hidden_state[0]
        return TreeOutput(action_logits=self.hidden_to_action_logits(hidden), hidden=hidden)

    @torch.inference_mode()
    def keep_path(self, state: PrefillState, path: list[int]) -> None:
        if isinstance(state.cache, LeanCache):
            state.cache.keep(state.length, path)
        else:
            kv_cache.keep_positions(state.cache, state.length, path)
        state.length += len(path)
