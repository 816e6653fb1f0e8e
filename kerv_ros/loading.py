"""Load a target policy and its drafter from the names users type: random, default, or a path."""

from __future__ import annotations

import logging
from pathlib import Path

from kerv_ros.config import DraftConfig
from kerv_ros.decoding.drafter import EagleConfig, EagleDrafter
from kerv_ros.policy.backend import PolicyBackend
from kerv_ros.policy.openvla import OpenVLABackend
from kerv_ros.policy.vla import POLICY_FILE, DefaultVLA
from kerv_ros.retrieval import Datastore

log = logging.getLogger(__name__)

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "models" / "default"
DRAFTER_FILE = "drafter.safetensors"
DATASTORE_FILE = "datastore.safetensors"


def load_policy(
    name: str,
    seed: int = 0,
    draft: DraftConfig | None = None,
    trust_remote_code: bool = False,
    unnorm_key: str | None = None,
    device: str = "cpu",
) -> tuple[PolicyBackend, EagleDrafter]:
    """``random`` (seeded, for engine work), ``default`` (shipped), or a checkpoint directory.

    A directory with ``kerv_policy.json`` is a kerv_ros default-architecture policy; one with a
    transformers ``config.json`` is taken as OpenVLA. The drafter is ``drafter.safetensors``
    beside the policy; without one, a randomly initialised drafter is used and a warning says
    that speculative modes will not speed anything up.
    """
    if name == "random":
        backend: PolicyBackend = DefaultVLA.random(seed=seed)
        return backend, _random_drafter(backend, draft, seed)
    directory = DEFAULT_MODEL_DIR if name == "default" else Path(name)
    if name == "default" and not directory.is_dir():
        raise FileNotFoundError(
            f"no default model installed at {directory}; pass --model random or a checkpoint path"
        )
    if (directory / POLICY_FILE).is_file():
        backend = DefaultVLA.load(directory, device=device)
    else:
        backend = OpenVLABackend.load(
            directory, unnorm_key=unnorm_key, trust_remote_code=trust_remote_code, device=device
        )
    drafter_path = directory / DRAFTER_FILE
    if drafter_path.is_file():
        drafter = EagleDrafter.load(drafter_path, device=device)
        if draft is not None:
            drafter.draft_config = draft
        return backend, drafter
    log.warning("no %s in %s: using an untrained drafter", DRAFTER_FILE, directory)
    return backend, _random_drafter(backend, draft, seed)


def _random_drafter(backend: PolicyBackend, draft: DraftConfig | None, seed: int) -> EagleDrafter:
    import torch

    torch.manual_seed(seed + 1)
    config = EagleConfig.for_target(backend.text_config)
    return EagleDrafter(config, draft or DraftConfig()).to(backend.device).eval()


def load_datastore(name: str, path: str = "") -> Datastore | None:
    """The retrieval datastore: ``path`` if given, else ``datastore.safetensors`` beside the model.

    None when there is none: ``heisd`` then refuses to run, ``hybrid`` drafts without it.
    """
    if path:
        return Datastore.load(path)
    if name == "random":
        return None
    directory = DEFAULT_MODEL_DIR if name == "default" else Path(name)
    candidate = directory / DATASTORE_FILE
    if candidate.is_file():
        return Datastore.load(candidate)
    log.info("no %s in %s: no retrieval drafts", DATASTORE_FILE, directory)
    return None
