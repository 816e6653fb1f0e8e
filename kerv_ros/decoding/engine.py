"""The decoding engine: one action step of every mode, through one code path.

Read :meth:`DecodeEngine.step` top to bottom: prefill the observation (the target's first token
comes free with it), then either decode greedily one token per target forward (``ar``) or loop
draft -> one tree-verify forward -> walk the tree with the acceptance rule -> commit the path
(every other mode) until the step has its 7 tokens. The modes differ in three places only:

- the **draft source**: the EAGLE drafter; for ``heisd``/``hybrid`` the retrieval datastore
  where the kinematic fused metric says the motion is familiar (``hybrid`` also offers the
  retrieved continuations inside the drafter's tree);
- the **acceptance rule**: exact, token-wise within r bins (fixed, or kerv's kinematic r), or
  sequence-wise (HeiSD);
- what ends a step early: kerv's Kalman **compensation** of the dimensions left after a
  rejection (``kerv``, ``hybrid``), and HeiSD's **verify-skip** of a unanimous retrieved
  continuation (``heisd``, ``hybrid``).

Every mode is counted the same way (DESIGN.md 2, Counting) so that ratios against ``ar`` are
fair.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from kerv_ros.actions import ACTION_DIMS, bin_to_token, token_to_bin
from kerv_ros.boundary import curvature_score, fused_metric, may_compensate
from kerv_ros.config import EngineConfig
from kerv_ros.decoding.acceptance import SequenceAcceptance, TokenAcceptance
from kerv_ros.decoding.drafter import Drafter, DraftSession
from kerv_ros.decoding.modes import MODE_TABLE, plan_for
from kerv_ros.decoding.verify_skip import VerifySkip
from kerv_ros.drafts import DraftTree, TokenSource
from kerv_ros.dyq import PrecisionPolicy
from kerv_ros.motion import MotionPrior, MotionTracker
from kerv_ros.policy.backend import Observation, PolicyBackend
from kerv_ros.retrieval import Candidates, Datastore, context_of


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
    metric: float | None = None
    """``heisd``/``hybrid``: the kinematic fused metric of the step (``boundary.py``)."""
    retrieved: list[int] | None = None
    """``heisd``/``hybrid``: the bins of the most frequent retrieved step (None: none found)."""
    similarity: float | None = None
    """Scene-keyed lookups: the neighbours' mean cosine similarity to the step's scene."""
    verify_skipped: bool = False
    precision: str = "float32"
    """The verifier's numeric precision this step (``dyq``; the model's own otherwise)."""
    precision_score: float | None = None
    """``dyq``: the fused sensitivity score that chose it (None where not measured)."""
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


class _RetrievalSession:
    """Drafts from the datastore: the continuations of the step's tokens so far, as a trie."""

    source = TokenSource.RETRIEVAL

    def __init__(
        self,
        engine: DecodeEngine,
        context: np.ndarray,
        first: Candidates,
        scene: np.ndarray | None = None,
    ) -> None:
        self.engine = engine
        self.context = context
        self.scene = scene
        self.first = first
        self.forwards = 0  # not a model: no forwards to count
        self.metric = float("inf")

    def draft(self, tokens: list[int], max_depth: int) -> DraftTree:
        heisd = self.engine.config.heisd
        if len(tokens) == 1:
            candidates = self.first
        else:
            candidates = self.engine.datastore.lookup(
                self.context,
                self.engine.bins_of(tokens),
                heisd.neighbours,
                heisd.prefix_tolerance,
                self.scene,
            )
        vocab = self.engine.backend.action_tokenizer.vocab_size
        return candidates.tree(len(tokens), heisd.node_budget, vocab)

    def advance(self, path_hidden: torch.Tensor, accepted: list[int]) -> None:
        """Nothing to carry: each draft is a fresh lookup."""


class _MergedSession:
    """``hybrid``'s drafter steps: the drafter's tree with the retrieved trie beside it."""

    source = TokenSource.DRAFTER

    def __init__(self, drafter: DraftSession, retrieval: _RetrievalSession) -> None:
        self.drafter = drafter
        self.retrieval = retrieval

    @property
    def forwards(self) -> int:
        return self.drafter.forwards

    def draft(self, tokens: list[int], max_depth: int) -> DraftTree:
        return merge_trees(
            self.drafter.draft(tokens, max_depth),
            self.retrieval.draft(tokens, max_depth),
        )

    def advance(self, path_hidden: torch.Tensor, accepted: list[int]) -> None:
        self.drafter.advance(path_hidden, accepted)


