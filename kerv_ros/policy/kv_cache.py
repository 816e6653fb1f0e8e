"""Small operations on transformers' ``DynamicCache`` that speculative decoding needs.

They act on the per-layer key/value tensors (batch x heads x positions x dim) directly, so that
their meaning does not depend on the sign conventions of ``DynamicCache.crop``, which changed
between transformers releases.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicCache


def truncate(cache: DynamicCache, length: int) -> None:
    """Keep the first ``length`` positions of every layer."""
    for layer in cache.layers:
        if layer.is_initialized and layer.keys.shape[-2] > length:
            layer.keys = layer.keys[:, :, :length]
            layer.values = layer.values[:, :, :length]


def keep_positions(cache: DynamicCache, start: int, offsets: list[int]) -> None:
    """Keep positions ``start + offsets`` after the first ``start`` ones, in that order.

    Used to commit one root-to-node path of a verified draft tree: the path's keys and values
    move to ``start .. start + len(offsets) - 1`` and everything after is dropped.
    """
    if offsets == list(range(len(offsets))):
        truncate(cache, start + len(offsets))
        return
    for layer in cache.layers:
        if not layer.is_initialized:
            continue
        index = torch.tensor(offsets, dtype=torch.long, device=layer.keys.device) + start
        layer.keys = torch.cat([layer.keys[:, :, :start], layer.keys[:, :, index]], dim=2)
        layer.values = torch.cat([layer.values[:, :, :start], layer.values[:, :, index]], dim=2)
