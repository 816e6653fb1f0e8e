"""``kerv sim``: expert demonstrations, the expert's success rate, and the node in the loop."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from kerv_ros import report
from kerv_ros.cli.common import (
    comma_list,
    model_config,
    model_options,
    set_threads,
    threads_option,
)
from kerv_ros.config import EngineConfig, ModelConfig


def add_parser(sub: argparse._SubParsersAction) -> None:
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
    c.add_argument(
        "--noise",
        type=float,
        default=0.0,
        help="std (m/s) of noise added to the executed velocity, not the recorded one (DART)",
    )
    c.add_argument(
        "--hold",
        type=int,
        default=0,
        help="record this many more expert steps after success (what to do at the goal)",
    )
    c.add_argument(
        "--driver",
        metavar="MODEL",
        help="DAgger: this policy (default | checkpoint directory) moves the arm in ar mode "
        "and the expert's commands are recorded",
    )
    c.add_argument(
        "--beta",
        type=float,
        default=0.0,
        help="with --driver: share of steps on which the expert's command is executed",
    )
    threads_option(c, 1)
    c.set_defaults(func=run_collect)
    e = sim.add_parser("expert", help="the scripted expert's success rate per task")
    e.add_argument("--task", default=tasks, help=f"task or comma list ({tasks})")
    e.add_argument("--episodes", type=int, default=50)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--json", type=Path, help="also write the rates as JSON here")
    e.add_argument("--noise", type=float, default=0.0, help="as for collect")
    e.set_defaults(func=run_expert)
    r = sim.add_parser("run", help="sim_node + kerv_node as processes, in closed loop")
    r.add_argument("--task", default=tasks, help=f"task or comma list ({tasks})")
    r.add_argument("--episodes", type=int, default=3, help="episodes per task and mode")
    r.add_argument("--seed", type=int, default=1000, help="first episode seed")
    model_options(r, "default")
    r.add_argument("--modes", default="ar", help="decode modes to run, comma list")
    r.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME:=VALUE",
        help="extra kerv_node parameter, e.g. --param relaxed_threshold:=5",
    )
    r.add_argument(
        "--expert",
        action="store_true",
        help="let the scripted expert drive (no kerv_node): checks the loop itself",
    )
    r.add_argument(
        "-o",
        "--output",
        type=Path,
        default=Path("runs/sim_run"),
        help="bag, plot, results.json and process logs",
    )
    r.set_defaults(func=run_closed_loop)


def run_collect(args: argparse.Namespace) -> int:
    import time

    from kerv_ros.sim.collect import collect

    set_threads(args)
    if args.beta and not args.driver:
        raise ValueError("--beta mixes the expert into a --driver's episodes: give --driver too")
    driver = None
    if args.driver:
        from kerv_ros.decoding.engine import DecodeEngine
        from kerv_ros.evaluation import policy_driver
        from kerv_ros.loading import load_policy

        if not 0.0 <= args.beta <= 1.0:
            raise ValueError(f"--beta must be in [0, 1], got {args.beta}")
        backend, _ = load_policy(args.driver)
        driver = policy_driver(DecodeEngine(backend, None, EngineConfig(mode="ar")))
    start = time.perf_counter()
    records = collect(
        comma_list(args.task),
        args.episodes,
        args.seed,
        args.output,
        args.storage,
        args.image_size,
        noise=args.noise,
        hold=args.hold,
        driver=driver,
        beta=args.beta,
        driver_name=args.driver or "expert",
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


def run_expert(args: argparse.Namespace) -> int:
    from kerv_ros.sim.collect import expert_success

    rates = expert_success(comma_list(args.task), args.episodes, args.seed, noise=args.noise)
    print(f"{'task':8s} {'episodes':>8s} {'success':>8s} {'rate':>6s} {'steps':>6s}")
    for task, r in rates.items():
        print(
            f"{task:8s} {r['episodes']:8d} {r['successes']:8d} {r['success_rate']:6.0%} "
            f"{r['mean_steps']:6.1f}"
        )
    if args.json:
        args.json.write_text(json.dumps(rates, indent=2), encoding="utf-8")
    return 0


def run_closed_loop(args: argparse.Namespace) -> int:
    import shutil

    from kerv_ros.sim import closed_loop

    modes = tuple(comma_list(args.modes))
    for mode in modes:
        EngineConfig().with_mode(mode)
    args.output.mkdir(parents=True, exist_ok=True)
    bag = args.output / "bag"
    if bag.exists():
        shutil.rmtree(bag)

    def progress(mode: str, episode: dict) -> None:
        mark = "success" if episode["success"] else "failure"
        print(
            f"  [{mode}] {episode['task']} seed {episode['seed']}: {mark} in "
            f"{episode['steps']} steps",
            flush=True,
        )

    runs = closed_loop.run(
        comma_list(args.task),
        args.episodes,
        args.seed,
        args.model,
        _model_node_params(args) + args.param,
        args.expert,
        args.output / "logs",
        modes,
        bag,
        progress=progress,
    )
    table = closed_loop.summarise(runs)
    print(report.table(table, report.SIM_RUN))
    closed_loop.plot(runs, args.output / "demo.png")
    payload = {
        "model": args.model,
        "tasks": comma_list(args.task),
        "episodes": args.episodes,
        "seed": args.seed,
        "modes": table,
        "episode_reports": {r.mode: r.episodes for r in runs},
    }
    (args.output / "results.json").write_text(json.dumps(payload, indent=2), encoding="utf-8")
    print(f"bag: {bag}\nplot: {args.output / 'demo.png'}\nresults: {args.output / 'results.json'}")
    return 0


def _model_node_params(args: argparse.Namespace) -> list[str]:
    """The model options other than --model as kerv_node parameters (``NAME:=VALUE``)."""
    chosen = asdict(model_config(args))
    defaults = asdict(ModelConfig())
    return [
        f"{name}:={str(value).lower() if isinstance(value, bool) else value}"
        for name, value in chosen.items()
        if name != "model" and value != defaults[name]
    ]
