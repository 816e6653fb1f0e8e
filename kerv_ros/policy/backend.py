"""The policy backend contract the decoding engine is written against.

A backend owns the target VLA and its KV cache. The engine only ever asks four things of it:
prefill an observation, run one forward over a tree of candidate tokens, keep one root-to-node
path of that tree in the cache, and map hidden states to action logits. Everything that differs
between models (image preprocessing, prompt format, where the image tokens go) stays behind it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from kerv_ros.actions import ActionTokenizer, NormStats
from kerv_ros.observation import Observation
from kerv_ros.policy.precision import PrecisionError, PrecisionSet


@dataclass
class PrefillState:
    """A prefilled observation: the KV cache and what the engine and drafter need next.

    ``length`` counts the positions committed to ``cache``. A backend may keep one cache for
    all steps (the lean verifier does): a new prefill then invalidates the previous state.
    ``prefix_hidden`` and
    ``prefix_embeds`` (L x H) are the last hidden states and the input embeddings of the prefix
    (image features included): an EAGLE-style drafter reads both.
    """

    cache: Any
    length: int
    prefix_hidden: torch.Tensor
    prefix_embeds: torch.Tensor
    action_logits: torch.Tensor  # logits over the action tokens at the last prefix position
    extras: dict = field(default_factory=dict)

    def scene_feature(self) -> np.ndarray:
        """HeiSD's key for this observation: the last prefix position's hidden state (float32).

        It has seen image, joint state and prompt, and the first action is read from it.
        """
        return self.prefix_hidden[-1].float().cpu().numpy()


@dataclass
class TreeOutput:
    """Per tree node: logits over the action tokens for the next position, and hidden state."""

    action_logits: torch.Tensor  # n x n_bins
    hidden: torch.Tensor  # n x H


def tree_attention(parents: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Ancestor mask (n x n, True where row attends to column) and depth of each node.

    ``parents[i]`` is the index of node i's parent in the same list, or -1 when node i hangs
    directly off the committed prefix. Parents must come before their children.
    """
    n = len(parents)
    mask = torch.zeros(n, n, dtype=torch.bool)
    depth = torch.zeros(n, dtype=torch.long)
    for i, parent in enumerate(parents):
        if parent >= i:
            raise ValueError(f"node {i} has parent {parent}: parents must precede children")
        if parent >= 0:
            mask[i] = mask[parent]
            depth[i] = depth[parent] + 1
        mask[i, i] = True
    return mask, depth


class PolicyBackend(ABC):
    """A token-based VLA as the decoding engine sees it (DESIGN.md 2, Policy backend)."""

    action_tokenizer: ActionTokenizer
    norm_stats: NormStats
    hidden_size: int
    device: torch.device
    state_dim: int = 0
    """Joint positions the policy reads beside the image (0: none, as OpenVLA)."""
    precisions: PrecisionSet | None = None
    """Numeric precisions the verifier can switch between (dyq), built by :meth:`build_precisions`
    at load; None: only the model's own."""
    image_size: int | None = None
    """Side of the square image the policy is given, where it must be given that size (the
    default model): recordings are resized to it once, when read. None where the backend's
    own processor resizes what the camera gives (OpenVLA), so recordings keep their size and
    offline evaluation sees what the node sees."""

    def build_precisions(self, names: tuple[str, ...]) -> PrecisionSet:
        """Build these precision variants beside the model's own (``policy/precision.py``)."""
        raise PrecisionError(f"{type(self).__name__} has no precision variants")

    @abstractmethod
    def prefill(self, observation: Observation) -> PrefillState:
        """Encode image + prompt into a fresh KV cache (one target forward)."""

    @abstractmethod
    def forward_tree(
        self, state: PrefillState, tokens: list[int], parents: list[int]
    ) -> TreeOutput:
        """One target forward over a token tree hanging off the committed prefix.

        Each node sees the committed prefix, its ancestors and itself, at position
        ``state.length + depth``. The tree's keys and values are appended to the cache after
        the committed positions until :meth:`keep_path` decides which of them stay.
        """

    @abstractmethod
    def keep_path(self, state: PrefillState, path: list[int]) -> None:
        """Commit the tree nodes ``path`` (a root-to-node chain) to the cache, drop the rest."""

    @abstractmethod
    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Input embeddings of token ids (the drafter shares them with the target)."""

    @abstractmethod
    def hidden_to_action_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The target's lm_head restricted to the action rows (... x H -> ... x n_bins)."""

    def action_logits_to_tokens(self, logits: torch.Tensor) -> list[int]:
        """Greedy choice among the action tokens, as token ids.

        Decoding is constrained to action tokens: a step of 7 actions must be 7 action tokens,
        and an unconstrained argmax that lands on a text token has no action to decode to.
        """
        first = self.action_tokenizer.first_token
        return [first + int(i) for i in torch.argmax(logits, dim=-1).tolist()]
