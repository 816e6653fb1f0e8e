"""The lean verifier path: a plain-PyTorch Llama forward with a preallocated KV cache.

Why: transformers' ``LlamaModel`` builds masks, updates a generic cache and dispatches through
layers of wrappers on every forward, which a verifier of seven-token steps pays again and
again (DESIGN.md 6 profiled ~880 ATen ops per decode of the default model). This module runs
the same computation the gpt-fast way: the layers of
the checkpoint's own ``LlamaModel`` are called module by module (norms, projections and MLP are
the very same ``nn.Module`` objects, so precision variants and device moves apply unchanged,
and no weight is copied), attention is one ``scaled_dot_product_attention`` over a
preallocated cache, and a tree of draft tokens is written in place after the committed
positions and compacted in place when a path is kept.

What is written here rather than taken from transformers: the attention glue (RoPE rotation,
cache writes, the SDPA call), because transformers' ``StaticCache`` path still builds its masks
per call and does not keep a tree path in place. Equality with the transformers path is tested
(``test/test_lean.py``: identical tokens on every mode at r = 0, logits within 1e-5). What it
saves on a CPU is measured in ``docs/benchmarks.md`` (a decode there is bound by reading the
weights, so less than the op count suggests).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

CAPACITY_STEP = 64
"""The cache grows in whole blocks of positions: one allocation covers many steps' trees."""
PREFILL_BLOCK = 32
"""A compiled prefill is padded to a multiple of this many tokens: one graph serves every
prompt of the same block, and instructions of similar length share it."""


