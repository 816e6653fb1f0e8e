"""Numeric precision variants of a loaded policy, switchable between two forwards (DyQ-VLA).

DyQ-VLA keeps one low-bit copy of the weights for the whole run and switches only the
activations' precision step by step. PyTorch's own weight-only int8 kernel
(``torch._weight_int8pack_mm``, where torchao's int8 weight-only path also lands) takes
bfloat16 activations over int8 weights and per-row scales; the same int8 weights, widened per
call to the model's own dtype and scaled after the matmul, serve float32 activations. So one int8
copy serves two precisions: ``int8`` (int8 weights, activations at the model's own precision)
and ``int8_bf16`` (int8 weights, bfloat16 activations). ``bfloat16``
(bfloat16 weights and activations) needs its own copy of the weights, and so does ``int4_bf16``
(int4 weights in groups of 32 with a bfloat16 scale and offset each, bfloat16 activations:
PyTorch's CPU tinygemm kernel ``aten._weight_int4pack_mm_for_cpu``, the one torchao's CPU int4
path calls; it takes no float32 activations). ``phased`` holds both the bfloat16 and the int8
copy and picks by the width of each forward: bfloat16 for :data:`PHASED_ROWS` rows or more (the
prefill, wide tree verifies), ``int8_bf16`` for fewer (decodes, narrow verifies); measured
(``kerv dyq profile``, docs/benchmarks.md) the integer kernels win the narrow forwards that
read every weight for a few rows and lose the wide ones to bfloat16. The model's own weights
stay, untouched, as the full precision: at full precision a step is bit-identical to the model
without variants. torchao was not used: each of its quantisation configs is its own tensor type
(one copy per precision), and it is not in this project's pinned environment.

Every ``nn.Linear`` of the model (vision towers, projector, language model) is switched; the
action head (the 256 action rows of ``lm_head``, which pick the tokens) stays at full precision,
and so do projections that their module reads as raw weights (``nn.MultiheadAttention``'s).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from kerv_ros.config import PHASED_ROWS

FULL = "full"
"""Placeholder of the model's own precision; :attr:`PrecisionSet.full` names it (``float32``)."""
LOW_PRECISIONS = ("bfloat16", "int8", "int8_bf16", "int4_bf16", "phased")
"""Variants that can be built beside the model's own precision, in no particular order."""
INNER_MULTIPLE = 16
"""``torch._weight_int8pack_mm`` with bfloat16 input needs the inner dimension in 16s."""
INT4_GROUP = 32
"""Input columns sharing one int4 scale and offset (torchao's default group size is 128; 32
keeps the default model's 256-wide layers within 1 % of float32)."""
INT4_ROWS = 16
"""The int4 packing needs the output rows in 16s."""


class PrecisionError(ValueError):
    """A precision variant that cannot be built here (a missing kernel, an unknown name)."""


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass
class _Active:
    """The precision every switchable layer of one model reads: one switch for the model."""

    name: str
    wide_rows: int = PHASED_ROWS
    """``phased``: rows from which a forward runs at bfloat16 (:data:`PHASED_ROWS` by default)."""


