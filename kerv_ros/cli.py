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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kerv", description="kerv_ros command-line tool")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    _bench_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, PermissionError) as err:
        print(f"kerv {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
