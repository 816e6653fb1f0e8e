"""Drafters: who proposes the tokens the verifier checks.

:class:`EagleDrafter` is an EAGLE-style head: one Llama decoder layer fed, at each position, the
target's last hidden state and the embedding of the next token, predicting the target's next
hidden state; the target's own lm_head (restricted to the action rows) turns that into token
scores. Working on the target's features rather than on tokens is what lets a single layer draft
well (EAGLE; Spec-VLA's drafter for OpenVLA).

A drafter hands out one :class:`DraftSession` per action step. The session keeps the drafter's
KV cache in step with the verifier: it feeds the (feature, token) pairs the verifier has
committed, drafts a tree in temporary cache slots, and drops those slots again.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import LlamaConfig, LlamaModel
from transformers.cache_utils import DynamicCache

from kerv_ros.config import DraftConfig
from kerv_ros.drafts import DraftTree, TokenSource
from kerv_ros.policy import kv_cache
from kerv_ros.policy.backend import PolicyBackend, PrefillState, tree_attention

DRAFTER_FORMAT_VERSION = 1


class DraftSession(Protocol):
    """One action step's drafting state."""

    forwards: int
    """Drafter forward passes run so far in this step."""
    source: TokenSource
    """Who the drafted tokens are credited to (a tree may override per node)."""

    def draft(self, tokens: list[int], max_depth: int) -> DraftTree:
        """Draft continuations of ``tokens`` (the step's tokens so far; the last is the root)."""

    def advance(self, path_hidden: torch.Tensor, accepted: list[int]) -> None:
        """Take in what the verifier committed: the root, then ``accepted``.

        ``path_hidden`` holds their target hidden states (len(accepted) + 1 rows).
        """


class Drafter(Protocol):
    def start(
        self, backend: PolicyBackend, state: PrefillState, draft: DraftConfig
    ) -> DraftSession:
        """Begin drafting for a freshly prefilled observation, trees of shape ``draft``."""


@dataclass(frozen=True)
class EagleConfig:
    """Sizes of the drafter head; they must match the target's hidden size."""

    hidden_size: int
    num_heads: int
    intermediate_size: int
    max_positions: int
    rope_theta: float = 10000.0
    norms: bool = True
    """RMSNorm before the attention and after the layer, as a Llama layer has. EAGLE-1/2 and
    Spec-VLA's drafters have neither (their fc output goes straight into attention, the layer's
    output straight into the lm_head); imported drafters of that layout set this False."""

    @classmethod
    def for_target(cls, text_config) -> EagleConfig:
        """The layer shape of the target's own decoder, as EAGLE does."""
        rope = getattr(text_config, "rope_parameters", None) or {}
        return cls(
            hidden_size=text_config.hidden_size,
            num_heads=text_config.num_attention_heads,
            intermediate_size=text_config.intermediate_size,
            max_positions=text_config.max_position_embeddings,
            rope_theta=float(rope.get("rope_theta", 10000.0)),
        )

    def llama(self) -> LlamaConfig:
        config = LlamaConfig(
            vocab_size=1,  # token embeddings come from the target; this table is never read
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=1,
            num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_heads,
            max_position_embeddings=self.max_positions,
            rope_parameters={"rope_type": "default", "rope_theta": self.rope_theta},
            bos_token_id=None,
            eos_token_id=None,
            pad_token_id=None,
        )
        config._attn_implementation = "sdpa"
        return config


