"""The ``kerv`` command-line tool."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from kerv_ros import bench
from kerv_ros.config import MODES, DraftConfig, EngineConfig


def _bench_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="speed and fidelity of each decode mode against ar on one model",
        description="Run each mode over N observations and report forwards, accepted length, "
        "wall time and speed-up vs ar, all measured in this one run.",
    )
    p.add_argument("--model", default="random", help="random | default | checkpoint directory")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma list of {', '.join(MODES)}")
    p.add_argument("--steps", type=int, default=20, help="observations (action steps) per mode")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="also write the results as JSON here")
    p.add_argument(
        "--threshold",
        type=int,
        default=EngineConfig.relaxed_threshold,
        help="relaxed acceptance threshold r in bins (spec_relaxed)",
    )
    p.add_argument("--depth", type=int, default=DraftConfig.depth, help="draft tree depth")
    p.add_argument("--top-k", type=int, default=DraftConfig.top_k, help="draft tree branching")
    p.add_argument(
        "--node-budget",
        type=int,
        default=DraftConfig.node_budget,
        help="draft tree size (top-k 1 and budget = depth give a chain)",
    )
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per mode first")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="allow an OpenVLA checkpoint's own Python code to run",
    )
    p.add_argument("--unnorm-key", help="dataset statistics to un-normalise with (OpenVLA)")
    p.set_defaults(func=_run_bench)


def _run_bench(args: argparse.Namespace) -> int:
    from kerv_ros.loading import load_policy

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    draft = DraftConfig(depth=args.depth, top_k=args.top_k, node_budget=args.node_budget)
    config = EngineConfig(draft=draft, relaxed_threshold=args.threshold)
    for mode in modes:
        config.with_mode(mode)  # refuse bad flags before loading anything
    if args.steps < 1:
        raise ValueError("--steps must be at least 1")
    backend, drafter = load_policy(
        args.model,
        seed=args.seed,
        draft=draft,
        trust_remote_code=args.trust_remote_code,
        unnorm_key=args.unnorm_key,
        device=args.device,
    )
    size = getattr(getattr(backend, "config", None), "image_size", 224)
    observations = bench.synthetic_observations(args.steps, args.seed, size)
    summary = bench.run(backend, drafter, config, modes, observations, warmup=args.warmup)
    print(f"model: {args.model}   steps: {args.steps}   seed: {args.seed}")
    print(bench.format_table(summary))
    if args.json:
        payload = {"model": args.model, "steps": args.steps, "seed": args.seed, "modes": summary}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2), encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


def _sim_parser(sub: argparse._SubParsersAction) -> None:
    from kerv_ros.sim.tasks import TASKS

    tasks = ",".join(TASKS)
    p = sub.add_parser("sim", help="the simulated Panda: demonstrations, expert, closed loop")
    sim = p.add_subparsers(dest="sim_command", required=True)
    c = sim.add_parser("collect", help="record expert episodes as rosbag2 (mcap)")
    c.add_argument("--task", default=tasks, help=f"task or comma list ({tasks})")
    c.add_argument("--episodes", type=int, default=10, help="episodes per task")
    c.add_argument("--seed", type=int, default=0, help="first episode seed")
    c.add_argument("-o", "--output", type=Path, required=True, help="directory for the bags")
    c.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap")
    c.add_argument("--image-size", type=int, default=128)
    c.set_defaults(func=_run_collect)
    e = sim.add_parser("expert", help="the scripted expert's success rate per task")
    e.add_argument("--task", default=tasks, help=f"task or comma list ({tasks})")
    e.add_argument("--episodes", type=int, default=50)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--json", type=Path, help="also write the rates as JSON here")
    e.set_defaults(func=_run_expert)
    r = sim.add_parser("run", help="sim_node + kerv_node as processes, in closed loop")
    r.add_argument("--task", default=tasks, help=f"task or comma list ({tasks})")
    r.add_argument("--episodes", type=int, default=3, help="episodes per task")
    r.add_argument("--seed", type=int, default=1000, help="first episode seed")
    r.add_argument("--model", default="default", help="random | default | checkpoint directory")
    r.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME:=VALUE",
        help="extra kerv_node parameter, e.g. --param mode:=spec_relaxed",
    )
    r.add_argument(
        "--expert",
        action="store_true",
        help="let the scripted expert drive (no kerv_node): checks the loop itself",
    )
    r.add_argument("--logs", type=Path, default=Path("runs/sim_run"), help="process logs")
    r.set_defaults(func=_run_closed_loop)


def _tasks(arg: str) -> list[str]:
    return [t.strip() for t in arg.split(",") if t.strip()]


def _run_collect(args: argparse.Namespace) -> int:
    import time

    from kerv_ros.sim.collect import collect

    start = time.perf_counter()
    records = collect(
        _tasks(args.task), args.episodes, args.seed, args.output, args.storage, args.image_size
    )
    seconds = time.perf_counter() - start
    size = sum(f.stat().st_size for f in args.output.rglob("*") if f.is_file())
    ok = sum(r.success for r in records)
    steps = sum(r.steps for r in records)
    print(
        f"{len(records)} episodes ({ok} successful), {steps} steps in {seconds:.1f} s "
        f"({len(records) / seconds * 60:.1f} episodes/min, {steps / seconds:.1f} steps/s)"
    )
    print(
        f"{args.output}: {size / 2**20:.1f} MiB ({size / max(len(records), 1) / 2**10:.0f} KiB "
        "per episode)"
    )
    return 0


def _run_expert(args: argparse.Namespace) -> int:
    from kerv_ros.sim.collect import expert_success

    rates = expert_success(_tasks(args.task), args.episodes, args.seed)
    print(f"{'task':8s} {'episodes':>8s} {'success':>8s} {'rate':>6s} {'steps':>6s}")
    for task, r in rates.items():
        print(
            f"{task:8s} {r['episodes']:8d} {r['successes']:8d} {r['success_rate']:6.0%} "
            f"{r['mean_steps']:6.1f}"
        )
    if args.json:
        args.json.write_text(json.dumps(rates, indent=2), encoding="utf-8")
    return 0


def _run_closed_loop(args: argparse.Namespace) -> int:
    from kerv_ros.sim.closed_loop import run

    reports = run(
        _tasks(args.task), args.episodes, args.seed, args.model, args.param, args.expert, args.logs
    )
    for report in reports:
        print(json.dumps(report))
    ok = sum(r["success"] for r in reports)
    print(f"{ok}/{len(reports)} episodes successful (logs in {args.logs})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kerv", description="kerv_ros command-line tool")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    _bench_parser(sub)
    _sim_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError, PermissionError) as err:
        print(f"kerv {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
