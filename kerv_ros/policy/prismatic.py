"""OpenVLA's network on transformers' own modules, and a published checkpoint's tensors on it.

Prismatic is two ViT towers, a fused GELU MLP projector and Llama-2.

Why not OpenVLA's own classes: they are Python files inside the checkpoint (remote code written
for transformers 4.40 that breaks under 5.x in five places), and they build their towers with
timm, whose wheels pull a CUDA torch and a torchvision that does not import beside the CPU torch.
The computation is small and fully specified, so it is rebuilt here from maintained modules:

- DINOv2 tower (``vision_backbone.featurizer``, timm ``vit_large_patch14_reg4_dinov2``):
  transformers' ``Dinov2WithRegisters`` embeddings and layers (class token, 4 registers,
  LayerScale). timm adds the position embedding to the patches only; transformers adds it to the
  class token too, so the class token's position row is zero.
- SigLIP tower (``vision_backbone.fused_featurizer``, timm ``vit_so400m_patch14_siglip_224``):
  transformers' ``Siglip`` embeddings and encoder layers, with exact (erf) GELU as timm uses.
- Features: each tower's output after its second-to-last block, before the final norm, prefix
  tokens dropped (OpenVLA's ``get_intermediate_layers(n={depth - 2})``). The last block, the final
  norms and SigLIP's attention-pool head never reach the output: their tensors are recognised
  and not built, so no compute is spent on them.
- Projector ``fused-gelu-mlp``: fc1 -> GELU -> fc2 -> GELU -> fc3 on ``cat(dino, siglip)``.
- Llama: transformers' ``LlamaModel`` plus a bias-free lm_head.

Every tensor of the checkpoint is accounted for by name: mapped onto a module, or known unused.
Architecture sizes start from the published backbone ids and are then taken from the weights'
shapes (fine-tunes and test checkpoints with reduced towers load the same way); head counts are
not visible in any shape and come from the published architecture (towers) or the config (Llama).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn
from transformers import Dinov2WithRegistersConfig, LlamaConfig, LlamaModel, SiglipVisionConfig
from transformers.models.dinov2_with_registers.modeling_dinov2_with_registers import (
    Dinov2WithRegistersEmbeddings,
    Dinov2WithRegistersLayer,
)
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
from transformers.models.siglip.modeling_siglip import SiglipEncoderLayer, SiglipVisionEmbeddings

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
LM_PREFIX = "language_model.model."
LM_HEAD = "language_model.lm_head.weight"


class CheckpointError(ValueError):
    """A checkpoint that does not match the architecture: the message names the tensor."""


@dataclass(frozen=True)
class TowerSpec:
    """One vision tower as published: which timm family, its prefix, and its sizes."""

    family: str  # "dinov2" or "siglip"
    prefix: str
    depth: int
    width: int
    heads: int
    prefix_tokens: int  # class + register tokens ahead of the patches in the tower's output


PUBLISHED_BACKBONES: dict[str, tuple[TowerSpec, ...]] = {
    # openvla/openvla-7b and its fine-tunes: DINOv2 ViT-L/14 (4 registers) + SigLIP So400M/14.
    "dinosiglip-vit-so-224px": (
        TowerSpec("dinov2", "vision_backbone.featurizer.", 24, 1024, 16, prefix_tokens=5),
        TowerSpec("siglip", "vision_backbone.fused_featurizer.", 27, 1152, 16, prefix_tokens=0),
    ),
}
PUBLISHED_PROJECTORS = ("no-align+fused-gelu-mlp", "fused-gelu-mlp")


class CheckpointWeights:
    """The tensors of a safetensors checkpoint (one file or an index of shards), read lazily.

    Tensors are read one at a time straight into the requested dtype and device, so loading a
    bf16 7B checkpoint never holds a float32 copy, and no pickle is ever read.
    """

    def __init__(self, directory: Path, device: torch.device) -> None:
        index = directory / WEIGHTS_INDEX
        if index.is_file():
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        else:
            weight_map = None
        files = sorted(set(weight_map.values())) if weight_map else [WEIGHTS_FILE]
        target = "cpu" if device.type == "cpu" else str(device)
        self._handles = {}
        self._where: dict[str, str] = {}
        for name in files:
            try:
                handle = safe_open(str(directory / name), framework="pt", device=target)
            except Exception as err:  # safetensors raises its own error types
                raise CheckpointError(
                    f"{directory / name}: not a readable safetensors file ({err})"
                ) from err
            self._handles[name] = handle
            self._where.update(dict.fromkeys(handle.keys(), name))
        self.directory = directory

    def names(self) -> set[str]:
        return set(self._where)

    def shape(self, name: str) -> tuple[int, ...]:
        if name not in self._where:
            raise CheckpointError(f"{self.directory}: tensor {name!r} missing")
        return tuple(self._handles[self._where[name]].get_slice(name).get_shape())

    def get(self, name: str, dtype: torch.dtype) -> torch.Tensor:
        self.shape(name)  # names the tensor when it is missing
        return self._handles[self._where[name]].get_tensor(name).to(dtype)


def _block_count(names: set[str], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(?:blocks|layers)\.(\d+)\.")
    indices = {int(m.group(1)) for m in map(pattern.match, names) if m}
    if not indices:
        raise CheckpointError(f"no blocks under {prefix!r}")
    if indices != set(range(len(indices))):
        raise CheckpointError(f"blocks under {prefix!r} are not numbered 0..n-1: {sorted(indices)}")
    return len(indices)


@dataclass(frozen=True)
class TowerSizes:
    spec: TowerSpec
    depth: int
    width: int
    mlp_hidden: int
    image_size: int
    patch_size: int
    registers: int

    @property
    def patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


def tower_sizes(weights: CheckpointWeights, spec: TowerSpec, image_size: int) -> TowerSizes:
    """The tower's sizes from its weights' shapes; the published sizes are the starting guess."""
    names = weights.names()
    p = spec.prefix
    width, _, patch, _ = weights.shape(p + "patch_embed.proj.weight")
    depth = _block_count(names, p)
    mlp_hidden = weights.shape(p + "blocks.0.mlp.fc1.weight")[0]
    registers = weights.shape(p + "reg_token")[1] if p + "reg_token" in names else 0
    if (depth, width) != (spec.depth, spec.width):
        log.info(
            "%s: depth %d, width %d from the weights (published %d, %d)",
            p.rstrip("."),
            depth,
            width,
            spec.depth,
            spec.width,
        )
    if width % spec.heads:
        raise CheckpointError(f"{p}: width {width} is not divisible by {spec.heads} heads")
    if depth < 2:
        raise CheckpointError(f"{p}: {depth} block(s); OpenVLA reads the second-to-last block")
    return TowerSizes(spec, depth, width, mlp_hidden, image_size, patch, registers)


class VisionTower(nn.Module):
    """Embeddings and the blocks up to the second-to-last, in transformers' modules."""

    def __init__(self, sizes: TowerSizes) -> None:
        super().__init__()
        self.sizes = sizes
        common = dict(
            hidden_size=sizes.width,
            num_attention_heads=sizes.spec.heads,
            intermediate_size=sizes.mlp_hidden,
            image_size=sizes.image_size,
            patch_size=sizes.patch_size,
            layer_norm_eps=1e-6,
            hidden_act="gelu",  # exact erf GELU, as timm's default; not SigLIP's tanh default
            num_hidden_layers=sizes.depth - 1,
        )
        if sizes.spec.family == "dinov2":
            config = Dinov2WithRegistersConfig(
                **common, num_register_tokens=sizes.registers, mlp_ratio=4, qkv_bias=True
            )
            config._attn_implementation = "sdpa"
            self.embeddings = Dinov2WithRegistersEmbeddings(config)
            layer = Dinov2WithRegistersLayer
        else:
            config = SiglipVisionConfig(**common)
            config._attn_implementation = "sdpa"
            self.embeddings = SiglipVisionEmbeddings(config)
            layer = SiglipEncoderLayer
        self.layers = nn.ModuleList(layer(config) for _ in range(sizes.depth - 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.embeddings(pixels)
        for layer in self.layers:
            x = layer(x, attention_mask=None)
        return x[:, self.sizes.spec.prefix_tokens :]


class FusedGeluProjector(nn.Module):
    """OpenVLA's ``fused-gelu-mlp``: vision width -> 4x -> LLM width -> LLM width."""

    def __init__(self, vision_dim: int, hidden: int, llm_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(vision_dim, hidden)
        self.fc2 = nn.Linear(hidden, llm_dim)
        self.fc3 = nn.Linear(llm_dim, llm_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        gelu = nn.functional.gelu
        return self.fc3(gelu(self.fc2(gelu(self.fc1(features)))))


class _Mapper:
    """Collects a module's state dict from checkpoint tensors and remembers what it consumed."""

    def __init__(self, weights: CheckpointWeights, dtype: torch.dtype) -> None:
        self.weights = weights
        self.dtype = dtype
        self.used: set[str] = set()

    def take(self, name: str) -> torch.Tensor:
        self.used.add(name)
        return self.weights.get(name, self.dtype)

    def load(self, module: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
        expected = module.state_dict()
        missing = sorted(set(expected) - set(state))
        if missing:
            raise CheckpointError(f"{what}: no checkpoint tensor for {missing[:5]}")
        for key, tensor in state.items():
            if key not in expected:
                raise CheckpointError(f"{what}: {key} has no place in the model")
            if tuple(tensor.shape) != tuple(expected[key].shape):
                raise CheckpointError(
                    f"{what}.{key}: shape {tuple(tensor.shape)} in the checkpoint, "
                    f"{tuple(expected[key].shape)} expected"
                )
        module.load_state_dict(state, strict=True, assign=True)


BLOCK_NAMES = {
    # transformers' names for the parts of timm's ``blocks.i`` (norm1, attn.qkv/proj, norm2).
    "dinov2": dict(norm1="norm1", norm2="norm2", attn="attention", o="o_proj"),
    "siglip": dict(norm1="layer_norm1", norm2="layer_norm2", attn="self_attn", o="out_proj"),
}


def _tower_state(m: _Mapper, sizes: TowerSizes) -> dict[str, torch.Tensor]:
    p = sizes.spec.prefix
    state: dict[str, torch.Tensor] = {}
    pos = m.take(p + "pos_embed")
    if pos.shape[1] != sizes.patches:
        raise CheckpointError(
            f"{p}pos_embed: {pos.shape[1]} positions, {sizes.patches} patches expected"
        )
    conv = "patch_embeddings.projection" if sizes.spec.family == "dinov2" else "patch_embedding"
    state[f"embeddings.{conv}.weight"] = m.take(p + "patch_embed.proj.weight")
    state[f"embeddings.{conv}.bias"] = m.take(p + "patch_embed.proj.bias")
    if sizes.spec.family == "dinov2":
        cls = m.take(p + "cls_token")
        state["embeddings.cls_token"] = cls
        state["embeddings.register_tokens"] = m.take(p + "reg_token")
        state["embeddings.mask_token"] = torch.zeros_like(cls[0])  # masking is never used
        # timm puts no position on the class token; a zero row does the same here.
        state["embeddings.position_embeddings"] = torch.cat([torch.zeros_like(cls), pos], dim=1)
    else:
        state["embeddings.position_embedding.weight"] = pos[0]
    names = BLOCK_NAMES[sizes.spec.family]
    for i in range(sizes.depth - 1):
        src, dst = f"{p}blocks.{i}.", f"layers.{i}."
        for part in ("weight", "bias"):
            state[f"{dst}{names['norm1']}.{part}"] = m.take(f"{src}norm1.{part}")
            state[f"{dst}{names['norm2']}.{part}"] = m.take(f"{src}norm2.{part}")
            q, k, v = m.take(f"{src}attn.qkv.{part}").chunk(3, dim=0)
            for key, tensor in (("q_proj", q), ("k_proj", k), ("v_proj", v)):
                state[f"{dst}{names['attn']}.{key}.{part}"] = tensor.contiguous()
            state[f"{dst}{names['attn']}.{names['o']}.{part}"] = m.take(f"{src}attn.proj.{part}")
            state[f"{dst}mlp.fc1.{part}"] = m.take(f"{src}mlp.fc1.{part}")
            state[f"{dst}mlp.fc2.{part}"] = m.take(f"{src}mlp.fc2.{part}")
        if sizes.spec.family == "dinov2":
            state[f"{dst}layer_scale1.lambda1"] = m.take(f"{src}ls1.scale_factor")
            state[f"{dst}layer_scale2.lambda1"] = m.take(f"{src}ls2.scale_factor")
    return state


def _unused(name: str, towers: list[TowerSizes]) -> bool:
    """Tensors OpenVLA loads whose values never reach its output."""
    for sizes in towers:
        p = sizes.spec.prefix
        if name.startswith((f"{p}blocks.{sizes.depth - 1}.", f"{p}norm.", f"{p}attn_pool.")):
            return True
    return False


def llama_config(text_config: dict, weights: CheckpointWeights) -> LlamaConfig:
    """The checkpoint's ``text_config``, sizes visible in the weights taken from them.

    What text_config omits takes LlamaConfig's defaults, as in OpenVLA (RMSNorm eps 1e-6).
    """
    known = {k: v for k, v in text_config.items() if k not in ("architectures", "torch_dtype")}
    config = LlamaConfig(**known)
    vocab, hidden = weights.shape(LM_PREFIX + "embed_tokens.weight")
    layers = _block_count(weights.names(), LM_PREFIX)
    intermediate = weights.shape(LM_PREFIX + "layers.0.mlp.gate_proj.weight")[0]
    heads = config.num_attention_heads
    if hidden % heads:
        raise CheckpointError(f"hidden size {hidden} is not divisible by {heads} attention heads")
    kv_rows = weights.shape(LM_PREFIX + "layers.0.self_attn.k_proj.weight")[0]
    shapes = dict(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        intermediate_size=intermediate,
        num_key_value_heads=kv_rows // (hidden // heads),
    )
    differ = {k: (getattr(config, k), v) for k, v in shapes.items() if getattr(config, k) != v}
    if differ:
        log.info("Llama sizes from the weights (config said otherwise): %s", differ)
    for key, value in shapes.items():
        setattr(config, key, value)
    config.head_dim = hidden // heads
    config._attn_implementation = "sdpa"
    return config


class PrismaticModel(nn.Module):
    """The whole OpenVLA network: towers, projector, Llama decoder and lm_head."""

    def __init__(
        self, towers: list[TowerSizes], projector_hidden: int, text_config: LlamaConfig
    ) -> None:
        super().__init__()
        self.towers = nn.ModuleList(VisionTower(s) for s in towers)
        vision_dim = sum(s.width for s in towers)
        self.projector = FusedGeluProjector(vision_dim, projector_hidden, text_config.hidden_size)
        self.language_model = LlamaModel(text_config)
        self.lm_head = nn.Linear(text_config.hidden_size, text_config.vocab_size, bias=False)
        self.text_config = text_config

    def image_patches(self, pixels: list[torch.Tensor]) -> torch.Tensor:
        """Per-tower normalised images -> projected patch embeddings (B x patches x LLM width)."""
        features = [tower(p) for tower, p in zip(self.towers, pixels, strict=True)]
        return self.projector(torch.cat(features, dim=-1))


def build_model(
    directory: Path,
    config: dict,
    image_size: int,
    dtype: torch.dtype,
    device: torch.device,
) -> PrismaticModel:
    """Build the network on no memory, then fill it tensor by tensor from the checkpoint."""
    backbone = config.get("vision_backbone_id")
    if backbone not in PUBLISHED_BACKBONES:
        raise CheckpointError(
            f"vision_backbone_id {backbone!r}: the native loader knows "
            f"{sorted(PUBLISHED_BACKBONES)}"
        )
    arch = config.get("arch_specifier")
    if arch not in PUBLISHED_PROJECTORS:
        raise CheckpointError(
            f"arch_specifier {arch!r}: the native loader knows {list(PUBLISHED_PROJECTORS)}"
        )
    weights = CheckpointWeights(directory, device)
    towers = [tower_sizes(weights, spec, image_size) for spec in PUBLISHED_BACKBONES[backbone]]
    text_config = llama_config(config.get("text_config", {}), weights)
    projector_hidden = weights.shape("projector.fc1.weight")[0]
    with torch.device("meta"):
        model = PrismaticModel(towers, projector_hidden, text_config)
    m = _Mapper(weights, dtype)
    for i, sizes in enumerate(towers):
        m.load(model.towers[i], _tower_state(m, sizes), sizes.spec.prefix.rstrip("."))
    projector = {
        f"{fc}.{part}": m.take(f"projector.{fc}.{part}")
        for fc in ("fc1", "fc2", "fc3")
        for part in ("weight", "bias")
    }
    m.load(model.projector, projector, "projector")
    lm_names = sorted(n for n in weights.names() if n.startswith(LM_PREFIX))
    m.load(
        model.language_model,
        {n[len(LM_PREFIX) :]: m.take(n) for n in lm_names},
        "language_model.model",
    )
    m.load(model.lm_head, {"weight": m.take(LM_HEAD)}, "language_model.lm_head")
    unexpected = sorted(n for n in weights.names() - m.used if not _unused(n, towers))
    if unexpected:
        raise CheckpointError(
            f"{directory}: {len(unexpected)} tensor(s) this architecture has no place for, "
            f"e.g. {unexpected[:3]}"
        )
    # Buffers computed at construction, not stored: rebuild them on the real device. RoPE's
    # inverse frequencies stay float32 whatever the model dtype, as transformers keeps them.
    with torch.device(device):
        model.language_model.rotary_emb = LlamaRotaryEmbedding(text_config)
    for tower in model.towers:
        if hasattr(tower.embeddings, "position_ids"):
            n = tower.sizes.patches
            tower.embeddings.register_buffer(
                "position_ids", torch.arange(n, device=device)[None], persistent=False
            )
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise CheckpointError(f"internal: tensors left unset after loading: {left[:5]}")
    return model.eval()
