"""The HeiSD datastore: build, save, load, look up, and its errors."""

import numpy as np
import pytest

from kerv_ros.actions import NormStats
from kerv_ros.retrieval import Datastore, context_of, read_bag_episodes, to_bins

IDENTITY = NormStats.identity()


def _episode(values):
    """Raw actions whose every dimension is the given value (identity statistics)."""
    return np.repeat(np.asarray(values, dtype=float)[:, None], 7, axis=1)


@pytest.fixture
def store():
    # Two motions from rest: a slow rise, and a fast one; the second recorded twice.
    slow = _episode([0.1, 0.2, 0.3, 0.4])
    fast = _episode([0.1, 0.5, 0.9, 0.9])
    return Datastore.from_episodes([slow, fast, fast], IDENTITY, ["hand-made"])


def test_entries_are_keyed_by_the_steps_before_them(store):
    assert len(store) == 12
    rest = IDENTITY.normalize(np.r_[np.zeros(6), 1.0])

    def contexts_of(value):
        rows = np.all(store.bins == to_bins(np.full(7, value)), axis=1)
        return store.contexts[rows]

    np.testing.assert_allclose(contexts_of(0.1), [context_of(rest, rest)] * 3)
    np.testing.assert_allclose(contexts_of(0.2), [context_of(np.full(7, 0.1), rest)])
    np.testing.assert_allclose(contexts_of(0.3), [context_of(np.full(7, 0.2), np.full(7, 0.1))])


def test_lookup_returns_continuations_with_counts_nearest_first(store):
    # After a 0.1 step from rest, both motions are possible; the fast one was seen twice.
    rest = IDENTITY.normalize(np.r_[np.zeros(6), 1.0])
    context = context_of(np.full(7, 0.1), rest)
    candidates = store.lookup(context, [int(to_bins(np.array([0.5]))[0])], prefix_tolerance=0)
    assert len(candidates) == 1  # the first bin already says: fast
    np.testing.assert_array_equal(candidates.steps[0], to_bins(np.full(7, 0.5)))
    assert candidates.counts.tolist() == [2.0] and candidates.unanimity == 1.0
    assert candidates.distance == pytest.approx(0.0, abs=1e-3)
    # A first bin between the two: within tolerance of neither.
    far = store.lookup(context, [int(to_bins(np.array([0.35]))[0])], prefix_tolerance=2)
    assert len(far) == 0 and far.distance == np.inf


def test_lookup_filters_on_every_prefix_token(store):
    first = int(to_bins(np.array([0.9]))[0])
    context = context_of(np.full(7, 0.5), np.full(7, 0.1))
    assert len(store.lookup(context, [first, first], prefix_tolerance=0)) == 1
    assert len(store.lookup(context, [first, first - 10], prefix_tolerance=2)) == 0


def test_neighbours_limit_and_order_by_count():
    rng = np.random.default_rng(0)
    episodes = [_episode([0.2, 0.4]) for _ in range(5)] + [_episode([0.2, 0.45]) for _ in range(2)]
    episodes += [_episode(rng.uniform(-1, 1, 2)) for _ in range(20)]
    store = Datastore.from_episodes(episodes, IDENTITY)
    context = context_of(np.full(7, 0.2), IDENTITY.normalize(np.r_[np.zeros(6), 1.0]))
    bins_04, bins_045 = (int(to_bins(np.array([v]))[0]) for v in (0.4, 0.45))
    candidates = store.lookup(context, [bins_04], neighbours=4, prefix_tolerance=8)
    assert candidates.counts.sum() == 4  # only the 4 nearest contexts vote
    wide = store.lookup(context, [bins_04], neighbours=7, prefix_tolerance=10)
    assert wide.steps[0][0] == bins_04 and wide.counts.tolist() == [5.0, 2.0]
    assert wide.steps[1][0] == bins_045
    assert wide.agreement(1, (1.0,) * 7, tolerance=0.0) == pytest.approx(5 / 7)
    assert wide.agreement(1, (1.0,) * 7, tolerance=10.0) == 1.0


def test_tree_is_a_trie_of_the_continuations_best_first():
    episodes = [_episode([0.2, 0.4])] * 3 + [np.vstack([_episode([0.2])[0], [0.4] * 6 + [0.5]])]
    store = Datastore.from_episodes(episodes, IDENTITY)
    context = context_of(np.full(7, 0.2), IDENTITY.normalize(np.r_[np.zeros(6), 1.0]))
    candidates = store.lookup(context, [int(to_bins(np.array([0.4]))[0])])
    tree = candidates.tree(start=1, budget=24, vocab_size=1000)
    # Shared prefix of 5 nodes (dims 1..5), then the gripper dim splits 3 : 1.
    assert tree.parents == [-1, 0, 1, 2, 3, 4, 4]
    assert tree.tokens[5] == 999 - int(to_bins(np.array([0.4]))[0])
    assert tree.tokens[6] == 999 - int(to_bins(np.array([0.5]))[0])
    assert tree.scores[5] > tree.scores[6]
    assert len(candidates.tree(start=1, budget=3, vocab_size=1000)) == 3


def test_round_trip_gives_the_same_lookups(store, tmp_path):
    path = tmp_path / "store.safetensors"
    store.save(path)
    loaded = Datastore.load(path)
    assert loaded.sources == ["hand-made"]
    rng = np.random.default_rng(1)
    for i in rng.integers(0, len(store), 8):
        a = store.lookup(store.contexts[i], [int(store.bins[i, 0])])
        b = loaded.lookup(loaded.contexts[i], [int(loaded.bins[i, 0])])
        np.testing.assert_array_equal(a.steps, b.steps)
        np.testing.assert_array_equal(a.counts, b.counts)
        assert a.distance == pytest.approx(b.distance, abs=1e-3)  # contexts stored as float16


def test_empty_corrupt_and_foreign_files_are_clear_errors(store, tmp_path):
    with pytest.raises(ValueError, match="empty"):
        Datastore.from_episodes([], IDENTITY)
    with pytest.raises(FileNotFoundError, match="datastore not found"):
        Datastore.load(tmp_path / "none.safetensors")
    corrupt = tmp_path / "corrupt.safetensors"
    store.save(corrupt)
    corrupt.write_bytes(corrupt.read_bytes()[:-100])
    with pytest.raises(ValueError, match=r"cannot read datastore .*corrupt\.safetensors"):
        Datastore.load(corrupt)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError, match="cannot read datastore"):
        Datastore.load(garbage)
    other = NormStats(q01=-np.full(7, 2.0), q99=np.full(7, 2.0), mask=np.ones(7, dtype=bool))
    with pytest.raises(ValueError, match="other normalisation statistics"):
        store.check_compatible(other)


def test_bags_give_the_commanded_actions_and_skip_failed_demonstrations(tmp_path):
    from kerv_ros.sim.collect import collect

    records = collect(["reach"], 2, 5, tmp_path, image_size=32, progress=False)
    episodes = read_bag_episodes([tmp_path], progress=False)
    assert [len(e) for e in episodes] == [r.steps for r in records if r.success]
    assert all(e.shape[1] == 7 and np.all(np.isfinite(e)) for e in episodes)
    assert np.all(np.abs(episodes[0][:, :3]) <= 0.25 * 0.1 + 1e-9)  # m per 0.1 s period
