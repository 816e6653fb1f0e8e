"""One tree-masked verifier forward equals feeding each root-to-leaf path sequentially."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from models import SMALL_SHARP as SMALL

from kerv_ros.bench import synthetic_observations
from kerv_ros.policy.backend import tree_attention
from kerv_ros.policy.vla import DefaultVLA


@pytest.fixture(scope="module")
def backend():
    return DefaultVLA.random(SMALL, seed=3)


@st.composite
def trees(draw):
    n = draw(st.integers(1, 12))
    parents = [-1] + [draw(st.integers(-1, i - 1)) for i in range(1, n)]
    tokens = draw(st.lists(st.integers(261, 516), min_size=n, max_size=n))
    return tokens, parents


def path_to(node, parents):
    path = []
    while node >= 0:
        path.append(node)
        node = parents[node]
    return path[::-1]


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(tree=trees(), obs_seed=st.integers(0, 50))
def test_tree_forward_matches_sequential_paths(backend, tree, obs_seed):
    tokens, parents = tree
    observation = synthetic_observations(1, obs_seed, SMALL.image_size)[0]
    state = backend.prefill(observation)
    out = backend.forward_tree(state, tokens, parents)
    leaves = set(range(len(tokens))) - set(parents)
    for leaf in leaves:
        path = path_to(leaf, parents)
        sequential = backend.prefill(observation)
        for node in path:
            step = backend.forward_tree(sequential, [tokens[node]], [-1])
            backend.keep_path(sequential, [0])
            torch.testing.assert_close(
                step.action_logits[0], out.action_logits[node], atol=1e-4, rtol=1e-4
            )
            torch.testing.assert_close(step.hidden[0], out.hidden[node], atol=1e-4, rtol=1e-4)


def test_keep_path_commits_the_path(backend):
    """After keeping a branch, decoding continues as if only that branch had been fed."""
    observation = synthetic_observations(1, 7, SMALL.image_size)[0]
    state = backend.prefill(observation)
    # root 300 with children 301 (node 1) and 302 (node 2); 303 under 302 (node 3)
    backend.forward_tree(state, [300, 301, 302, 303], [-1, 0, 0, 2])
    backend.keep_path(state, [0, 2, 3])
    assert state.length == backend.prefill(observation).length + 3
    after_tree = backend.forward_tree(state, [310], [-1])

    plain = backend.prefill(observation)
    for token in (300, 302, 303):
        backend.forward_tree(plain, [token], [-1])
        backend.keep_path(plain, [0])
    after_plain = backend.forward_tree(plain, [310], [-1])
    torch.testing.assert_close(
        after_tree.action_logits, after_plain.action_logits, atol=1e-4, rtol=1e-4
    )


def test_tree_attention_mask_and_depth():
    mask, depth = tree_attention([-1, 0, 0, 1, -1])
    assert depth.tolist() == [0, 1, 1, 2, 0]
    assert mask[3].tolist() == [True, True, False, True, False]
    assert mask[4].tolist() == [False, False, False, False, True]
    with pytest.raises(ValueError, match="precede"):
        tree_attention([-1, 2, 0])