@dataclass
class LeanCache:
    """Keys and values of every layer, ``1 x kv_heads x capacity x head_dim``, preallocated.

    Positions ``0 .. length - 1`` (the backend's ``PrefillState.length``) are committed; a
    verified tree sits after them until :meth:`keep` compacts one of its paths.
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2]

    def reserve(self, needed: int) -> None:
        """Room for ``needed`` positions, keeping what is written (grows in whole blocks)."""
        if needed <= self.capacity:
            return
        size = -(-needed // CAPACITY_STEP) * CAPACITY_STEP
        for store in (self.keys, self.values):
            for i, old in enumerate(store):
                new = old.new_zeros(*old.shape[:2], size, old.shape[3])
                new[:, :, : old.shape[2]] = old
                store[i] = new

    def keep(self, start: int, offsets: list[int]) -> None:
        """Move positions ``start + offsets`` to ``start, start + 1, ...`` (a kept tree path)."""
        if offsets == list(range(len(offsets))):
            return  # the path already sits where it belongs
        index = torch.tensor(offsets, device=self.keys[0].device) + start
        end = start + len(offsets)
        for store in (self.keys, self.values):
            for tensor in store:
                tensor[:, :, start:end] = tensor.index_select(2, index)


class LeanLlama:
    """Forward of a transformers ``LlamaModel`` (or a subclass with its layout) over its modules.

    Holds references only: ``model``'s parameters are read where they live. Requires the layer
    layout of Llama (``input_layernorm``, ``self_attn.{q,k,v,o}_proj``,
    ``post_attention_layernorm``, ``mlp``) and RoPE from ``model.rotary_emb``; anything else is
    refused at construction, so that a model it cannot run stays on the transformers path.

    One cache serves every step (a prefill starts it over): a 7B model's cache is hundreds of
    megabytes, and the engine holds one prefilled state at a time.

    Eager, attention reads exactly the written positions, and the forward is bit-identical to
    transformers'. Compiled (:meth:`compile`), every verify forward has a static shape, gpt-fast
    style: its tokens are padded to a bucket (1, 4, 16, ... nodes), written into the cache by
    index, and attend over the whole cache under a mask, so that one graph per bucket serves
    every step whatever the prefix length. A prefill is padded to a whole block of tokens at
    the end (causal attention keeps the real rows from seeing the padding).
    """

    def __init__(self, model: nn.Module) -> None:
        config = model.config
        self.model = model
        self.layers = list(model.layers[: config.num_hidden_layers])
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.scaling = self.head_dim**-0.5
        for i, layer in enumerate(self.layers):
            attn = getattr(layer, "self_attn", None)
            parts = ("q_proj", "k_proj", "v_proj", "o_proj")
            if attn is None or not all(hasattr(attn, p) for p in parts):
                raise TypeError(f"layer {i} is not a Llama decoder layer: {type(layer).__name__}")
        if getattr(config, "sliding_window", None):
            raise TypeError("sliding-window attention is not on the lean path")
        self._cache: LeanCache | None = None
        self._compiled: Callable | None = None
        self._stance = "eager_on_recompile"
        self.buckets: tuple[int, ...] = ()
        """Node counts of the compiled verify graphs (empty while eager)."""
        self.compile_s: float | None = None
        """Seconds :meth:`compile` took; None while eager."""

    def new_cache(self, positions: int) -> LeanCache:
        """The cache, started over, with room for ``positions`` (whole blocks)."""
        ref = self.model.norm.weight
        cache = self._cache
        if cache is None or cache.keys[0].dtype != ref.dtype or cache.keys[0].device != ref.device:
            size = -(-positions // CAPACITY_STEP) * CAPACITY_STEP
            shape = (1, self.kv_heads, size, self.head_dim)
            zeros = [torch.zeros(shape, dtype=ref.dtype, device=ref.device) for _ in self.layers]
            cache = self._cache = LeanCache(keys=zeros, values=[torch.zeros_like(z) for z in zeros])
        cache.reserve(positions)
        return cache

    def compile(
        self, buckets: tuple[int, ...], capacity: int, warm_up: Callable[[], None]
    ) -> float:
        """Compile the forwards (prefill blocks, verifies of ``buckets`` nodes); warm them up now.

        The cache is sized to ``capacity`` positions once (its size is part of every graph's
        shape). ``warm_up`` must issue a forward of every bucket at every precision the engine
        will switch to (each is a graph of its own). Afterwards a forward that would need a
        new graph (a larger cache, a precision not warmed) runs eagerly instead of compiling
        inside a control step (``eager_on_recompile``). Returns the seconds it took; on any
        failure the path stays eager and the error is raised for the caller to report.
        """
        started = time.perf_counter()
        self.new_cache(capacity)
        self.buckets = tuple(sorted(buckets))
        self._compiled = torch.compile(self._layers, dynamic=False)
        self._stance = "default"  # compile what the warm-up issues
        try:
            warm_up()
        except Exception:
            self._compiled, self.buckets = None, ()
            raise
        finally:
            self._stance = "eager_on_recompile"
        self.compile_s = time.perf_counter() - started
        return self.compile_s

    def forward(
        self,
        embeds: torch.Tensor,
        positions: torch.Tensor,
        cache: LeanCache,
        start: int,
        tree: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Last hidden states (1 x n x H, after the final norm) of ``embeds`` (1 x n x H).

        The n inputs are written to cache positions ``start .. start + n - 1`` at RoPE
        ``positions`` (n). ``tree`` None: causal over everything before (a prefill or a chain);
        else an n x n ancestor mask, each node also seeing every position before ``start``.
        """
        n = embeds.shape[1]
        if self._compiled is not None:
            if start == 0 and tree is None:  # a prefill: causal, padded to a whole block
                bucket = -(-n // PREFILL_BLOCK) * PREFILL_BLOCK
                if bucket <= cache.capacity:
                    return self._static(embeds, positions, cache, 0, None, bucket)
            elif start > 0 and n <= self.buckets[-1]:
                bucket = next(b for b in self.buckets if b >= n)
                if start + bucket <= cache.capacity:
                    return self._static(embeds, positions, cache, start, tree, bucket)
        end = start + n
        cache.reserve(end)
        cos, sin = self.model.rotary_emb(embeds, positions[None])
        mask = None
        if n > 1 and (tree is not None or start > 0):
            # One token sees everything before it: no mask. A chain after a prefix is causal.
            mask = torch.ones(n, end, dtype=torch.bool, device=embeds.device)
            if tree is None:
                mask = mask.tril(start)
            else:
                mask[:, start:] = tree
            mask = mask[None, None]
        index = torch.arange(start, end, device=embeds.device)
        keys, values = cache.keys, cache.values
        return self._layers(embeds, cos[:, None], sin[:, None], keys, values, index, mask, end)

    __call__ = forward

    def _static(
        self,
        embeds: torch.Tensor,
        positions: torch.Tensor,
        cache: LeanCache,
        start: int,
        tree: torch.Tensor | None,
        bucket: int,
    ) -> torch.Tensor:
        """A forward at a compiled shape: ``bucket`` rows, attention over the whole cache.

        Padding rows attend to themselves only (a prefill's: causally, after the real ones) and
        write after the real ones, where later forwards overwrite them; no real row sees them.
        A prefill (``start`` 0, no tree) needs no mask: causal attention from the first row.
        """
        n, device = embeds.shape[1], embeds.device
        pad = bucket - n
        embeds = nn.functional.pad(embeds, (0, 0, 0, pad))
        positions = torch.cat([positions, positions[-1:].expand(pad) + 1])
        cos, sin = self.model.rotary_emb(embeds, positions[None])
        mask = None
        if start > 0:
            mask = torch.zeros(bucket, cache.capacity, dtype=torch.bool, device=device)
            mask[:n, :start] = True
            own = torch.ones(n, n, dtype=torch.bool).tril() if tree is None else tree
            mask[:n, start : start + n] = own
            rows = torch.arange(n, bucket, device=device)
            mask[rows, start + rows] = True
            mask = mask[None, None]
        index = torch.arange(start, start + bucket, device=device)
        keys, values = cache.keys, cache.values
        with torch.compiler.set_stance(self._stance):
            cos, sin = cos[:, None], sin[:, None]
            hidden = self._compiled(embeds, cos, sin, keys, values, index, mask, None)
        return hidden[:, :n]

    def _layers(
        self,
        hidden: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        keys: list[torch.Tensor],
        values: list[torch.Tensor],
        index: torch.Tensor,
        mask: torch.Tensor | None,
        end: int | None,
    ) -> torch.Tensor:
        """The decoder layers and the final norm: what :meth:`compile` turns into graphs.

        The inputs' keys and values go to cache positions ``index``; attention reads the first
        ``end`` positions (None: all of them, under ``mask``). ``mask`` None: causal from 0.
        """
        n = hidden.shape[1]
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            x = layer.input_layernorm(hidden)
            q = attn.q_proj(x).view(1, n, self.heads, self.head_dim).transpose(1, 2)
            k = attn.k_proj(x).view(1, n, self.kv_heads, self.head_dim).transpose(1, 2)
            v = attn.v_proj(x).view(1, n, self.kv_heads, self.head_dim).transpose(1, 2)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            keys[i].index_copy_(2, index, k)
            values[i].index_copy_(2, index, v)
            out = nn.functional.scaled_dot_product_attention(
                q,
                keys[i][:, :, :end],
                values[i][:, :, :end],
                attn_mask=mask,
                is_causal=mask is None and n > 1,
                scale=self.scaling,
                enable_gqa=self.kv_heads != self.heads,
            )
            hidden = hidden + attn.o_proj(out.transpose(1, 2).reshape(1, n, -1))
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        return self.model.norm(hidden)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    """RoPE's half rotation (Llama's convention: the second half negated and moved first)."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)
