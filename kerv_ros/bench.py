"""``kerv bench``: speed and fidelity of every decode mode against ``ar``, in one run.

Modes run round-robin on each observation, so that slow drifts of a shared CPU (thermal,
other processes) hit every mode alike; ratios are taken between medians of the same run.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace

import numpy as np
from tqdm import tqdm

from kerv_ros import report
from kerv_ros.config import (
    ENGINE_PARAMS,
    MODES,
    VERIFIER_PATHS,
    EngineConfig,
    config_from_params,
    parse_params,
)
from kerv_ros.decoding.drafter import Drafter
from kerv_ros.decoding.engine import DecodeEngine, StepResult, TokenSource
from kerv_ros.policy.backend import Observation, PolicyBackend

INSTRUCTIONS = (
    "reach the red cube",
    "push the blue block to the left",
    "pick up the green cube",
    "move the yellow block to the right",
)
COLOURS = ((220, 40, 40), (40, 70, 220), (40, 180, 60), (230, 200, 40))


VARIANTS: dict[str, tuple[str, dict[str, object]]] = {
    "spec_relaxed_r15": ("spec_relaxed", {"relaxed_threshold": 15}),
    "kerv_no_comp": ("kerv", {"kerv_compensation": False}),
    "kerv_fixed_r": ("kerv", {"kerv_dynamic_threshold": False}),
    "heisd_no_boundary": ("heisd", {"heisd_use_boundary": False}),
    "heisd_no_skip": ("heisd", {"heisd_verify_skip": False}),
    "heisd_token": ("heisd", {"heisd_acceptance": "token"}),
    "retrieval_only": (
        "heisd",
        {"heisd_use_boundary": False, "heisd_verify_skip": False, "heisd_acceptance": "token"},
    ),
    "hybrid_curvature": ("hybrid", {"heisd_boundary_rule": "curvature"}),
    "hybrid_scene": ("hybrid", {"heisd_retrieval_key": "scene"}),
}
"""Ablation rows: a name, the mode it runs and the parameters it changes from the bench's own
configuration. With the default ``relaxed_threshold`` of 9, ``spec_relaxed`` and
``spec_relaxed_r15`` are the KERV paper's Spec-VLA rows (r = 9 and 15); ``kerv_no_comp`` keeps
only the kinematic threshold, ``kerv_fixed_r`` only the compensation. ``heisd_no_boundary``
drafts from retrieval whenever it has candidates, ``heisd_no_skip`` always verifies,
``heisd_token`` accepts token-wise (``relaxed_threshold``) instead of sequence-wise, and
``retrieval_only`` is all three: plain retrieval drafting (REST-like) with relaxed acceptance.
``hybrid_curvature`` chooses retrieval or the drafter by HeiSD's own boundary (curvature and
displacement of the path) instead of the fused metric; ``hybrid_scene`` looks the datastore up
by the scene (needs a datastore built with ``--features``)."""

ROWS = (*MODES, *VARIANTS)
DYQ_SUFFIX = "+dyq"
"""``ROW+dyq`` (``ar+dyq``, ``hybrid+dyq``, ...): the row with DyQ-VLA's precision switching."""
PATH_MARK = "@"
"""``ROW@PATH`` (``ar@transformers``): the row with the language model on that verifier path;
a row without one runs on the path the model was loaded with (``--verifier``)."""


def runnable(rows: dict[str, EngineConfig], problems, announce) -> dict[str, EngineConfig]:
    """The rows that can run here; the others are announced with why (one line per reason).

    ``problems(config)`` is the engine's check (:meth:`DecodeEngine.problems`).
    """
    out, skipped = {}, {}
    for name, config in rows.items():
        found = "; ".join(problems(config))
        if found:
            skipped.setdefault(found, []).append(name)
        else:
            out[name] = config
    for reason, names in skipped.items():
        announce(f"skipping {', '.join(names)}: {reason}")
    return out


def row_path(row: str) -> str | None:
    """The verifier path a row names (``ar@transformers``), or None."""
    _, mark, path = row.partition(PATH_MARK)
    if mark and path not in VERIFIER_PATHS:
        raise ValueError(f"{row}: verifier path {path!r}; choose from {', '.join(VERIFIER_PATHS)}")
    return path if mark else None


@contextmanager
def on_row_path(backend: PolicyBackend, row: str):
    """The backend on the verifier path ``row`` names (else as it is), put back afterwards."""
    loaded = getattr(backend, "verifier_path", None)
    path = row_path(row)
    if path is None or path == loaded:
        yield
        return
    backend.set_verifier_path(path)
    try:
        yield
    finally:
        backend.set_verifier_path(loaded)


