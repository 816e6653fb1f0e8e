"""The decoding engine: one action step of every mode, through one code path.

Read :meth:`DecodeEngine.step` top to bottom: prefill the observation (the target's first token
comes free with it), then either decode greedily one token per target forward (``ar``) or loop
draft -> one tree-verify forward -> walk the tree with the acceptance rule -> commit the path
(``spec``, ``spec_relaxed``, ``kerv``) until the step has its 7 tokens. ``kerv`` first asks the
motion tracker for the filter's prediction and the step's kinematic threshold, and when a verify
rejects a draft it may finish the step from the prediction instead of another target pass
(compensation). Every mode is counted the same way (DESIGN.md 2, Counting) so that ratios against
``ar`` are fair.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np
import torch

from kerv_ros.actions import ACTION_DIMS
from kerv_ros.config import EngineConfig
from kerv_ros.decoding.acceptance import TokenAcceptance, walk_tree
from kerv_ros.decoding.drafter import Drafter
from kerv_ros.motion import MotionPrior, MotionTracker
from kerv_ros.policy.backend import Observation, PolicyBackend


class TokenSource(IntEnum):
    """Who produced a token; the values are those of ``msg/DecodeStats.msg``."""

    VERIFIER = 0
    DRAFTER = 1
    RETRIEVAL = 2
    KALMAN = 3


@dataclass
class StepTimings:
    """Wall time of one step and its phases, in milliseconds."""

    prefill_ms: float = 0.0
    draft_ms: float = 0.0
    verify_ms: float = 0.0
    other_ms: float = 0.0
    total_ms: float = 0.0

    @property
    def decode_ms(self) -> float:
        """The step without its prefill: the part speculative decoding can shorten."""
        return self.total_ms - self.prefill_ms


@dataclass
class StepResult:
    """One decoded action step and how it was obtained."""

    mode: str
    tokens: list[int]
    sources: list[TokenSource]
    action: np.ndarray  # normalised, in [-1, 1]
    raw_action: np.ndarray  # un-normalised with the model's dataset statistics
    accepted_lengths: list[int] = field(default_factory=list)
    target_forwards: int = 0
    draft_forwards: int = 0
    threshold: float = 0.0
    compensated_dims: list[int] = field(default_factory=list)
    """Dimensions whose tokens came from the Kalman filter instead of the target (``kerv``)."""
    twist_source: str = ""
    """Where ``kerv``'s motion measurement came from (see :class:`MotionPrior`)."""
    predicted_action: np.ndarray | None = None
    """``kerv``: the filter's prediction of this step's action (normalised), for evaluation."""
    verify_skipped: bool = False
    timings: StepTimings = field(default_factory=StepTimings)


