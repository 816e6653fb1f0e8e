"""The action tokenizer follows OpenVLA's formulas exactly (DESIGN.md 2)."""

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kerv_ros.actions import ActionTokenizer, NormStats

VOCAB = 32000  # OpenVLA's Llama-2 tokenizer


@pytest.fixture
def tok():
    return ActionTokenizer(VOCAB)


def openvla_encode(action):
    """OpenVLA's formula, written out independently of the class under test."""
    bins = np.linspace(-1, 1, 256)
    return VOCAB - np.digitize(np.clip(action, -1, 1), bins)


def test_edge_values(tok):
    assert tok.encode(np.array([-1.0]))[0] == VOCAB - 1  # digitize(-1) = 1
    assert tok.encode(np.array([1.0]))[0] == VOCAB - 256  # digitize(1) = 256
    assert tok.encode(np.array([0.0]))[0] == VOCAB - 128
    # Out of range values clip.
    assert tok.encode(np.array([-7.0]))[0] == VOCAB - 1
    assert tok.encode(np.array([3.0]))[0] == VOCAB - 256


def test_bin_edges_belong_to_the_upper_bin(tok):
    bins = np.linspace(-1, 1, 256)
    edges = bins[1:-1]
    np.testing.assert_array_equal(tok.encode(edges), VOCAB - np.arange(2, 256))
    just_below = np.nextafter(edges, -np.inf)
    np.testing.assert_array_equal(tok.encode(just_below), VOCAB - np.arange(1, 255))


def test_decode_formula_and_clip(tok):
    centers = (np.linspace(-1, 1, 256)[:-1] + np.linspace(-1, 1, 256)[1:]) / 2
    assert tok.decode(np.array([VOCAB - 1]))[0] == pytest.approx(centers[0])
    # The top token (action 1.0) maps past the last centre and clips to it, as in OpenVLA.
    assert tok.decode(np.array([VOCAB - 256]))[0] == pytest.approx(centers[254])
    assert tok.decode(np.array([VOCAB - 128]))[0] == pytest.approx(centers[127])


def test_nan_is_a_clear_error(tok):
    with pytest.raises(ValueError, match="non-finite"):
        tok.encode(np.array([0.1, np.nan]))


def test_non_action_token_is_a_clear_error(tok):
    with pytest.raises(ValueError, match="not action tokens"):
        tok.decode(np.array([5]))


@given(st.lists(st.floats(-2, 2, allow_nan=False), min_size=1, max_size=14))
def test_matches_openvla_and_round_trips(values):
    tok = ActionTokenizer(VOCAB)
    actions = np.array(values)
    tokens = tok.encode(actions)
    np.testing.assert_array_equal(tokens, openvla_encode(actions))
    assert tokens.shape == actions.shape
    decoded = tok.decode(tokens)
    # Decoding lands within one bin width of the clipped action.
    assert np.all(np.abs(decoded - np.clip(actions, -1, 1)) <= 2 / 255 + 1e-9)
    # Re-encoding a centre gives its token back, except action 1.0's token (the 256th bin has
    # no centre of its own: OpenVLA decodes it to the 255th).
    np.testing.assert_array_equal(tok.encode(decoded), np.maximum(tokens, VOCAB - 255))


def test_vectorised_shapes(tok):
    actions = np.random.default_rng(0).uniform(-1, 1, size=(5, 7))
    assert tok.encode(actions).shape == (5, 7)
    assert tok.decode(tok.encode(actions)).shape == (5, 7)


def test_norm_stats_openvla_layout_and_formula(tmp_path):
    stats = {
        "bridge_orig": {
            "action": {
                "q01": [-0.02, -0.03, -0.01, -0.1, -0.1, -0.2, 0.0],
                "q99": [0.03, 0.02, 0.04, 0.1, 0.1, 0.2, 1.0],
                "mask": [True] * 6 + [False],
            }
        }
    }
    path = tmp_path / "dataset_statistics.json"
    path.write_text(json.dumps(stats))
    norm = NormStats.from_json(path)
    a = np.array([-1.0, 0.0, 1.0, 0.5, -0.5, 0.25, 0.7])
    q01 = np.array(stats["bridge_orig"]["action"]["q01"])
    q99 = np.array(stats["bridge_orig"]["action"]["q99"])
    expected = 0.5 * (a + 1) * (q99 - q01) + q01
    expected[6] = a[6]  # masked out: passed through
    np.testing.assert_allclose(norm.unnormalize(a), expected)
    np.testing.assert_allclose(norm.normalize(norm.unnormalize(a)), a, atol=1e-12)


def test_norm_stats_several_datasets_need_a_key():
    entry = {"action": {"q01": [0.0], "q99": [1.0]}}
    with pytest.raises(ValueError, match="unnorm_key"):
        NormStats.from_dict({"a": entry, "b": entry})
    assert NormStats.from_dict({"a": entry, "b": entry}, "b").q99[0] == 1.0
    with pytest.raises(ValueError, match="lack 'q99'"):
        NormStats.from_dict({"q01": [0.0]})
