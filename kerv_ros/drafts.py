"""Draft trees as the drafter builds them and the verifier checks them."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class TokenSource(IntEnum):
    """Who produced a token; the values are those of ``msg/DecodeStats.msg``."""

    VERIFIER = 0
    DRAFTER = 1
    RETRIEVAL = 2
    KALMAN = 3


@dataclass(frozen=True)
class DraftTree:
    """Draft tokens hanging off a root token (the newest token the verifier has chosen).

    ``parents[i]`` is the index of node i's parent in this tree, or -1 for a child of the root.
    Parents precede children, and siblings are ordered best-first by the drafter.
    """

    tokens: list[int]
    parents: list[int]
    scores: list[float]
    sources: list[int] | None = None
    """Per-node :class:`TokenSource` where a tree mixes sources; None: the session's own."""

    def __len__(self) -> int:
        return len(self.tokens)

    @classmethod
    def chain(cls, tokens: list[int], scores: list[float] | None = None) -> DraftTree:
        return cls(
            tokens=list(tokens),
            parents=list(range(-1, len(tokens) - 1)),
            scores=list(scores) if scores is not None else [0.0] * len(tokens),
        )

    def with_root(self, root: int) -> tuple[list[int], list[int]]:
        """Tokens and parents of the verifier's tree: the root at index 0, the draft after it."""
        return [root, *self.tokens], [-1] + [p + 1 for p in self.parents]


def children_of(parents: list[int]) -> list[list[int]]:
    """Children of every node of a verifier tree, in index order."""
    children: list[list[int]] = [[] for _ in parents]
    for node, parent in enumerate(parents):
        if parent >= 0:
            children[parent].append(node)
    return children
