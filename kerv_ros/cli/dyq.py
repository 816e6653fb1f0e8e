"""``kerv dyq calibrate``: the table that maps DyQ-VLA's score to a precision, beside the model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from kerv_ros.cli.common import (
    engine_config,
    load,
    model_options,
    param_options,
    set_threads,
    threads_option,
)
from kerv_ros.policy.precision import LOW_PRECISIONS


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dyq", help="DyQ-VLA: calibrate the precision table of a model")
    dyq = p.add_subparsers(dest="dyq_command", required=True)
    c = dyq.add_parser(
        "calibrate",
        help="measure each precision's action error by motion phase; write dyq.json",
        description="Decode every control tick of the bags greedily at full precision and at "
        "each precision variant; bin each variant's action error against full precision by "
        "dyq's fused motion score, and write the table (dyq.json) beside the model, where "
        "kerv_node reads it at configure. Use recordings the evaluation will not use.",
    )
    c.add_argument("bags", nargs="+", type=Path, help="rosbag2 bags or folders of them")
    model_options(c, "default", drafts=False)
    c.set_defaults(dyq_precisions=",".join(LOW_PRECISIONS))
    param_options(c, "the score (dyq_speed_ref, dyq_jerk_ref, ...) and the shown map", {})
    c.add_argument("--bins", type=int, default=10, help="score bins over [0, 1]")
    c.add_argument("--min-count", type=int, default=5, help="ticks a bin needs to go below full")
    c.add_argument("--control-rate-hz", type=float, default=10.0, help="tick rate of the bags")
    c.add_argument(
        "--table", type=Path, help="where to write the table (default: dyq.json beside the model)"
    )
    c.add_argument(
        "-o", "--output", type=Path, default=Path("runs/dyq_calibrate"), help="plot and report"
    )
    threads_option(c, 1)
    c.set_defaults(func=calibrate)

    f = dyq.add_parser(
        "profile",
        help="per precision: prefill, decode and verify ms, weights, action error vs full",
        description="Time each precision variant's forwards as the engine issues them (the "
        "prefill, one-token decodes, tree verifies of 7, 24 and 49 nodes) and measure its "
        "greedy actions against full precision on simulator observations.",
    )
    model_options(f, "default", drafts=False)
    f.set_defaults(dyq_precisions=",".join(LOW_PRECISIONS))
    f.add_argument("--steps", type=int, default=20, help="observations for the action error")
    f.add_argument("--repeats", type=int, default=7, help="timed repeats of each forward")
    f.add_argument("--seed", type=int, default=0, help="first simulator episode seed")
    f.add_argument("--json", type=Path, help="also write the rows as JSON here")
    threads_option(f, 1)
    f.set_defaults(func=profile)


def calibrate(args: argparse.Namespace) -> int:
    from kerv_ros import calibration, offline
    from kerv_ros.bags import bag_paths
    from kerv_ros.config import PANDA_ARM_JOINTS
    from kerv_ros.kinematics import ArmKinematics
    from kerv_ros.loading import dyq_table_path

    set_threads(args)
    if args.bins < 1 or args.min_count < 1:
        raise ValueError("--bins and --min-count must be >= 1")
    scoring = engine_config(args).precision
    table_path = args.table or dyq_table_path(args.model)
    if table_path is None:
        raise ValueError(f"--model {args.model} has no directory: pass --table")
    backend = load(args).backend
    episodes, names = [], []
    for path in bag_paths(args.bags):
        ticks = offline.read_ticks(path, args.control_rate_hz, image_size=backend.image_size)
        episodes.append(ticks.observations)
        names.append(str(path))
    kinematics = ArmKinematics(PANDA_ARM_JOINTS)
    records, step_ms = calibration.measure(
        backend, episodes, scoring, kinematics, 1.0 / args.control_rate_hz
    )
    source = {"model": args.model, "bags": names, "ticks": sum(map(len, episodes))}
    table = calibration.build_table(
        records, step_ms, scoring, backend.precisions.full, args.bins, args.min_count, source
    )
    print(calibration.table_text(table, scoring))
    table_path.parent.mkdir(parents=True, exist_ok=True)
    table.save(table_path)
    args.output.mkdir(parents=True, exist_ok=True)
    calibration.plot(records, table, args.output / "calibration.png")
    ticks = [vars(r) for r in records]
    (args.output / "ticks.json").write_text(json.dumps(ticks, indent=1), encoding="utf-8")
    print(f"wrote {table_path}; {args.output / 'calibration.png'}, {args.output / 'ticks.json'}")
    return 0


def profile(args: argparse.Namespace) -> int:
    from kerv_ros import calibration, report
    from kerv_ros.cli.common import frame_size
    from kerv_ros.sim.collect import expert_observations

    set_threads(args)
    if args.steps < 1 or args.repeats < 1:
        raise ValueError("--steps and --repeats must be >= 1")
    backend = load(args).backend
    observations = expert_observations(args.steps, args.seed, frame_size(backend))
    rows, resident = calibration.profile(backend, observations, args.repeats)
    print(report.table(rows, report.PRECISION, index=("precision",)))
    full = rows[backend.precisions.full]["weights_mib"]
    print(
        f"resident weights, all {len(rows)} precisions held: {resident / 2**20:.1f} MiB "
        f"({resident / 2**20 / full:.2f}x the {backend.precisions.full} model's {full:.1f})"
    )
    if args.json:
        payload = {
            "model": args.model,
            "steps": args.steps,
            "resident_mib": resident / 2**20,
            "precisions": rows,
        }
        args.json.write_text(json.dumps(payload, indent=2), encoding="utf-8")
        print(f"wrote {args.json}")
    return 0
