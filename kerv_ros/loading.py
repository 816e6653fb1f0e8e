"""Load a target policy, its drafter and its datastore from the names users type.

One set of model options (:class:`~kerv_ros.config.ModelConfig`: model, drafter, datastore,
unnorm key, device, dtype, trust_remote_code) serves every entry point: the node's parameters,
the launch arguments and the ``kerv`` subcommands' flags all map onto it. Whatever fails while
loading reaches the user as one :class:`ModelLoadError` line naming the file and what is wrong.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from kerv_ros.config import DraftConfig, ModelConfig
from kerv_ros.decoding.drafter import EagleConfig, EagleDrafter
from kerv_ros.dyq import TABLE_FILE, CalibrationTable
from kerv_ros.policy.backend import PolicyBackend
from kerv_ros.policy.hf_backend import HFDecoderBackend
from kerv_ros.policy.openvla import OpenVLABackend, is_openvla_checkpoint
from kerv_ros.policy.prismatic import CheckpointError
from kerv_ros.policy.vla import POLICY_FILE, DefaultVLA
from kerv_ros.retrieval import Datastore
from kerv_ros.scene import adopt_features

log = logging.getLogger(__name__)

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "models" / "default"
DRAFTER_FILE = "drafter.safetensors"
DATASTORE_FILE = "datastore.safetensors"


class ModelLoadError(ValueError):
    """A model, drafter or datastore that cannot be loaded; the message is one line."""


@dataclass
class LoadedModels:
    backend: PolicyBackend
    drafter: EagleDrafter
    datastore: Datastore | None


def resolve_dtype(name: str, device: str | torch.device) -> torch.dtype:
    """``float32`` | ``bfloat16`` | '' (float32 on the CPU, bfloat16 on an accelerator)."""
    if name in ("", "auto"):
        return torch.float32 if torch.device(device).type == "cpu" else torch.bfloat16
    if name not in ("float32", "bfloat16"):
        raise ModelLoadError(f"dtype {name!r}: choose float32 or bfloat16")
    return getattr(torch, name)


def model_directory(name: str) -> Path:
    directory = DEFAULT_MODEL_DIR if name == "default" else Path(name)
    if name == "default" and not directory.is_dir():
        raise FileNotFoundError(
            f"no default model installed at {directory}; pass --model random or a checkpoint path"
        )
    return directory


def load_models(
    options: ModelConfig, draft: DraftConfig | None = None, seed: int = 0
) -> LoadedModels:
    """Policy, drafter and datastore for ``options``, all on one device and dtype.

    Any failure is a :class:`ModelLoadError` whose one line names what failed to load.
    """
    what = f"model {options.model}"
    try:
        backend, drafter = load_policy(
            options.model,
            seed=seed,
            draft=draft,
            trust_remote_code=options.trust_remote_code,
            unnorm_key=options.unnorm_key or None,
            device=options.device,
            dtype=options.dtype,
            drafter_path=options.drafter_path,
        )
        choose_verifier(backend, options.verifier)
        names = tuple(n.strip() for n in options.dyq_precisions.split(",") if n.strip())
        what = f"precision variants {', '.join(names)} of {options.model}"
        if names:
            backend.build_precisions(names)
            table = dyq_table_path(options.model)
            what = "dyq calibration table"  # its errors name the file
            if table is not None and table.is_file():
                backend.precisions.calibration = CalibrationTable.load(table)
        if options.verifier_compile:
            compile_verifier(backend, draft.node_budget if draft else DraftConfig().node_budget)
        what = f"datastore {options.datastore_path or 'beside ' + options.model}"
        datastore = load_datastore(options.model, options.datastore_path)
        if datastore is not None:
            adopt_features(datastore, backend)
    except ModelLoadError:
        raise
    except Exception as err:  # every loader error becomes one line, never a traceback
        raise ModelLoadError(f"cannot load {what}: {_one_line(err)}") from err
    return LoadedModels(backend, drafter, datastore)


def choose_verifier(backend: PolicyBackend, path: str) -> None:
    """Put the backend's language model on ``path``.

    One the lean path cannot run stays on transformers' own forward (its construction warned).
    """
    if not isinstance(backend, HFDecoderBackend):
        log.warning("%s has one verifier path; %s not chosen", type(backend).__name__, path)
    elif path == "transformers" or backend.verifier_path == "lean":
        backend.set_verifier_path(path)


def compile_verifier(backend: PolicyBackend, max_nodes: int) -> None:
    """``torch.compile`` the lean verifier now; a model that does not compile stays eager."""
    if getattr(backend, "verifier_path", None) != "lean":
        log.warning("verifier_compile needs the lean verifier path: not compiled")
        return
    try:
        seconds = backend.compile_verifier(max_nodes)
    except Exception as err:  # the compiler raises many types (no C++ compiler, a lowering)
        log.warning("torch.compile of the lean verifier failed, running eager: %s", _one_line(err))
        return
    log.info("compiled the lean verifier in %.1f s (verify buckets %s)", seconds, backend.buckets)


def verifier_text(backend) -> str:
    """``lean``, ``lean, compiled in 9.1 s`` or ``transformers``: for logs and tables."""
    fields = verifier_fields(backend)
    seconds = fields["compile_s"]
    text = fields["verifier_path"] or "own"
    return text if seconds is None else f"{text}, compiled in {seconds:.1f} s"


def verifier_fields(backend) -> dict:
    """The verifier path the rows without ``@PATH`` ran on, and its compile time (JSON fields)."""
    return {
        "verifier_path": getattr(backend, "verifier_path", None),
        "compile_s": getattr(backend, "compile_s", None),
    }


def dyq_table_path(name: str) -> Path | None:
    """Where ``kerv dyq calibrate`` writes, and configure reads, a model's table (None: random)."""
    return None if name == "random" else model_directory(name) / TABLE_FILE


