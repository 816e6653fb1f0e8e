"""``kerv bench``: every mode and ablation against ``ar`` on one model, in one run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from kerv_ros import bench, report
from kerv_ros.cli.common import (
    comma_list,
    engine_config,
    frame_size,
    load,
    model_options,
    param_options,
    set_threads,
    threads_option,
)
from kerv_ros.config import EngineConfig
from kerv_ros.loading import verifier_fields, verifier_text

LEGACY_FLAGS = {
    "--threshold": "relaxed_threshold",
    "--depth": "draft_depth",
    "--top-k": "draft_top_k",
    "--node-budget": "draft_node_budget",
}
"""Flags older than ``--param``, kept as its spellings."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="speed and fidelity of each decode mode against ar on one model",
        description="Run each mode over N observations and report forwards, accepted length, "
        "wall time and speed-up vs ar, all measured in this one run.",
    )
    model_options(p, "random")
    p.add_argument(
        "--modes",
        default=",".join(bench.ROWS),
        help=f"comma list of modes and ablation variants ({', '.join(bench.ROWS)})",
    )
    p.add_argument("--steps", type=int, default=20, help="observations (action steps) per mode")
    param_options(p, "every row", LEGACY_FLAGS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="also write the results as JSON here")
    p.add_argument(
        "--observations",
        choices=("sim", "synthetic"),
        default="sim",
        help="frames along the simulator experts' episodes (what the default model knows), or "
        "synthetic coloured blocks with random joint states",
    )
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per mode first")
    threads_option(p, 1)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    set_threads(args)
    modes = comma_list(args.modes)
    config = engine_config(args)
    for mode in modes:
        bench.row_config(config, mode)  # refuse bad flags before loading anything
    if args.steps < 1:
        raise ValueError("--steps must be at least 1")
    loaded = load(args, config, seed=args.seed)
    backend, drafter, datastore = loaded.backend, loaded.drafter, loaded.datastore
    from kerv_ros.decoding.engine import DecodeEngine

    check = DecodeEngine(backend, drafter, EngineConfig(mode="ar"), datastore=datastore)
    rows = {m: bench.row_config(config, m) for m in modes}
    modes = list(bench.runnable(rows, check.problems, print))
    kinematics = None
    if args.observations == "sim":
        from kerv_ros.config import PANDA_ARM_JOINTS
        from kerv_ros.kinematics import ArmKinematics
        from kerv_ros.sim.collect import expert_observations

        observations = expert_observations(args.steps, args.seed, frame_size(backend))
        kinematics = ArmKinematics(PANDA_ARM_JOINTS)
    else:
        observations = bench.synthetic_observations(args.steps, args.seed, frame_size(backend))
    summary = bench.run(
        backend,
        drafter,
        config,
        modes,
        observations,
        args.warmup,
        kinematics=kinematics,
        datastore=datastore,
    )
    print(
        f"model: {args.model}   steps: {args.steps}   seed: {args.seed}   "
        f"verifier: {verifier_text(backend)}"
    )
    print(report.table(summary, report.BENCH))
    if args.json:
        payload = {
            "model": args.model,
            "steps": args.steps,
            "seed": args.seed,
            **verifier_fields(backend),
            "modes": summary,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2), encoding="utf-8")
        print(f"wrote {args.json}")
    return 0
