"""``kerv train``: the default policy, or a drafter for any policy, from bags."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from kerv_ros.cli.common import frame_size, load, model_options, set_threads, threads_option


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train the default policy or a drafter from bags")
    train = p.add_subparsers(dest="train_command", required=True)
    pol = train.add_parser("policy", help="the default VLA from demonstration bags")
    pol.add_argument("bags", nargs="+", type=Path, help="rosbag2 directories or folders of them")
    pol.add_argument("-o", "--output", type=Path, required=True, help="model directory")
    pol.add_argument("--steps", type=int, default=3000)
    pol.add_argument("--batch-size", type=int, default=32)
    pol.add_argument("--lr", type=float, default=1e-3)
    pol.add_argument("--seed", type=int, default=0)
    pol.add_argument("--no-bf16", action="store_true", help="train in float32")
    pol.add_argument("--init", type=Path, help="continue from this trained policy directory")
    pol.add_argument(
        "--scenes",
        type=int,
        default=0,
        help="render this many extra random simulator layouts for the position targets",
    )
    pol.add_argument(
        "--vision-steps",
        type=int,
        default=0,
        help="first train the vision tower alone on the scenes for this many steps",
    )
    pol.add_argument(
        "--control-rate",
        type=float,
        default=10.0,
        help="Hz the commands were sent at (twist x period = action delta)",
    )
    pol.set_defaults(func=run_policy)
    dra = train.add_parser("drafter", help="an EAGLE drafter for a policy, from bags")
    dra.add_argument("bags", nargs="+", type=Path)
    model_options(dra, None, drafts=False)
    dra.add_argument("-o", "--output", type=Path, required=True, help="drafter .safetensors")
    dra.add_argument("--epochs", type=int, default=4)
    dra.add_argument("--max-samples", type=int, default=3000)
    dra.add_argument("--seed", type=int, default=0)
    dra.add_argument("--control-rate", type=float, default=10.0)
    threads_option(dra, 0)
    dra.set_defaults(func=run_drafter)


def _write_record(path: Path, record: dict) -> None:
    path.write_text(json.dumps(record, indent=1), encoding="utf-8")


def run_policy(args: argparse.Namespace) -> int:
    from kerv_ros.policy.vla import DefaultVLA
    from kerv_ros.training import PolicyTraining, load_demonstrations, render_scenes, train_policy

    if args.vision_steps and not args.scenes:
        raise ValueError("--vision-steps trains on rendered scenes: give --scenes N too")
    config = PolicyTraining(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        bf16=not args.no_bf16,
        vision_steps=args.vision_steps,
    )
    start = time.perf_counter()
    demos = load_demonstrations(args.bags, config.vla.image_size, args.control_rate)
    print(f"{len(demos)} samples from {len(set(demos.episodes.tolist()))} episodes")
    init = DefaultVLA.load(args.init) if args.init else None
    if init is not None:
        config.vla = init.config
    scenes = render_scenes(demos, args.scenes, config.vla.image_size) if args.scenes else None
    backend, history = train_policy(demos, config, scenes=scenes, init=init)
    backend.save(args.output)
    seconds = time.perf_counter() - start
    record = {
        "command": " ".join(sys.argv),
        "samples": len(demos),
        "seconds": seconds,
        "history": history,
    }
    _write_record(args.output / "training.json", record)
    print(f"saved {args.output} after {seconds / 60:.1f} min; last {history[-1]}")
    return 0


def run_drafter(args: argparse.Namespace) -> int:
    from kerv_ros.training import (
        DrafterTraining,
        load_demonstrations,
        observations_of,
        train_drafter,
    )

    set_threads(args)
    start = time.perf_counter()
    backend = load(args).backend
    demos = load_demonstrations(args.bags, frame_size(backend), args.control_rate)
    config = DrafterTraining(epochs=args.epochs, max_samples=args.max_samples, seed=args.seed)
    drafter, history = train_drafter(backend, observations_of(demos), config)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    drafter.save(args.output)
    seconds = time.perf_counter() - start
    record = {"command": " ".join(sys.argv), "seconds": seconds, "history": history}
    _write_record(args.output.with_suffix(".training.json"), record)
    print(f"saved {args.output} after {seconds / 60:.1f} min; last {history[-1]}")
    return 0
