"""Decode modes as data: each mode is one row of features, resolved into the plan a step follows.

A mode is a preset of orthogonal features. The engine never tests a mode's name: it follows
the :class:`StepPlan` that :func:`plan_for` resolves once, when a configuration is adopted,
from the mode's row and the user's switches (``kerv_dynamic_threshold``, ``kerv_compensation``,
``heisd_verify_skip``, ``heisd_acceptance``, ...) and what the engine has loaded (a datastore).
A new feature is one more column here, not one more string test in the engine.

    mode          drafter  retrieval  merged  relaxed  motion  kin. r  comp.  skip  sequence
    ar
    spec          x
    spec_relaxed  x                           x
    kerv          x                           x        x       x       x
    heisd         x        x                  x        x                      x     x
    hybrid        x        x          x       x        x       x       x      x     x (r-scaled)

(retrieval needs a datastore: ``heisd`` refuses to run without one, ``hybrid`` drafts alone.)

DyQ-VLA's precision switching (``dyq``) is orthogonal to drafting: it is not a column of the
table but a switch of every row (``ar+dyq``, ``hybrid+dyq``, ...), and it runs the motion
tracker where the row does not.
"""

from __future__ import annotations

from dataclasses import dataclass

from kerv_ros.config import EngineConfig


@dataclass(frozen=True)
class ModeFeatures:
    """What a mode may do; the user's switches can only turn a feature off."""

    drafter: bool = False
    """The EAGLE drafter proposes tokens (every mode but ``ar``)."""
    retrieval: bool = False
    """HeiSD's datastore proposes continuations where the motion is familiar."""
    merged_tree: bool = False
    """On unfamiliar motion the retrieved continuations join the drafter's tree."""
    relaxed: bool = False
    """Token-wise acceptance within ``relaxed_threshold`` bins (else exact)."""
    motion: bool = False
    """The kinematic motion tracker runs: a prior for the threshold, the metric, compensation."""
    kinematic_threshold: bool = False
    """The threshold r follows the arm's motion (KERV)."""
    compensation: bool = False
    """The Kalman filter fills the dimensions left after a rejection (KERV)."""
    verify_skip: bool = False
    """A unanimous familiar continuation is taken without the verifier (HeiSD)."""
    sequence_acceptance: bool = False
    """The ``heisd_acceptance`` switch may choose sequence-wise acceptance (HeiSD)."""
    scale_sequence_by_threshold: bool = False
    """Sequence-wise tolerance scaled by r / r_max: the drafted motion judged as kerv judges a
    token at that moment."""
    needs_datastore: bool = False
    """Refuse to run without a datastore (``hybrid`` drafts with the drafter alone instead)."""


MODE_TABLE: dict[str, ModeFeatures] = {
    "ar": ModeFeatures(),
    "spec": ModeFeatures(drafter=True),
    "spec_relaxed": ModeFeatures(drafter=True, relaxed=True),
    "kerv": ModeFeatures(
        drafter=True, relaxed=True, motion=True, kinematic_threshold=True, compensation=True
    ),
    "heisd": ModeFeatures(
        drafter=True,
        retrieval=True,
        relaxed=True,
        motion=True,
        verify_skip=True,
        sequence_acceptance=True,
        needs_datastore=True,
    ),
    "hybrid": ModeFeatures(
        drafter=True,
        retrieval=True,
        merged_tree=True,
        relaxed=True,
        motion=True,
        kinematic_threshold=True,
        compensation=True,
        verify_skip=True,
        sequence_acceptance=True,
        scale_sequence_by_threshold=True,
    ),
}


@dataclass(frozen=True)
class StepPlan:
    """A mode's features with the user's switches applied: exactly what a step does."""

    speculative: bool
    retrieval: bool
    merged_tree: bool
    motion: bool
    kinematic_threshold: bool
    compensation: bool
    verify_skip: bool
    sequence_acceptance: bool
    scale_sequence_by_threshold: bool
    fixed_threshold: int
    """The token-wise threshold when r does not follow the motion (0: exact)."""
    dyq: bool = False
    """Each step's precision follows the arm's motion (DyQ-VLA; ``dyq.py``)."""


def plan_for(config: EngineConfig, has_datastore: bool) -> StepPlan:
    """Resolve ``config.mode``'s row with the switches of ``config`` (validated elsewhere)."""
    features = MODE_TABLE[config.mode]
    kerv, heisd = config.kerv, config.heisd
    retrieval = features.retrieval and has_datastore
    kinematic = features.kinematic_threshold and kerv.dynamic_threshold
    return StepPlan(
        speculative=features.drafter,
        retrieval=retrieval,
        merged_tree=features.merged_tree and retrieval,
        motion=features.motion or config.dyq,
        kinematic_threshold=kinematic,
        compensation=features.compensation,  # the tracker's gate reads kerv_compensation
        verify_skip=features.verify_skip and heisd.verify_skip,
        sequence_acceptance=features.sequence_acceptance and heisd.acceptance == "sequence",
        scale_sequence_by_threshold=features.scale_sequence_by_threshold and kinematic,
        fixed_threshold=config.relaxed_threshold if features.relaxed else 0,
        dyq=config.dyq,
    )
