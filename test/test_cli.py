"""The ``kerv`` package: one way to set each engine parameter, and it reaches the engine."""

import json

import pytest

from kerv_ros.cli import build_parser, main
from kerv_ros.cli.common import engine_config


def _config(*argv):
    return engine_config(build_parser().parse_args(list(argv)))


def test_older_flags_are_spellings_of_param_and_the_last_one_wins():
    config = _config("bench", "--threshold", "4", "--depth", "2", "--param", "draft_top_k=1")
    assert (config.relaxed_threshold, config.draft.depth, config.draft.top_k) == (4, 2, 1)
    config = _config("bench", "--threshold", "4", "--param", "relaxed_threshold=6")
    assert config.relaxed_threshold == 6
    config = _config("eval", "x", "--param", "relaxed_threshold=6", "--threshold", "3")
    assert config.relaxed_threshold == 3
    with pytest.raises(ValueError, match="draft_depth"):
        _config("bench", "--depth", "0")


def test_draft_tree_settings_reach_the_drafter(tmp_path, capsys):
    forwards = {}
    for depth in (1, 4):
        out = tmp_path / f"bench_{depth}.json"
        argv = ["bench", "--model", "random", "--modes", "ar,spec", "--steps", "2"]
        argv += ["--warmup", "0", "--observations", "synthetic", "--json", str(out)]
        argv += ["--param", "draft_top_k=1", "--param", f"draft_node_budget={depth}"]
        assert main([*argv, "--depth", str(depth)]) == 0
        spec = json.loads(out.read_text())["modes"]["spec"]
        forwards[depth] = spec["draft_forwards_per_step"]
        assert spec["token_mismatch_vs_ar"] == 0.0  # lossless either way
    # A chain of one token drafts once per verify; of four, four times.
    assert forwards[4] > forwards[1] > 0
    capsys.readouterr()


def test_a_failed_run_is_one_line_not_a_traceback(capsys):
    assert main(["bench", "--model", "/nonexistent/checkpoint", "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kerv bench: error: ") and len(err.splitlines()) == 1
