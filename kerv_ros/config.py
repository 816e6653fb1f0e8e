"""Configuration of the engine, the control loop and the model, as dataclasses.

Each value lives here once. The parameter tables (``ENGINE_PARAMS``, ``CONTROL_PARAMS``,
``MODEL_PARAMS``) give every setting its flat name (the ROS parameter of ``config/kerv.yaml``),
its description and its allowed range; the node declares its parameters from them, the CLI
maps its flags onto the same dataclasses, and :func:`problems` is the single place that decides
whether a value is acceptable, so that a refused ``ros2 param set`` and a refused command-line
flag give the same reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from kerv_ros.actions import N_BINS

MODES = ("ar", "spec", "spec_relaxed")
"""Decode modes this engine implements. ``ar`` is the greedy baseline; ``spec`` drafts with the
EAGLE-style head and accepts exactly; ``spec_relaxed`` accepts a draft token within
``relaxed_threshold`` bins of the verifier's (Spec-VLA)."""

PANDA_ARM_JOINTS = tuple(f"panda_joint{i}" for i in range(1, 8))


@dataclass(frozen=True)
class Param:
    """One setting: flat name, where it lives in its dataclass, what it means, what it allows."""

    name: str
    path: tuple[str, ...]
    description: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    read_only: bool = False


@dataclass(frozen=True)
class DraftConfig:
    """Shape of the draft tree (EAGLE-2 style: expand the ``top_k`` best nodes per level).

    ``top_k = 1`` drafts a chain of ``depth`` tokens. Spec-VLA used depth 4, top-k 8 and 50
    nodes; a 7-token action step can use at most 6 draft levels after the first token.
    """

    depth: int = 6
    top_k: int = 4
    node_budget: int = 24


@dataclass(frozen=True)
class EngineConfig:
    """Everything that decides how one action step is decoded."""

    mode: str = "spec"
    draft: DraftConfig = field(default_factory=DraftConfig)
    relaxed_threshold: int = 9
    """Largest accepted |draft - verifier| in bins for ``spec_relaxed`` (0 = exact)."""

    def problems(self) -> list[str]:
        """Reasons this configuration cannot be used; empty when it is valid."""
        return problems(self, ENGINE_PARAMS)

    def validate(self) -> EngineConfig:
        """Return self, or raise ValueError listing every problem."""
        _raise_problems(self.problems())
        return self

    @property
    def threshold(self) -> int:
        """The bin threshold the acceptance rule uses in this mode."""
        return self.relaxed_threshold if self.mode == "spec_relaxed" else 0

    def with_mode(self, mode: str) -> EngineConfig:
        return replace(self, mode=mode).validate()


@dataclass(frozen=True)
class ControlConfig:
    """The control loop around the engine (the node's settings)."""

    control_rate_hz: float = 10.0
    stale_timeout_s: float = 0.5
    max_linear_speed: float = 0.25
    """m/s, limit on the norm of the commanded linear velocity."""
    max_angular_speed: float = 1.0
    """rad/s, limit on the norm of the commanded angular velocity."""
    command_frame: str = "panda_link0"
    instruction: str = ""
    joint_names: tuple[str, ...] = PANDA_ARM_JOINTS

    @property
    def period_s(self) -> float:
        return 1.0 / self.control_rate_hz

    def problems(self) -> list[str]:
        out = problems(self, CONTROL_PARAMS)
        if not self.command_frame.strip():
            out.append("command_frame is empty")
        if not self.joint_names or len(set(self.joint_names)) != len(self.joint_names):
            out.append(f"joint_names must be distinct and not empty: {list(self.joint_names)}")
        return out

    def validate(self) -> ControlConfig:
        _raise_problems(self.problems())
        return self


@dataclass(frozen=True)
class ModelConfig:
    """What the node loads at configure; changing it needs a new configure."""

    model: str = "default"
    drafter_path: str = ""
    unnorm_key: str = ""
    trust_remote_code: bool = False
    device: str = "cpu"
    torch_threads: int = 1
    """CPU threads for the model (0 = torch's default). One by default: measured on 2 cores, two
    OpenMP threads spinning against the executor's threads made the p99 step 12x longer."""


