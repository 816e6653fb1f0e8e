"""Configuration of the decoding engine, as dataclasses.

Each value lives here once. The ROS node maps its parameters (``config/kerv.yaml``) onto these
fields, the CLI maps its flags onto them, and :meth:`EngineConfig.validate` is the single place
that decides whether a value is acceptable, so that a refused ``ros2 param set`` and a refused
command-line flag give the same reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from kerv_ros.actions import N_BINS

MODES = ("ar", "spec", "spec_relaxed")
"""Decode modes this engine implements. ``ar`` is the greedy baseline; ``spec`` drafts with the
EAGLE-style head and accepts exactly; ``spec_relaxed`` accepts a draft token within
``relaxed_threshold`` bins of the verifier's (Spec-VLA)."""


@dataclass(frozen=True)
class DraftConfig:
    """Shape of the draft tree (EAGLE-2 style: expand the ``top_k`` best nodes per level).

    ``top_k = 1`` drafts a chain of ``depth`` tokens. Spec-VLA used depth 4, top-k 8 and 50
    nodes; a 7-token action step can use at most 6 draft levels after the first token.
    """

    depth: int = 6
    top_k: int = 4
    node_budget: int = 24

    def problems(self) -> list[str]:
        out = []
        if not 1 <= self.depth <= 6:
            out.append(f"draft depth {self.depth} outside 1..6 (a step has 7 tokens)")
        if not 1 <= self.top_k <= 32:
            out.append(f"draft top_k {self.top_k} outside 1..32")
        if not 1 <= self.node_budget <= 256:
            out.append(f"draft node_budget {self.node_budget} outside 1..256")
        return out


@dataclass(frozen=True)
class EngineConfig:
    """Everything that decides how one action step is decoded."""

    mode: str = "spec"
    draft: DraftConfig = field(default_factory=DraftConfig)
    relaxed_threshold: int = 9
    """Largest accepted |draft - verifier| in bins for ``spec_relaxed`` (0 = exact)."""

    def problems(self) -> list[str]:
        """Reasons this configuration cannot be used; empty when it is valid."""
        out = self.draft.problems()
        if self.mode not in MODES:
            out.append(f"unknown mode {self.mode!r}; choose one of {', '.join(MODES)}")
        if not 0 <= self.relaxed_threshold < N_BINS:
            out.append(f"relaxed_threshold {self.relaxed_threshold} outside 0..{N_BINS - 1} bins")
        return out

    def validate(self) -> EngineConfig:
        """Return self, or raise ValueError listing every problem."""
        problems = self.problems()
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def threshold(self) -> int:
        """The bin threshold the acceptance rule uses in this mode."""
        return self.relaxed_threshold if self.mode == "spec_relaxed" else 0

    def with_mode(self, mode: str) -> EngineConfig:
        return replace(self, mode=mode).validate()


PARAMETER_FIELDS = {
    "mode": ("mode",),
    "relaxed_threshold": ("relaxed_threshold",),
    "draft_depth": ("draft", "depth"),
    "draft_top_k": ("draft", "top_k"),
    "draft_node_budget": ("draft", "node_budget"),
}
"""Flat parameter names (ROS parameters, ``config/kerv.yaml``) -> fields of EngineConfig."""


def engine_params(config: EngineConfig) -> dict[str, object]:
    """The flat parameter view of a configuration."""
    out = {}
    for name, path in PARAMETER_FIELDS.items():
        value: object = config
        for attr in path:
            value = getattr(value, attr)
        out[name] = value
    return out


def engine_config_from_params(params: dict[str, object], base: EngineConfig) -> EngineConfig:
    """``base`` with the given flat parameters changed, validated (ValueError with reasons)."""
    unknown = sorted(set(params) - set(PARAMETER_FIELDS))
    if unknown:
        raise ValueError(f"unknown engine parameters: {', '.join(unknown)}")
    top = {k: params[k] for k in params if len(PARAMETER_FIELDS[k]) == 1}
    draft = {PARAMETER_FIELDS[k][1]: params[k] for k in params if len(PARAMETER_FIELDS[k]) == 2}
    return replace(base, draft=replace(base.draft, **draft), **top).validate()
