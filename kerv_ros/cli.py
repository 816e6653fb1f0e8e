"""The ``kerv`` command-line tool."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from kerv_ros import bench, report
from kerv_ros.config import (
    ENGINE_PARAMS,
    DraftConfig,
    EngineConfig,
    config_from_params,
    params_of,
)


def _threads_option(p: argparse.ArgumentParser, default: int) -> None:
    p.add_argument(
        "--threads",
        type=int,
        default=default,
        help=f"torch CPU threads (0 = torch's choice; default {default}), as kerv_node's "
        "torch_threads, so that step times are the node's; 2 OpenMP threads beside another "
        "busy process on 2 cores made every step several times slower",
    )


def _set_threads(args: argparse.Namespace) -> None:
    if args.threads < 0:
        raise ValueError(f"--threads must be >= 0, got {args.threads}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)


def _model_options(p: argparse.ArgumentParser, default: str | None, drafts: bool = True) -> None:
    """The model options every subcommand that loads a policy takes, named as the node's.

    ``drafts``: also --drafter and --datastore, for the subcommands that decode with them.
    """
    g = p.add_argument_group("model (as kerv_node's parameters of the same names)")
    kwargs = {"default": default} if default is not None else {"required": True}
    g.add_argument("--model", help="random | default | checkpoint directory", **kwargs)
    if drafts:
        g.add_argument("--drafter", default="", help="drafter .safetensors ('' = beside the model)")
        g.add_argument(
            "--datastore", default="", help="retrieval datastore ('' = the one beside the model)"
        )
    g.add_argument(
        "--unnorm-key", default="", help="dataset statistics to un-normalise with (OpenVLA)"
    )
    g.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1)")
    g.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default="",
        help="dtype of the whole model and drafter (default: float32 on the CPU, bfloat16 on "
        "a GPU)",
    )
    g.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="let a checkpoint's own Python code run (only for Prismatic variants the native "
        "OpenVLA loader does not know; published OpenVLA checkpoints never need it)",
    )


def _model_config(args: argparse.Namespace):
    from kerv_ros.config import ModelConfig

    return ModelConfig(
        model=args.model,
        drafter_path=getattr(args, "drafter", ""),
        datastore_path=getattr(args, "datastore", ""),
        unnorm_key=args.unnorm_key,
        trust_remote_code=args.trust_remote_code,
        device=args.device,
        dtype=args.dtype,
    )


def _load(args: argparse.Namespace, draft: DraftConfig | None = None, seed: int = 0):
    from kerv_ros.loading import load_models

    return load_models(_model_config(args), draft=draft, seed=seed)


def _bench_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="speed and fidelity of each decode mode against ar on one model",
        description="Run each mode over N observations and report forwards, accepted length, "
        "wall time and speed-up vs ar, all measured in this one run.",
    )
    _model_options(p, "random")
    p.add_argument(
        "--modes",
        default=",".join(bench.ROWS),
        help=f"comma list of modes and ablation variants ({', '.join(bench.ROWS)})",
    )
    p.add_argument("--steps", type=int, default=20, help="observations (action steps) per mode")
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an engine parameter of config/kerv.yaml for every row (repeatable), "
        "e.g. --param kerv_r_max=20",
    )
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
    p.add_argument(
        "--observations",
        choices=("sim", "synthetic"),
        default="sim",
        help="frames along the simulator experts' episodes (what the default model knows), or "
        "synthetic coloured blocks with random joint states",
    )
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per mode first")
    _threads_option(p, 1)
    p.set_defaults(func=_run_bench)


def _run_bench(args: argparse.Namespace) -> int:
    _set_threads(args)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    draft = DraftConfig(depth=args.depth, top_k=args.top_k, node_budget=args.node_budget)
    config = EngineConfig(draft=draft, relaxed_threshold=args.threshold)
    config = config_from_params(config, ENGINE_PARAMS, _engine_params(args.param))
    for mode in modes:
        bench.row_config(config, mode)  # refuse bad flags before loading anything
    if args.steps < 1:
        raise ValueError("--steps must be at least 1")
    loaded = _load(args, draft=draft, seed=args.seed)
    backend, drafter, datastore = loaded.backend, loaded.drafter, loaded.datastore
    if datastore is None:
        dropped = [m for m in modes if bench.row_config(config, m).mode == "heisd"]
        if dropped:
            print(f"no retrieval datastore for {args.model}: skipping {', '.join(dropped)}")
            modes = [m for m in modes if m not in dropped]
    size = getattr(getattr(backend, "config", None), "image_size", 224)
    kinematics = None
    if args.observations == "sim":
        from kerv_ros.config import PANDA_ARM_JOINTS
        from kerv_ros.kinematics import ArmKinematics
        from kerv_ros.sim.collect import expert_observations

        observations = expert_observations(args.steps, args.seed, size)
        kinematics = ArmKinematics(PANDA_ARM_JOINTS)
    else:
        observations = bench.synthetic_observations(args.steps, args.seed, size)
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
    print(f"model: {args.model}   steps: {args.steps}   seed: {args.seed}")
    print(report.table(summary, report.BENCH))
    if args.json:
        payload = {"model": args.model, "steps": args.steps, "seed": args.seed, "modes": summary}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2), encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


def _engine_params(pairs: list[str]) -> dict[str, object]:
    """``NAME=VALUE`` strings -> engine parameters, typed like each parameter's default."""
    defaults = params_of(EngineConfig(), ENGINE_PARAMS)
    values: dict[str, object] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or name not in defaults:
            raise ValueError(
                f"--param {pair!r}: expected NAME=VALUE, NAME one of {', '.join(defaults)}"
            )
        kind = type(defaults[name])
        if kind is bool:
            if text.lower() not in ("true", "false"):
                raise ValueError(f"--param {name} takes true or false, got {text!r}")
            values[name] = text.lower() == "true"
        else:
            try:
                values[name] = kind(text)
            except ValueError as err:
                raise ValueError(f"--param {name}: {text!r} is not a {kind.__name__}") from err
    return values


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
    _threads_option(c, 1)
    c.set_defaults(func=_run_collect)
    e = sim.add_parser("expert", help="the scripted expert's success rate per task")
    e.add_argument("--task", default=tasks, help=f"task or comma list ({tasks})")
    e.add_argument("--episodes", type=int, default=50)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--json", type=Path, help="also write the rates as JSON here")
    e.add_argument("--noise", type=float, default=0.0, help="as for collect")
    e.set_defaults(func=_run_expert)
    r = sim.add_parser("run", help="sim_node + kerv_node as processes, in closed loop")
    r.add_argument("--task", default=tasks, help=f"task or comma list ({tasks})")
    r.add_argument("--episodes", type=int, default=3, help="episodes per task and mode")
    r.add_argument("--seed", type=int, default=1000, help="first episode seed")
    _model_options(r, "default")
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
    r.set_defaults(func=_run_closed_loop)


