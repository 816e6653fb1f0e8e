"""``kerv eval``: every mode on recorded bags (offline), or in the simulator (closed loop)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from kerv_ros import bench, report
from kerv_ros.cli.common import (
    comma_list,
    engine_config,
    load,
    model_options,
    param_options,
    set_threads,
    threads_option,
)
from kerv_ros.config import EngineConfig
from kerv_ros.loading import verifier_fields


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="every mode on recorded bags (offline), or in the simulator (--closed-loop)",
        description="Offline: decode each control tick of the bags in every mode and report "
        "forwards, accepted lengths, AFEP, action error vs ar and vs the recorded command, "
        "timings and speed-ups (results.json, report.md, PNG plots). --closed-loop: success "
        "rates with Wilson intervals in the simulator.",
    )
    p.add_argument("bags", nargs="*", type=Path, help="rosbag2 bags or folders of them")
    p.add_argument("--closed-loop", action="store_true", help="run the policy in the simulator")
    model_options(p, "default")
    p.add_argument(
        "--modes",
        default=None,
        help=f"comma list of modes and variants ({', '.join(bench.ROWS)}); "
        "offline default: all of them, closed loop: ar",
    )
    p.add_argument("--tasks", default="reach,push,pick", help="closed loop: tasks")
    p.add_argument("--episodes", type=int, default=10, help="closed loop: episodes per task/mode")
    p.add_argument("--seed", type=int, default=1000, help="closed loop: first episode seed")
    param_options(p, "every mode", {"--threshold": "relaxed_threshold"})
    p.add_argument(
        "--sweep",
        metavar="NAME=V1,V2,...",
        help="offline: also run every mode but ar at each value of one parameter "
        "(r = relaxed_threshold), e.g. --sweep r=3,5,9,15: the trade-off curve",
    )
    p.add_argument("--control-rate-hz", type=float, default=10.0, help="offline: tick rate")
    p.add_argument("-o", "--output", type=Path, help="write results.json (and report) here")
    threads_option(p, 1)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    set_threads(args)
    config = engine_config(args)
    modes = comma_list(args.modes or ("ar" if args.closed_loop else ",".join(bench.ROWS)))
    rows, curves = bench.sweep_rows(config, modes, None if args.closed_loop else args.sweep)
    if args.closed_loop and args.bags:
        raise ValueError("--closed-loop runs the simulator; it takes no bags")
    if not args.closed_loop and not args.bags:
        raise ValueError("name the bags to evaluate, or pass --closed-loop")
    loaded = load(args, config)
    backend, drafter, datastore = loaded.backend, loaded.drafter, loaded.datastore
    from kerv_ros.decoding.engine import DecodeEngine

    engine = DecodeEngine(backend, drafter, EngineConfig(mode="ar"), datastore=datastore)
    if args.modes is None:  # every row by default: those that cannot run here are left out
        rows = bench.runnable(rows, engine.problems, print)
    for row, row_config in rows.items():  # refuse what the user named and cannot run
        problems = engine.problems(row_config)
        if problems:
            raise ValueError(f"{row}: {'; '.join(problems)}")
    if args.closed_loop:
        return _closed_loop(args, backend, drafter, rows, datastore)
    return _offline(args, backend, drafter, rows, curves, datastore)


def _offline(args, backend, drafter, rows, curves, datastore) -> int:
    from kerv_ros import offline
    from kerv_ros.bags import bag_paths
    from kerv_ros.config import PANDA_ARM_JOINTS
    from kerv_ros.kinematics import ArmKinematics

    observations, commands, names = [], [], []
    for path in bag_paths(args.bags):
        ticks = offline.read_ticks(path, args.control_rate_hz, image_size=backend.image_size)
        observations += ticks.observations
        commands += ticks.commands
        names.append(str(path))
    results = bench.run_rows(
        backend,
        drafter,
        rows,
        observations,
        warmup=2,
        kinematics=ArmKinematics(PANDA_ARM_JOINTS),
        period_s=1.0 / args.control_rate_hz,
        datastore=datastore,
        desc="eval",
    )
    summary = bench.summarise(results)
    for row, steps in results.items():
        summary[row].update(offline.recorded_errors(steps, commands, backend.norm_stats))
    print(report.table(summary, report.OFFLINE, markdown=True))
    out = args.output or Path("runs/eval")
    header = {
        "bags": names,
        "model": args.model,
        **verifier_fields(backend),
        "ticks": len(observations),
        "params": args.param,
        "control_rate_hz": args.control_rate_hz,
    }
    offline.write_report(out, summary, results, commands, backend.norm_stats, header, curves)
    print(f"wrote {out / 'results.json'}, {out / 'report.md'} and plots")
    return 0


def _closed_loop(args, backend, drafter, rows, datastore) -> int:
    from kerv_ros.evaluation import closed_loop, summarise

    by_mode = {}
    for row, row_config in rows.items():
        with bench.on_row_path(backend, row):
            results = closed_loop(
                backend,
                drafter,
                row_config,
                comma_list(args.tasks),
                args.episodes,
                args.seed,
                datastore=datastore,
                label=row,
            )
        by_mode[row] = summarise(results)
    table = report.table(
        [((mode, task), r) for mode, tasks in by_mode.items() for task, r in tasks.items()],
        report.CLOSED_LOOP,
        index=("mode", "task"),
        markdown=True,
    )
    print(table)
    if args.output:
        args.output.mkdir(parents=True, exist_ok=True)
        payload = {
            "model": args.model,
            **verifier_fields(backend),
            "seed": args.seed,
            "episodes": args.episodes,
            "params": args.param,
            "closed_loop": by_mode,
        }
        (args.output / "results.json").write_text(json.dumps(payload, indent=2), encoding="utf-8")
        (args.output / "report.md").write_text(
            f"# kerv eval --closed-loop\n\nModel: {args.model}; {args.episodes} episodes per "
            f"task and mode from seed {args.seed}; parameters: {args.param or 'defaults'}\n\n"
            f"{table}\n",
            encoding="utf-8",
        )
        print(f"wrote {args.output / 'results.json'} and {args.output / 'report.md'}")
    return 0
