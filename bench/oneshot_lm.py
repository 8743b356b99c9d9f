"""One-shot criteria on a small trained Llama-shaped language model: held-out perplexity right after pruning.

    .venv/bin/python bench/oneshot_lm.py [--steps 400] [--fractions 0.2 0.4] [--methods l1 random taylor hessian flap flap-uncompensated nap]

The model is a ``transformers.LlamaForCausalLM`` built from its config (nothing downloaded): bytes
as tokens (vocab 256), hidden 256, 4 layers, 8 query / 4 key-value heads (head dim 32), MLP 688,
biases on its projections (``attention_bias``, ``mlp_bias``: flap compensates a removed channel in
the bias of the layer reading it, as FLAP adds biases to LLaMA; graphprune adds no parameter), about
3.0M parameters, wrapped to return (batch, vocab, positions) logits and traced through the wrapper
along the example's path (``specialize_submodules=True``). It is trained once by this script (seeded;
AdamW, warm-up then cosine, ``--steps`` steps of 8 windows of 256 bytes; 1.5 to 2 s a step on 2 CPU
cores, about twice that on cores shared with other work) on the Python standard library's top-level
modules (``sysconfig.get_paths()["stdlib"]/*.py`` of the Python running it, sorted; every tenth file
held out for evaluation), and cached under bench/.cache/, so every row starts from the same weights. Each method prunes a copy of it one-shot (``apply`` without epochs, ``round_to=1``, no
fine-tuning), analyzed with ``attention="heads"`` (a channel of a heads group is one key-value head
with its two query heads) and the residual stream kept whole (``ignored_layers``): the budget is
on parameters, the full model's less ``fraction`` of what the MLP and heads groups hold, and each
method allocates it globally between MLP channels and heads. taylor and hessian read 8 calibration
batches of the training split with the next-byte cross-entropy, flap the same batches' activations
(with and without its bias compensation), nap its 10 statistics rounds from them. Perplexity: the
next-byte cross-entropy on 128 windows of 256 bytes spread evenly over the held-out files.
Writes bench/results/oneshot_lm.md and .json.
"""

from __future__ import annotations

import argparse
import math
import platform
import sysconfig
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from tqdm import tqdm

import graphprune
import provenance
from oneshot_common import cached, prune_copy, write

CONFIG = dict(vocab_size=256, hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=8,
              num_key_value_heads=4, max_position_embeddings=256, attention_bias=True, mlp_bias=True)
SEQ, BATCH = 256, 8
CALIBRATION_BATCHES = 8
EVAL_WINDOWS = 128
VARIANTS = {"flap-uncompensated": ("flap", dict(compensate=False))}  # row name: (method, options)
MLP, HEADS = {"gate_proj", "up_proj", "down_proj"}, {"q_proj", "k_proj", "v_proj", "o_proj"}


class ByteLM(torch.nn.Module):
    """A LlamaForCausalLM on byte ids returning logits as (batch, vocab, positions): the layout
    ``F.cross_entropy`` takes with (batch, positions) targets, and nap's categorical Fisher (classes on dim 1)."""

    def __init__(self):
        super().__init__()
        self.lm = transformers.LlamaForCausalLM(transformers.LlamaConfig(**CONFIG))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm(input_ids=ids, use_cache=False).logits.transpose(1, 2)


def stdlib_bytes() -> tuple[torch.Tensor, torch.Tensor]:
    """The standard library's top-level modules as bytes: (training files, every tenth file held out)."""
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    split = [[f for i, f in enumerate(files) if (i % 10 == 0) == held_out] for held_out in (False, True)]
    return tuple(torch.frombuffer(bytearray(b"".join(f.read_bytes() for f in part)), dtype=torch.uint8).long() for part in split)


