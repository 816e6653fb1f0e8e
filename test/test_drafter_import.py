"""``kerv drafter import``: a Spec-VLA (EAGLE-1/2 layout) drafter read as kerv's own.

The file is made here with random weights in the layout Spec-VLA's code saves (see
``kerv_ros/decoding/drafter_import.py``): ``config.json`` + ``pytorch_model.bin`` with
``fc.{weight,bias}``, one Llama layer without ``input_layernorm``, and the embedding copy.
"""

import json
from pathlib import Path

import pytest
import torch
from kerv_cli import run_kerv

from kerv_ros.config import EngineConfig
from kerv_ros.decoding.drafter import EagleDrafter
from kerv_ros.decoding.drafter_import import import_specvla
from kerv_ros.decoding.engine import DecodeEngine
from kerv_ros.loading import load_policy
from kerv_ros.policy.backend import Observation

CHECKPOINT = Path(__file__).parent / "data" / "openvla_tiny" / "checkpoint"
H, MLP, HEADS = 64, 172, 4  # the fixture checkpoint's Llama


def write_specvla(directory: Path, seed: int = 0, **config_changes) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=0.1):
        return torch.randn(*shape, generator=generator) * scale

    tensors = {
        "embed_tokens.weight": rand(32064, H),
        "fc.weight": rand(H, 2 * H),
        "fc.bias": rand(H),
        "layers.0.self_attn.q_proj.weight": rand(H, H),
        "layers.0.self_attn.k_proj.weight": rand(H, H),
        "layers.0.self_attn.v_proj.weight": rand(H, H),
        "layers.0.self_attn.o_proj.weight": rand(H, H),
        "layers.0.mlp.gate_proj.weight": rand(MLP, H),
        "layers.0.mlp.up_proj.weight": rand(MLP, H),
        "layers.0.mlp.down_proj.weight": rand(H, MLP),
        "layers.0.post_attention_layernorm.weight": 1 + rand(H),
    }
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": H,
        "intermediate_size": MLP,
        "num_attention_heads": HEADS,
        "num_key_value_heads": HEADS,
        "num_hidden_layers": 1,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-6,
        "vocab_size": 32000,
        "torch_dtype": "float16",
        "use_visual": True,
        **config_changes,
    }
    (directory / "config.json").write_text(json.dumps(config))
    torch.save({k: v.half() for k, v in tensors.items()}, directory / "pytorch_model.bin")
    return tensors


def reference_one_position(t: dict[str, torch.Tensor], embed, feature) -> torch.Tensor:
    """EAGLE-1/2's layer at a single position, written out: attention over one key is its
    value, so RoPE drops out; no norm before attention, RMSNorm before the MLP, none after."""
    f = {k: v.half().float() for k, v in t.items()}
    x = torch.cat([embed, feature]) @ f["fc.weight"].T + f["fc.bias"]
    x = x + f["layers.0.self_attn.o_proj.weight"] @ (f["layers.0.self_attn.v_proj.weight"] @ x)
    n = x * torch.rsqrt(x.pow(2).mean() + 1e-6) * f["layers.0.post_attention_layernorm.weight"]
    gate = torch.nn.functional.silu(f["layers.0.mlp.gate_proj.weight"] @ n)
    return x + f["layers.0.mlp.down_proj.weight"] @ (gate * (f["layers.0.mlp.up_proj.weight"] @ n))


def test_imported_drafter_computes_the_eagle_layer(tmp_path):
    tensors = write_specvla(tmp_path / "specvla")
    drafter = import_specvla(tmp_path / "specvla", target_hidden=H)
    assert not drafter.config.norms
    embed, feature = torch.randn(H), torch.randn(H)
    mask = torch.ones(1, 1, 1, 1, dtype=torch.bool)
    ours = drafter(
        feature[None, None], embed[None, None], mask, torch.zeros(1, 1, dtype=torch.long), None
    )
    torch.testing.assert_close(
        ours[0, 0], reference_one_position(tensors, embed, feature), atol=1e-4, rtol=1e-4
    )


def test_cli_import_then_every_drafter_mode_is_lossless(tmp_path):
    write_specvla(tmp_path / "specvla")
    out = tmp_path / "drafter.safetensors"
    result = run_kerv(
        "drafter", "import", str(tmp_path / "specvla"), "--model", str(CHECKPOINT), "-o", str(out)
    )
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stdout
    backend, _ = load_policy(str(CHECKPOINT), unnorm_key="bridge_orig")
    drafter = EagleDrafter.load(out)
    image = torch.randint(0, 256, (224, 224, 3), generator=torch.Generator().manual_seed(1))
    observation = Observation(image.to(torch.uint8).numpy(), "put spoon on towel")
    ar = DecodeEngine(backend, None, EngineConfig(mode="ar")).step(observation).tokens
    spec = DecodeEngine(backend, drafter, EngineConfig(mode="spec")).step(observation)
    assert spec.tokens == ar and spec.draft_forwards > 0


@pytest.mark.parametrize(
    "change, message",
    [
        ({"hidden_size": 128}, "hidden_size 128, the target model's is 64"),
        ({"num_hidden_layers": 2}, "2 layers"),
    ],
)
def test_a_drafter_for_another_target_is_refused(tmp_path, change, message):
    write_specvla(tmp_path / "specvla", **change)
    with pytest.raises(ValueError, match=message):
        import_specvla(tmp_path / "specvla", target_hidden=H)


def test_missing_tensor_and_pickled_code_are_refused(tmp_path):
    tensors = write_specvla(tmp_path / "a")
    del tensors["fc.bias"]
    torch.save(tensors, tmp_path / "a" / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"fc\.bias"):
        import_specvla(tmp_path / "a", target_hidden=H)
    write_specvla(tmp_path / "b")
    torch.save({"fc.weight": torch.zeros(1), "hook": print}, tmp_path / "b" / "pytorch_model.bin")
    with pytest.raises(ValueError, match="not a tensors-only checkpoint"):
        import_specvla(tmp_path / "b", target_hidden=H)
