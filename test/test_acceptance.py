"""Acceptance rules and the tree walk."""

import itertools

from hypothesis import given
from hypothesis import strategies as st

from kerv_ros.decoding.acceptance import BIN_WIDTH, SequenceAcceptance, TokenAcceptance, walk_tree
from kerv_ros.drafts import DraftTree


@st.composite
def verified_trees(draw):
    n = draw(st.integers(1, 15))
    parents = [-1] + [draw(st.integers(0, i - 1)) for i in range(1, n)]
    tokens = draw(st.lists(st.integers(0, 30), min_size=n, max_size=n))
    greedy = draw(st.lists(st.integers(0, 30), min_size=n, max_size=n))
    return tokens, parents, greedy


@given(verified_trees(), st.integers(0, 8))
def test_walk_accepts_only_within_threshold(tree, threshold):
    tokens, parents, greedy = tree
    walk = walk_tree(tokens, parents, greedy, TokenAcceptance(threshold))
    assert walk.path[0] == 0
    for parent, child in zip(walk.path, walk.path[1:], strict=False):
        assert parents[child] == parent
        assert abs(tokens[child] - greedy[parent]) <= threshold
    assert walk.accepted == [tokens[i] for i in walk.path[1:]]
    last = walk.path[-1]
    assert walk.correction == greedy[last]
    # The walk stops only where no child is acceptable.
    children = [i for i, p in enumerate(parents) if p == last]
    assert all(abs(tokens[c] - greedy[last]) > threshold for c in children)


@given(verified_trees())
def test_threshold_zero_is_exact(tree):
    tokens, parents, greedy = tree
    walk = walk_tree(tokens, parents, greedy, TokenAcceptance(0))
    for parent, child in zip(walk.path, walk.path[1:], strict=False):
        assert tokens[child] == greedy[parent]


def test_closest_child_wins():
    tokens, parents = DraftTree([13, 11, 10], [-1, -1, -1], [0, 0, 0]).with_root(0)
    walk = walk_tree(tokens, parents, [10, 0, 0, 0], TokenAcceptance(3))
    assert walk.accepted == [10]
    walk = walk_tree(tokens, parents, [12, 0, 0, 0], TokenAcceptance(3))
    assert walk.accepted == [13]  # 13 and 11 tie at distance 1: the drafter's order decides


def test_chain_with_root():
    tokens, parents = DraftTree.chain([5, 6, 7]).with_root(4)
    assert tokens == [4, 5, 6, 7]
    assert parents == [-1, 0, 1, 2]


def _path_distance(tokens, parents, greedy, path, weights, start):
    return sum(
        abs(tokens[child] - greedy[parent]) * BIN_WIDTH * weights[min(start + depth, 6)]
        for depth, (parent, child) in enumerate(itertools.pairwise(path))
    )


@given(verified_trees(), st.floats(0.0, 0.2), st.integers(1, 6))
def test_sequence_walk_keeps_the_deepest_path_within_the_threshold(tree, threshold, start):
    tokens, parents, greedy = tree
    weights = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 2.0)
    walk = SequenceAcceptance(threshold, weights, start).walk(tokens, parents, greedy)
    for parent, child in zip(walk.path, walk.path[1:], strict=False):
        assert parents[child] == parent
    assert walk.accepted == [tokens[i] for i in walk.path[1:]]
    assert walk.correction == greedy[walk.path[-1]]
    assert _path_distance(tokens, parents, greedy, walk.path, weights, start) <= threshold + 1e-12

    def depth(node):
        return 0 if node == 0 else 1 + depth(parents[node])

    for node in range(len(tokens)):  # no deeper node's path is within the threshold
        path = [node]
        while path[-1] != 0:
            path.append(parents[path[-1]])
        path.reverse()
        if _path_distance(tokens, parents, greedy, path, weights, start) <= threshold - 1e-12:
            assert depth(node) <= len(walk.path) - 1


@given(verified_trees(), st.integers(1, 6))
def test_sequence_threshold_zero_accepts_only_the_verifiers_tokens(tree, start):
    tokens, parents, greedy = tree
    walk = SequenceAcceptance(0.0, (1.0,) * 7, start).walk(tokens, parents, greedy)
    for parent, child in zip(walk.path, walk.path[1:], strict=False):
        assert tokens[child] == greedy[parent]
    exact = walk_tree(tokens, parents, greedy, TokenAcceptance(0))
    assert len(walk.accepted) >= len(exact.accepted)


def test_sequence_rule_judges_the_path_not_each_token():
    # Verifier: 10 everywhere. Draft A is 4 bins off on one token; draft B 1 bin off on three.
    tokens, parents = DraftTree(
        [14, 10, 10, 11, 11, 11], [-1, 0, 1, -1, 3, 4], [0.0] * 6
    ).with_root(0)
    greedy = [10] * len(tokens)
    token_rule = TokenAcceptance(3).walk(tokens, parents, greedy)
    assert token_rule.accepted == [11, 11, 11]  # A is cut at its 4-bin token
    sequence = SequenceAcceptance(4 * BIN_WIDTH, (1.0,) * 7, 1).walk(tokens, parents, greedy)
    assert sequence.accepted == [11, 11, 11]  # both within 4 bins in sum; B is closer (3)
    tighter = SequenceAcceptance(2 * BIN_WIDTH, (1.0,) * 7, 1).walk(tokens, parents, greedy)
    assert tighter.accepted == [11, 11]


def test_sequence_weights_protect_the_gripper():
    tokens, parents = DraftTree.chain([10, 12]).with_root(0)  # dims 5 and 6 (gripper)
    greedy = [10, 10, 10]
    light = SequenceAcceptance(2 * BIN_WIDTH, (1.0,) * 7, 5).walk(tokens, parents, greedy)
    heavy = SequenceAcceptance(2 * BIN_WIDTH, (1.0,) * 6 + (2.0,), 5).walk(tokens, parents, greedy)
    assert light.accepted == [10, 12] and heavy.accepted == [10]
