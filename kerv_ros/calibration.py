"""``kerv dyq calibrate`` and ``profile``: what each precision costs and how far it moves actions.

DyQ-VLA calibrates offline which precision each value of its sensitivity score can afford.
Here every recorded control tick is decoded greedily (``ar``) at full precision, with the
motion tracker and the switching policy's scoring running as they would in the node, and again
at every precision variant; the mean |action - full-precision action| over the 7 dims (action
units) and the share of tokens that changed are binned by the fused score. The table
(:class:`kerv_ros.dyq.CalibrationTable`) goes beside the model, where configure reads it.

``profile`` times each precision's forwards as the engine issues them (the prefill, a
one-token decode, tree verifies of the sizes the engine uses) beside the weights it runs on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from kerv_ros.actions import ACTION_DIMS, bin_to_token
from kerv_ros.config import DyqConfig, EngineConfig
from kerv_ros.decoding.engine import DecodeEngine
from kerv_ros.dyq import LEVELS, SCORING, CalibrationTable
from kerv_ros.policy.backend import Observation, PolicyBackend


@dataclass
class TickRecord:
    """One calibrated tick: its score and proxies, and each precision's distance from full."""

    score: float
    fineness: float
    jerk: float
    errors: dict[str, float] = field(default_factory=dict)
    token_changes: dict[str, float] = field(default_factory=dict)


def measure(
    backend: PolicyBackend,
    episodes: list[list[Observation]],
    scoring: DyqConfig,
    kinematics=None,
    period_s: float = 0.1,
) -> tuple[list[TickRecord], dict[str, float]]:
    """Decode every tick at every precision the backend has built; the records and step ms.

    ``episodes`` are the ticks of each recording in order (the motion windows start over at
    each). Ticks whose motion is not measured (an episode's first) have no score and are left
    out. Returns the records and each precision's median step time.
    """
    precisions = backend.precisions
    if precisions is None or len(precisions.names) < 2:
        raise ValueError("no precision variant built: pass --dyq-precisions")
    # Held at full precision whatever the score (both bounds 0, and full as coarse and medium:
    # the variants measured need not include the live ones), so the score is the node's.
    own = precisions.full
    scored = replace(
        scoring, fixed="", table=False, coarse_below=0.0, full_above=0.0, coarse=own, medium=own
    )
    reference = DecodeEngine(
        backend, None, EngineConfig(mode="ar", dyq=True, precision=scored), kinematics, period_s
    )
    variants = {
        name: DecodeEngine(
            backend, None, EngineConfig(mode="ar", dyq=True, precision=replace(scoring, fixed=name))
        )
        for name in precisions.names[1:]
    }
    records: list[TickRecord] = []
    step_ms: dict[str, list[float]] = {name: [] for name in precisions.names}
    total = sum(len(e) for e in episodes)
    with tqdm(total=total, desc="dyq calibrate", unit="tick") as bar:
        for ticks in episodes:
            reference.reset()
            for observation in ticks:
                full = reference.step(observation)
                step_ms[precisions.full].append(full.timings.total_ms)
                proxies = reference.precision_policy.proxies
                record = None
                if full.precision_score is not None and proxies is not None:
                    record = TickRecord(full.precision_score, *proxies)
                    records.append(record)
                for name, engine in variants.items():
                    result = engine.step(observation)
                    step_ms[name].append(result.timings.total_ms)
                    if record is not None:
                        record.errors[name] = float(np.abs(result.action - full.action).mean())
                        changed = np.not_equal(result.tokens, full.tokens)
                        record.token_changes[name] = float(changed.mean())
                bar.update()
    precisions.set(precisions.full)
    return records, {name: float(np.median(ms)) for name, ms in step_ms.items() if ms}


def build_table(
    records: list[TickRecord],
    step_ms: dict[str, float],
    scoring: DyqConfig,
    full: str,
    bins: int = 10,
    min_count: int = 5,
    source: dict | None = None,
) -> CalibrationTable:
    """Bin the records by score over [0, 1] into the table the policy reads."""
    if not records:
        raise ValueError("no tick with a measured motion: the recordings need joint states")
    edges = np.linspace(0.0, 1.0, bins + 1)
    scores = np.array([r.score for r in records])
    index = np.clip(np.searchsorted(edges, scores, side="right") - 1, 0, bins - 1)
    names = list(records[0].errors)

    def binned(values: list[float]) -> list[float | None]:
        values = np.asarray(values)
        return [
            float(values[index == b].mean()) if np.any(index == b) else None for b in range(bins)
        ]

    return CalibrationTable(
        edges=edges.round(6).tolist(),
        counts=np.bincount(index, minlength=bins).tolist(),
        errors={n: binned([r.errors[n] for r in records]) for n in names},
        token_changes={n: binned([r.token_changes[n] for r in records]) for n in names},
        scoring={name: getattr(scoring, name) for name in SCORING},
        full=full,
        min_count=min_count,
        step_ms=step_ms,
        source=source or {},
    )


def table_text(table: CalibrationTable, config: DyqConfig) -> str:
    """The table as printed: per bin the ticks, each precision's error, and the chosen level."""
    names = list(table.errors)
    levels = table.levels(config)
    head = ["score", "ticks", *[f"err {n}" for n in names], f"level @ {config.error_bound:g}"]
    rows = []
    for b, count in enumerate(table.counts):
        cells = [f"{table.edges[b]:.1f}-{table.edges[b + 1]:.1f}", str(count)]
        cells += ["-" if table.errors[n][b] is None else f"{table.errors[n][b]:.4f}" for n in names]
        level = levels[b]
        precision = (config.coarse, config.medium, table.full)[level]
        cells.append(f"{LEVELS[level]} ({precision})")
        rows.append(cells)
    ms = "  ".join(f"{n} {table.step_ms[n]:.1f}" for n in table.step_ms)
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join([*lines, "", f"median ar step ms: {ms}"])


