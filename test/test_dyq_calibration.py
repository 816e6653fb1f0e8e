"""DyQ-VLA's calibration: the table ``kerv dyq calibrate`` writes and the policy reads."""

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from kerv_cli import run_kerv

from kerv_ros.calibration import TickRecord, build_table
from kerv_ros.config import DyqConfig, ModelConfig
from kerv_ros.dyq import TABLE_FILE, CalibrationTable, PrecisionPolicy, TableError
from kerv_ros.loading import ModelLoadError, load_models

DEMO_BAG = Path(__file__).parents[1] / "kerv_ros" / "data" / "demo_bags" / "reach_01000"
FIXTURE = Path(__file__).parent / "data" / "openvla_tiny" / "checkpoint"
SCORING = DyqConfig(
    coarse="int8_bf16", warmup_steps=0, min_dwell=0, gripper_window=0, window_macro=1
)


def _records(score_errors):
    """Ticks at the given scores with the given (int8_bf16, int8) errors."""
    return [
        TickRecord(
            score, 0.5, 0.0, {"int8_bf16": coarse, "int8": medium}, {"int8_bf16": 0, "int8": 0}
        )
        for score, coarse, medium in score_errors
    ]


def _table(**changes):
    # Coarse is exact at low scores, off at 0.4-0.5; medium is off only at 0.5-0.6.
    ticks = [(0.05, 0.0, 0.0)] * 6 + [(0.45, 0.02, 0.0)] * 6 + [(0.55, 0.02, 0.02)] * 6
    ticks += [(0.25, 0.0, 0.0)] * 2  # too few to trust
    return build_table(_records(ticks), {"float32": 10.0}, replace(SCORING, **changes), "float32")


def test_the_table_bins_each_precisions_error_by_score_and_maps_bins_by_the_bound():
    table = _table()
    assert table.counts == [6, 0, 2, 0, 6, 6, 0, 0, 0, 0]
    assert table.errors["int8_bf16"][4] == pytest.approx(0.02)
    assert table.errors["int8"][0] == 0.0 and table.errors["int8"][1] is None
    assert table.levels(replace(SCORING, error_bound=0.01)) == [0, 2, 2, 2, 1, 2, 2, 2, 2, 2]
    assert table.levels(replace(SCORING, error_bound=0.05)) == [0, 2, 2, 2, 0, 0, 2, 2, 2, 2]


def test_the_policy_follows_the_table_and_the_error_bound_changes_its_choice():
    table = _table()
    # A single slow step of translation speed s scores 0.5 * ref / (ref + s) (no jerk).
    at = {0.45: 0.5 * 0.05 / 0.45 - 0.05, 0.05: 0.5 * 0.05 / 0.05 - 0.05}
    motion = {s: np.array([at[s], 0, 0, 0, 0, 0]) for s in at}
    tight = PrecisionPolicy(replace(SCORING, error_bound=0.01, hysteresis=0.0), "float32", table)
    assert tight.map_source.startswith(TABLE_FILE)
    choice = tight.decide(motion[0.45], 10**9)
    assert choice.score == pytest.approx(0.45) and choice.reason == "table"
    assert choice.precision == "int8"  # coarse's 0.02 is over the bound here
    assert tight.decide(motion[0.05], 10**9).precision == "int8_bf16"
    loose = PrecisionPolicy(replace(SCORING, error_bound=0.05, hysteresis=0.0), "float32", table)
    assert loose.decide(motion[0.45], 10**9).precision == "int8_bf16"
    bounds = PrecisionPolicy(replace(SCORING, hysteresis=0.0), "float32", None)
    assert bounds.decide(motion[0.45], 10**9).precision == "float32"  # 0.45 >= full_above


