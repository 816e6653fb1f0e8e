"""`kerv bench` runs every mode and writes the documented JSON fields (values not timed)."""

import json

import pytest
from kerv_cli import run_kerv

FIELDS = {
    "target_forwards_per_step",
    "draft_forwards_per_step",
    "mean_accepted_length",
    "step_ms_median",
    "decode_ms_median",
    "speedup_vs_ar_step",
    "speedup_vs_ar_decode",
    "token_mismatch_vs_ar",
    "action_error_vs_ar",
    "compensated_dims_per_step",
    "compensated_step_share",
    "threshold_mean",
    "kalman_error_vs_ar",
    "verify_skipped_share",
    "draft_source_mix",
}


def test_bench_json(tmp_path):
    out = tmp_path / "bench.json"
    proc = run_kerv(
        "bench",
        "--model",
        "random",
        "--steps",
        "2",
        "--warmup",
        "0",
        "--modes",
        "ar,spec,spec_relaxed,kerv,kerv_no_comp",
        "--threshold",
        "0",
        "--param",
        "kerv_dynamic_threshold=false",
        "--param",
        "kerv_compensation=false",
        "--json",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    assert "speed-up step" in proc.stdout
    data = json.loads(out.read_text())
    assert data["model"] == "random"
    assert data["steps"] == 2
    assert set(data["modes"]) == {"ar", "spec", "spec_relaxed", "kerv", "kerv_no_comp"}
    for mode, values in data["modes"].items():
        assert set(values) >= FIELDS, mode
    ar = data["modes"]["ar"]
    assert ar["target_forwards_per_step"] == 7.0
    assert ar["mean_accepted_length"] == 1.0
    # Threshold 0 (and kerv's own threshold and compensation off): every mode is lossless.
    for mode in ("spec", "spec_relaxed", "kerv", "kerv_no_comp"):
        assert data["modes"][mode]["token_mismatch_vs_ar"] == 0.0
        assert data["modes"][mode]["action_error_vs_ar"] == 0.0
        assert data["modes"][mode]["compensated_dims_per_step"] == 0.0
    assert data["modes"]["kerv"]["threshold_mean"] == 0.0
    assert data["modes"]["ar"]["kalman_error_vs_ar"] is None  # only kerv runs a filter
    assert data["modes"]["kerv"]["kalman_error_vs_ar"] >= 0.0


def test_bench_refuses_bad_flags_before_loading():
    proc = run_kerv("bench", "--modes", "ar,warp", timeout=120)
    assert proc.returncode == 2
    assert "unknown mode or variant 'warp'" in proc.stderr
    proc = run_kerv("bench", "--param", "kerv_r_max=wide", timeout=120)
    assert proc.returncode == 2
    assert "--param kerv_r_max: 'wide' is not a int" in proc.stderr
    proc = run_kerv("bench", "--param", "kerv_r_min=300", timeout=120)
    assert proc.returncode == 2
    assert "kerv_r_min 300" in proc.stderr
    proc = run_kerv("bench", "--threads", "-1", timeout=120)
    assert proc.returncode == 2
    assert "--threads must be >= 0" in proc.stderr


def test_datastore_build_info_and_heisd_rows(tmp_path):
    from kerv_ros.sim.collect import collect

    collect(["reach"], 2, 7, tmp_path / "bags", image_size=32, progress=False)
    store = tmp_path / "store.safetensors"
    proc = run_kerv(
        "datastore", "build", str(tmp_path / "bags"), "-o", str(store), "--model", "random"
    )
    assert proc.returncode == 0, proc.stderr
    assert "steps from 2 episodes" in proc.stdout
    proc = run_kerv("datastore", "info", str(store))
    assert proc.returncode == 0, proc.stderr
    assert "lookup of a step" in proc.stdout
    out = tmp_path / "bench.json"
    rows = "ar,heisd,hybrid,heisd_no_boundary,heisd_no_skip,heisd_token,retrieval_only"
    proc = run_kerv(
        "bench",
        "--model",
        "random",
        "--steps",
        "3",
        "--warmup",
        "0",
        "--modes",
        rows,
        "--datastore",
        str(store),
        "--json",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())["modes"]
    assert set(data) == set(rows.split(","))
    for values in data.values():
        assert set(values) >= FIELDS
        assert sum(values["draft_source_mix"].values()) == pytest.approx(1.0)
    assert data["heisd_no_skip"]["verify_skipped_share"] == 0.0
    proc = run_kerv("bench", "--model", "random", "--steps", "1", "--modes", "ar,heisd")
    assert proc.returncode == 0, proc.stderr
    assert "skipping heisd: mode 'heisd' needs a retrieval datastore" in proc.stdout


def test_relabelled_datastore_drafts_the_policys_own_steps(tmp_path):
    """Built from the model's greedy actions on a bag, the datastore predicts that model on it."""
    from kerv_ros.sim.collect import collect

    collect(["reach"], 1, 11, tmp_path / "bags", image_size=128, progress=False)
    store = tmp_path / "own.safetensors"
    proc = run_kerv(
        "datastore",
        "build",
        str(tmp_path / "bags"),
        "-o",
        str(store),
        "--model",
        "random",
        "--relabel",
    )
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "eval"
    proc = run_kerv(
        "eval",
        str(tmp_path / "bags"),
        "--model",
        "random",
        "--datastore",
        str(store),
        "--modes",
        "ar,heisd_no_skip",
        "--param",
        "heisd_use_boundary=false",
        "--param",
        "heisd_sequence_threshold=0.0",
        "-o",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    retrieval = json.loads((out / "results.json").read_text())["modes"]["heisd_no_skip"]
    assert retrieval["action_error_vs_ar"] == 0.0  # exact acceptance
    assert retrieval["mean_accepted_length"] > 4.0  # an untrained drafter gets ~1
    assert retrieval["draft_source_mix"]["retrieval"] > 0.5