def row_config(base: EngineConfig, row: str) -> EngineConfig:
    """The configuration of a bench row: a mode, an ablation variant of one, either ``+dyq``.

    Any of them may end in ``@PATH``: the path is :func:`row_path`'s, not the configuration's.
    """
    if row_path(row) is not None:
        return row_config(base, row.partition(PATH_MARK)[0])
    if row.endswith(DYQ_SUFFIX):
        return replace(row_config(base, row.removesuffix(DYQ_SUFFIX)), dyq=True).validate()
    if row in VARIANTS:
        mode, params = VARIANTS[row]
        return config_from_params(base, ENGINE_PARAMS, params).with_mode(mode)
    if row not in MODES:
        raise ValueError(
            f"unknown mode or variant {row!r}; choose from {', '.join(ROWS)} (each also +dyq)"
        )
    return base.with_mode(row)


SWEEP_ALIASES = {"r": "relaxed_threshold"}


def sweep_rows(
    config: EngineConfig, rows: list[str], sweep: str | None
) -> tuple[dict[str, EngineConfig], dict[str, list[tuple[float, str]]]]:
    """Every row's configuration, plus one per value of a swept parameter for each non-ar row.

    ``sweep`` is ``NAME=V1,V2,...`` (``r`` for ``relaxed_threshold``); the curves map
    ``"<row> <name>"`` to (value, row name) points, the trade-off plot's input.
    """
    configs = {row: row_config(config, row) for row in rows}
    curves: dict[str, list[tuple[float, str]]] = {}
    if not sweep:
        return configs, curves
    name, sep, values = sweep.partition("=")
    name = SWEEP_ALIASES.get(name, name)
    if not sep or not values:
        raise ValueError(f"--sweep {sweep!r}: expected NAME=V1,V2,...")
    for row in rows:
        if row == "ar":
            continue
        points = []
        for text in values.split(","):
            params = parse_params([f"{name}={text.strip()}"])
            swept = f"{row}[{name}={text.strip()}]"
            configs[swept] = config_from_params(configs[row], ENGINE_PARAMS, params).validate()
            points.append((float(params[name]), swept))
        curves[f"{row} {name}"] = points
    return configs, curves