class _PhaseClock:
    """Accumulates wall time per phase; synchronises CUDA so GPU work lands in its phase."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.timings = StepTimings()
        self.start = time.perf_counter()

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextmanager
    def phase(self, name: str):
        self._sync()
        begin = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            attr = f"{name}_ms"
            setattr(
                self.timings,
                attr,
                getattr(self.timings, attr) + (time.perf_counter() - begin) * 1e3,
            )

    def finish(self) -> StepTimings:
        self._sync()
        t = self.timings
        t.total_ms = (time.perf_counter() - self.start) * 1e3
        t.other_ms = max(0.0, t.total_ms - t.prefill_ms - t.draft_ms - t.verify_ms)
        return t


class DecodeEngine:
    """Decodes one 7-token action step per call in the configured mode.

    ``config`` may be replaced between steps (:meth:`configure`); a step always runs with the
    configuration it started with. ``kinematics`` (an
    :class:`kerv_ros.kinematics.ArmKinematics`) lets ``kerv`` seed its filter from the measured
    joint motion, and ``period_s`` is the control period the actions are deltas over.
    """

    def __init__(
        self,
        backend: PolicyBackend,
        drafter: Drafter | None,
        config: EngineConfig,
        kinematics=None,
        period_s: float = 0.1,
    ) -> None:
        self.backend = backend
        self.drafter = drafter
        self.config = EngineConfig()
        self.motion = MotionTracker(config.kerv, backend.norm_stats, period_s, kinematics)
        self.configure(config)

    def set_kinematics(self, kinematics, period_s: float) -> None:
        """Adopt a new arm description or control period; the motion tracker starts over.

        The node calls this when the joint names or the control rate change.
        """
        self.motion = MotionTracker(self.config.kerv, self.backend.norm_stats, period_s, kinematics)

    def configure(self, config: EngineConfig) -> None:
        """Validate and adopt a new configuration (raises ValueError with the reasons)."""
        config.validate()
        if config.mode != "ar" and self.drafter is None:
            raise ValueError(f"mode {config.mode!r} needs a drafter and none is loaded")
        self.motion.configure(config.kerv)
        self.config = config

    def step(self, observation: Observation) -> StepResult:
        config = self.config
        clock = _PhaseClock(self.backend.device)
        prior = None
        threshold = config.threshold
        if config.mode == "kerv":
            prior = self.motion.begin(observation)
            if config.kerv.dynamic_threshold:
                threshold = prior.threshold
        with clock.phase("prefill"):
            state = self.backend.prefill(observation)
        result = StepResult(
            mode=config.mode,
            tokens=self.backend.action_logits_to_tokens(state.action_logits[None]),
            sources=[TokenSource.VERIFIER],
            action=np.zeros(0),
            raw_action=np.zeros(0),
            target_forwards=1,
            threshold=float(threshold),
            twist_source=prior.twist_source if prior is not None else "",
            predicted_action=prior.mean if prior is not None else None,
        )
        if config.mode == "ar":
            self._decode_greedy(state, result, clock)
        else:
            self._decode_speculative(state, result, clock, TokenAcceptance(threshold), prior)
        result.action = self.backend.action_tokenizer.decode(np.array(result.tokens))
        result.raw_action = self.backend.norm_stats.unnormalize(result.action)
        if prior is not None:
            self.motion.executed(result.action, compensated=bool(result.compensated_dims))
        result.timings = clock.finish()
        return result

    def _decode_greedy(self, state, result: StepResult, clock: _PhaseClock) -> None:
        """The baseline: one target forward per token, KV-cached."""
        while len(result.tokens) < ACTION_DIMS:
            with clock.phase("verify"):
                out = self.backend.forward_tree(state, [result.tokens[-1]], [-1])
                self.backend.keep_path(state, [0])
            result.tokens += self.backend.action_logits_to_tokens(out.action_logits)
            result.sources.append(TokenSource.VERIFIER)
            result.target_forwards += 1
            result.accepted_lengths.append(1)

    def _decode_speculative(
        self,
        state,
        result: StepResult,
        clock: _PhaseClock,
        rule: TokenAcceptance,
        prior: MotionPrior | None,
    ) -> None:
        """Draft a tree, verify it in one forward, keep the accepted path, repeat.

        With a motion prior (``kerv``), a rejection may end the step: the verifier's correction
        stands, and the dimensions after it come from the filter's prediction when the tracker
        judges it confident (:meth:`MotionTracker.may_compensate`).
        """
        with clock.phase("draft"):
            session = self.drafter.start(self.backend, state)
        while len(result.tokens) < ACTION_DIMS:
            before = len(result.tokens)
            remaining = ACTION_DIMS - before
            with clock.phase("draft"):
                tree = session.draft(list(result.tokens), remaining)
            with clock.phase("verify"):
                tokens, parents = tree.with_root(result.tokens[-1])
                out = self.backend.forward_tree(state, tokens, parents)
                greedy = self.backend.action_logits_to_tokens(out.action_logits)
                walk = walk_tree(tokens, parents, greedy, rule)
                self.backend.keep_path(state, walk.path)
            result.target_forwards += 1
            gained = walk.accepted[:remaining]
            result.tokens += gained
            result.sources += [TokenSource.DRAFTER] * len(gained)
            if len(result.tokens) < ACTION_DIMS:
                result.tokens.append(walk.correction)
                result.sources.append(TokenSource.VERIFIER)
            result.accepted_lengths.append(len(result.tokens) - before)
            if len(result.tokens) == ACTION_DIMS:
                break
            rest = list(range(len(result.tokens), ACTION_DIMS))
            if prior is not None and self.motion.may_compensate(prior, rest):
                tokenizer = self.backend.action_tokenizer
                result.tokens += tokenizer.encode(prior.mean[rest]).tolist()
                result.sources += [TokenSource.KALMAN] * len(rest)
                result.compensated_dims = rest
                break
            session.advance(out.hidden[walk.path], walk.accepted)
        result.draft_forwards = session.forwards
