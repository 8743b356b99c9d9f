"""Training overhead of the methods that train: seconds per weight step with the method attached,
as a ratio to plain training of the same model on the same batches.

The configurations run interleaved, round after round, so drift in the machine's load hits all of
them alike; the table reports the median over rounds. Only the search phase is timed (the phase
before the budget is met); afterwards every method trains the plain slim model.

    .venv/bin/python bench/overhead.py                      # ResNet-20 on the CIFAR subset
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import graphprune
from graphprune import data, models

ROOT = Path(__file__).resolve().parents[1]

# label -> (method, options): the search from the first step (warmup=0), in a schedule of 10000 steps
# (DSA: an allocation step every 20 weight steps, the paper's rate) and of 400 (one every 3).
CONFIGS = {
    "plain": (None, {}),
    "dsa-every-20-steps": ("dsa", dict(warmup=0.0, total_steps=10000)),
    "dsa-every-3-steps": ("dsa", dict(warmup=0.0, total_steps=400)),
    "dhp": ("dhp", dict(warmup=0.0, total_steps=10000)),
}


def build(method: str | None, options: dict, model_name: str, example: torch.Tensor, val_batches: list):
    torch.manual_seed(0)
    model = models.get(model_name)
    session = None
    if method is not None:
        extra = dict(val_data=val_batches, loss_fn=F.cross_entropy) if method == "dsa" else {}
        session = graphprune.prepare(model, method, 0.1, example, **extra, **options)  # a budget the timing never reaches
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    if session is not None:
        session.bind_optimizer(optimizer)
    return model, session, optimizer


def timed_steps(model, session, optimizer, batches: list, step0: int) -> float:
    """Seconds per step over ``batches``: forward, backward, the method's hooks, optimizer step."""
    model.train()
    start = time.perf_counter()
    for i, (x, y) in enumerate(batches):
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        if session is not None:
            session.before_step(step0 + i)
        optimizer.step()
        if session is not None:
            session.after_step(step0 + i, None)
    return (time.perf_counter() - start) / len(batches)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet20")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=20, help="weight steps per configuration per round")
    p.add_argument("--methods", default=",".join(CONFIGS), help="comma-separated labels; plain is always timed")
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cifar10_train_subset.npz"))
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    spec = p.parse_args()
    wanted = spec.methods.split(",")
    train, _ = data.cifar10_subset(spec.data, seed=0)
    loaded = [b for _, b in zip(range(spec.steps + 4), train)]
    batches, val_batches = loaded[: spec.steps], loaded[spec.steps :]  # DSA's allocation batches: training-sized, as in bench/cifar.py
    example = torch.randn(2, *models.input_shape(spec.model)[1:])
    unknown = set(wanted) - set(CONFIGS)
    if unknown:
        raise SystemExit(f"unknown configurations {sorted(unknown)}; choose from {', '.join(CONFIGS)}")
    labels = ["plain"] + [label for label in CONFIGS if label in wanted and label != "plain"]
    built = {label: build(*CONFIGS[label], spec.model, example, val_batches) for label in labels}
    times: dict[str, list[float]] = {label: [] for label in labels}
    for r in range(spec.rounds):
        for label in labels:
            times[label].append(timed_steps(*built[label], batches, r * spec.steps))
    for label, (_, session, _) in built.items():
        if session is not None and session.method.ready():
            raise SystemExit(f"{label} met its budget while being timed: the search phase was not measured throughout")
    plain = statistics.median(times["plain"])
    device = f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    command = f"python bench/overhead.py --model {spec.model} --rounds {spec.rounds} --steps {spec.steps}"
    lines = [f"# Training overhead in the search phase: {spec.model}", "", f"Command: `{command}`; device: {device}; "
             f"median of {spec.rounds} interleaved rounds of {spec.steps} steps (batch {len(batches[0][1])}).", "",
             "| configuration | s / step | ratio to plain |", "|---|---|---|"]
    for label in labels:
        median = statistics.median(times[label])
        lines.append(f"| {label} | {median:.3f} | {median / plain:.2f}x |")
    out = Path(spec.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "overhead.md").write_text("\n".join(lines) + "\n")
    (out / "overhead.json").write_text(json.dumps({"command": command, "device": device, "seconds_per_step": times}, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
