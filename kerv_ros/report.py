"""One report layer: every statistic's column declared once, the same names in every table.

``kerv bench``, ``kerv eval`` (offline and ``--closed-loop``) and ``kerv sim run`` summarise
into dicts whose keys are the JSON field names users read; the tables printed and written as
Markdown are views of those dicts through the columns below. A statistic has one field name
(``step_ms_median``, ``speedup_vs_ar_step``) and one title wherever it appears.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Column:
    """How one field of a summary row is shown: its title and how its value reads."""

    title: str
    fmt: str | Callable[[dict], str]
    """A format string for the field's value, or a function of the whole row."""
    only_when_present: bool = False
    """Shown only in tables where some row has the field (a comparison the run asked for)."""

    def cell(self, key: str, row: Mapping) -> str:
        if callable(self.fmt):
            return self.fmt(row)
        value = _get(row, key)
        return "-" if value is None else self.fmt.format(value)


def _get(row: Mapping, key: str):
    """``a.b`` reads a nested field (the draft source mix)."""
    for part in key.split("."):
        if not isinstance(row, Mapping):
            return None
        row = row.get(part)
    return row


def _success(row: Mapping) -> str:
    return f"{row['successes']}/{row['episodes']}"


def _ci95(row: Mapping) -> str:
    low, high = row["success_ci95"]
    return f"{low:.0%}-{high:.0%}"


COLUMNS: dict[str, Column] = {
    "success": Column("success", _success),
    "success_ci95": Column("95 % CI", _ci95),
    "mean_episode_steps": Column("mean steps", "{:.1f}"),
    "target_forwards_per_step": Column("tgt fwd/step", "{:.2f}"),
    "draft_forwards_per_step": Column("drf fwd/step", "{:.2f}"),
    "mean_accepted_length": Column("acc len", "{:.2f}"),
    "average_first_error_position": Column("AFEP", "{:.2f}"),
    "steps_differing_from_ar": Column("steps != ar", "{:.0%}"),
    "action_error_vs_ar": Column("|act-ar|", "{:.4f}"),
    "token_mismatch_vs_ar": Column("|bin-ar|", "{:.3f}"),
    "action_error_vs_recorded": Column("|act-rec|", "{:.4f}"),
    "verify_skipped_share": Column("skipped", "{:.0%}"),
    "compensated_step_share": Column("compensated", "{:.0%}"),
    "compensated_dims_per_step": Column("comp dims", "{:.2f}"),
    "threshold_mean": Column("r mean", "{:.1f}"),
    "kalman_error_vs_ar": Column("|kf-ar|", "{:.4f}"),
    "step_ms_median": Column("step ms", "{:.1f}"),
    "step_ms_p90": Column("step p90", "{:.1f}"),
    "decode_ms_median": Column("decode ms", "{:.1f}"),
    "decode_ms_p90": Column("decode p90", "{:.1f}"),
    "speedup_vs_ar_step": Column("speed-up step", "{:.2f}x"),
    "speedup_vs_ar_decode": Column("speed-up decode", "{:.2f}x"),
    "speedup_vs_ar_transformers_step": Column("vs ar@transformers", "{:.2f}x", True),
    "draft_source_mix.drafter": Column("drf", "{:.2f}"),
    "draft_source_mix.retrieval": Column("ret", "{:.2f}"),
    "draft_source_mix.kalman": Column("kf", "{:.2f}"),
    "draft_source_mix.verifier": Column("ver", "{:.2f}"),
    "precision_share.float32": Column("fp32 share", "{:.0%}"),
    "prefill_ms": Column("prefill ms", "{:.2f}"),
    "decode_ms_per_token": Column("decode ms/token", "{:.2f}"),
    "verify_7_ms": Column("verify 7 ms", "{:.2f}"),
    "verify_24_ms": Column("verify 24 ms", "{:.2f}"),
    "verify_49_ms": Column("verify 49 ms", "{:.2f}"),
    "weights_mib": Column("weights MiB", "{:.1f}"),
    "action_error_vs_full": Column("|act-full|", "{:.4f}"),
    "tokens_changed": Column("tokens changed", "{:.1%}"),
}