def plot(records: list[TickRecord], table: CalibrationTable, path: Path) -> None:
    """Action error per precision against the score's bins and against each proxy (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(table.errors)
    centres = (np.array(table.edges[:-1]) + np.array(table.edges[1:])) / 2
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for name in names:
        values = [np.nan if v is None else v for v in table.errors[name]]
        axes[0].plot(centres, values, marker="o", label=name)
        for ax, proxy in ((axes[1], "fineness"), (axes[2], "jerk")):
            x = [getattr(r, proxy) for r in records]
            ax.scatter(x, [r.errors[name] for r in records], s=6, alpha=0.5, label=name)
    counts = axes[0].twinx()
    counts.bar(centres, table.counts, width=0.08, color="0.85", zorder=0)
    counts.set_ylabel("ticks")
    axes[0].set_zorder(counts.get_zorder() + 1)
    axes[0].patch.set_visible(False)
    axes[0].set(xlabel="fused score S", ylabel="mean |action - full| (action units)")
    axes[1].set(xlabel="motion fineness", ylabel="per tick")
    axes[2].set(xlabel="angular jerk score", ylabel="per tick")
    for ax in axes:
        ax.legend(fontsize=8)
    fig.suptitle("dyq calibration: action error against full precision")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


VERIFY_SIZES = (7, 24, 49)
"""Tree sizes the engine verifies: a 7-token chain (retrieval's, or a full draft), the draft
tree's default budget, and a wide tree of HeiSD's and Spec-VLA's size."""


def _tree_parents(size: int, top_k: int = 4) -> list[int]:
    """A draft-tree shape: ``top_k`` roots, each node expanding into ``top_k`` children."""
    return [-1 if i < top_k else (i - top_k) // top_k for i in range(size)]


def _median_ms(run, repeats: int, setup=None) -> float:
    """Median wall time of ``run(setup())`` over ``repeats`` (``setup`` is not timed)."""
    times = []
    for _ in range(repeats):
        arg = setup() if setup is not None else None
        start = time.perf_counter()
        run(arg)
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times))


def profile(
    backend: PolicyBackend, observations: list[Observation], repeats: int = 5
) -> tuple[dict[str, dict[str, float]], int]:
    """Per precision: prefill, decode and verify times, weights, distance from full precision.

    Times are medians over ``repeats`` of the forwards the engine issues (the prefill, a
    one-token decode, a tree verify per size in :data:`VERIFY_SIZES`); the weights are the
    bytes the precision runs on; the distance is its greedy steps' from full precision on
    ``observations``. Also returns the resident bytes of all the variants held together.
    """
    precisions = backend.precisions
    if precisions is None:
        raise ValueError("no precision variant built: pass --dyq-precisions")
    memory = precisions.memory()
    token = bin_to_token(128, backend.action_tokenizer.vocab_size)
    observation = observations[0]
    out: dict[str, dict[str, float]] = {}
    full = None
    for name in tqdm(precisions.names, desc="dyq profile", unit="precision"):
        config = EngineConfig(mode="ar", dyq=True, precision=DyqConfig(fixed=name))
        steps = [DecodeEngine(backend, None, config).step(o) for o in observations]
        full = full or steps
        precisions.set(name)
        row = {"prefill_ms": _median_ms(lambda _: backend.prefill(observation), repeats)}

        def decode(state):
            for _ in range(ACTION_DIMS - 1):
                backend.forward_tree(state, [token], [-1])
                backend.keep_path(state, [0])

        prefilled = lambda: backend.prefill(observation)  # noqa: E731
        row["decode_ms_per_token"] = _median_ms(decode, repeats, prefilled) / (ACTION_DIMS - 1)
        state = backend.prefill(observation)
        for size in VERIFY_SIZES:

            def verify(_, size=size, state=state):
                backend.forward_tree(state, [token] * size, _tree_parents(size))
                backend.keep_path(state, [])  # drop the tree: the next one sees the same prefix

            row[f"verify_{size}_ms"] = _median_ms(verify, repeats)
        owners = (precisions.full,) if name == precisions.full else _weights_owners(name)
        row["weights_mib"] = sum(memory.get(owner, 0) for owner in owners) / 2**20
        row["action_error_vs_full"] = float(
            np.mean([np.abs(a.action - b.action).mean() for a, b in zip(steps, full, strict=True)])
        )
        row["tokens_changed"] = float(
            np.mean(
                [np.not_equal(a.tokens, b.tokens).mean() for a, b in zip(steps, full, strict=True)]
            )
        )
        out[name] = row
    precisions.set(precisions.full)
    return out, sum(memory.values())


def _weights_owners(name: str) -> tuple[str, ...]:
    """The copies a precision runs on.

    ``int8`` and ``int8_bf16`` share one; ``phased`` reads the bfloat16 and the int8 copy (a
    bfloat16 model's bfloat16 copy is its own weights).
    """
    return {"int8_bf16": ("int8",), "phased": ("bfloat16", "int8")}.get(name, (name,))