class EagleDrafter(nn.Module):
    """fc(concat(token embedding, target feature)) -> one decoder layer -> predicted feature."""

    def __init__(self, config: EagleConfig, draft: DraftConfig | None = None) -> None:
        super().__init__()
        self.config = config
        self.draft_config = draft or DraftConfig()
        self.fc = nn.Linear(2 * config.hidden_size, config.hidden_size)
        self.decoder = LlamaModel(config.llama())
        if not config.norms:
            self.decoder.layers[0].input_layernorm = nn.Identity()
            self.decoder.norm = nn.Identity()

    def forward(
        self,
        features: torch.Tensor,
        embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        cache: DynamicCache | None,
    ) -> torch.Tensor:
        """(B x n x H features, B x n x H embeds) -> B x n x H predicted next features."""
        inputs = self.fc(torch.cat([embeds, features], dim=-1))
        out = self.decoder(
            inputs_embeds=inputs,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=cache is not None,
        )
        return out.last_hidden_state

    def start(
        self, backend: PolicyBackend, state: PrefillState, draft: DraftConfig | None = None
    ) -> EagleSession:
        """A session drafting trees of shape ``draft``.

        That is the engine's (set live by the node's draft_* parameters); ``draft_config`` is
        only the shape the drafter was saved with, used when none is given.
        """
        return EagleSession(self, backend, state, draft or self.draft_config)

    def save(self, path: str | Path) -> None:
        """``FILE.safetensors`` plus ``FILE.json`` (sizes and default tree shape)."""
        path = Path(path)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(path))
        meta = {
            "format_version": DRAFTER_FORMAT_VERSION,
            "eagle_config": asdict(self.config),
            "draft_config": asdict(self.draft_config),
        }
        path.with_suffix(".json").write_text(json.dumps(meta, indent=2), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> EagleDrafter:
        path = Path(path)
        meta_path = path.with_suffix(".json")
        if not path.is_file() or not meta_path.is_file():
            raise FileNotFoundError(f"drafter needs {path} and {meta_path}")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("format_version") != DRAFTER_FORMAT_VERSION:
            raise ValueError(
                f"{meta_path}: unsupported format_version {meta.get('format_version')}"
            )
        drafter = cls(EagleConfig(**meta["eagle_config"]), DraftConfig(**meta["draft_config"]))
        drafter.load_state_dict(load_file(str(path), device=str(device)))
        return drafter.to(device).eval()


@dataclass
class _Candidate:
    token: int
    parent: int  # index into the candidate list, -1 for a child of the root
    depth: int
    score: float  # cumulative log-probability under the drafter
    feature: torch.Tensor  # the drafter's predicted feature at the parent (its input feature)


class EagleSession:
    """Drafting state of one step: the drafter's committed cache and the pairs not yet fed."""

    source = TokenSource.DRAFTER

    def __init__(
        self,
        drafter: EagleDrafter,
        backend: PolicyBackend,
        state: PrefillState,
        draft: DraftConfig,
    ) -> None:
        self.drafter = drafter
        self.draft_config = draft
        self.backend = backend
        self.cache = DynamicCache(config=drafter.decoder.config)
        self.length = 0
        self.forwards = 0
        # EAGLE pairs feature i with the token at i + 1; the prefix supplies all but the root's.
        self.pending_features = state.prefix_hidden[:-1]
        self.pending_embeds = state.prefix_embeds[1:]
        self.last_feature = state.prefix_hidden[-1]

    def _run(
        self, features: torch.Tensor, embeds: torch.Tensor, parents: list[int], offset: int
    ) -> torch.Tensor:
        """One drafter forward over the last ``len(features)`` nodes of a temporary tree.

        ``parents`` covers the whole temporary tree after the committed cache (nodes already in
        the cache first, then the new ones); node depth d sits at position ``offset + d``.
        """
        n_new = features.shape[0]
        ancestors, depth = tree_attention(parents)
        committed = torch.ones(n_new, self.length, dtype=torch.bool)
        mask = torch.cat([committed, ancestors[-n_new:]], dim=1)[None, None].to(features.device)
        position_ids = (depth[-n_new:] + offset)[None].to(features.device)
        self.forwards += 1
        return self.drafter(features[None], embeds[None], mask, position_ids, self.cache)[0]

    @torch.inference_mode()
    def draft(self, tokens: list[int], max_depth: int) -> DraftTree:
        config = self.draft_config
        depth_limit = min(config.depth, max_depth)
        root_embed = self.backend.embed_tokens(torch.tensor([tokens[-1]]))
        features = torch.cat([self.pending_features, self.last_feature[None]])
        embeds = torch.cat([self.pending_embeds, root_embed])
        chain = list(range(-1, features.shape[0] - 1))
        kv_cache.truncate(self.cache, self.length)
        root_out = self._run(features, embeds, chain, self.length)[-1]
        self.length += features.shape[0]
        self.pending_features = features[:0]
        self.pending_embeds = embeds[:0]

        candidates: list[_Candidate] = []
        level = self._expand(root_out[None], [-1], [0.0], 1, config.top_k, candidates)
        fed: list[int] = []  # candidate ids in the order their keys sit in the temporary cache
        for depth in range(2, depth_limit + 1):
            beam = sorted(level, key=lambda c: -candidates[c].score)[: config.top_k]
            nodes = fed + beam
            slot = {cand: i for i, cand in enumerate(nodes)}
            parents = [slot.get(candidates[c].parent, -1) for c in nodes]
            features = torch.stack([candidates[c].feature for c in beam])
            embeds = self.backend.embed_tokens(torch.tensor([candidates[c].token for c in beam]))
            out = self._run(features, embeds, parents, self.length)
            fed = nodes
            level = self._expand(
                out, beam, [candidates[c].score for c in beam], depth, config.top_k, candidates
            )
        kv_cache.truncate(self.cache, self.length)
        return _select(candidates, config.node_budget)

    def _expand(
        self,
        outputs: torch.Tensor,
        parents: list[int],
        scores: list[float],
        depth: int,
        top_k: int,
        candidates: list[_Candidate],
    ) -> list[int]:
        """Add the ``top_k`` children of every fed node; return the new candidate ids."""
        logp = torch.log_softmax(self.backend.hidden_to_action_logits(outputs).float(), dim=-1)
        values, indices = torch.topk(logp, top_k, dim=-1)
        first = self.backend.action_tokenizer.first_token
        new = []
        for row, parent in enumerate(parents):
            for value, index in zip(values[row].tolist(), indices[row].tolist(), strict=True):
                new.append(len(candidates))
                candidates.append(
                    _Candidate(first + index, parent, depth, scores[row] + value, outputs[row])
                )
        return new

    def advance(self, path_hidden: torch.Tensor, accepted: list[int]) -> None:
        self.pending_features = path_hidden[:-1]
        self.pending_embeds = self.backend.embed_tokens(torch.tensor(accepted, dtype=torch.long))
        self.last_feature = path_hidden[-1]


def _select(candidates: list[_Candidate], budget: int) -> DraftTree:
    """The ``budget`` best candidates by cumulative score, as a tree (parents first).

    A child's score never exceeds its parent's, so the best nodes form a tree; sorting ties by
    depth keeps a parent ahead of a child that ties with it.
    """
    ranked = sorted(
        range(len(candidates)), key=lambda c: (-candidates[c].score, candidates[c].depth)
    )
    chosen = set(ranked[:budget])
    order = sorted(chosen, key=lambda c: (candidates[c].depth, -candidates[c].score))
    index = {cand: i for i, cand in enumerate(order)}
    return DraftTree(
        tokens=[candidates[c].token for c in order],
        parents=[index[candidates[c].parent] if candidates[c].parent >= 0 else -1 for c in order],
        scores=[candidates[c].score for c in order],
    )