def load_policy(
    name: str,
    seed: int = 0,
    draft: DraftConfig | None = None,
    trust_remote_code: bool = False,
    unnorm_key: str | None = None,
    device: str = "cpu",
    dtype: str = "",
    drafter_path: str = "",
) -> tuple[PolicyBackend, EagleDrafter]:
    """``random`` (seeded, for engine work), ``default`` (shipped), or a checkpoint directory.

    A directory with ``kerv_policy.json`` is a kerv_ros default-architecture policy; one whose
    config.json says ``model_type: openvla`` is read by the native OpenVLA loader (no code from
    the directory runs). The drafter is ``drafter.safetensors`` beside the policy; without one, a
    randomly initialised drafter is used and a warning says that speculative modes will not
    speed anything up. ``drafter_path`` names another drafter file. The drafter follows the
    backend's device and dtype.
    """
    torch_dtype = resolve_dtype(dtype, device)
    if name == "random":
        backend: PolicyBackend = DefaultVLA.random(seed=seed).to(device, torch_dtype)
        if not drafter_path:
            return backend, _random_drafter(backend, draft, seed)
        return backend, _drafter_from(Path(drafter_path), backend, draft)
    directory = model_directory(name)
    if (directory / POLICY_FILE).is_file():
        backend = DefaultVLA.load(directory, device=device, dtype=torch_dtype)
    elif not directory.is_dir() or is_openvla_checkpoint(directory):
        backend = _load_openvla(directory, unnorm_key, trust_remote_code, device, torch_dtype)
    else:
        raise ModelLoadError(
            f"{directory} is neither a kerv_ros policy ({POLICY_FILE}) nor an OpenVLA checkpoint "
            "(config.json with model_type 'openvla')"
        )
    beside = directory / DRAFTER_FILE
    if drafter_path or beside.is_file():
        return backend, _drafter_from(
            Path(drafter_path) if drafter_path else beside, backend, draft
        )
    log.warning("no %s in %s: using an untrained drafter", DRAFTER_FILE, directory)
    return backend, _random_drafter(backend, draft, seed)


def _load_openvla(
    directory: Path,
    unnorm_key: str | None,
    trust_remote_code: bool,
    device: str,
    dtype: torch.dtype,
) -> PolicyBackend:
    """The native loader; the checkpoint's own code only for variants it does not know."""
    try:
        return OpenVLABackend.load(directory, unnorm_key=unnorm_key, device=device, dtype=dtype)
    except CheckpointError as err:
        if not trust_remote_code or "native loader knows" not in str(err):
            raise
        log.warning("%s; running the checkpoint's own code (trust_remote_code)", err)
    from kerv_ros.policy.remote_code import RemoteCodeOpenVLA

    return RemoteCodeOpenVLA.load(directory, unnorm_key=unnorm_key, device=device, dtype=dtype)


def _drafter_from(path: Path, backend: PolicyBackend, draft: DraftConfig | None) -> EagleDrafter:
    try:
        drafter = EagleDrafter.load(path)
    except Exception as err:  # one line naming the file, never a traceback
        raise ModelLoadError(f"cannot load drafter {path}: {_one_line(err)}") from err
    if drafter.config.hidden_size != backend.hidden_size:
        raise ModelLoadError(
            f"cannot load drafter {path}: width {drafter.config.hidden_size}, the model's is "
            f"{backend.hidden_size}"
        )
    return _follow(drafter, backend, draft)


def _follow(drafter: EagleDrafter, backend: PolicyBackend, draft: DraftConfig | None):
    """The drafter on the backend's device and dtype, with the tree shape asked for."""
    if draft is not None:
        drafter.draft_config = draft
    dtype = backend.lm_head.weight.dtype
    return drafter.to(device=backend.device, dtype=dtype).eval()


def _random_drafter(backend: PolicyBackend, draft: DraftConfig | None, seed: int) -> EagleDrafter:
    torch.manual_seed(seed + 1)
    config = EagleConfig.for_target(backend.text_config)
    return _follow(EagleDrafter(config, draft or DraftConfig()), backend, None)


def load_datastore(name: str, path: str = "") -> Datastore | None:
    """The retrieval datastore: ``path`` if given, else ``datastore.safetensors`` beside the model.

    None when there is none: ``heisd`` then refuses to run, ``hybrid`` drafts without it.
    """
    if path:
        return Datastore.load(path)
    if name == "random":
        return None
    candidate = model_directory(name) / DATASTORE_FILE
    if candidate.is_file():
        return Datastore.load(candidate)
    log.info("no %s beside %s: no retrieval drafts", DATASTORE_FILE, name)
    return None


def hidden_size_of(name: str) -> int:
    """The target's hidden width, read from its files without loading the weights."""
    import json

    from kerv_ros.policy.prismatic import LM_PREFIX, CheckpointWeights
    from kerv_ros.policy.vla import VLAConfig

    if name == "random":
        return VLAConfig().text_hidden
    directory = model_directory(name)
    if (directory / POLICY_FILE).is_file():
        meta = json.loads((directory / POLICY_FILE).read_text(encoding="utf-8"))
        return VLAConfig(**meta["vla_config"]).text_hidden
    weights = CheckpointWeights(directory, torch.device("cpu"))
    return weights.shape(LM_PREFIX + "embed_tokens.weight")[1]


def _one_line(err: Exception) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 400 else text[:400] + " ..."