class SwitchableLinear(nn.Module):
    """An ``nn.Linear`` whose forward runs at the precision its model is switched to."""

    def __init__(self, linear: nn.Linear, active: _Active, names: tuple[str, ...]) -> None:
        super().__init__()
        self.linear = linear  # the model's own weights: full precision, not copied
        self.active = active
        weight = linear.weight.detach()
        self.bf16_weight = self.bf16_bias = None
        if "bfloat16" in names or "phased" in names:
            self.bf16_weight = weight.to(torch.bfloat16)
            self.bf16_bias = None if linear.bias is None else linear.bias.detach().bfloat16()
        self.int8_weight = self.scales = self.scales_bf16 = None
        self.pad = 0
        if {"int8", "int8_bf16", "phased"} & set(names):
            w = weight.float()
            scales = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0
            int8 = torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8)
            # The bfloat16 kernel reads the inner dimension 16 at a time (and crashes on a
            # remainder): zero columns, matched by zeros on the input, change no sum.
            self.pad = -w.shape[1] % INNER_MULTIPLE
            self.int8_weight = nn.functional.pad(int8, (0, self.pad)).contiguous()
            self.scales = scales.to(weight.dtype).contiguous()
            self.scales_bf16 = scales.to(torch.bfloat16).contiguous()
        self.int4_weight = self.int4_scales = None
        self.int4_pad = 0
        if "int4_bf16" in names:
            self.int4_weight, self.int4_scales, self.int4_pad = _int4_pack(weight.float())

    @property
    def weight(self) -> torch.Tensor:
        """The full-precision weight, for code that reads a layer's weight (dtype, device)."""
        return self.linear.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        name = self.active.name
        if name == "phased":
            wide = x.numel() >= self.active.wide_rows * x.shape[-1]
            name = "bfloat16" if wide else "int8_bf16"
        if name == FULL:
            return self.linear(x)
        if name == "bfloat16":
            bias = self.bf16_bias
            return nn.functional.linear(x.to(torch.bfloat16), self.bf16_weight, bias).to(x.dtype)
        if name == "int8":
            # PyTorch's int8 kernel with float32 input is a slow reference path (measured 40x
            # a float32 matmul for 300 rows): int8 weights widened per call, scaled after.
            inner = self.int8_weight[:, : x.shape[-1]]
            out = nn.functional.linear(x, inner.to(x.dtype)) * self.scales
        elif name == "int8_bf16":
            flat = x.reshape(-1, x.shape[-1]).to(torch.bfloat16)
            if self.pad:
                flat = nn.functional.pad(flat, (0, self.pad))
            out = torch._weight_int8pack_mm(flat.contiguous(), self.int8_weight, self.scales_bf16)
            out = out.reshape(*x.shape[:-1], -1).to(x.dtype)
        else:  # int4_bf16
            flat = x.reshape(-1, x.shape[-1]).to(torch.bfloat16)
            if self.int4_pad:
                flat = nn.functional.pad(flat, (0, self.int4_pad))
            out = torch.ops.aten._weight_int4pack_mm_for_cpu(
                flat.contiguous(), self.int4_weight, INT4_GROUP, self.int4_scales
            )
            rows = self.linear.out_features
            out = out[:, :rows].reshape(*x.shape[:-1], rows).to(x.dtype)
        return out if self.linear.bias is None else out + self.linear.bias

    def extra_bytes(self) -> dict[str, int]:
        """Bytes this layer holds beyond the model's own weights, by the tensors' owner."""
        sizes = {}
        own = self.linear.weight.data_ptr()
        if self.bf16_weight is not None and self.bf16_weight.data_ptr() != own:
            # A bfloat16 model's own weights serve as the copy (``Tensor.to`` keeps them).
            bias = 0 if self.bf16_bias is None else _nbytes(self.bf16_bias)
            sizes["bfloat16"] = _nbytes(self.bf16_weight) + bias
        if self.int8_weight is not None:
            scales = _nbytes(self.scales) + _nbytes(self.scales_bf16)
            sizes["int8"] = _nbytes(self.int8_weight) + scales
        if self.int4_weight is not None:
            sizes["int4_bf16"] = _nbytes(self.int4_weight) + _nbytes(self.int4_scales)
        return sizes


