"""Acceptance rules and the tree walk."""

from hypothesis import given
from hypothesis import strategies as st

from kerv_ros.decoding.acceptance import TokenAcceptance, walk_tree
from kerv_ros.decoding.tree import DraftTree


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
