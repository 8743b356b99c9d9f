"""Analysis of a Llama-3-8B-shaped model on the meta device: seconds and peak memory.

    .venv/bin/python bench/llm_scale.py [--layers 32] [--seq 8]

The model is built under ``torch.device("meta")`` from a config (32 layers, hidden 4096, 32 query /
8 key-value heads, MLP 14336, vocab 128256): no weight is allocated, nothing is downloaded. The
analysis only needs shapes, so it runs on the meta tensors as they are. Params are checked against
``sum(p.numel())`` and the closed form, MACs against the closed form of one forward at batch 2 and
``--seq`` tokens (every linear, plus sdpa's two attention matmuls, which FlopCounterMode counts on
meta through the math path). Peak RSS is ``resource.getrusage``'s maximum resident set of this
process, the Python, torch and transformers imports included (measured before the model too).
Writes bench/results/llm_scale.md and bench/results/llm_scale.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path

import torch
import transformers

import graphprune

RESULTS = Path(__file__).parent / "results"
CONFIG = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
              num_key_value_heads=8, max_position_embeddings=8192)


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def closed_form(layers: int, batch: int, seq: int) -> tuple[int, int]:
    """Params and MACs of LlamaForCausalLM (untied head, no biases) for one forward."""
    h, i, v = CONFIG["hidden_size"], CONFIG["intermediate_size"], CONFIG["vocab_size"]
    kv = h // CONFIG["num_attention_heads"] * CONFIG["num_key_value_heads"]
    params = 2 * v * h + layers * (2 * h * h + 2 * h * kv + 3 * h * i + 2 * h) + h
    tokens = batch * seq
    macs = layers * (tokens * (2 * h * h + 2 * h * kv + 3 * h * i) + 2 * tokens * seq * h) + tokens * h * v
    return params, macs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--seq", type=int, default=8)
    args = parser.parse_args()
    rss_imports = peak_rss_gib()
    config = transformers.LlamaConfig(num_hidden_layers=args.layers, **CONFIG)
    start = time.perf_counter()
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(config).eval()
    build_s = time.perf_counter() - start
    ids = torch.randint(0, config.vocab_size, (2, args.seq))
    start = time.perf_counter()
    gg = graphprune.analyze(model, ids)
    analyze_s = time.perf_counter() - start
    params, macs = closed_form(args.layers, 2, args.seq)
    result = {
        "config": {**CONFIG, "num_hidden_layers": args.layers, "batch": 2, "seq": args.seq},
        "build_s": round(build_s, 2), "analyze_s": round(analyze_s, 2),
        "peak_rss_gib": round(peak_rss_gib(), 2), "rss_after_imports_gib": round(rss_imports, 2),
        "params": gg.cost.params(), "params_numel": sum(p.numel() for p in model.parameters()),
        "params_closed_form": params, "macs": gg.cost.macs(), "macs_closed_form": macs,
        "groups": len(gg.groups), "prunable_groups": len(gg.prunable_groups),
        "inexact_prunable_groups": sum(1 for g in gg.prunable_groups if g.inexact),
        "prunable_mac_share": round(gg.prunable_mac_share(), 4),
        "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
    }
    assert result["params"] == result["params_numel"] == params and result["macs"] == macs, result
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "llm_scale.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "llm_scale.md").write_text(
        f"# Llama-3-8B-shaped analysis on the meta device\n\n"
        f"`.venv/bin/python bench/llm_scale.py --layers {args.layers} --seq {args.seq}` "
        f"(torch {torch.__version__}, transformers {transformers.__version__}, 2 shared CPU cores)\n\n"
        f"| layers | build (s) | analyze (s) | peak RSS (GiB) | RSS after imports (GiB) | params | MACs (batch 2, seq {args.seq}) | groups | prunable | MACs share scaling with prunable groups |\n"
        f"|---|---|---|---|---|---|---|---|---|---|\n"
        f"| {args.layers} | {result['build_s']} | {result['analyze_s']} | {result['peak_rss_gib']} | "
        f"{result['rss_after_imports_gib']} | {result['params']:,} | {result['macs']:,} | {result['groups']} | "
        f"{result['prunable_groups']} ({result['inexact_prunable_groups']} inexact) | {result['prunable_mac_share']:.1%} |\n\n"
        "Params equal `sum(p.numel())` and the closed form, MACs the closed form of one forward "
        "(linears + sdpa's q·k and attn·v). Prunable: every layer's MLP hidden dim (14336), each layer's value "
        "head dim (sdpa's attn·v, shared by v_proj and o_proj) and the residual stream (RMSNorm, inexact); the q/k "
        "head dims are frozen with reasons (the rotary embedding's cos/sin are computed, not parameters).\n"
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