def _tasks(arg: str) -> list[str]:
    return [t.strip() for t in arg.split(",") if t.strip()]


def _run_collect(args: argparse.Namespace) -> int:
    import time

    from kerv_ros.sim.collect import collect

    _set_threads(args)
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
        _tasks(args.task),
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


def _run_expert(args: argparse.Namespace) -> int:
    from kerv_ros.sim.collect import expert_success

    rates = expert_success(_tasks(args.task), args.episodes, args.seed, noise=args.noise)
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
    import shutil

    from kerv_ros.sim import closed_loop

    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
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
        _tasks(args.task),
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
        "tasks": _tasks(args.task),
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
    from dataclasses import asdict

    from kerv_ros.config import ModelConfig

    chosen = asdict(_model_config(args))
    defaults = asdict(ModelConfig())
    return [
        f"{name}:={str(value).lower() if isinstance(value, bool) else value}"
        for name, value in chosen.items()
        if name != "model" and value != defaults[name]
    ]


def _train_parser(sub: argparse._SubParsersAction) -> None:
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
    pol.set_defaults(func=_run_train_policy)
    dra = train.add_parser("drafter", help="an EAGLE drafter for a policy, from bags")
    dra.add_argument("bags", nargs="+", type=Path)
    _model_options(dra, None, drafts=False)
    dra.add_argument("-o", "--output", type=Path, required=True, help="drafter .safetensors")
    dra.add_argument("--epochs", type=int, default=4)
    dra.add_argument("--max-samples", type=int, default=3000)
    dra.add_argument("--seed", type=int, default=0)
    dra.add_argument("--control-rate", type=float, default=10.0)
    _threads_option(dra, 0)
    dra.set_defaults(func=_run_train_drafter)


