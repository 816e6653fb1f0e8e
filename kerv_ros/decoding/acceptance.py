"""Acceptance rules: which drafted tokens a verifier pass keeps.

Exact acceptance keeps a draft token only when it is the verifier's greedy token, which makes
speculative decoding lossless. Spec-VLA's relaxed acceptance keeps it when its bin is within
``threshold`` bins of the verifier's: neighbouring bins are neighbouring actions, so a near
miss costs a small action error instead of a whole re-inference. Threshold 0 is exact.
"""

from __future__ import annotations

from dataclasses import dataclass

from kerv_ros.actions import BIN_WIDTH
from kerv_ros.drafts import children_of


@dataclass(frozen=True)
class TokenAcceptance:
    """Token-wise rule: accept when ``|draft - verifier| <= threshold`` (token ids = bins)."""

    threshold: int = 0

    def distance(self, draft: int, target: int) -> int | None:
        """Bin distance if the draft token is acceptable, else None."""
        distance = abs(draft - target)
        return distance if distance <= self.threshold else None

    def walk(self, tokens: list[int], parents: list[int], greedy: list[int]) -> Walk:
        return walk_tree(tokens, parents, greedy, self)


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


@dataclass(frozen=True)
class SequenceAcceptance:
    """Sequence-wise rule (HeiSD): accept a drafted path as a whole.

    The path is accepted while its weighted distance to the verifier's tokens, summed along
    the path in action units, is at most ``threshold``. Token-wise acceptance judges each token
    alone with one bin threshold for every dimension; summing over the path judges the drafted
    motion as a whole (many small misses cost as much as one large one), and per-dimension
    ``weights`` say which dimensions matter (the gripper most). ``start`` is the action
    dimension of the tree's first draft level. Threshold 0 accepts only exact tokens.
    """

    threshold: float
    weights: tuple[float, ...]
    start: int

    def walk(self, tokens: list[int], parents: list[int], greedy: list[int]) -> Walk:
        """The deepest node whose path stays within the threshold, and the correction after it.

        Ties go to the closer path, then to the drafter's order.
        """
        distance = [0.0] * len(tokens)
        depth = [0] * len(tokens)
        best = 0
        for node in range(1, len(tokens)):
            parent = parents[node]
            if parent < 0 or distance[parent] > self.threshold:
                distance[node] = float("inf")
                continue
            depth[node] = depth[parent] + 1
            dim = min(self.start + depth[node] - 1, len(self.weights) - 1)
            gap = abs(tokens[node] - greedy[parent]) * BIN_WIDTH * self.weights[dim]
            distance[node] = distance[parent] + gap
            if distance[node] <= self.threshold and (
                depth[node] > depth[best]
                or (depth[node] == depth[best] and distance[node] < distance[best])
            ):
                best = node
        path = [best]
        while path[-1] != 0:
            path.append(parents[path[-1]])
        path.reverse()
        return Walk(path=path, accepted=[tokens[n] for n in path[1:]], correction=greedy[best])
