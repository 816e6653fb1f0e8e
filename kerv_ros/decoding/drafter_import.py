"""Read drafters trained elsewhere: Spec-VLA's (EAGLE-1/2 layout) checkpoints for OpenVLA.

The layout, established from Spec-VLA's published code (github.com/PineTreeWss/SpecVLA,
``openvla/specdecoding/model/cnets.py`` ``MMModel``, loaded in
``prismatic/extern/hf/modeling_speculation.py``) and EAGLE's ``cnets1.py`` it derives from:

- a directory with ``config.json`` (a Llama config: hidden_size, intermediate_size,
  num_attention_heads, num_key_value_heads, max_position_embeddings, rope_theta if any) and
  ``pytorch_model.bin`` (DeepSpeed's 16-bit save) or ``model.safetensors``;
- tensors ``fc.weight`` [H, 2H] and ``fc.bias`` [H] over ``cat(token embedding, feature)``;
  one Llama layer ``layers.0.{self_attn.{q,k,v,o}_proj, mlp.{gate,up,down}_proj,
  post_attention_layernorm}.weight`` with **no** ``input_layernorm`` and no final norm; an
  ``embed_tokens.weight`` copy of the target's embedding table (ignored: kerv_ros drafts with the
  target's own table, as Spec-VLA does after loading); no lm_head (the target's is used).

That is kerv_ros's :class:`EagleDrafter` with ``norms=False``. The feature it reads (the target's
last hidden state after the final norm) and the pairing of feature i with token i + 1 are the
same. A ``.bin`` is read with ``torch.load(weights_only=True)``: tensors only, no pickled code.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from kerv_ros.config import DraftConfig
from kerv_ros.decoding.drafter import EagleConfig, EagleDrafter

LAYER = "layers.0."
LAYER_TENSORS = (
    "self_attn.q_proj.weight",
    "self_attn.k_proj.weight",
    "self_attn.v_proj.weight",
    "self_attn.o_proj.weight",
    "mlp.gate_proj.weight",
    "mlp.up_proj.weight",
    "mlp.down_proj.weight",
    "post_attention_layernorm.weight",
)
IGNORED = ("embed_tokens.weight",)


def read_tensors(directory: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors; a pickle is opened with ``weights_only=True`` only."""
    safetensors = directory / "model.safetensors"
    if safetensors.is_file():
        return load_file(str(safetensors))
    binary = directory / "pytorch_model.bin"
    if not binary.is_file():
        raise FileNotFoundError(f"{directory}: no model.safetensors or pytorch_model.bin")
    try:
        state = torch.load(binary, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError...
        raise ValueError(f"{binary}: not a tensors-only checkpoint ({err})") from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{binary}: expected a flat dict of tensors")
    return state


def import_specvla(
    directory: str | Path, target_hidden: int, draft: DraftConfig | None = None
) -> EagleDrafter:
    """A Spec-VLA / EAGLE-1/2 drafter directory as a kerv_ros drafter.

    ``target_hidden`` is the target's width; errors name the file or tensor that does not fit.
    """
    directory = Path(directory)
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{directory}: no config.json (Spec-VLA drafters ship one)")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    layers = int(config.get("num_hidden_layers", 1))
    if layers != 1:
        raise ValueError(f"{config_path}: {layers} layers; EAGLE-1/2 drafters have one")
    hidden = int(config["hidden_size"])
    if hidden != target_hidden:
        raise ValueError(
            f"{config_path}: hidden_size {hidden}, the target model's is {target_hidden}"
        )
    heads = int(config["num_attention_heads"])
    if int(config.get("num_key_value_heads", heads)) != heads:
        raise ValueError(f"{config_path}: grouped KV heads are not supported by kerv's drafter")
    eagle = EagleConfig(
        hidden_size=hidden,
        num_heads=heads,
        intermediate_size=int(config["intermediate_size"]),
        max_positions=int(config.get("max_position_embeddings", 4096)),
        rope_theta=float(config.get("rope_theta") or 10000.0),
        norms=False,
    )
    tensors = read_tensors(directory)
    expected = {"fc.weight", "fc.bias", *(LAYER + name for name in LAYER_TENSORS)}
    missing = sorted(expected - set(tensors))
    if missing:
        raise ValueError(f"{directory}: tensors missing: {missing}")
    unexpected = sorted(set(tensors) - expected - set(IGNORED))
    if unexpected:
        raise ValueError(f"{directory}: tensors this layout has no place for: {unexpected[:5]}")
    drafter = EagleDrafter(eagle, draft or DraftConfig())
    state = {"fc.weight": tensors["fc.weight"], "fc.bias": tensors["fc.bias"]}
    state |= {f"decoder.{LAYER}{name}": tensors[LAYER + name] for name in LAYER_TENSORS}
    own = drafter.state_dict()
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(own[key].shape):
            raise ValueError(
                f"{directory}: {key.removeprefix('decoder.')} has shape {tuple(tensor.shape)}, "
                f"{tuple(own[key].shape)} expected for hidden {hidden}"
            )
    state = {k: v.float() for k, v in state.items()}
    # The drafter's own one-row embedding table is never read (the target's is); keep it.
    state["decoder.embed_tokens.weight"] = own["decoder.embed_tokens.weight"]
    drafter.load_state_dict(state, strict=True)
    return drafter.eval()