def windows(tokens: torch.Tensor, starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, next-byte targets) of the windows of ``SEQ`` bytes at ``starts``."""
    index = starts[:, None] + torch.arange(SEQ + 1)
    chunk = tokens[index]
    return chunk[:, :-1], chunk[:, 1:]


def random_batches(tokens: torch.Tensor, count: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [windows(tokens, torch.randint(0, len(tokens) - SEQ - 1, (BATCH,), generator=g)) for _ in range(count)]


def train(model: ByteLM, tokens: torch.Tensor, steps: int) -> None:
    """AdamW (lr 2e-3, betas 0.9/0.95, weight decay 0.1), 5% linear warm-up then cosine to a tenth, clipped at 1."""
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.95), weight_decay=0.1)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warmup, 0.1 + 0.45 * (1 + math.cos(math.pi * s / steps))))
    model.train()
    bar = tqdm(random_batches(tokens, steps, seed=0), desc="training the byte-level Llama", unit="step")
    for x, y in bar:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        schedule.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")


def perplexity(model: torch.nn.Module, tokens: torch.Tensor) -> float:
    """exp of the mean next-byte cross-entropy over ``EVAL_WINDOWS`` windows spread evenly over ``tokens``."""
    starts = torch.linspace(0, len(tokens) - SEQ - 1, EVAL_WINDOWS).long()
    total = 0.0
    with torch.no_grad():
        for part in starts.split(16):
            x, y = windows(tokens, part)
            total += F.cross_entropy(model(x), y, reduction="sum").item()
    return math.exp(total / (EVAL_WINDOWS * SEQ))


def structure(groups: list, plan: graphprune.Plan) -> dict[str, int]:
    """MLP channels and key-value heads the plan keeps, over all layers."""
    kept = {"mlp": 0, "kv_heads": 0}
    for g in groups:
        kind = "mlp" if _layer_of(g) == MLP else "kv_heads"
        kept[kind] += len(plan.keep.get(g.id, range(g.size)))
    return kept


def _layer_of(group) -> set[str]:
    return {m.module.rsplit(".", 1)[-1] for m in group.members}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=400, help="training steps of the cached model (8 x 256 bytes each)")
    parser.add_argument("--fractions", type=float, nargs="*", default=[0.2, 0.4], help="share of the MLP and heads parameters removed")
    parser.add_argument("--methods", nargs="*", default=["l1", "random", "taylor", "hessian", "flap", "flap-uncompensated", "nap"])
    args = parser.parse_args()
    commit = provenance.commit()  # the code this run loaded, whatever lands while it runs
    torch.set_num_threads(2)
    train_tokens, held_out = stdlib_bytes()
    torch.manual_seed(0)
    version = "".join(platform.python_version_tuple()[:2])
    model = cached(ByteLM(), f"byte_llama_py{version}_{args.steps}steps_seed0.pt", lambda m: train(m, train_tokens, args.steps))
    calibration = random_batches(train_tokens, CALIBRATION_BATCHES, seed=1)
    example = calibration[0][0][:2]
    traced = dict(attention="heads", specialize_submodules=True)  # the Llama inside the wrapper: along the example's path
    gg = graphprune.analyze(model, example, **traced)
    pruned_groups = [g for g in gg.prunable_groups if _layer_of(g) in (MLP, HEADS)]
    full = gg.cost.params()
    removable = full - gg.cost.params({g.id: 0 for g in pruned_groups})
    whole = structure(pruned_groups, graphprune.Plan({}))
    base = perplexity(model, held_out)
    print(f"unpruned: {full:,} parameters, {removable:,} in MLP and heads groups; held-out perplexity {base:.3f}", flush=True)
    rows = []
    for fraction in args.fractions:
        budget = graphprune.Budget(params=(full - fraction * removable) / full)
        for name in args.methods:
            method, options = VARIANTS.get(name, (name, {}))
            result, seconds = prune_copy(model, method, budget, example, calibration, F.cross_entropy,
                                         ignored_layers=["lm.model.embed_tokens"], **traced, **options)
            row = dict(fraction=fraction, method=name, params_ratio=round(result.report.params_ratio, 4),
                       **structure(pruned_groups, result.plan), perplexity=round(perplexity(result.model.eval(), held_out), 3),
                       seconds=seconds)
            print(row, flush=True)
            rows.append(row)
    command = "`.venv/bin/python bench/oneshot_lm.py" + (f" --steps {args.steps}" if args.steps != 400 else "") + "`"
    lines = [f"# One-shot pruning of a byte-level Llama trained on the Python standard library (commit {commit})", "",
             f"{command}: a LlamaForCausalLM (hidden 256, 4 layers, 8 query / 4 key-value heads, MLP 688, biases, vocab "
             f"256: {full:,} parameters) trained {args.steps} steps of {BATCH} x {SEQ} bytes (seed 0) on the top-level modules "
             f"of Python {platform.python_version()}'s standard library, every tenth file held out; held-out perplexity "
             f"{base:.3f} per byte before pruning. Each row prunes that same model one-shot, no fine-tuning, to a parameter "
             f"budget that removes a fraction of the {removable:,} parameters of the MLP and heads groups (residual stream "
             f"kept whole, `attention=\"heads\"`, `round_to=1`); the method allocates it between MLP channels (of "
             f"{whole['mlp']}) and key-value heads (of {whole['kv_heads']}, each with its 2 query heads). taylor, hessian, "
             f"flap and nap read {CALIBRATION_BATCHES} batches of {BATCH} x {SEQ} training bytes. Perplexity per byte on "
             f"{EVAL_WINDOWS} windows of {SEQ} held-out bytes.", "",
             "| removed of MLP + heads | method | params kept | MLP channels kept | kv heads kept | held-out perplexity | seconds |",
             "|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['fraction']:.0%} | {r['method']} | {r['params_ratio']:.4f} | {r['mlp']} | {r['kv_heads']} | "
                     f"{r['perplexity']:.3f} | {r['seconds']} |")
    write("oneshot_lm", lines, {"commit": commit, "base_perplexity": base, "params": full, "removable": removable, "rows": rows})


if __name__ == "__main__":
    main()
