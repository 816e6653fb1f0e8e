"""The retrieval datastore of HeiSD: past action steps, looked up by what came before them.

Robot trajectories repeat: the same approach, grasp and lift recur across episodes, so the step
that followed a similar motion in the demonstrations is a good draft for this one. Each entry of
the datastore is one 7-token action step (stored as bins 0..255, model-agnostic given the
normalisation statistics, which the file carries) keyed by its **context**: the previous step's
action (7 dims, normalised) and the xyz of the step before it, the motion the arm was making,
which in closed loop is what the end-effector velocity and gripper state are. A step's first
token has no context of its own within the step, which is why the key is the previous steps.

Lookup (:meth:`Datastore.lookup`) takes the context and the tokens the step already has (the
first always comes free with the prefill): entries whose first bins are within
``prefix_tolerance`` of those tokens, the ``neighbours`` nearest by context, and their
continuations merged with counts. An index on the first bin keeps it well under a millisecond
for 100k steps. :meth:`Candidates.tree` turns the continuations into a draft tree (a trie,
most frequent continuation first) that the verifier checks in one pass, as REST does with its
suffix-array continuations.

A datastore built with ``--features`` also keys every step by the **scene**, as HeiSD does:
the policy's own feature of the observation (its last-layer hidden state at the end of the
prefix, unit length). A scene lookup ranks the same first-bin pool by cosine similarity to the
step's feature instead of by motion, so a situation seen in another episode retrieves what
was done there even when the arm arrived with another motion; the reported ``distance`` stays
the motion distance of the neighbours chosen, so the boundary reads the same units. The
features belong to the model that made them: the file carries the feature of a fixed probe
observation, and a model whose probe feature differs cannot use them (``scene.py``).

Files are safetensors (``bins``, ``contexts``, ``episodes``, and ``features``, ``probe`` when
built with them) with a JSON header in the file's metadata (format, normalisation statistics,
sources); no pickle.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from kerv_ros.actions import (
    ACTION_DIMS,
    BIN_WIDTH,
    N_BINS,
    REST_ACTION,
    NormStats,
    bin_to_token,
)
from kerv_ros.drafts import DraftTree

FORMAT = "kerv_datastore/1"
CONTEXT_DIMS = ACTION_DIMS + 3


def to_bins(actions: np.ndarray) -> np.ndarray:
    """Normalised actions -> bins 0..255 (OpenVLA's digitize, minus one); token = vocab-1-bin."""
    edges = np.linspace(-1.0, 1.0, N_BINS)
    return (np.digitize(np.clip(actions, -1.0, 1.0), edges) - 1).astype(np.uint8)


def context_of(previous: np.ndarray, before: np.ndarray) -> np.ndarray:
    """The lookup key's vector: the previous normalised action and the xyz of the one before."""
    return np.concatenate([previous, before[:3]]).astype(np.float32)


@dataclass(frozen=True)
class Candidates:
    """Continuations of one lookup, most frequent first.

    ``steps`` are full 7-bin steps (their first bins match the prefix within the tolerance);
    ``counts`` how many of the nearest neighbours continued that way; ``distance`` the mean
    context distance of those neighbours (action units per dim: how familiar this motion is).
    """

    steps: np.ndarray
    counts: np.ndarray
    distance: float
    similarity: float = float("nan")
    """Mean cosine similarity of the neighbours' scenes to the step's (scene lookups only)."""

    def __len__(self) -> int:
        return len(self.steps)

    @property
    def unanimity(self) -> float:
        """Share of the neighbours behind the most frequent continuation (0 when empty)."""
        return float(self.counts[0] / self.counts.sum()) if len(self) else 0.0

    def agreement(self, start: int, weights: tuple[float, ...], tolerance: float) -> float:
        """Share of the neighbours that continue like the most frequent continuation.

        Like: within ``tolerance`` of it from ``start`` on (weighted bin distance summed over
        the dims, in action units). Continuations a bin apart here and there describe the same
        motion; with ``tolerance`` 0 this is :attr:`unanimity`.
        """
        if not len(self):
            return 0.0
        gaps = np.abs(self.steps[:, start:].astype(np.int16) - self.steps[0, start:])
        distance = (gaps * BIN_WIDTH * np.asarray(weights)[start:]).sum(axis=1)
        return float(self.counts[distance <= tolerance].sum() / self.counts.sum())

    def tree(self, start: int, budget: int, vocab_size: int) -> DraftTree:
        """A trie over the continuations' bins from position ``start`` on, as draft tokens.

        Continuations go in by count, so siblings are ordered best-first; a node's score is
        the log of the share of neighbours that pass through it. At most ``budget`` nodes.
        """
        tokens: list[int] = []
        parents: list[int] = []
        scores: list[float] = []
        children: dict[tuple[int, int], int] = {}
        total = float(self.counts.sum())
        through = np.zeros(0)
        for step, count in zip(self.steps, self.counts, strict=True):
            parent = -1
            for position in range(start, ACTION_DIMS):
                token = bin_to_token(step[position], vocab_size)
                node = children.get((parent, token))
                if node is None:
                    if len(tokens) >= budget:
                        break
                    node = len(tokens)
                    children[(parent, token)] = node
                    tokens.append(token)
                    parents.append(parent)
                    through = np.append(through, 0.0)
                through[node] += count
                parent = node
        scores = [float(np.log(n / total)) for n in through]
        return DraftTree(tokens=tokens, parents=parents, scores=scores)


class Datastore:
    """Action steps with their contexts, indexed by first bin; see the module docstring."""

    def __init__(
        self,
        bins: np.ndarray,
        contexts: np.ndarray,
        episodes: np.ndarray,
        norm_stats: NormStats,
        sources: list[str] | None = None,
        features: np.ndarray | None = None,
        probe: np.ndarray | None = None,
    ) -> None:
        bins = np.asarray(bins, dtype=np.uint8)
        contexts = np.asarray(contexts, dtype=np.float32)
        if bins.ndim != 2 or bins.shape[1] != ACTION_DIMS:
            raise ValueError(f"datastore bins must be N x {ACTION_DIMS}, got {bins.shape}")
        if contexts.shape != (len(bins), CONTEXT_DIMS):
            raise ValueError(f"datastore contexts must be {len(bins)} x {CONTEXT_DIMS}")
        if len(bins) == 0:
            raise ValueError("the datastore is empty: no action steps to retrieve")
        # Kept sorted by first bin: the entries a lookup may use (first bins within the
        # tolerance) are then one contiguous slice, scanned without copying.
        order = np.argsort(bins[:, 0], kind="stable")
        self.bins = bins[order]
        self.contexts = np.ascontiguousarray(contexts[order])
        self.episodes = np.asarray(episodes, dtype=np.int32)[order]
        self.features = self.probe = None
        if features is not None:
            features = np.asarray(features, dtype=np.float32)
            if features.ndim != 2 or len(features) != len(bins) or probe is None:
                raise ValueError(
                    f"datastore features must be {len(bins)} x F with a probe feature, got "
                    f"{features.shape}"
                )
            self.features = np.ascontiguousarray(unit(features)[order])
            self.probe = unit(np.asarray(probe, dtype=np.float32))
        self.norm_stats = norm_stats
        self.sources = list(sources or [])
        self._starts = np.searchsorted(self.bins[:, 0], np.arange(N_BINS + 1))

    def __len__(self) -> int:
        return len(self.bins)

    @classmethod
    def from_episodes(
        cls,
        episodes: list[np.ndarray],
        norm_stats: NormStats,
        sources: list[str] | None = None,
        features: list[np.ndarray] | None = None,
        probe: np.ndarray | None = None,
    ) -> Datastore:
        """Build from raw action sequences (T x 7 each, one per episode, in order).

        ``features``: each episode's scene features (T x F), with the model's ``probe``.
        """
        rest = norm_stats.normalize(REST_ACTION)
        bins, contexts, owners = [], [], []
        for index, raw in enumerate(episodes):
            actions = norm_stats.normalize(np.asarray(raw, dtype=np.float64))
            previous = np.vstack([rest, rest, actions[:-1]])
            for t, action in enumerate(actions):
                bins.append(to_bins(action))
                contexts.append(context_of(previous[t + 1], previous[t]))
                owners.append(index)
        if not bins:
            raise ValueError("no action steps in the episodes: the datastore would be empty")
        stacked = None if features is None else np.concatenate(features)
        return cls(
            np.array(bins),
            np.array(contexts),
            np.array(owners),
            norm_stats,
            sources,
            stacked,
            probe,
        )

    def lookup(
        self,
        context: np.ndarray,
        prefix_bins: list[int],
        neighbours: int = 16,
        prefix_tolerance: int = 2,
        scene: np.ndarray | None = None,
    ) -> Candidates:
        """Continuations of the ``neighbours`` entries nearest ``context`` (or ``scene``).

        Only entries whose first bins agree with ``prefix_bins`` (the step's tokens so far, at
        least the first) within ``prefix_tolerance`` each are considered. With ``scene`` (the
        step's feature), the nearest are those most similar to it (cosine), and ``distance``
        is still their mean motion distance.
        """
        if scene is not None and self.features is None:
            raise ValueError("this datastore has no scene features (build it with --features)")
        if not prefix_bins:
            raise ValueError("lookup needs the step's first bin (it comes with the prefill)")
        first = prefix_bins[0]
        low, high = max(0, first - prefix_tolerance), min(N_BINS - 1, first + prefix_tolerance)
        begin, end = int(self._starts[low]), int(self._starts[high + 1])
        context = np.asarray(context, np.float32)
        query = None if scene is None else unit(np.asarray(scene, np.float32))
        similarity = None
        if len(prefix_bins) > 1:
            rest = self.bins[begin:end, 1 : len(prefix_bins)].astype(np.int16)
            close = np.abs(rest - np.asarray(prefix_bins[1:], dtype=np.int16)) <= prefix_tolerance
            pool = begin + np.flatnonzero(close.all(axis=1))
            distances = np.abs(self.contexts[pool] - context).mean(axis=1)
            if query is not None:
                similarity = self.features[pool] @ query
        else:  # one contiguous slice of the sorted store: read in place
            pool = np.arange(begin, end)
            distances = np.abs(self.contexts[begin:end] - context).mean(axis=1)
            if query is not None:
                similarity = self.features[begin:end] @ query
        if not len(pool):
            return Candidates(np.zeros((0, ACTION_DIMS), np.uint8), np.zeros(0), float("inf"))
        if len(pool) > neighbours:
            rank = distances if similarity is None else -similarity
            nearest = np.argpartition(rank, neighbours - 1)[:neighbours]
            pool, distances = pool[nearest], distances[nearest]
            similarity = None if similarity is None else similarity[nearest]
        steps, inverse, counts = np.unique(
            self.bins[pool], axis=0, return_inverse=True, return_counts=True
        )
        # Most frequent first; among equals, the one whose neighbours are closest.
        closeness = np.array([distances[inverse.ravel() == i].min() for i in range(len(steps))])
        order = np.lexsort((closeness, -counts))
        return Candidates(
            steps[order],
            counts[order].astype(np.float64),
            float(distances.mean()),
            float("nan") if similarity is None else float(similarity.mean()),
        )

    # --- files ----------------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        header = {
            "format": FORMAT,
            "steps": len(self),
            "episodes": int(self.episodes.max()) + 1,
            "context": "previous normalised action (7) + xyz of the one before (3)",
            "norm_stats": self.norm_stats.to_dict(),
            "sources": self.sources,
        }
        tensors = {
            "bins": self.bins,
            "contexts": self.contexts.astype(np.float16),
            "episodes": self.episodes,
        }
        if self.features is not None:
            header["features"] = "the policy's last-layer hidden state at the prefix's end, unit"
            tensors["features"] = self.features.astype(np.float16)
            tensors["probe"] = self.probe
        save_file(tensors, str(path), metadata={"kerv_datastore": json.dumps(header)})

    @classmethod
    def load(cls, path: str | Path) -> Datastore:
        """Read a datastore file; anything unreadable or inconsistent is a ValueError naming it."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"datastore not found: {path}")
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="numpy") as handle:
                metadata = handle.metadata() or {}
            tensors = load_file(str(path))
            header = json.loads(metadata["kerv_datastore"])
        except (SafetensorError, KeyError, json.JSONDecodeError, OSError) as err:
            raise ValueError(f"cannot read datastore {path}: {type(err).__name__}: {err}") from err
        if header.get("format") != FORMAT:
            raise ValueError(f"{path} is not a {FORMAT} datastore (format {header.get('format')})")
        try:
            return cls(
                tensors["bins"],
                tensors["contexts"].astype(np.float32),
                tensors["episodes"],
                NormStats.from_dict(header["norm_stats"]),
                header.get("sources", []),
                tensors.get("features"),
                tensors.get("probe"),
            )
        except (KeyError, ValueError) as err:
            raise ValueError(f"datastore {path} is inconsistent: {err}") from err

    def check_compatible(self, norm_stats: NormStats) -> None:
        """Refuse a datastore whose bins mean other actions than the model's."""
        mine, theirs = self.norm_stats, norm_stats
        if not (
            np.allclose(mine.q01, theirs.q01, atol=1e-6)
            and np.allclose(mine.q99, theirs.q99, atol=1e-6)
            and np.array_equal(mine.mask, theirs.mask)
        ):
            raise ValueError(
                "the datastore was built with other normalisation statistics than the model's; "
                "rebuild it with `kerv datastore build BAGS --model MODEL`"
            )