def _int4_pack(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Asymmetric int4 per group of :data:`INT4_GROUP` input columns, packed for the CPU kernel.

    The kernel's convention: ``w = (q - 8) * scale + offset`` with q in 0..15 and (scale,
    offset) per group and output row, laid out (groups, rows, 2). Rows are padded to 16s and
    columns to whole groups with zeros (a zero column, met by a zero input, adds nothing).
    Returns the packed weights, the scales and offsets, and the input padding.
    """
    rows, columns = weight.shape
    pad = -columns % INT4_GROUP
    w = nn.functional.pad(weight, (0, pad, 0, -rows % INT4_ROWS))
    groups = w.reshape(w.shape[0], -1, INT4_GROUP)
    low, high = groups.amin(dim=-1), groups.amax(dim=-1)
    scale = ((high - low) / 15.0).clamp(min=1e-12)
    q = torch.round((groups - low[..., None]) / scale[..., None]).clamp(0, 15)
    offset = low + 8.0 * scale
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(
        q.reshape(w.shape).to(torch.int32).contiguous(), 1
    )
    scales = torch.stack([scale, offset], dim=-1).transpose(0, 1).contiguous().bfloat16()
    return packed, scales, pad


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


@dataclass
class PrecisionSet:
    """The precisions a model can run at, and the switch between them."""

    full: str
    """The model's own precision (``float32`` on the CPU)."""
    names: tuple[str, ...]
    """Every precision it can run at, full first."""
    _active: _Active = field(repr=False, default_factory=lambda: _Active(FULL))
    _layers: list[SwitchableLinear] = field(repr=False, default_factory=list)
    model_bytes: int = 0
    """Resident bytes of the model's own parameters."""
    calibration: object | None = None
    """The model's :class:`kerv_ros.dyq.CalibrationTable` (``dyq.json`` beside it), if any."""

    @property
    def current(self) -> str:
        return self.full if self._active.name == FULL else self._active.name

    def set(self, name: str, wide_rows: int = PHASED_ROWS) -> None:
        """Run the next forwards at ``name`` (one of :attr:`names`).

        ``phased`` runs forwards of ``wide_rows`` rows or more at bfloat16.
        """
        if name not in self.names:
            raise PrecisionError(f"precision {name!r} not built; built: {', '.join(self.names)}")
        self._active.name = FULL if name == self.full else name
        self._active.wide_rows = wide_rows

    def memory(self) -> dict[str, int]:
        """Resident bytes: the model's own, and what each variant's weights add to them.

        ``int8`` and ``int8_bf16`` share one copy, reported under ``int8``; ``phased`` reads
        the ``bfloat16`` and the ``int8`` copies.
        """
        extra: dict[str, int] = {}
        for layer in self._layers:
            for owner, size in layer.extra_bytes().items():
                extra[owner] = extra.get(owner, 0) + size
        return {self.full: self.model_bytes, **extra}


def build_precisions(
    model: nn.Module, names: tuple[str, ...], skip: tuple[str, ...] = ("lm_head",)
) -> PrecisionSet:
    """Switch every ``nn.Linear`` of ``model`` (but the modules named in ``skip``) in place.

    ``names`` are the variants wanted beside the model's own precision. A variant whose kernel
    is missing on the model's device is refused with the reason before anything is changed.
    """
    first = next(model.parameters())
    full = dtype_name(first.dtype)
    wanted = tuple(n for n in dict.fromkeys(names) if n != full)
    unknown = [n for n in wanted if n not in LOW_PRECISIONS]
    if unknown:
        choices = ", ".join((full, *LOW_PRECISIONS))
        raise PrecisionError(f"unknown precision {', '.join(unknown)}; choose from {choices}")
    for name in wanted:
        _probe_kernel(name, first.device, first.dtype)
    active = _Active(FULL)
    precisions = PrecisionSet(full=full, names=(full, *wanted), _active=active)
    precisions.model_bytes = sum(_nbytes(p) for p in model.parameters())
    if not wanted:
        return precisions
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            # Exactly nn.Linear: attention modules that read their projections' weights
            # directly (nn.MultiheadAttention's out_proj subclass) keep them.
            if type(child) is nn.Linear and child_name not in skip:
                layer = SwitchableLinear(child, active, wanted)
                setattr(parent, child_name, layer)
                precisions._layers.append(layer)
    return precisions


def _probe_kernel(name: str, device: torch.device, dtype: torch.dtype) -> None:
    """Run the variant's kernel once on a tiny input: a missing one fails here, with why."""
    x = torch.randn(2, 64, device=device, dtype=dtype)
    try:
        if name == "bfloat16":
            nn.functional.linear(x.bfloat16(), torch.randn(32, 64, device=device).bfloat16())
            return
        if name == "phased":
            for part in ("bfloat16", "int8_bf16"):
                _probe_kernel(part, device, dtype)
            return
        if name == "int4_bf16":
            packed, scales, _ = _int4_pack(torch.randn(32, 64, device=device))
            torch.ops.aten._weight_int4pack_mm_for_cpu(x.bfloat16(), packed, INT4_GROUP, scales)
            return
        activation = torch.bfloat16 if name == "int8_bf16" else dtype
        w = torch.randint(-127, 128, (32, 64), dtype=torch.int8, device=device)
        torch._weight_int8pack_mm(x.to(activation), w, torch.rand(32, device=device).to(activation))
    except (RuntimeError, NotImplementedError, AttributeError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PrecisionError(f"precision {name} cannot run on {device}: {first_line}") from err