def _run_train_policy(args: argparse.Namespace) -> int:
    import time

    from kerv_ros.policy.vla import DefaultVLA
    from kerv_ros.training import PolicyTraining, load_demonstrations, render_scenes, train_policy

    config = PolicyTraining(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        bf16=not args.no_bf16,
        vision_steps=args.vision_steps,
    )
    if args.vision_steps and not args.scenes:
        raise SystemExit("--vision-steps trains on rendered scenes: give --scenes N too")
    start = time.perf_counter()
    demos = load_demonstrations(args.bags, config.vla.image_size, args.control_rate)
    print(f"{len(demos)} samples from {len(set(demos.episodes.tolist()))} episodes")
    init = DefaultVLA.load(args.init) if args.init else None
    if init is not None:
        config.vla = init.config
    scenes = render_scenes(demos, args.scenes, config.vla.image_size) if args.scenes else None
    backend, history = train_policy(demos, config, scenes=scenes, init=init)
    backend.save(args.output)
    record = {
        "command": " ".join(sys.argv),
        "samples": len(demos),
        "seconds": time.perf_counter() - start,
        "history": history,
    }
    (args.output / "training.json").write_text(json.dumps(record, indent=1), encoding="utf-8")
    print(f"saved {args.output} after {record['seconds'] / 60:.1f} min; last {history[-1]}")
    return 0


def _run_train_drafter(args: argparse.Namespace) -> int:
    import time

    from kerv_ros.training import (
        DrafterTraining,
        load_demonstrations,
        observations_of,
        train_drafter,
    )

    _set_threads(args)
    start = time.perf_counter()
    backend = _load(args).backend
    size = getattr(getattr(backend, "config", None), "image_size", 224)
    demos = load_demonstrations(args.bags, size, args.control_rate)
    config = DrafterTraining(epochs=args.epochs, max_samples=args.max_samples, seed=args.seed)
    drafter, history = train_drafter(backend, observations_of(demos), config)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    drafter.save(args.output)
    record = {
        "command": " ".join(sys.argv),
        "seconds": time.perf_counter() - start,
        "history": history,
    }
    args.output.with_suffix(".training.json").write_text(json.dumps(record, indent=1))
    print(f"saved {args.output} after {record['seconds'] / 60:.1f} min; last {history[-1]}")
    return 0


def _eval_parser(sub: argparse._SubParsersAction) -> None:
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
    _model_options(p, "default")
    p.add_argument(
        "--modes",
        default=None,
        help=f"comma list of modes and variants ({', '.join(bench.ROWS)}); "
        "offline default: all of them, closed loop: ar",
    )
    p.add_argument("--tasks", default="reach,push,pick", help="closed loop: tasks")
    p.add_argument("--episodes", type=int, default=10, help="closed loop: episodes per task/mode")
    p.add_argument("--seed", type=int, default=1000, help="closed loop: first episode seed")
    p.add_argument("--threshold", type=int, default=EngineConfig.relaxed_threshold)
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an engine parameter of config/kerv.yaml for every mode (repeatable)",
    )
    p.add_argument(
        "--sweep",
        metavar="NAME=V1,V2,...",
        help="offline: also run every mode but ar at each value of one parameter "
        "(r = relaxed_threshold), e.g. --sweep r=3,5,9,15: the trade-off curve",
    )
    p.add_argument("--control-rate-hz", type=float, default=10.0, help="offline: tick rate")
    p.add_argument("-o", "--output", type=Path, help="write results.json (and report) here")
    _threads_option(p, 1)
    p.set_defaults(func=_run_eval)


SWEEP_ALIASES = {"r": "relaxed_threshold"}


def _sweep_rows(config: EngineConfig, modes: list[str], sweep: str | None):
    """Rows for every mode, plus one per sweep value for each non-ar mode."""
    rows = {mode: bench.row_config(config, mode) for mode in modes}
    curves: dict[str, list[tuple[float, str]]] = {}
    if not sweep:
        return rows, curves
    name, sep, values = sweep.partition("=")
    name = SWEEP_ALIASES.get(name, name)
    if not sep or not values:
        raise ValueError(f"--sweep {sweep!r}: expected NAME=V1,V2,...")
    for mode in modes:
        if mode == "ar":
            continue
        points = []
        for text in values.split(","):
            params = _engine_params([f"{name}={text.strip()}"])
            row = f"{mode}[{name}={text.strip()}]"
            rows[row] = config_from_params(rows[mode], ENGINE_PARAMS, params).validate()
            points.append((float(params[name]), row))
        curves[f"{mode} {name}"] = points
    return rows, curves


