"""Hugging Face ``generate()`` speed of a Llama-shaped model pruned to half its MLP width and heads.

graphprune now gives a pruned ``LlamaForCausalLM`` back as a ``LlamaForCausalLM`` (config updated),
so ``generate()`` with its KV cache runs on it. This measures what the pruning buys there: greedy
decoding, batch 1, a 16-token prompt, 128 new tokens (``min_new_tokens`` so that no run stops
early), float32 on the CPU at 2 and 1 threads. The model (hidden 1024, MLP 2816, 12 layers, 16
query / 4 key-value heads, vocab 32000, ~200M params) is built from its config with random
weights: nothing is downloaded. It is analyzed with ``attention="heads"`` on token ids (1, 16);
the plan keeps the first half of every MLP group (gate/up rows, down columns) and the first half
of every heads group (q/k/v rows, o columns: 2 of 4 kv heads with their query heads) and leaves
the residual stream whole; ``graphprune.apply_plan`` applies it. The unpruned and the pruned model
alternate round by round (drift and other load fall on both) and the medians are reported.

    .venv/bin/python bench/generate_speed.py [--rounds 5] [--new-tokens 128] [--threads 2,1]

Writes bench/results/generate_speed.md and generate_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from provenance import commit
import transformers
from rich.progress import Progress

import graphprune

RESULTS = Path(__file__).resolve().parent / "results"
CONFIG = dict(vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=12,
              num_attention_heads=16, num_key_value_heads=4, max_position_embeddings=2048)


def half_plan(gg: graphprune.GroupGraph) -> graphprune.Plan:
    """First half of every MLP group and every heads group; the residual stream (and all else) whole."""
    keep, sizes = {}, {}
    for g in gg.groups:
        names = {m.module.rsplit(".", 1)[-1] for m in g.members}
        if g.prunable and names in ({"gate_proj", "up_proj", "down_proj"}, {"q_proj", "k_proj", "v_proj", "o_proj"}):
            keep[g.id], sizes[g.id] = list(range(g.size // 2)), g.size
    return graphprune.Plan(keep, sizes)


def params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def timed_generate(model: transformers.LlamaForCausalLM, prompt: torch.Tensor, new_tokens: int) -> float:
    """Seconds for one greedy generate() of exactly ``new_tokens`` tokens."""
    start = time.perf_counter()
    out = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, use_cache=True,
                         max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0)
    seconds = time.perf_counter() - start
    assert out.shape == (1, prompt.shape[1] + new_tokens), out.shape
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="timed generate() runs per model and thread count")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompt", type=int, default=16, help="prompt length (tokens)")
    parser.add_argument("--threads", default="2,1")
    args = parser.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    load_start = os.getloadavg()

    torch.manual_seed(0)
    config = transformers.LlamaConfig(**CONFIG)
    full = transformers.LlamaForCausalLM(config).eval()
    ids = torch.randint(0, config.vocab_size, (1, 16))
    start = time.perf_counter()
    gg = graphprune.analyze(full, ids, attention="heads")
    plan = half_plan(gg)
    pruned = graphprune.apply_plan(full, plan, ids, attention="heads", inplace=False).eval()
    prune_s = time.perf_counter() - start
    print(f"analyzed and pruned in {prune_s:.1f}s: {len(plan.keep)} groups halved of {len(gg.groups)}")

    pc = pruned.config
    sizes = dict(intermediate_size=pc.intermediate_size, num_attention_heads=pc.num_attention_heads,
                 num_key_value_heads=pc.num_key_value_heads)
    expected = dict(intermediate_size=CONFIG["intermediate_size"] // 2, num_attention_heads=CONFIG["num_attention_heads"] // 2,
                    num_key_value_heads=CONFIG["num_key_value_heads"] // 2)
    assert isinstance(pruned, transformers.LlamaForCausalLM), type(pruned)
    assert sizes == expected, (sizes, expected)
    assert full.config.intermediate_size == CONFIG["intermediate_size"], "the unpruned model's config was changed"
    rebuilt = transformers.LlamaForCausalLM(pc)  # the config alone builds the pruned shapes
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in pruned.state_dict().items()}
    del rebuilt

    prompt = torch.randint(0, config.vocab_size, (1, args.prompt))
    models = {"unpruned": full, "pruned": pruned}
    rows = []
    with torch.inference_mode(), Progress() as progress:
        task = progress.add_task("generate", total=len(threads) * (args.rounds + 1) * len(models))
        for n in threads:
            torch.set_num_threads(n)
            times: dict[str, list[float]] = {name: [] for name in models}
            for r in range(args.rounds + 1):  # round 0 warms up
                for name, model in (models.items() if r % 2 else reversed(models.items())):
                    progress.update(task, description=f"{n} thread(s), round {r}/{args.rounds}, {name}")
                    s = timed_generate(model, prompt, args.new_tokens)
                    if r:
                        times[name].append(s)
                    progress.advance(task)
            tps = {name: args.new_tokens / statistics.median(t) for name, t in times.items()}
            rows.append({"threads": n, "unpruned_tok_s": round(tps["unpruned"], 2), "pruned_tok_s": round(tps["pruned"], 2),
                         "speedup": round(tps["pruned"] / tps["unpruned"], 3),
                         "seconds": {name: [round(x, 3) for x in t] for name, t in times.items()}})
            print(f"{n} thread(s): unpruned {tps['unpruned']:.1f} tok/s, pruned {tps['pruned']:.1f} tok/s, "
                  f"x{tps['pruned'] / tps['unpruned']:.2f}")

    command = ".venv/bin/python bench/generate_speed.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items())
    result = {
        "command": command, "commit": commit(), "config": CONFIG, "pruned_config": sizes,
        "params_unpruned": params(full), "params_pruned": params(pruned),
        "analyze_and_prune_s": round(prune_s, 1), "prompt_tokens": args.prompt, "new_tokens": args.new_tokens,
        "rounds": args.rounds, "results": rows,
        "loadavg_start": [round(x, 2) for x in load_start], "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        "cpu_count": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "generate_speed.json").write_text(json.dumps(result, indent=2) + "\n")
    table = "\n".join(f"| {r['threads']} | {r['unpruned_tok_s']:.1f} | {r['pruned_tok_s']:.1f} | {r['speedup']:.2f}x |" for r in rows)
    (RESULTS / "generate_speed.md").write_text(
        f"# generate() speed of a Llama-shaped model, MLP width and heads halved\n\n"
        f"`{command}` at {result['commit']}\n\n"
        f"LlamaForCausalLM, random weights: hidden {CONFIG['hidden_size']}, {CONFIG['num_hidden_layers']} layers, "
        f"vocab {CONFIG['vocab_size']}; MLP {CONFIG['intermediate_size']} -> {sizes['intermediate_size']}, heads "
        f"{CONFIG['num_attention_heads']}/{CONFIG['num_key_value_heads']} kv -> {sizes['num_attention_heads']}/"
        f"{sizes['num_key_value_heads']} kv (the pruned model is a LlamaForCausalLM, its config states these sizes). "
        f"Params {result['params_unpruned']:,} -> {result['params_pruned']:,} "
        f"({result['params_pruned'] / result['params_unpruned']:.3f}; embeddings and lm_head are kept whole).\n\n"
        f"Greedy `generate()`, KV cache on, batch 1, {args.prompt}-token prompt, {args.new_tokens} new tokens, "
        f"float32 CPU; median of {args.rounds} runs per model, the two models alternating (one warm-up round first).\n\n"
        f"| threads | unpruned tok/s | pruned tok/s | speedup |\n|---:|---:|---:|---:|\n{table}\n\n"
        f"Load average (1/5/15 min) {result['loadavg_start']} at the start, {result['loadavg_end']} at the end, "
        f"{os.cpu_count()} cores (this benchmark alone keeps it near its thread count; more is other processes); torch {torch.__version__}, "
        f"transformers {transformers.__version__}.\n")
    print(f"wrote {RESULTS / 'generate_speed.md'}")


if __name__ == "__main__":
    main()
