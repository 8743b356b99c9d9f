"""The fixed (model, method, budget) cases of issue #25's "same plans before and after a refactor" check.

A refactor of the internals (rules, flops, slim, budget) must leave every plan as it was. Each case
here is cheap and deterministic: its model is built right after ``torch.manual_seed(0)``, its method
is one that decides without training (l1, l2, uniform, random with a seed; lwdna, from one seeded
gradient on the example input, on a few small models), and torch runs on one thread (a reduction's
rounding may depend on the thread count). A case's fingerprint is what the refactor must not
change: per group, the count and a hash of its kept channel indices; the achieved MACs and params
ratios; the numbers of groups and of prunable groups; or, for a case that refuses, the error's class.

``python tests/plan_cases.py --write`` writes tests/data/plans_before.json. Run it on the code as it
was **before** the refactor, never after (that would only record the refactor's own plans): e.g. from
a worktree of the last commit, ``git worktree add /tmp/base HEAD``, then
``PYTHONPATH=/tmp/base python tests/plan_cases.py --write``. graphprune, its ``passes``/``models``
folders (see tests/checkout.py) and tests/toy_models.py then all come from /tmp/base, and the
JSON records that checkout's commit. tests/test_plans_unchanged.py compares the current code with it.
Where a later issue changes some plans on purpose, those cases are fingerprinted again from its
commit and listed under "updated", with the commit and why (#24: output="module" ties groups).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


sys.path.insert(0, str(Path(__file__).resolve().parent))
from checkout import pin_checkout  # noqa: E402

ROOT = pin_checkout()
sys.path.insert(0, str(ROOT / "tests"))  # toy_models from the same checkout as graphprune

import torch  # noqa: E402

import graphprune  # noqa: E402
import toy_models  # noqa: E402
from graphprune import models as zoo  # noqa: E402
from graphprune import passes  # noqa: E402

SNAPSHOT = Path(__file__).parent / "data" / "plans_before.json"


@dataclasses.dataclass(frozen=True)
class Case:
    """``model`` is "<family>:<name>" (toy, zoo, tv, hf); ``budget`` "macs=0.5", "params=0.7" or a plain ratio."""

    model: str
    method: str
    budget: str
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def id(self) -> str:
        return "|".join([self.model, self.method, self.budget, *(f"{k}={v}" for k, v in self.options)])


Recipe = tuple[str, str, dict[str, Any]]
#: every toy model: both metrics and a plain ratio, every score method, the rounding and floor options
TOY: list[Recipe] = [
    ("l1", "macs=0.5", {}), ("l2", "params=0.7", {}), ("random", "macs=0.5", {"seed": 0}), ("random", "0.3", {"seed": 3}),
    ("uniform", "macs=0.5", {}), ("uniform", "params=0.7", {}), ("l1", "0.7", {"round_to": 1}),
    ("l2", "macs=0.3", {"min_ratio": 0.25}),
    ("l1", "macs=0.5", {"output": "module"}),  # groups the model's class cannot resize are frozen first
]
#: the larger models: one case per method, both metrics
LARGER: list[Recipe] = [
    ("l1", "macs=0.5", {}), ("l2", "params=0.7", {}), ("random", "0.3", {"seed": 3}), ("uniform", "macs=0.5", {}),
]
HF: list[Recipe] = [*LARGER, ("l1", "macs=0.5", {"uniform_layers": True}), ("uniform", "params=0.6", {"uniform_layers": True})]
#: the models by name, not toy_models.ALL or zoo.names(): a model added later must not change the set
TOY_MODELS = [
    "residual", "dense_concat", "split_cat", "depthwise", "grouped", "pixel_shuffle", "channel_shuffle", "flatten_linear",
    "flatten_linear_cl", "squeeze_excite", "group_norm", "channels_last", "unknown_op", "shared_conv", "shape_use", "reductions",
    "attention_reshape", "attention_scale_from_shape", "attention_separate", "attention_sdpa", "attention_einsum",
    "attention_sdpa_bias", "attention_gqa_repeat_interleave", "attention_gqa_repeat_kv", "attention_gqa_enable_gqa",
    "computed_shapes",
]
#: all of graphprune.models but densenet12_40, densenet40 under DHP's name (the same factory)
ZOO_MODELS = [
    "cifarnet", "densenet40", "digits_cnn", "dncnn", "edsr_lite", "lenet5", "lenet_300_100", "mobilenet_v1", "mobilenet_v1_cifar",
    "mobilenet_v2", "mobilenet_v2_cifar", "resnet110", "resnet164", "resnet20", "resnet32", "resnet56", "srresnet", "unet", "vgg16",
]
TORCHVISION = ["resnet18", "mobilenet_v2"]
TRANSFORMERS = ["llama", "gpt2", "bert"]
LWDNA = ["digits_cnn", "lenet5", "cifarnet"]  # widens, then cuts on the widened graph's cost model (1-3 s each)


def _cases() -> list[Case]:
    def expand(model: str, recipes: list[Recipe]) -> list[Case]:
        return [Case(model, m, b, tuple(sorted(o.items()))) for m, b, o in recipes]

    cases = [c for name in TOY_MODELS for c in expand(f"toy:{name}", TOY)]
    cases += [c for name in ZOO_MODELS for c in expand(f"zoo:{name}", LARGER)]
    cases += [c for name in TORCHVISION for c in expand(f"tv:{name}", [*LARGER, ("l1", "macs=0.5", {"output": "module"})])]
    cases += [c for name in TRANSFORMERS for c in expand(f"hf:{name}", HF)]
    cases += [Case(f"zoo:{name}", "lwdna", "0.5") for name in LWDNA]
    return cases


CASES: list[Case] = _cases()


def build(model: str) -> tuple[torch.nn.Module, Any]:
    """The model (in eval mode) and its example input, both from seed 0."""
    family, name = model.split(":")
    if family == "toy":
        return toy_models.build(name)  # seeds, and randomizes biases and norm scales
    torch.manual_seed(0)
    if family == "zoo":
        return zoo.get(name).eval(), torch.randn(*zoo.input_shape(name))
    if family == "tv":
        import torchvision

        return torchvision.models.get_model(name, weights=None).eval(), torch.randn(1, 3, 32, 32)
    import transformers  # tiny configs as tests/test_transformers.py builds them; nothing downloaded

    ids = torch.randint(0, 100, (2, 8))
    layers = dict(num_hidden_layers=2, num_attention_heads=4, hidden_size=64, intermediate_size=128)
    if name == "bert":
        return transformers.BertModel(transformers.BertConfig(vocab_size=100, max_position_embeddings=32, **layers)).eval(), ids
    if name == "gpt2":
        config = transformers.GPT2Config(vocab_size=100, n_positions=32, n_embd=64, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0)
        return transformers.GPT2LMHeadModel(config).eval(), ids
    config = transformers.LlamaConfig(vocab_size=100, num_key_value_heads=2, max_position_embeddings=32, **layers)
    return transformers.LlamaForCausalLM(config).eval(), ids


def budget_of(spec: str) -> graphprune.Budget | float:
    if "=" not in spec:
        return float(spec)
    metric, value = spec.split("=")
    return graphprune.Budget(**{metric: float(value)})


def fingerprint(case: Case) -> dict[str, Any]:
    """What the refactor must not change about ``case`` (see the module docstring); JSON-ready."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, x = build(case.model)
        options = {"output": "graph", **dict(case.options)}  # the plan is the same; rebuilding the class is slow
        try:
            result = graphprune.apply(model, case.method, budget_of(case.budget), x, **options)
        except graphprune.GraphPruneError as exc:
            return {"error": type(exc).__name__}
    finally:
        torch.set_num_threads(threads)
    keep = {str(gid): f"{len(kept)}:{hashlib.sha1(repr(kept).encode()).hexdigest()[:16]}"
            for gid, kept in sorted(result.plan.keep.items())}
    return {"keep": keep, "macs_ratio": round(result.report.macs_ratio, 6), "params_ratio": round(result.report.params_ratio, 6),
            "groups": len(result.groups.groups), "prunable": len(result.groups.prunable_groups)}


