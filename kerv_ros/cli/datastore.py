"""``kerv datastore`` (HeiSD's retrieval datastore) and ``kerv drafter import``."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from kerv_ros.cli.common import (
    engine_config,
    frame_size,
    load,
    model_options,
    param_options,
    set_threads,
    threads_option,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("datastore", help="HeiSD's retrieval datastore of past action steps")
    ds = p.add_subparsers(dest="datastore_command", required=True)
    b = ds.add_parser(
        "build",
        help="build a datastore from rosbag2 recordings or demonstrations",
        description="Read the commanded actions (twist and gripper topics) of every bag, "
        "normalise them with the model's statistics and index each step by the steps before it "
        "(and, with --features, by the model's own feature of the scene).",
    )
    b.add_argument("bags", nargs="+", type=Path, help="bags, or folders of bags")
    b.add_argument("-o", "--output", type=Path, required=True, help="datastore .safetensors")
    model_options(b, "default", drafts=False)
    b.add_argument("--control-rate-hz", type=float, default=10.0)
    b.add_argument(
        "--relabel",
        action="store_true",
        help="store the model's own greedy actions on each recorded tick instead of the "
        "recorded commands (slower: one ar decode per tick)",
    )
    b.add_argument(
        "--features",
        action="store_true",
        help="also key every step by the model's own feature of its scene (HeiSD's key, for "
        "heisd_retrieval_key scene; one prefill per tick)",
    )
    b.add_argument(
        "--threads", type=int, default=0, help="torch threads for --relabel and --features"
    )
    b.set_defaults(func=run_build)
    c = ds.add_parser(
        "skip-calibrate",
        help="what heisd_skip_similarity would skip on recordings, and how often it holds",
        description="Decode every tick of the bags with scene-keyed retrieval and verification, "
        "and report per similarity threshold the share of ticks whose neighbours are that "
        "similar and how many of those the verifier agreed with (the audit). Use recordings "
        "the datastore was not built from.",
    )
    c.add_argument("bags", nargs="+", type=Path, help="bags, or folders of bags")
    model_options(c, "default")
    param_options(c, "the engine (hybrid by default; heisd_sequence_threshold is the audit's)", {})
    c.add_argument("--control-rate-hz", type=float, default=10.0)
    c.add_argument("--pass-rate", type=float, default=0.95, help="audit pass rate to recommend")
    threads_option(c, 1)
    c.set_defaults(func=run_skip_calibrate)
    i = ds.add_parser("info", help="what a datastore holds and how fast it looks up")
    i.add_argument("path", type=Path)
    i.set_defaults(func=run_info)


def add_drafter_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("drafter", help="drafters trained elsewhere")
    dr = p.add_subparsers(dest="drafter_command", required=True)
    i = dr.add_parser(
        "import",
        help="a Spec-VLA (EAGLE-1/2 layout) drafter directory as a kerv drafter",
        description="Read config.json and model.safetensors or pytorch_model.bin (tensors only, "
        "torch.load(weights_only=True)) and write kerv's drafter .safetensors + .json. Put it "
        "beside the model as drafter.safetensors, or pass it as --drafter / drafter_path.",
    )
    i.add_argument("source", type=Path, help="the drafter checkpoint directory")
    i.add_argument("--model", required=True, help="the target it drafts for (its width is checked)")
    i.add_argument("-o", "--output", type=Path, required=True, help="drafter .safetensors")
    i.set_defaults(func=run_drafter_import)


def run_build(args: argparse.Namespace) -> int:
    from kerv_ros.retrieval import Datastore, read_bag_episodes

    start = time.perf_counter()
    backend = load(args).backend
    features = probe = None
    if args.relabel or args.features:
        from kerv_ros import scene
        from kerv_ros.training import greedy_episodes, load_demonstrations

        set_threads(args)
        demos = load_demonstrations(args.bags, frame_size(backend), args.control_rate_hz)
        if args.relabel:
            episodes = greedy_episodes(backend, demos)
        else:
            episodes = demos.by_episode(demos.actions)
        if args.features:
            features = scene.scene_features(backend, demos)
            probe = scene.probe_feature(backend)
    else:
        episodes = read_bag_episodes(args.bags, args.control_rate_hz)
    sources = sorted({str(path) for path in args.bags})
    datastore = Datastore.from_episodes(episodes, backend.norm_stats, sources, features, probe)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    datastore.save(args.output)
    print(
        f"wrote {args.output}: {len(datastore)} steps from {len(episodes)} episodes, "
        f"{args.output.stat().st_size / 1e6:.2f} MB, {time.perf_counter() - start:.1f} s"
    )
    return 0


def run_skip_calibrate(args: argparse.Namespace) -> int:
    from kerv_ros import offline, scene
    from kerv_ros.bags import bag_paths
    from kerv_ros.config import PANDA_ARM_JOINTS
    from kerv_ros.decoding.engine import DecodeEngine
    from kerv_ros.kinematics import ArmKinematics

    set_threads(args)
    config = engine_config(args)
    loaded = load(args, config)
    engine = DecodeEngine(
        loaded.backend,
        loaded.drafter,
        config,
        ArmKinematics(PANDA_ARM_JOINTS),
        1.0 / args.control_rate_hz,
        loaded.datastore,
    )
    size = loaded.backend.image_size
    episodes = [
        offline.read_ticks(path, args.control_rate_hz, image_size=size).observations
        for path in bag_paths(args.bags)
    ]
    rows = scene.skip_calibration(engine, episodes)
    print("similarity >=  ticks reaching it  audit pass")
    for row in rows:
        print(f"{row['threshold']:>13}  {row['skip_share']:>15.1%}  {row['audit_pass']:>10.1%}")
    good = [r for r in rows if r["audit_pass"] >= args.pass_rate]
    if good:
        print(f"heisd_skip_similarity {good[0]['threshold']} (audits pass >= {args.pass_rate:.0%})")
    else:
        print(f"no threshold passes {args.pass_rate:.0%} of audits: keep heisd_skip_similarity 0")
    return 0


def run_info(args: argparse.Namespace) -> int:
    from kerv_ros.retrieval import Datastore, lookup_timing

    datastore = Datastore.load(args.path)
    timing = lookup_timing(datastore)
    print(f"{args.path}: {len(datastore)} steps, {int(datastore.episodes.max()) + 1} episodes")
    print(f"sources: {', '.join(datastore.sources) or '-'}")
    if datastore.features is not None:
        print(f"scene features: {datastore.features.shape[1]} per step (heisd_retrieval_key scene)")
    print(
        f"lookup of a step's first token ({timing['samples']} stored contexts): median "
        f"{timing['median_ms']:.3f} ms, p99 {timing['p99_ms']:.3f} ms, "
        f"max {timing['max_ms']:.3f} ms"
    )
    return 0


def run_drafter_import(args: argparse.Namespace) -> int:
    from kerv_ros.decoding.drafter_import import import_specvla
    from kerv_ros.loading import hidden_size_of

    drafter = import_specvla(args.source, hidden_size_of(args.model))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    drafter.save(args.output)
    params = sum(p.numel() for p in drafter.parameters())
    print(
        f"wrote {args.output} and {args.output.with_suffix('.json')}: "
        f"{params / 1e6:.2f} M parameters"
    )
    return 0
