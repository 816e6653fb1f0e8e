"""DyQ-VLA's switching policy: the precision of each step from the arm's motion.

The two kinematic proxies, their fusion, the three-level table and the asymmetric hysteresis
are in :class:`kerv_ros.config.DyqConfig`'s docstring. The policy sees only what the engine's
motion tracker measured (the end-effector motion in action units, 6 motion dims) and when the
gripper last changed; it never reads the model. Full precision is the answer whenever the
motion cannot be judged: no measurement, an episode's first steps, a grasp.

Which level a score maps to comes from the two bounds, or from a calibration table
(``kerv dyq calibrate``: the action error of each precision against full precision, measured
on recorded ticks and binned by the score): a bin runs at the coarse precision where its
error is within ``dyq_error_bound``, else at the medium one where that is, else at full.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from kerv_ros.config import DyqConfig

LEVELS = ("coarse", "medium", "full")
TABLE_FILE = "dyq.json"
"""The calibration table's name beside a model."""
TABLE_FORMAT = "kerv-dyq-calibration/1"
SCORING = ("fineness_weight", "speed_ref", "jerk_ref", "window_macro", "window_micro")
"""The parameters that define the score; a table holds only for the values it was made with."""


class TableError(ValueError):
    """A calibration table that cannot be read."""


