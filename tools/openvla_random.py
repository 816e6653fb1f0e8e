"""Write an OpenVLA-layout checkpoint with a larger, randomly initialised Llama, for benchmarks.

The default model is a few million parameters, so its steps are bound by per-op overhead; the
questions of precision and of a lean verifier are about models where the matmuls dominate. This
takes a checkpoint in the published layout (the golden fixture by default), keeps its towers,
tokenizer and statistics, and replaces the language model (and the projector's output side,
whose width is the LM's) with seeded random tensors of the sizes asked for. The native loader
reads it like any fine-tune: sizes from the tensors, head counts from ``text_config``.

    .venv/bin/python tools/openvla_random.py /tmp/openvla_134m --hidden 768 --layers 12

Defaults give a 134 M-parameter Llama (12 x 768, 12 heads, 2048 MLP): an OpenVLA-shaped model
whose forwards cost tens of milliseconds on a CPU.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

FIXTURE = Path(__file__).resolve().parents[2] / "shared/fixtures/openvla_tiny_golden/checkpoint"
WEIGHTS = "model.safetensors"


def lm_tensors(vocab: int, hidden: int, inter: int, layers: int, gen: torch.Generator) -> dict:
    """Llama-2's tensors under OpenVLA's names: normal(0, 0.02) matrices, unit norms."""

    def matrix(rows: int, cols: int) -> torch.Tensor:
        return torch.randn(rows, cols, generator=gen) * 0.02

    out = {
        "language_model.model.embed_tokens.weight": matrix(vocab, hidden),
        "language_model.lm_head.weight": matrix(vocab, hidden),
        "language_model.model.norm.weight": torch.ones(hidden),
    }
    for i in range(layers):
        p = f"language_model.model.layers.{i}."
        out |= {
            p + "input_layernorm.weight": torch.ones(hidden),
            p + "post_attention_layernorm.weight": torch.ones(hidden),
            p + "self_attn.q_proj.weight": matrix(hidden, hidden),
            p + "self_attn.k_proj.weight": matrix(hidden, hidden),
            p + "self_attn.v_proj.weight": matrix(hidden, hidden),
            p + "self_attn.o_proj.weight": matrix(hidden, hidden),
            p + "mlp.gate_proj.weight": matrix(inter, hidden),
            p + "mlp.up_proj.weight": matrix(inter, hidden),
            p + "mlp.down_proj.weight": matrix(hidden, inter),
        }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="directory to write the checkpoint into")
    parser.add_argument("--template", type=Path, default=FIXTURE, help="a checkpoint to start from")
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--intermediate", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.hidden % args.heads:
        parser.error("--hidden must be a multiple of --heads")

    gen = torch.Generator().manual_seed(args.seed)
    kept = {}
    with safe_open(str(args.template / WEIGHTS), framework="pt") as f:
        for name in f.keys():  # noqa: SIM118 (a safe_open handle is not iterable)
            if not name.startswith("language_model."):
                kept[name] = f.get_tensor(name)
    vocab = json.loads((args.template / "config.json").read_text())["text_config"]["vocab_size"]
    resized = ("projector.fc2", "projector.fc3")
    tensors = {k: v for k, v in kept.items() if not k.startswith(resized)}
    wide = kept["projector.fc2.weight"].shape[1]
    tensors |= {
        "projector.fc2.weight": torch.randn(args.hidden, wide, generator=gen) * wide**-0.5,
        "projector.fc2.bias": torch.zeros(args.hidden),
        "projector.fc3.weight": torch.randn(args.hidden, args.hidden, generator=gen)
        * args.hidden**-0.5,
        "projector.fc3.bias": torch.zeros(args.hidden),
    }
    tensors |= lm_tensors(vocab, args.hidden, args.intermediate, args.layers, gen)

    args.out.mkdir(parents=True, exist_ok=True)
    for path in args.template.iterdir():
        if path.name != WEIGHTS and path.is_file():
            shutil.copyfile(path, args.out / path.name)
    config = json.loads((args.out / "config.json").read_text())
    config["text_config"] |= {
        "hidden_size": args.hidden,
        "intermediate_size": args.intermediate,
        "num_hidden_layers": args.layers,
        "num_attention_heads": args.heads,
        "num_key_value_heads": args.heads,
    }
    (args.out / "config.json").write_text(json.dumps(config, indent=2))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(args.out / WEIGHTS))
    lm = sum(v.numel() for k, v in tensors.items() if k.startswith("language_model."))
    print(f"wrote {args.out}: language model {lm / 1e6:.0f} M parameters")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
