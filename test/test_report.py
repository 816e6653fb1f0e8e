"""The report layer: one column per statistic, the same title in every table."""

from kerv_ros import report

ROWS = {
    "ar": {
        "target_forwards_per_step": 7.0,
        "mean_accepted_length": 1.0,
        "kalman_error_vs_ar": None,
        "draft_source_mix": {"verifier": 1.0, "drafter": 0.0},
        "speedup_vs_ar_step": 1.0,
    },
    "hybrid": {
        "target_forwards_per_step": 2.1666,
        "mean_accepted_length": 4.96,
        "kalman_error_vs_ar": 0.01234,
        "draft_source_mix": {"verifier": 0.2, "drafter": 0.1},
        "speedup_vs_ar_step": 1.234,
    },
}
KEYS = (
    "target_forwards_per_step",
    "mean_accepted_length",
    "kalman_error_vs_ar",
    "draft_source_mix.drafter",
    "speedup_vs_ar_step",
)


def test_markdown_rows_read_every_field_and_mark_what_does_not_apply():
    lines = report.table(ROWS, KEYS, markdown=True).splitlines()
    assert lines[0] == "| mode | tgt fwd/step | acc len | |kf-ar| | drf | speed-up step |"
    assert lines[1] == "|---|---|---|---|---|---|"
    assert lines[2] == "| ar | 7.00 | 1.00 | - | 0.00 | 1.00x |"
    assert lines[3] == "| hybrid | 2.17 | 4.96 | 0.0123 | 0.10 | 1.23x |"


def test_text_tables_align_and_take_several_index_columns():
    rows = [
        (("ar", "reach"), {"successes": 3, "episodes": 4, "success_ci95": [0.3, 0.95]}),
        (("hybrid", "push"), {"successes": 1, "episodes": 4, "success_ci95": [0.05, 0.7]}),
    ]
    text = report.table(rows, ("success", "success_ci95"), index=("mode", "task"))
    head, rule, *body = text.splitlines()
    assert head.split() == ["mode", "task", "success", "95", "%", "CI"]
    assert set(rule) == {"-"} and len(rule) == len(head)
    assert body[0].split() == ["ar", "reach", "3/4", "30%-95%"]
    assert body[1].split() == ["hybrid", "push", "1/4", "5%-70%"]
    assert len({len(line) for line in (head, *body)}) == 1


def test_every_report_names_only_declared_columns():
    for columns in (report.BENCH, report.OFFLINE, report.CLOSED_LOOP, report.SIM_RUN):
        assert set(columns) <= set(report.COLUMNS)
    titles = [c.title for c in report.COLUMNS.values()]
    assert len(titles) == len(set(titles))  # one title per statistic, one statistic per title
