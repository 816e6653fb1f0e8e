"""Acceptance rules: which drafted tokens a verifier pass keeps.

Exact acceptance keeps a draft token only when it is the verifier's greedy token, which makes
speculative decoding lossless. Spec-VLA's relaxed acceptance keeps it when its bin is within
``threshold`` bins of the verifier's: neighbouring bins are neighbouring actions, so a near
miss costs a small action error instead of a whole re-inference. Threshold 0 is exact.
"""

from __future__ import annotations

from dataclasses import dataclass

from kerv_ros.decoding.tree import children_of


@dataclass(frozen=True)
class TokenAcceptance:
    """Token-wise rule: accept when ``|draft - verifier| <= threshold`` (token ids = bins)."""

    threshold: int = 0

    def distance(self, draft: int, target: int) -> int | None:
        """Bin distance if the draft token is acceptable, else None."""
        distance = abs(draft - target)
        return distance if distance <= self.threshold else None


@dataclass(frozen=True)
class Walk:
    """Outcome of checking one verifier tree.

    ``path`` lists the accepted nodes of the verifier tree, root first; ``accepted`` the draft
    tokens along it; ``correction`` the verifier's own greedy token after the last accepted node.
    """

    path: list[int]
    accepted: list[int]
    correction: int


def walk_tree(
    tokens: list[int], parents: list[int], greedy: list[int], rule: TokenAcceptance
) -> Walk:
    """Follow the tree from the root while some child is acceptable to the verifier.

    ``greedy[i]`` is the verifier's greedy token after node i (from one tree forward). Among
    acceptable children the closest in bins wins, then the drafter's order: with threshold 0
    only the exact child can win, so the walk reproduces greedy decoding.
    """
    children = children_of(parents)
    node = 0
    path = [0]
    accepted: list[int] = []
    while True:
        best = None
        for child in children[node]:
            distance = rule.distance(tokens[child], greedy[node])
            if distance is not None and (best is None or distance < best[0]):
                best = (distance, child)
        if best is None:
            return Walk(path=path, accepted=accepted, correction=greedy[node])
        node = best[1]
        path.append(node)
        accepted.append(tokens[node])