def unit(x: np.ndarray) -> np.ndarray:
    """Rows (or a vector) scaled to unit length: cosine similarity is then a dot product."""
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norm, 1e-12)).astype(np.float32)


def lookup_timing(datastore: Datastore, samples: int = 500, seed: int = 0) -> dict[str, float]:
    """Wall time (ms) of a first-token lookup of stored contexts (``kerv datastore info``)."""
    import time

    rng = np.random.default_rng(seed)
    times = []
    for i in rng.integers(0, len(datastore), size=samples):
        start = time.perf_counter()
        datastore.lookup(datastore.contexts[i], [int(datastore.bins[i, 0])])
        times.append((time.perf_counter() - start) * 1e3)
    return {
        "samples": samples,
        "median_ms": float(np.median(times)),
        "p99_ms": float(np.percentile(times, 99)),
        "max_ms": float(max(times)),
    }


def read_bag_episodes(
    paths: list[Path], control_rate_hz: float = 10.0, progress: bool = True
) -> list[np.ndarray]:
    """The commanded actions of each bag (T x 7 raw), in time order; failed demonstrations out.

    Reads only the twist and gripper topics (no images), so a datastore builds from thousands
    of bags in seconds. Real recordings of kerv_node and the simulator's demonstrations have the
    same topics (``bags.py``).
    """
    from tqdm import tqdm

    from kerv_ros import bags

    topics = {bags.TWIST_TOPIC: bags.TWIST_STAMPED, bags.GRIPPER_TOPIC: bags.FLOAT64}
    episodes = []
    for path in tqdm(bags.bag_paths(paths), desc="read bags", unit="bag", disable=not progress):
        if bags.failed_demonstration(bags.custom_data(path)):
            continue
        try:
            streams = bags.read_streams(path, topics, required=[bags.TWIST_TOPIC])
        except bags.BagError as err:
            raise ValueError(f"{err} (to take actions from)") from err
        commands = bags.command_stream(streams, 1.0 / control_rate_hz)
        if len(commands):
            episodes.append(np.stack([command.msg for command in commands]))
    return episodes