def test_the_table_holds_only_for_the_scoring_it_was_made_with():
    table = _table()
    policy = PrecisionPolicy(replace(SCORING, speed_ref=0.1), "float32", table)
    assert (
        policy.map_source == f"bounds ({TABLE_FILE} calibrated with dyq_speed_ref 0.05, live 0.1)"
    )
    policy.configure(SCORING)
    assert policy.map_source.startswith(TABLE_FILE)
    policy.configure(replace(SCORING, coarse="bfloat16"))
    assert policy.map_source == f"bounds ({TABLE_FILE} not calibrated for bfloat16)"
    policy.configure(replace(SCORING, table=False))
    assert policy.map_source == "bounds (dyq_table off)"


def test_the_table_round_trips_and_a_bad_one_names_the_file(tmp_path):
    table = _table()
    table.save(tmp_path / TABLE_FILE)
    assert CalibrationTable.load(tmp_path / TABLE_FILE) == table
    payload = json.loads((tmp_path / TABLE_FILE).read_text())
    payload["counts"] = payload["counts"][:3]
    (tmp_path / "short.json").write_text(json.dumps(payload))
    with pytest.raises(TableError, match=r"short\.json: 11 edges do not match"):
        CalibrationTable.load(tmp_path / "short.json")
    (tmp_path / "other.json").write_text(json.dumps({"format": "x"}))
    with pytest.raises(TableError, match=r"other\.json: not a kerv-dyq-calibration/1 table"):
        CalibrationTable.load(tmp_path / "other.json")


def test_kerv_dyq_calibrate_writes_the_table_the_loader_gives_the_policy(tmp_path):
    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(FIXTURE, checkpoint)
    # The fixture is an OpenVLA checkpoint; a recorded demo bag gives it real arm motion.
    done = run_kerv(
        "dyq", "calibrate", str(DEMO_BAG), "--model", str(checkpoint),
        "--unnorm-key", "bridge_orig", "--dyq-precisions", "int8,int8_bf16",
        "--bins", "4", "--min-count", "1", "-o", str(tmp_path / "out"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "| score | ticks | err int8 | err int8_bf16 |" in done.stdout
    table = CalibrationTable.load(checkpoint / TABLE_FILE)
    # The bag's joint states carry velocities: every tick's motion is measured and scored.
    assert sum(table.counts) == table.source["ticks"] > 10
    assert set(table.errors) == {"int8", "int8_bf16"}
    assert (tmp_path / "out" / "calibration.png").stat().st_size > 10_000
    options = ModelConfig(model=str(checkpoint), unnorm_key="bridge_orig")
    loaded = load_models(replace(options, dyq_precisions="int8,int8_bf16"))
    assert loaded.backend.precisions.calibration == table
    (checkpoint / TABLE_FILE).write_text("{")
    with pytest.raises(ModelLoadError, match=f"dyq calibration table: .*{TABLE_FILE}: Expecting"):
        load_models(options)  # the default builds variants, so it reads the table
    assert load_models(replace(options, dyq_precisions="")).backend.precisions is None


def test_kerv_dyq_profile_times_each_precision_beside_its_weights(tmp_path):
    out = tmp_path / "profile.json"
    done = run_kerv(
        "dyq", "profile", "--model", "random", "--dyq-precisions", "int8_bf16,int4_bf16,phased",
        "--steps", "2", "--repeats", "1", "--json", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "precision  prefill ms  decode ms/token  verify 7 ms" in done.stdout
    rows = json.loads(out.read_text())["precisions"]
    assert list(rows) == ["float32", "int8_bf16", "int4_bf16", "phased"]
    assert rows["float32"]["action_error_vs_full"] == 0.0
    assert rows["int4_bf16"]["weights_mib"] < rows["int8_bf16"]["weights_mib"]
    assert rows["int8_bf16"]["weights_mib"] < 0.3 * rows["float32"]["weights_mib"]
    # phased reads the int8 copy and a bfloat16 one (half the float32 weights, less what the
    # model holds outside its linear layers)
    extra = rows["phased"]["weights_mib"] - rows["int8_bf16"]["weights_mib"]
    assert 0.2 * rows["float32"]["weights_mib"] < extra < 0.5 * rows["float32"]["weights_mib"]
    assert all(r["verify_49_ms"] > 0 and r["decode_ms_per_token"] > 0 for r in rows.values())