BENCH = (
    "target_forwards_per_step",
    "draft_forwards_per_step",
    "mean_accepted_length",
    "step_ms_median",
    "decode_ms_median",
    "speedup_vs_ar_step",
    "speedup_vs_ar_decode",
    "speedup_vs_ar_transformers_step",
    "token_mismatch_vs_ar",
    "action_error_vs_ar",
    "compensated_dims_per_step",
    "threshold_mean",
    "kalman_error_vs_ar",
    "verify_skipped_share",
    "draft_source_mix.drafter",
    "draft_source_mix.retrieval",
    "draft_source_mix.kalman",
    "draft_source_mix.verifier",
    "precision_share.float32",
)
"""``kerv bench``: cost, speed and agreement with ``ar``, and who drafted the tokens."""
OFFLINE = (
    "target_forwards_per_step",
    "draft_forwards_per_step",
    "mean_accepted_length",
    "average_first_error_position",
    "steps_differing_from_ar",
    "action_error_vs_ar",
    "token_mismatch_vs_ar",
    "action_error_vs_recorded",
    "verify_skipped_share",
    "compensated_step_share",
    "step_ms_median",
    "step_ms_p90",
    "decode_ms_median",
    "decode_ms_p90",
    "speedup_vs_ar_step",
    "speedup_vs_ar_decode",
    "speedup_vs_ar_transformers_step",
    "precision_share.float32",
)
"""``kerv eval BAG``: the bench's figures plus the error against the recorded command."""
CLOSED_LOOP = (
    "success",
    "success_ci95",
    "mean_episode_steps",
    "step_ms_median",
    "target_forwards_per_step",
    "mean_accepted_length",
)
"""``kerv eval --closed-loop``, per mode and task."""
SIM_RUN = (
    "success",
    "step_ms_median",
    "target_forwards_per_step",
    "mean_accepted_length",
    "speedup_vs_ar_step",
)
"""``kerv sim run``: the node in the loop, per mode."""
PRECISION = (
    "prefill_ms",
    "decode_ms_per_token",
    "verify_7_ms",
    "verify_24_ms",
    "verify_49_ms",
    "weights_mib",
    "action_error_vs_full",
    "tokens_changed",
)
"""``kerv dyq profile``, per precision."""


def step_figures(
    step_ms: list[float], target_forwards: list[float], accepted: list[int]
) -> dict[str, float]:
    """The figures every summary has, from per-step times, forwards and accepted lengths."""
    return {
        "step_ms_median": float(np.median(step_ms)) if step_ms else 0.0,
        "target_forwards_per_step": float(np.mean(target_forwards)) if target_forwards else 0.0,
        "mean_accepted_length": float(np.mean(accepted)) if accepted else 0.0,
    }


def table(
    rows: Mapping[str, Mapping] | Iterable[tuple[tuple[str, ...], Mapping]],
    columns: Iterable[str],
    index: tuple[str, ...] = ("mode",),
    markdown: bool = False,
) -> str:
    """Rows (name -> summary, or (names, summary) pairs for several index columns) as a table.

    Plain text is right-aligned for a terminal; Markdown goes into ``report.md``. A value that
    does not apply to a row (None, or a field it lacks) reads '-'.
    """
    items = list(rows.items() if isinstance(rows, Mapping) else rows)
    columns = tuple(
        k
        for k in columns
        if not COLUMNS[k].only_when_present or any(_get(r, k) is not None for _, r in items)
    )
    body = [
        [
            *((names,) if isinstance(names, str) else names),
            *(COLUMNS[k].cell(k, r) for k in columns),
        ]
        for names, r in items
    ]
    head = [*index, *(COLUMNS[k].title for k in columns)]
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
        return "\n".join(lines + ["| " + " | ".join(cells) + " |" for cells in body])
    widths = [max(len(cells[i]) for cells in [head, *body]) for i in range(len(head))]
    text = ["  ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True)) for cells in body]
    top = "  ".join(c.rjust(w) for c, w in zip(head, widths, strict=True))
    return "\n".join([top, "-" * len(top), *text])