def _run_eval(args: argparse.Namespace) -> int:
    _set_threads(args)
    config = EngineConfig(relaxed_threshold=args.threshold)
    config = config_from_params(config, ENGINE_PARAMS, _engine_params(args.param))
    default_modes = "ar" if args.closed_loop else ",".join(bench.ROWS)
    modes = [m.strip() for m in (args.modes or default_modes).split(",") if m.strip()]
    rows, curves = _sweep_rows(config, modes, None if args.closed_loop else args.sweep)
    if args.closed_loop and args.bags:
        raise ValueError("--closed-loop runs the simulator; it takes no bags")
    if not args.closed_loop and not args.bags:
        raise ValueError("name the bags to evaluate, or pass --closed-loop")
    loaded = _load(args)
    backend, drafter, datastore = loaded.backend, loaded.drafter, loaded.datastore
    from kerv_ros.decoding.engine import DecodeEngine

    engine = DecodeEngine(backend, drafter, EngineConfig(mode="ar"), datastore=datastore)
    for row, row_config in rows.items():  # refuse what cannot run before any work
        problems = engine.problems(row_config)
        if problems:
            raise ValueError(f"{row}: {'; '.join(problems)}")
    if args.closed_loop:
        return _closed_loop_eval(args, backend, drafter, rows, datastore)
    return _offline_eval(args, backend, drafter, rows, curves, datastore)


def _offline_eval(args, backend, drafter, rows, curves, datastore) -> int:
    from kerv_ros import offline
    from kerv_ros.bags import bag_paths
    from kerv_ros.config import PANDA_ARM_JOINTS
    from kerv_ros.kinematics import ArmKinematics

    size = getattr(getattr(backend, "config", None), "image_size", None)
    observations, commands, names = [], [], []
    for path in bag_paths(args.bags):
        ticks = offline.read_ticks(path, args.control_rate_hz, image_size=size)
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
        recorded = offline.recorded_errors(steps, commands, backend.norm_stats)
        summary[row].update(recorded)
        per_dim = recorded["action_error_vs_recorded_per_dim"]
        summary[row]["action_error_vs_recorded"] = sum(per_dim) / len(per_dim) if per_dim else None
    print(report.table(summary, report.OFFLINE, markdown=True))
    out = args.output or Path("runs/eval")
    header = {
        "bags": names,
        "model": args.model,
        "ticks": len(observations),
        "params": args.param,
        "control_rate_hz": args.control_rate_hz,
    }
    offline.write_report(out, summary, results, commands, backend.norm_stats, header, curves)
    print(f"wrote {out / 'results.json'}, {out / 'report.md'} and plots")
    return 0