def merge_trees(drafted: DraftTree, retrieved: DraftTree) -> DraftTree:
    """One tree with both: the drafter's nodes, then retrieved nodes it does not already have.

    Per-node sources say who proposed each token (a token both proposed counts as drafted).
    """
    tokens, parents = list(drafted.tokens), list(drafted.parents)
    scores = list(drafted.scores)
    sources = [int(TokenSource.DRAFTER)] * len(tokens)
    index = {(p, t): i for i, (p, t) in enumerate(zip(parents, tokens, strict=True))}
    placed: list[int] = []
    for token, parent, score in zip(
        retrieved.tokens, retrieved.parents, retrieved.scores, strict=True
    ):
        merged_parent = placed[parent] if parent >= 0 else -1
        key = (merged_parent, token)
        if key not in index:
            index[key] = len(tokens)
            tokens.append(token)
            parents.append(merged_parent)
            scores.append(score)
            sources.append(int(TokenSource.RETRIEVAL))
        placed.append(index[key])
    return DraftTree(tokens=tokens, parents=parents, scores=scores, sources=sources)


class DecodeEngine:
    """Decodes one 7-token action step per call in the configured mode.

    ``config`` may be replaced between steps (:meth:`configure`); a step always runs with the
    configuration it started with. ``kinematics`` (an
    :class:`kerv_ros.kinematics.ArmKinematics`) lets the motion modes seed their filter from
    the measured joint motion, and ``period_s`` is the control period the actions are deltas
    over. ``datastore`` feeds ``heisd`` (required) and ``hybrid`` (optional: without one it
    drafts with the drafter alone).
    """

    def __init__(
        self,
        backend: PolicyBackend,
        drafter: Drafter | None,
        config: EngineConfig,
        kinematics=None,
        period_s: float = 0.1,
        datastore: Datastore | None = None,
    ) -> None:
        self.backend = backend
        self.drafter = drafter
        if datastore is not None:
            datastore.check_compatible(backend.norm_stats)
        self.datastore = datastore
        self.config = EngineConfig()
        self.plan = plan_for(self.config, datastore is not None)
        self.motion = MotionTracker(config.kerv, backend.norm_stats, period_s, kinematics)
        self.skips = VerifySkip()
        self.precisions = getattr(backend, "precisions", None)
        """The backend's precision variants (``policy/precision.py``), or None: none built."""
        self.full_precision = self.precisions.full if self.precisions else "float32"
        table = self.precisions.calibration if self.precisions else None
        self.precision_policy = PrecisionPolicy(config.precision, self.full_precision, table)
        self._precision_trajectory = -1
        self.configure(config)

    def set_kinematics(self, kinematics, period_s: float) -> None:
        """Adopt a new arm description or control period; the motion tracker starts over.

        The node calls this when the joint names or the control rate change.
        """
        self.motion = MotionTracker(self.config.kerv, self.backend.norm_stats, period_s, kinematics)

    def problems(self, config: EngineConfig) -> list[str]:
        """Why this engine cannot run ``config`` (its own checks, and what it has loaded)."""
        out = config.problems()
        features = MODE_TABLE.get(config.mode)
        if features is None:
            return out
        if features.drafter and self.drafter is None:
            out.append(f"mode {config.mode!r} needs a drafter and none is loaded")
        if features.needs_datastore and self.datastore is None:
            out.append(f"mode {config.mode!r} needs a retrieval datastore and none is loaded")
        scene_keyed = config.heisd.retrieval_key == "scene"
        if scene_keyed and self.datastore is not None and self.datastore.features is None:
            out.append(
                "heisd_retrieval_key scene needs a datastore with this model's scene features "
                "(kerv datastore build --features)"
            )
        if config.dyq:
            p = config.precision
            wanted = [p.fixed] if p.fixed else [p.coarse, p.medium]
            built = self.precisions.names if self.precisions else (self.full_precision,)
            missing = [n for n in dict.fromkeys(wanted) if n not in built]
            if missing:
                out.append(
                    f"dyq needs precision {', '.join(missing)}, not built (dyq_precisions at "
                    f"configure; built: {', '.join(built)})"
                )
        return out

    def configure(self, config: EngineConfig) -> None:
        """Validate and adopt a new configuration (raises ValueError with the reasons)."""
        found = self.problems(config)
        if found:
            raise ValueError("; ".join(found))
        self.motion.configure(config.kerv)
        self.precision_policy.configure(config.precision)
        self.config = config
        self.plan = plan_for(config, self.datastore is not None)

    def reset(self) -> None:
        """A new episode or instruction: motion tracker, verify-skip and dyq start over."""
        self.motion.reset()
        self.skips.reset()
        self.precision_policy.reset()

    def bins_of(self, tokens: list[int]) -> list[int]:
        """Action token ids -> bins 0..255, the datastore's alphabet."""
        return [token_to_bin(t, self.backend.action_tokenizer.vocab_size) for t in tokens]

    def step(self, observation: Observation) -> StepResult:
        """One action step, as the plan of the configured mode says (``decoding/modes.py``)."""
        plan = self.plan
        clock = _PhaseClock(self.backend.device)
        prior = self.motion.begin(observation) if plan.motion else None
        threshold = prior.threshold if plan.kinematic_threshold else plan.fixed_threshold
        choice = self._switch_precision(prior) if plan.dyq else None  # DyQ-VLA
        if self.precisions is not None:  # every step: engines may share one backend (bench)
            precision = choice.precision if choice is not None else self.full_precision
            self.precisions.set(precision, self.config.precision.phased_rows)
        with clock.phase("prefill"):
            state = self.backend.prefill(observation)  # the first token comes with it
        result = self._first_token(state, prior, threshold, choice)
        if not plan.speculative:
            self._decode_greedy(state, result, clock)
        else:
            retrieval = self._retrieve(state, result, prior, clock) if plan.retrieval else None
            if retrieval is not None and self.skips.decide(
                plan.verify_skip, retrieval.first, retrieval.metric, self.config.heisd
            ):
                self._take_retrieved(result, retrieval)  # HeiSD verify-skip: no verifier
            else:
                session = self._draft_session(state, retrieval, clock)
                self._decode_speculative(state, result, clock, session, threshold, prior)
        return self._finish(result, prior, clock)

    def _switch_precision(self, prior: MotionPrior):
        """The policy's precision for this step's verifier (:meth:`step` sets it).

        The drafter keeps its own: its errors cost acceptance length, never the action.
        """
        if self.motion.trajectory != self._precision_trajectory:
            self.precision_policy.reset()  # a new trajectory the tracker detected by itself
        self._precision_trajectory = self.motion.trajectory
        return self.precision_policy.decide(prior.motion, prior.steps_since_gripper_change)

    def _first_token(
        self, state, prior: MotionPrior | None, threshold: float, choice=None
    ) -> StepResult:
        return StepResult(
            mode=self.config.mode,
            tokens=self.backend.action_logits_to_tokens(state.action_logits[None]),
            sources=[TokenSource.VERIFIER],
            action=np.zeros(0),
            raw_action=np.zeros(0),
            target_forwards=1,
            threshold=float(threshold),
            twist_source=prior.twist_source if prior is not None else "",
            predicted_action=prior.mean if prior is not None else None,
            precision=choice.precision if choice is not None else self.full_precision,
            precision_score=choice.score if choice is not None else None,
        )

    def _finish(self, result: StepResult, prior: MotionPrior | None, clock) -> StepResult:
        """Decode the tokens to actions; the motion tracker learns what was executed."""
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

    def _draft_session(self, state, retrieval: _RetrievalSession | None, clock: _PhaseClock):
        """Who drafts this step: retrieval on familiar motion, else the drafter.

        The drafter's tree also holds the retrieved continuations where the plan says so.
        """
        heisd = self.config.heisd
        if retrieval is not None:
            if not heisd.use_boundary:
                familiar = True
            elif heisd.boundary_rule == "curvature":
                path = self.motion.path(heisd.curvature_window)
                familiar = curvature_score(path, heisd) >= heisd.curvature_boundary
            else:
                familiar = retrieval.metric <= heisd.boundary
            if familiar and len(retrieval.first):
                return retrieval
        with clock.phase("draft"):
            session = self.drafter.start(self.backend, state, self.config.draft)
        if self.plan.merged_tree and retrieval is not None:
            return _MergedSession(session, retrieval)
        return session

    def _retrieve(
        self, state, result: StepResult, prior: MotionPrior, clock: _PhaseClock
    ) -> _RetrievalSession:
        """Look the step's first token up in the datastore; the fused metric of the motion.

        Keyed by the motion, or by the scene: the policy's own last-layer feature at the end
        of the prefix (HeiSD's key; ``heisd_retrieval_key``).
        """
        heisd = self.config.heisd
        with clock.phase("draft"):
            self.skips.follow(self.motion.trajectory)
            context = context_of(*self.motion.previous_actions())
            scene = state.scene_feature() if heisd.retrieval_key == "scene" else None
            first = self.datastore.lookup(
                context,
                self.bins_of(result.tokens),
                heisd.neighbours,
                heisd.prefix_tolerance,
                scene,
            )
            session = _RetrievalSession(self, context, first, scene)
            session.metric = result.metric = fused_metric(prior, first.distance, heisd)
            if len(first):
                result.retrieved = first.steps[0].tolist()
            if scene is not None and len(first):
                result.similarity = first.similarity
        return session

    def _take_retrieved(self, result: StepResult, retrieval: _RetrievalSession) -> None:
        """Complete the step with the retrieved continuation, unverified (verify-skip)."""
        vocab = self.backend.action_tokenizer.vocab_size
        result.tokens += [bin_to_token(b, vocab) for b in retrieval.first.steps[0][1:]]
        result.sources += [TokenSource.RETRIEVAL] * (ACTION_DIMS - 1)
        result.accepted_lengths.append(ACTION_DIMS - 1)
        result.verify_skipped = True

    def _acceptance(self, threshold: float, start: int):
        """The step's acceptance rule.

        ``hybrid`` scales the sequence-wise tolerance by kerv's kinematic threshold
        (``r / r_max``): the whole drafted motion is judged as strictly as kerv judges each
        token at that moment.
        """
        heisd, kerv = self.config.heisd, self.config.kerv
        if self.plan.sequence_acceptance:
            tolerance = heisd.sequence_threshold
            if self.plan.scale_sequence_by_threshold and kerv.widest:
                tolerance *= threshold / kerv.widest
            return SequenceAcceptance(tolerance, heisd.sequence_weights, start)
        return TokenAcceptance(int(threshold))

    def _decode_speculative(
        self,
        state,
        result: StepResult,
        clock: _PhaseClock,
        session: DraftSession,
        threshold: float,
        prior: MotionPrior | None,
    ) -> None:
        """Draft a tree, verify it in one forward, keep the accepted path, repeat.

        In ``kerv`` and ``hybrid``, a verify that leaves the step short may end it: the
        verifier's correction stands, and the dimensions after it come from the Kalman filter's
        prediction when KERV's gate allows it (:func:`kerv_ros.boundary.may_compensate`).
        """
        compensate = self.plan.compensation and prior is not None
        first_verify = True
        while len(result.tokens) < ACTION_DIMS:
            before = len(result.tokens)
            remaining = ACTION_DIMS - before
            with clock.phase("draft"):
                tree = session.draft(list(result.tokens), remaining)
            with clock.phase("verify"):
                tokens, parents = tree.with_root(result.tokens[-1])
                out = self.backend.forward_tree(state, tokens, parents)
                greedy = self.backend.action_logits_to_tokens(out.action_logits)
                walk = self._acceptance(threshold, before).walk(tokens, parents, greedy)
                self.backend.keep_path(state, walk.path)
            result.target_forwards += 1
            gained = walk.accepted[:remaining]
            result.tokens += gained
            result.sources += [
                TokenSource(tree.sources[node - 1]) if tree.sources else session.source
                for node in walk.path[1 : 1 + len(gained)]
            ]
            if first_verify and self.skips.audit:
                self._audit(session, len(gained) == remaining)
            first_verify = False
            if len(result.tokens) < ACTION_DIMS:
                result.tokens.append(walk.correction)
                result.sources.append(TokenSource.VERIFIER)
            result.accepted_lengths.append(len(result.tokens) - before)
            if len(result.tokens) == ACTION_DIMS:
                break
            rest = list(range(len(result.tokens), ACTION_DIMS))
            if compensate and may_compensate(
                prior.nis, prior.std[rest], self.motion.steps_since_compensation, self.config.kerv
            ):
                tokenizer = self.backend.action_tokenizer
                result.tokens += tokenizer.encode(prior.mean[rest]).tolist()
                result.sources += [TokenSource.KALMAN] * len(rest)
                result.compensated_dims = rest
                break
            session.advance(out.hidden[walk.path], walk.accepted)
        result.draft_forwards = session.forwards

    def _audit(self, session: DraftSession, retrieval_held: bool) -> None:
        """The first verified step after skipped ones checks the retrieval skipped on.

        It holds when retrieval drafted again and the verifier took the whole continuation;
        otherwise skipping pauses for ``heisd_skip_cooldown`` steps.
        """
        held = isinstance(session, _RetrievalSession) and retrieval_held
        self.skips.audited(held, self.config.heisd.skip_cooldown)
