"""Options and helpers shared by the ``kerv`` subcommands; the logic lives in the library."""

from __future__ import annotations

import argparse

from kerv_ros.config import (
    ENGINE_PARAMS,
    VERIFIER_PATHS,
    EngineConfig,
    ModelConfig,
    config_from_params,
)
from kerv_ros.config import parse_params as _parse_params


def threads_option(p: argparse.ArgumentParser, default: int) -> None:
    p.add_argument(
        "--threads",
        type=int,
        default=default,
        help=f"torch CPU threads (0 = torch's choice; default {default}), as kerv_node's "
        "torch_threads, so that step times are the node's; 2 OpenMP threads beside another "
        "busy process on 2 cores made every step several times slower",
    )


def set_threads(args: argparse.Namespace) -> None:
    if args.threads < 0:
        raise ValueError(f"--threads must be >= 0, got {args.threads}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)


def model_options(p: argparse.ArgumentParser, default: str | None, drafts: bool = True) -> None:
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
        "--verifier",
        choices=VERIFIER_PATHS,
        default=ModelConfig.verifier,
        help="how the language model runs: lean (plain PyTorch, preallocated KV cache) or "
        "transformers (the model's own forward); default %(default)s",
    )
    g.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the lean verifier after loading (as kerv_node's verifier_compile)",
    )
    g.add_argument(
        "--dyq-precisions",
        default=ModelConfig.dyq_precisions,
        help="precision variants to build beside the model for dyq rows (comma list of "
        "bfloat16, int8, int8_bf16, int4_bf16, phased; '' = none; default %(default)s)",
    )
    g.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="let a checkpoint's own Python code run (only for Prismatic variants the native "
        "OpenVLA loader does not know; published OpenVLA checkpoints never need it)",
    )


def model_config(args: argparse.Namespace) -> ModelConfig:
    return ModelConfig(
        model=args.model,
        drafter_path=getattr(args, "drafter", ""),
        datastore_path=getattr(args, "datastore", ""),
        unnorm_key=args.unnorm_key,
        trust_remote_code=args.trust_remote_code,
        device=args.device,
        dtype=args.dtype,
        dyq_precisions=args.dyq_precisions,
        verifier=args.verifier,
        verifier_compile=args.compile,
    )


def load(args: argparse.Namespace, config: EngineConfig | None = None, seed: int = 0):
    """The models the options name; the drafter is built with ``config``'s draft tree."""
    from kerv_ros.loading import load_models

    draft = config.draft if config is not None else None
    return load_models(model_config(args), draft=draft, seed=seed)


SIM_FRAME_SIZE = 224
"""Frames for a backend that resizes its input itself: OpenVLA's input size."""


def frame_size(backend) -> int:
    """The side of the frames to render for ``backend``, or to keep of recordings it learns from.

    One size bounds the memory of thousands of training samples.
    """
    return backend.image_size or SIM_FRAME_SIZE


class _AsParam(argparse.Action):
    """An older flag kept as a spelling of ``--param NAME=VALUE`` (one path to each setting)."""

    def __init__(self, option_strings, dest, param: str, **kwargs) -> None:
        super().__init__(option_strings, argparse.SUPPRESS, **kwargs)
        self.param = param

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        namespace.param = [*getattr(namespace, "param", []), f"{self.param}={values}"]


def param_options(p: argparse.ArgumentParser, what: str, aliases: dict[str, str]) -> None:
    """``--param NAME=VALUE`` (repeatable) and the older flags that spell some of them."""
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help=f"an engine parameter of config/kerv.yaml for {what} (repeatable), "
        "e.g. --param kerv_r_max=20",
    )
    for flag, name in aliases.items():
        p.add_argument(flag, action=_AsParam, param=name, metavar="N", help=f"--param {name}=N")


def engine_config(args: argparse.Namespace) -> EngineConfig:
    """The engine configuration of ``--param`` (and its aliases), checked like ros2 param set."""
    config = config_from_params(EngineConfig(), ENGINE_PARAMS, _parse_params(args.param))
    return config.validate()


def comma_list(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]
