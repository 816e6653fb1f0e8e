"""OpenVLA's action tokenizer and the dataset normalisation statistics.

The mapping is OpenVLA's exactly (DESIGN.md 2), so that a checkpoint trained with OpenVLA decodes
to the same actions here: 256 uniform bins over [-1, 1], the action token of a bin counted down
from the top of the tokenizer's vocabulary, and 255 bin centres for decoding.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

N_BINS = 256
ACTION_DIMS = 7
MOTION_DIMS = slice(0, 6)
"""xyz delta and rpy delta: the dimensions that are end-effector motion."""
GRIPPER = 6
"""The gripper's dimension (OpenVLA leaves it out of the un-normalisation: its mask is False)."""
BIN_WIDTH = 2.0 / (N_BINS - 1)
"""Normalised action units per bin: ``linspace(-1, 1, 256)`` steps."""
REST_ACTION = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0])
"""Raw action of an arm at rest, gripper open: the context before a trajectory's first step."""


def token_to_bin(token: int, vocab_size: int) -> int:
    """An action token id -> its bin 0..255, counted down from the top of the vocabulary.

    The datastore's alphabet; the distance between bins is the distance between tokens.
    """
    return vocab_size - 1 - int(token)


def bin_to_token(bin_index: int, vocab_size: int) -> int:
    """The inverse of :func:`token_to_bin`."""
    return vocab_size - 1 - int(bin_index)


class ActionTokenizer:
    """Maps normalised actions in [-1, 1] to the top ``n_bins`` token ids of a vocabulary and back.

    ``vocab_size`` is the text tokenizer's vocabulary size (32000 for OpenVLA's Llama-2 tokenizer),
    not the possibly padded size of the model's embedding matrix.
    """

    def __init__(self, vocab_size: int, n_bins: int = N_BINS) -> None:
        if vocab_size <= n_bins:
            raise ValueError(f"vocab_size {vocab_size} must exceed n_bins {n_bins}")
        self.vocab_size = vocab_size
        self.n_bins = n_bins
        self.bins = np.linspace(-1.0, 1.0, n_bins)
        self.bin_centers = (self.bins[:-1] + self.bins[1:]) / 2.0

    @property
    def first_token(self) -> int:
        """Smallest action token id; the action ids are ``first_token .. vocab_size - 1``."""
        return self.vocab_size - self.n_bins

    def encode(self, actions: np.ndarray) -> np.ndarray:
        """Normalised actions (any shape) -> int64 token ids of the same shape."""
        actions = np.asarray(actions, dtype=np.float64)
        if not np.all(np.isfinite(actions)):
            raise ValueError(f"cannot tokenize non-finite action values: {actions}")
        return (self.vocab_size - np.digitize(np.clip(actions, -1.0, 1.0), self.bins)).astype(
            np.int64
        )

    def decode(self, tokens: np.ndarray) -> np.ndarray:
        """Token ids (any shape) -> normalised actions at the bin centres."""
        tokens = np.asarray(tokens, dtype=np.int64)
        if np.any((tokens < self.first_token) | (tokens >= self.vocab_size)):
            raise ValueError(
                f"not action tokens (valid ids {self.first_token}..{self.vocab_size - 1}): {tokens}"
            )
        indices = np.clip(self.vocab_size - tokens - 1, 0, self.bin_centers.shape[0] - 1)
        return self.bin_centers[indices]


@dataclass(frozen=True)
class NormStats:
    """Per-dimension 1st/99th percentiles of the raw actions, as OpenVLA's dataset statistics.

    Dimensions where ``mask`` is False (the gripper, in OpenVLA) are not rescaled.
    """

    q01: np.ndarray
    q99: np.ndarray
    mask: np.ndarray

    def __post_init__(self) -> None:
        shapes = {np.shape(self.q01), np.shape(self.q99), np.shape(self.mask)}
        if len(shapes) != 1:
            raise ValueError(f"q01, q99 and mask must have one shape, got {shapes}")
        if np.any(np.asarray(self.q99) < np.asarray(self.q01)):
            raise ValueError("q99 must be >= q01 in every dimension")

    @classmethod
    def identity(cls, dims: int = ACTION_DIMS) -> NormStats:
        """Statistics that leave normalised actions unchanged."""
        return cls(q01=-np.ones(dims), q99=np.ones(dims), mask=np.ones(dims, dtype=bool))

    @classmethod
    def from_dict(cls, data: dict, key: str | None = None) -> NormStats:
        """Read ``{"q01", "q99", "mask"}``, or OpenVLA's ``{dataset: {"action": {...}}}`` layout.

        With several datasets in the OpenVLA layout, ``key`` names the one to use (OpenVLA calls it
        ``unnorm_key``).
        """
        if "q01" not in data:
            if key is None:
                if len(data) != 1:
                    raise ValueError(
                        f"statistics hold several datasets {sorted(data)}; name one (unnorm_key)"
                    )
                key = next(iter(data))
            if key not in data:
                raise ValueError(f"dataset {key!r} not in statistics {sorted(data)}")
            data = data[key]["action"] if "action" in data[key] else data[key]
        try:
            q01 = np.asarray(data["q01"], dtype=np.float64)
            q99 = np.asarray(data["q99"], dtype=np.float64)
        except KeyError as err:
            raise ValueError(f"normalisation statistics lack {err.args[0]!r}") from err
        mask = np.asarray(data.get("mask", np.ones_like(q01, dtype=bool)), dtype=bool)
        return cls(q01=q01, q99=q99, mask=mask)

    @classmethod
    def from_json(cls, path: str | Path, key: str | None = None) -> NormStats:
        with open(path, encoding="utf-8") as handle:
            return cls.from_dict(json.load(handle), key)

    def to_dict(self) -> dict:
        return {
            "q01": np.asarray(self.q01).tolist(),
            "q99": np.asarray(self.q99).tolist(),
            "mask": np.asarray(self.mask).tolist(),
        }

    def unnormalize(self, actions: np.ndarray) -> np.ndarray:
        """Normalised actions in [-1, 1] -> raw action units (OpenVLA's formula)."""
        actions = np.asarray(actions, dtype=np.float64)
        raw = 0.5 * (actions + 1.0) * (self.q99 - self.q01) + self.q01
        return np.where(self.mask, raw, actions)

    def normalize(self, raw: np.ndarray) -> np.ndarray:
        """Raw actions -> normalised, clipped to [-1, 1]; the inverse of :meth:`unnormalize`."""
        raw = np.asarray(raw, dtype=np.float64)
        span = np.where(self.q99 > self.q01, self.q99 - self.q01, 1.0)
        normalised = np.clip(2.0 * (raw - self.q01) / span - 1.0, -1.0, 1.0)
        return np.where(self.mask, normalised, raw)