ENGINE_PARAMS = (
    Param("mode", ("mode",), "decode mode: " + " | ".join(MODES), choices=MODES),
    Param(
        "relaxed_threshold",
        ("relaxed_threshold",),
        "spec_relaxed: largest accepted |draft - verifier| in bins",
        0,
        N_BINS - 1,
    ),
    Param("draft_depth", ("draft", "depth"), "draft tree depth (tokens ahead)", 1, 6),
    Param("draft_top_k", ("draft", "top_k"), "nodes expanded per draft level (1 = chain)", 1, 32),
    Param("draft_node_budget", ("draft", "node_budget"), "draft tree size in nodes", 1, 256),
)
CONTROL_PARAMS = (
    Param("control_rate_hz", ("control_rate_hz",), "control loop rate (Hz)", 0.5, 100.0),
    Param(
        "stale_timeout_s",
        ("stale_timeout_s",),
        "inputs older than this give a zero twist (s)",
        0.01,
        10.0,
    ),
    Param("max_linear_speed", ("max_linear_speed",), "linear speed limit (m/s)", 0.0, 2.0),
    Param("max_angular_speed", ("max_angular_speed",), "angular speed limit (rad/s)", 0.0, 6.0),
    Param("command_frame", ("command_frame",), "frame_id of the twist commands"),
    Param("instruction", ("instruction",), "task instruction (also topic ~/instruction)"),
    Param("joint_names", ("joint_names",), "arm joints read from joint_states, in order"),
)
MODEL_PARAMS = (
    Param("model", ("model",), "default | random | checkpoint directory", read_only=True),
    Param(
        "drafter_path",
        ("drafter_path",),
        "drafter .safetensors ('' = drafter.safetensors beside the model)",
        read_only=True,
    ),
    Param(
        "unnorm_key",
        ("unnorm_key",),
        "dataset statistics to un-normalise with ('' = only)",
        read_only=True,
    ),
    Param(
        "trust_remote_code",
        ("trust_remote_code",),
        "allow a checkpoint's own Python code to run (OpenVLA)",
        read_only=True,
    ),
    Param("device", ("device",), "torch device of the model", read_only=True),
    Param(
        "torch_threads",
        ("torch_threads",),
        "CPU threads for the model (0 = torch default)",
        0,
        256,
        read_only=True,
    ),
)


def _get(config: object, path: tuple[str, ...]) -> object:
    for attr in path:
        config = getattr(config, attr)
    return config


def check(param: Param, value: object) -> str | None:
    """Why ``value`` is not acceptable for ``param``, or None."""
    if param.choices and value not in param.choices:
        return f"unknown {param.name} {value!r}; choose one of {', '.join(param.choices)}"
    if param.low is not None and not param.low <= value <= param.high:  # type: ignore[operator]
        return f"{param.name} {value} outside {param.low}..{param.high}"
    return None


def problems(config: object, params: tuple[Param, ...]) -> list[str]:
    return [p for param in params if (p := check(param, _get(config, param.path)))]


def _raise_problems(found: list[str]) -> None:
    if found:
        raise ValueError("; ".join(found))


def params_of(config: object, params: tuple[Param, ...]) -> dict[str, object]:
    """The flat parameter view of a configuration."""
    return {param.name: _get(config, param.path) for param in params}


def config_from_params(config, params: tuple[Param, ...], values: dict[str, object]):
    """``config`` with the flat parameters ``values`` changed (not validated)."""
    by_name = {param.name: param for param in params}
    unknown = sorted(set(values) - set(by_name))
    if unknown:
        raise ValueError(f"unknown parameters: {', '.join(unknown)}")
    for name, value in values.items():
        config = _replace_path(config, by_name[name].path, value)
    return config


def _replace_path(config, path: tuple[str, ...], value):
    if len(path) == 1:
        return replace(config, **{path[0]: value})
    return replace(config, **{path[0]: _replace_path(getattr(config, path[0]), path[1:], value)})