def synthetic_observations(count: int, seed: int, size: int = 128) -> list[Observation]:
    """Table-top-like scenes (coloured blocks on a plain table) with instructions, seeded."""
    rng = np.random.default_rng(seed)
    observations = []
    for _ in range(count):
        image = np.empty((size, size, 3), dtype=np.uint8)
        image[:] = rng.integers(150, 200, size=3, dtype=np.uint8)
        for colour in COLOURS:
            side = int(rng.integers(size // 12, size // 6))
            x, y = rng.integers(0, size - side, size=2)
            image[y : y + side, x : x + side] = colour
        noise = rng.integers(-8, 9, size=image.shape)
        image = np.clip(image.astype(np.int16) + noise, 0, 255).astype(np.uint8)
        state = rng.normal(0.0, 0.5, size=7)  # arm joint positions, radians
        observations.append(Observation(image, str(rng.choice(INSTRUCTIONS)), state))
    return observations


def run(
    backend: PolicyBackend,
    drafter: Drafter | None,
    config: EngineConfig,
    modes: list[str],
    observations: list[Observation],
    warmup: int = 2,
    progress: bool = True,
    kinematics=None,
    period_s: float = 0.1,
    datastore=None,
) -> dict[str, dict[str, float]]:
    """Decode every observation in every row (mode or variant); return the per-row summary."""
    rows = {mode: row_config(config, mode) for mode in modes}
    results = run_rows(
        backend, drafter, rows, observations, warmup, progress, kinematics, period_s, datastore
    )
    return summarise(results)


def run_rows(
    backend: PolicyBackend,
    drafter: Drafter | None,
    rows: dict[str, EngineConfig],
    observations: list[Observation],
    warmup: int = 2,
    progress: bool = True,
    kinematics=None,
    period_s: float = 0.1,
    datastore=None,
    desc: str = "bench",
) -> dict[str, list[StepResult]]:
    """Every named configuration on every observation, round-robin; ``ar`` is added first.

    ``kinematics`` (an ``ArmKinematics``) seeds the motion modes' filter from the observations'
    joint motion; each row has its own engine, so its filter follows its own actions. A row
    named ``ROW@PATH`` runs with the backend on that verifier path, the others on the one it
    was loaded with.
    """
    if "ar" not in rows:
        rows = {"ar": EngineConfig(mode="ar"), **rows}
    engines = {
        name: DecodeEngine(backend, drafter, config, kinematics, period_s, datastore)
        for name, config in rows.items()
    }

    def step(name: str, observation: Observation) -> StepResult:
        with on_row_path(backend, name):
            return engines[name].step(observation)

    for observation in observations[:warmup]:
        for name in engines:
            step(name, observation)
    results: dict[str, list[StepResult]] = {name: [] for name in rows}
    for observation in tqdm(observations, desc=desc, unit="step", disable=not progress):
        for name in engines:
            results[name].append(step(name, observation))
    return results


def summarise(results: dict[str, list[StepResult]]) -> dict[str, dict[str, float]]:
    """Per row, against the ``ar`` row of the same run (see README, Benchmark).

    ``average_first_error_position`` is the 1-based position (1..7) of the first token that
    differs from ``ar``, averaged over the steps that differ at all (None when none does);
    ``steps_differing_from_ar`` is their share.
    """
    ar = results["ar"]
    ar_step = np.median([r.timings.total_ms for r in ar])
    other_ar = {row_path(row): steps for row, steps in results.items() if row.startswith("ar@")}
    ar_decode = np.median([r.timings.decode_ms for r in ar])
    ar_tokens = np.array([r.tokens for r in ar])
    ar_actions = np.array([r.action for r in ar])
    summary = {}
    for mode, steps in results.items():
        decode_ms = float(np.median([r.timings.decode_ms for r in steps]))
        accepted = [n for r in steps for n in r.accepted_lengths]
        tokens = np.array([r.tokens for r in steps])
        differ = tokens != ar_tokens
        first_error = [int(np.argmax(row)) + 1 for row in differ if row.any()]
        errors = np.abs(np.array([r.action for r in steps]) - ar_actions)
        figures = report.step_figures(
            [r.timings.total_ms for r in steps], [r.target_forwards for r in steps], accepted
        )
        summary[mode] = {
            **figures,
            "draft_forwards_per_step": float(np.mean([r.draft_forwards for r in steps])),
            "decode_ms_median": decode_ms,
            "speedup_vs_ar_step": float(ar_step / figures["step_ms_median"]),
            "speedup_vs_ar_decode": float(ar_decode / decode_ms),
            "token_mismatch_vs_ar": float(
                np.mean(np.abs(np.array([r.tokens for r in steps]) - ar_tokens))
            ),
            "action_error_vs_ar": float(
                np.mean(np.abs(np.array([r.action for r in steps]) - ar_actions))
            ),
            "action_error_vs_ar_per_dim": errors.mean(axis=0).tolist(),
            "bin_error_vs_ar_per_dim": np.abs(tokens - ar_tokens).mean(axis=0).tolist(),
            "steps_differing_from_ar": float(differ.any(axis=1).mean()),
            "average_first_error_position": float(np.mean(first_error)) if first_error else None,
            "step_ms_p90": float(np.percentile([r.timings.total_ms for r in steps], 90)),
            "decode_ms_p90": float(np.percentile([r.timings.decode_ms for r in steps], 90)),
            "compensated_dims_per_step": float(np.mean([len(r.compensated_dims) for r in steps])),
            "compensated_step_share": float(np.mean([bool(r.compensated_dims) for r in steps])),
            "threshold_mean": float(np.mean([r.threshold for r in steps])),
            "kalman_error_vs_ar": _prediction_error(steps, ar_actions),
            "verify_skipped_share": float(np.mean([r.verify_skipped for r in steps])),
            "draft_source_mix": _source_mix(steps),
            "precision_share": _precision_share(steps),
        }
        for path, baseline in other_ar.items():
            ms = np.median([r.timings.total_ms for r in baseline])
            summary[mode][f"speedup_vs_ar_{path}_step"] = float(ms / figures["step_ms_median"])
    return summary


def _prediction_error(steps: list[StepResult], ar_actions: np.ndarray) -> float | None:
    """Mean |filter prediction - ar action| over the motion dims (action units).

    None for a row without a filter (every mode but ``kerv``).
    """
    pairs = [(r.predicted_action, a) for r, a in zip(steps, ar_actions, strict=True)]
    pairs = [(p, a) for p, a in pairs if p is not None]
    if not pairs:
        return None
    return float(np.mean([np.abs(p[:6] - a[:6]).mean() for p, a in pairs]))


def _precision_share(steps: list[StepResult]) -> dict[str, float]:
    """Share of the steps the verifier ran at each precision (the model's own: ``float32``)."""
    names = sorted({r.precision for r in steps})
    return {name: float(np.mean([r.precision == name for r in steps])) for name in names}


def _source_mix(steps: list[StepResult]) -> dict[str, float]:
    """Share of the tokens after each step's first (which the prefill gives) by source."""
    sources = [s for r in steps for s in r.sources[1:]]
    return {
        source.name.lower(): float(np.mean([s == source for s in sources]))
        for source in TokenSource
    }