def _closed_loop_eval(args, backend, drafter, rows, datastore) -> int:
    from kerv_ros.evaluation import closed_loop, summarise

    by_mode = {}
    for row, row_config in rows.items():
        results = closed_loop(
            backend,
            drafter,
            row_config,
            _tasks(args.tasks),
            args.episodes,
            args.seed,
            datastore=datastore,
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


def _datastore_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("datastore", help="HeiSD's retrieval datastore of past action steps")
    ds = p.add_subparsers(dest="datastore_command", required=True)
    b = ds.add_parser(
        "build",
        help="build a datastore from rosbag2 recordings or demonstrations",
        description="Read the commanded actions (twist and gripper topics) of every bag, "
        "normalise them with the model's statistics and index each step by the steps before it.",
    )
    b.add_argument("bags", nargs="+", type=Path, help="bags, or folders of bags")
    b.add_argument("-o", "--output", type=Path, required=True, help="datastore .safetensors")
    _model_options(b, "default", drafts=False)
    b.add_argument("--control-rate-hz", type=float, default=10.0)
    b.add_argument(
        "--relabel",
        action="store_true",
        help="store the model's own greedy actions on each recorded tick instead of the "
        "recorded commands (slower: one ar decode per tick)",
    )
    b.add_argument("--threads", type=int, default=0, help="torch threads for --relabel")
    b.set_defaults(func=_run_datastore_build)
    i = ds.add_parser("info", help="what a datastore holds and how fast it looks up")
    i.add_argument("path", type=Path)
    i.set_defaults(func=_run_datastore_info)


def _run_datastore_build(args: argparse.Namespace) -> int:
    import time

    from kerv_ros.retrieval import Datastore, read_bag_episodes

    start = time.perf_counter()
    backend = _load(args).backend
    if args.relabel:
        from kerv_ros.training import greedy_episodes, load_demonstrations

        _set_threads(args)
        size = getattr(getattr(backend, "config", None), "image_size", 224)
        demos = load_demonstrations(args.bags, size, args.control_rate_hz)
        episodes = greedy_episodes(backend, demos)
    else:
        episodes = read_bag_episodes(args.bags, args.control_rate_hz)
    sources = sorted({str(path) for path in args.bags})
    datastore = Datastore.from_episodes(episodes, backend.norm_stats, sources)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    datastore.save(args.output)
    print(
        f"wrote {args.output}: {len(datastore)} steps from {len(episodes)} episodes, "
        f"{args.output.stat().st_size / 1e6:.2f} MB, {time.perf_counter() - start:.1f} s"
    )
    return 0


def _run_datastore_info(args: argparse.Namespace) -> int:
    import time

    import numpy as np

    from kerv_ros.retrieval import Datastore

    datastore = Datastore.load(args.path)
    rng = np.random.default_rng(0)
    times = []
    for i in rng.integers(0, len(datastore), size=500):
        start = time.perf_counter()
        datastore.lookup(datastore.contexts[i], [int(datastore.bins[i, 0])])
        times.append((time.perf_counter() - start) * 1e3)
    print(f"{args.path}: {len(datastore)} steps, {int(datastore.episodes.max()) + 1} episodes")
    print(f"sources: {', '.join(datastore.sources) or '-'}")
    print(
        f"lookup of a step's first token (500 stored contexts): median "
        f"{np.median(times):.3f} ms, p99 {np.percentile(times, 99):.3f} ms, "
        f"max {max(times):.3f} ms"
    )
    return 0


def _drafter_parser(sub: argparse._SubParsersAction) -> None:
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
    i.set_defaults(func=_run_drafter_import)


def _run_drafter_import(args: argparse.Namespace) -> int:
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


def _record_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "record",
        help="record kerv_node's inputs and outputs from live topics into rosbag2",
        description="Raw subscriptions to the topics (default: camera, joint states, "
        "instruction, twist, gripper, decode stats) written to a rosbag2 that ros2 bag play "
        "and kerv eval read. Stops on Ctrl-C or after --duration.",
    )
    p.add_argument("-o", "--output", type=Path, required=True, help="new bag directory")
    p.add_argument("--topics", help="comma list of topics (default: kerv_node's)")
    p.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap")
    p.add_argument("--duration", type=float, help="seconds to record (default: until Ctrl-C)")
    p.set_defaults(func=_run_record)


def _run_record(args: argparse.Namespace) -> int:
    from kerv_ros.recording import NODE_TOPICS, record

    topics = _topics(args.topics) or list(NODE_TOPICS)
    counts = record(args.output, topics, args.storage, args.duration)
    print(f"wrote {args.output}: " + ", ".join(f"{t} {n}" for t, n in counts.items()))
    return 0


def _replay_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "replay",
        help="play a bag's sensor topics into the live graph with their timing",
        description="For machines without ros2 bag play: publishes the bag's messages (default: "
        "camera, joint states, instruction) as recorded, scaled by --rate.",
    )
    p.add_argument("bag", type=Path)
    p.add_argument("--topics", help="comma list of topics (default: the node's inputs)")
    p.add_argument("--rate", type=float, default=1.0, help="time factor (2 = twice as fast)")
    p.add_argument("--loop", action="store_true", help="start over at the end, until Ctrl-C")
    p.add_argument("--start", type=float, default=0.0, help="seconds into the bag to start at")
    p.add_argument(
        "--keep-stamps",
        action="store_true",
        help="publish the recorded header stamps (default: stamped now, as live sensors; a "
        "node fed recorded stamps needs stamp_tolerance_s:=0)",
    )
    p.set_defaults(func=_run_replay)


def _run_replay(args: argparse.Namespace) -> int:
    from kerv_ros.recording import replay

    sent = replay(
        args.bag,
        _topics(args.topics),
        args.rate,
        args.loop,
        args.start,
        restamp=not args.keep_stamps,
    )
    print(f"replayed {sent} messages from {args.bag}")
    return 0


def _topics(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kerv", description="kerv_ros command-line tool")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    _bench_parser(sub)
    _sim_parser(sub)
    _train_parser(sub)
    _eval_parser(sub)
    _datastore_parser(sub)
    _drafter_parser(sub)
    _record_parser(sub)
    _replay_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except (ValueError, OSError) as err:  # ModelLoadError is a ValueError: one line
        print(f"kerv {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
