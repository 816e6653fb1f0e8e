"""HeiSD's verify-skip as its own small object: its decision, its audit, its cooldown."""

from __future__ import annotations

import math

from kerv_ros.retrieval import Candidates


class VerifySkip:
    """HeiSD's verify-skip: a familiar, unanimous retrieved continuation without the verifier.

    At most ``heisd_max_skipped_run`` steps in a row; the next verified step audits the
    retrieval that was trusted, and a failed audit pauses skipping for the cooldown.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self, trajectory: int = -1) -> None:
        """Start over: a new episode, instruction or trajectory."""
        self.run = 0  # skipped steps in a row
        self.cooldown = 0  # steps left without skipping
        self.audit = False  # the next verified step checks the retrieval that was skipped on
        self.trajectory = trajectory

    def follow(self, trajectory: int) -> None:
        """Per-trajectory state: start over when the motion tracker starts a new trajectory."""
        if trajectory != self.trajectory:
            self.reset(trajectory)

    def decide(self, enabled: bool, first: Candidates, metric: float, heisd) -> bool:
        """Whether this step is taken from ``first`` without a verify (and count it).

        Familiar means the metric at or under the skip boundary, or, with scene keys and
        ``heisd_skip_similarity`` set, the neighbours' scenes that similar (HeiSD's rule).
        """
        if heisd.skip_similarity > 0 and not math.isnan(first.similarity):
            familiar = first.similarity >= heisd.skip_similarity
        else:
            familiar = metric <= min(heisd.skip_boundary, heisd.boundary)
        skip = (
            enabled
            and len(first)
            and familiar
            and first.counts.sum() >= heisd.skip_min_count
            and first.agreement(1, heisd.sequence_weights, heisd.sequence_threshold) == 1.0
            and self.run < heisd.max_skipped_run
            and self.cooldown == 0
        )
        if skip:
            self.run += 1
            self.audit = True
        else:
            self.run = 0
            self.cooldown = max(0, self.cooldown - 1)
        return bool(skip)

    def audited(self, retrieval_held: bool, cooldown: int) -> None:
        """The first verified step after skipped ones: did the trusted retrieval hold?"""
        self.audit = False
        if not retrieval_held:
            self.cooldown = cooldown
