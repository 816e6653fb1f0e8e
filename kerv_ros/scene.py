"""The policy's own feature of a scene, HeiSD's retrieval key, and whether a datastore's fit.

HeiSD keys its datastore by the VLA's visual features of the observation and judges its
verify-skip by the verifier's last-layer feature. Here one feature serves: the target's
last-layer hidden state at the end of the prefix (image, joint state and prompt seen, before
the first action token), the state the first action is read from. It costs nothing at run
time (the prefill computes it) and is model-specific, so a datastore carries the feature of a
fixed probe observation and a model whose probe feature differs cannot use its features.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import torch
from tqdm import tqdm

from kerv_ros.actions import BIN_WIDTH
from kerv_ros.decoding.engine import DecodeEngine
from kerv_ros.observation import Observation
from kerv_ros.policy.backend import PolicyBackend
from kerv_ros.retrieval import Datastore, unit
from kerv_ros.training import Demonstrations

log = logging.getLogger(__name__)

PROBE_INSTRUCTION = "pick up the red cube"
PROBE_MATCH = 0.999
"""Cosine similarity the model's probe feature needs with the datastore's."""


def probe_observation(backend: PolicyBackend) -> Observation:
    """A fixed observation (grey image, fixed instruction, zero joints) to fingerprint a model."""
    size = backend.image_size or 224
    image = np.full((size, size, 3), 128, dtype=np.uint8)
    state = np.zeros(backend.state_dim, dtype=np.float32) if backend.state_dim else None
    return Observation(image=image, instruction=PROBE_INSTRUCTION, state=state)


@torch.inference_mode()
def scene_feature(backend: PolicyBackend, observation: Observation) -> np.ndarray:
    """The policy's last-layer hidden state at the end of the prefix (float32, H)."""
    return backend.prefill(observation).scene_feature()


def probe_feature(backend: PolicyBackend) -> np.ndarray:
    """The model's fingerprint: its scene feature of :func:`probe_observation`, unit length."""
    return unit(scene_feature(backend, probe_observation(backend)))


def scene_features(
    backend: PolicyBackend, demos: Demonstrations, progress: bool = True
) -> list[np.ndarray]:
    """Every recorded tick's scene feature, one T x H array per episode (as the actions)."""
    features = np.stack(
        [
            scene_feature(backend, Observation(image, instruction, state))
            for image, instruction, state in tqdm(
                zip(demos.images, demos.instructions, demos.states, strict=True),
                total=len(demos),
                desc="scene features",
                unit="tick",
                disable=not progress,
            )
        ]
    )
    return demos.by_episode(features)


def adopt_features(datastore: Datastore, backend: PolicyBackend) -> None:
    """Keep the datastore's scene features only if this model made them (warn otherwise)."""
    if datastore.features is None:
        return
    mine = probe_feature(backend)
    if datastore.features.shape[1] != len(mine) or float(mine @ datastore.probe) < PROBE_MATCH:
        log.warning(
            "the datastore's scene features were made by another model: scene-keyed retrieval "
            "is off (rebuild with `kerv datastore build BAGS --features --model MODEL`)"
        )
        datastore.features = datastore.probe = None


def skip_calibration(
    engine: DecodeEngine,
    episodes: list[list[Observation]],
    thresholds: tuple[float, ...] = (0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.999),
    progress: bool = True,
) -> list[dict[str, float]]:
    """What ``heisd_skip_similarity`` would do on recordings, per candidate threshold.

    Every tick is decoded with verification (scene keys, verify-skip off). A tick reaches a
    threshold where its neighbours' mean similarity does (at run time the count and unanimity
    tests of verify-skip apply on top); it passes the audit where the retrieved step is within
    ``heisd_sequence_threshold`` (weighted, after the first token) of what the verifier
    decoded. Returns, per threshold, the share of ticks that reach it and the share of those
    that pass: HeiSD's "minimum acceptable similarity" is the lowest threshold whose pass rate
    is high enough.
    """
    heisd = engine.config.heisd
    config = replace(engine.config, heisd=replace(heisd, retrieval_key="scene", verify_skip=False))
    engine.configure(config)
    weights = np.asarray(heisd.sequence_weights)[1:]
    samples = []
    total = sum(len(e) for e in episodes)
    bar = tqdm(total=total, desc="skip calibration", unit="tick", disable=not progress)
    for episode in episodes:
        engine.reset()
        for observation in episode:
            result = engine.step(observation)
            bar.update()
            if result.similarity is None:
                continue
            decoded = np.array(engine.bins_of(result.tokens)[1:])
            gap = np.abs(np.array(result.retrieved[1:]) - decoded) * BIN_WIDTH
            samples.append((result.similarity, float((gap * weights).sum())))
    bar.close()
    similarity = np.array([s for s, _ in samples])
    held = np.array([d <= heisd.sequence_threshold for _, d in samples])
    rows = []
    for threshold in thresholds:
        chosen = similarity >= threshold
        rows.append(
            {
                "threshold": threshold,
                "ticks": len(samples),
                "skip_share": float(chosen.mean()) if len(samples) else 0.0,
                "audit_pass": float(held[chosen].mean()) if chosen.any() else float("nan"),
            }
        )
    return rows