def differences(expected: dict[str, Any], got: dict[str, Any]) -> str:
    """A short account of how two fingerprints differ ("" where they don't)."""
    if expected == got:
        return ""
    parts = [f"{k}: {expected.get(k)!r} -> {got.get(k)!r}" for k in sorted((set(expected) | set(got)) - {"keep"})
             if expected.get(k) != got.get(k)]
    before, after = expected.get("keep", {}), got.get("keep", {})
    changed = [f"{g}: {before.get(g)} -> {after.get(g)}" for g in sorted(set(before) | set(after), key=int) if before.get(g) != after.get(g)]
    if changed:
        parts.append(f"kept channels of {len(changed)} group(s) ({'; '.join(changed[:5])}{'; ...' if len(changed) > 5 else ''})")
    return ", ".join(parts)


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True).stdout.strip()


def write(path: Path) -> None:
    """Fingerprint every case with the code under ROOT and save them with ROOT's commit."""
    sources = {m.__name__: str(Path(m.__file__).resolve()) for m in (graphprune, passes, zoo, toy_models)}
    print(*(f"{k}: {v}" for k, v in sources.items()), sep="\n")
    assert all(Path(f).is_relative_to(ROOT) for f in sources.values()), f"not all code comes from {ROOT}"
    dirty = _git("status", "--porcelain", "--untracked-files=no", "--", "graphprune", "tests/toy_models.py")
    if dirty:
        sys.exit(f"{ROOT} has uncommitted changes; the snapshot must come from a commit:\n{dirty}")
    start, cases = time.perf_counter(), {}
    for k, case in enumerate(CASES):
        cases[case.id] = fingerprint(case)
        print(f"[{k + 1}/{len(CASES)}] {case.id}: {cases[case.id].get('error') or cases[case.id]['macs_ratio']}", flush=True)
    import torchvision
    import transformers

    snapshot = {"commit": _git("rev-parse", "HEAD"), "source": str(ROOT),
                "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__, "transformers": transformers.__version__},
                "seconds": round(time.perf_counter() - start, 1), "cases": cases}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(snapshot, indent=1, sort_keys=True) + "\n")
    print(f"{len(cases)} cases from {snapshot['commit']} -> {path} in {snapshot['seconds']} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="fingerprint every case and write the snapshot")
    parser.add_argument("--out", type=Path, default=SNAPSHOT, help=f"where to write it (default {SNAPSHOT})")
    args = parser.parse_args()
    if not args.write:
        parser.error("nothing to do: pass --write (on the code before the refactor)")
    write(args.out)