@dataclass
class CalibrationTable:
    """Action error of each precision against full precision, binned by the fused score.

    Written by ``kerv dyq calibrate`` as ``dyq.json`` beside the model; read at configure.
    """

    edges: list[float]
    """Score bin edges, ascending (bins are [edges[i], edges[i+1]); the last one is closed)."""
    counts: list[int]
    """Ticks measured in each bin."""
    errors: dict[str, list[float | None]]
    """Per precision, the mean |action - full-precision action| of each bin (action units,
    averaged over the 7 dims); None for an empty bin."""
    scoring: dict[str, float]
    """The :data:`SCORING` parameters the scores were computed with."""
    full: str = "float32"
    min_count: int = 5
    """Bins with fewer ticks are never run below full precision."""
    token_changes: dict[str, list[float | None]] = field(default_factory=dict)
    """Per precision, the share of the bin's tokens that differ from full precision."""
    step_ms: dict[str, float] = field(default_factory=dict)
    """Per precision, the median ``ar`` step time measured while calibrating."""
    source: dict = field(default_factory=dict)
    """What it was measured on: model, bags, ticks."""

    def bin_of(self, score: float) -> int:
        index = int(np.searchsorted(self.edges, score, side="right")) - 1
        return min(max(index, 0), len(self.counts) - 1)

    def mismatch(self, config: DyqConfig) -> str:
        """Why the table does not hold for ``config``'s scoring ('' where it does)."""
        for name in SCORING:
            live = getattr(config, name)
            if not np.isclose(float(live), float(self.scoring.get(name, np.nan))):
                return f"calibrated with dyq_{name} {self.scoring.get(name)}, live {live}"
        for name in (config.coarse, config.medium):
            if name != self.full and name not in self.errors:
                return f"not calibrated for {name}"
        return ""

    def levels(self, config: DyqConfig) -> list[int]:
        """The level of each bin under ``config`` (its precisions and error bound)."""
        out = []
        for i, count in enumerate(self.counts):
            level = len(LEVELS) - 1
            if count >= self.min_count:
                for candidate, name in ((0, config.coarse), (1, config.medium)):
                    # A precision the table has no column for is never chosen.
                    measured = self.errors.get(name, [None] * len(self.counts))
                    error = 0.0 if name == self.full else measured[i]
                    if error is not None and error <= config.error_bound:
                        level = candidate
                        break
            out.append(level)
        return out

    def save(self, path: Path) -> None:
        payload = {"format": TABLE_FORMAT, **asdict(self)}
        Path(path).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> CalibrationTable:
        try:
            payload = json.loads(Path(path).read_text(encoding="utf-8"))
            if payload.pop("format", None) != TABLE_FORMAT:
                raise TableError(f"not a {TABLE_FORMAT} table")
            table = cls(**payload)
        except (OSError, json.JSONDecodeError, TypeError, AttributeError) as err:
            raise TableError(f"{path}: {err}") from err
        except TableError as err:
            raise TableError(f"{path}: {err}") from err
        bins = len(table.edges) - 1
        sizes = {len(table.counts), *(len(v) for v in table.errors.values())}
        if bins < 1 or sizes != {bins} or list(table.edges) != sorted(table.edges):
            raise TableError(f"{path}: {bins + 1} edges do not match the bins' lengths {sizes}")
        return table


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision of one step and why."""

    precision: str
    score: float | None
    """The fused sensitivity score S (None where the motion was not measured)."""
    reason: str
    """``fixed``, ``warmup``, ``gripper``, ``unmeasured``, ``score`` (the bounds mapped it),
    ``table`` (the calibration table did) or ``dwell``."""


class PrecisionPolicy:
    """Chooses each step's precision; keeps the proxies' windows of one trajectory."""

    def __init__(self, config: DyqConfig, full: str, table: CalibrationTable | None = None) -> None:
        self.config = config
        self.full = full
        self.table = table
        self._map_levels()
        self.reset()

    def reset(self) -> None:
        """A new episode: windows empty, full precision, warm-up again."""
        self._speeds: deque[float] = deque(maxlen=self.config.window_macro)
        self._angular: deque[np.ndarray] = deque(maxlen=2)
        self._jerks: deque[float] = deque(maxlen=self.config.window_micro)
        self._level = len(LEVELS) - 1
        self._steps_at_level = 0
        self._steps = 0
        self.proxies: tuple[float, float] | None = None
        """The last step's (motion fineness, angular jerk score), None where not measured."""

    def configure(self, config: DyqConfig) -> None:
        """New bounds and weights; new window lengths start the windows over."""
        windows = (config.window_macro, config.window_micro)
        resized = windows != (self.config.window_macro, self.config.window_micro)
        self.config = config
        self._map_levels()
        if resized:
            self.reset()

    def _map_levels(self) -> None:
        """Decide, once per configuration, whether the table or the bounds map scores."""
        c = self.config
        self._bin_levels: list[int] | None = None
        if not c.table:
            self.map_source = "bounds (dyq_table off)"
        elif self.table is None:
            self.map_source = f"bounds (no {TABLE_FILE} beside the model)"
        elif why := self.table.mismatch(c):
            self.map_source = f"bounds ({TABLE_FILE} {why})"
        else:
            self._bin_levels = self.table.levels(c)
            self.map_source = f"{TABLE_FILE} (error bound {c.error_bound:g})"

    def level_of(self, score: float, margin: float = 0.0) -> int:
        """The level the score maps to; with a margin, the highest over score +- margin."""
        if self._bin_levels is None:
            lower, upper = sorted((self.config.coarse_below, self.config.full_above))
            top = score + margin
            return 2 if top >= upper else (0 if top < lower else 1)
        first = self.table.bin_of(score - margin)
        return max(self._bin_levels[first : self.table.bin_of(score + margin) + 1])

    def precision_of(self, level: int) -> str:
        return (self.config.coarse, self.config.medium, self.full)[level]

    def score(self, motion: np.ndarray) -> float:
        """Add one step's measured motion (6 dims, action units) to the windows; S for it."""
        c = self.config
        self._speeds.append(float(np.linalg.norm(motion[:3])))
        angular = np.asarray(motion[3:6], dtype=np.float64)
        if len(self._angular) == 2:
            previous, before = self._angular[1], self._angular[0]
            self._jerks.append(float(np.linalg.norm(angular - 2 * previous + before)))
        self._angular.append(angular)
        fineness = c.speed_ref / (c.speed_ref + float(np.mean(self._speeds)))
        jerk = min(1.0, max(self._jerks, default=0.0) / c.jerk_ref)
        self.proxies = (fineness, jerk)
        return max(0.0, c.fineness_weight * fineness + (1.0 - c.fineness_weight) * jerk)

    def decide(self, motion: np.ndarray | None, steps_since_gripper_change: int) -> PrecisionChoice:
        """The precision of this step; ``motion`` is the measured motion, or None."""
        c = self.config
        self._steps += 1
        self._steps_at_level += 1
        if c.fixed:
            return PrecisionChoice(c.fixed, None, "fixed")
        self.proxies = None
        score = self.score(motion) if motion is not None and np.all(np.isfinite(motion)) else None
        if self._steps <= c.warmup_steps:
            return self._hold_full(score, "warmup")
        if steps_since_gripper_change < c.gripper_window:
            return self._hold_full(score, "gripper")
        if score is None:
            return self._hold_full(score, "unmeasured")
        why = "score" if self._bin_levels is None else "table"
        target = self.level_of(score)
        if target > self._level:
            self._move(target)
            return PrecisionChoice(self.precision_of(target), score, why)
        if target < self._level and self._steps_at_level > c.min_dwell:
            # Down only as far as every score within the hysteresis margin allows.
            level = self.level_of(score, c.hysteresis)
            if level < self._level:
                self._move(level)
                return PrecisionChoice(self.precision_of(level), score, why)
        if target < self._level:
            return PrecisionChoice(self.precision_of(self._level), score, "dwell")
        return PrecisionChoice(self.precision_of(self._level), score, why)

    def _move(self, level: int) -> None:
        self._level = level
        self._steps_at_level = 0

    def _hold_full(self, score: float | None, reason: str) -> PrecisionChoice:
        self._move(len(LEVELS) - 1)
        return PrecisionChoice(self.full, score, reason)
