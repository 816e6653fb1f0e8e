"""Model sizes the tests share: small enough to run in milliseconds on a CPU."""

from dataclasses import replace

from kerv_ros.policy.vla import VLAConfig

SMALL = VLAConfig(
    image_size=64,
    vision_hidden=64,
    vision_layers=1,
    text_hidden=128,
    text_layers=2,
    text_heads=4,
    text_intermediate=256,
)
"""Two decoder layers: enough depth for tree masks and caches to matter."""

SMALL_SHARP = replace(SMALL, initializer_range=0.1)
"""Larger random weights: logits far apart, so tree-vs-sequential comparisons are not ties."""

TINY = VLAConfig(
    image_size=32,
    vision_hidden=32,
    vision_layers=1,
    text_hidden=64,
    text_layers=1,
    text_intermediate=128,
)
"""One decoder layer: for tests about plumbing, not numerics."""


def random_model_with_ar(size: str, seed: int, count: int, observation_seed: int):
    """A random model (``small`` or ``default`` size), ``count`` synthetic observations and
    the ``ar`` results on them: the reference every exactness test compares against."""
    from kerv_ros.bench import synthetic_observations
    from kerv_ros.config import EngineConfig
    from kerv_ros.decoding.engine import DecodeEngine
    from kerv_ros.policy.vla import DefaultVLA

    backend = DefaultVLA.random(SMALL if size == "small" else VLAConfig(), seed=seed)
    observations = synthetic_observations(count, observation_seed, backend.config.image_size)
    ar = DecodeEngine(backend, None, EngineConfig(mode="ar"))
    return backend, observations, [ar.step(o) for o in observations]
