"""A Hugging Face config that describes the pruned model, so ``from_pretrained`` rebuilds it.

A pruned ``PreTrainedModel`` keeps its class, and its ``config`` must say its new sizes:
``save_pretrained`` writes the config, and ``from_pretrained`` builds the model from it before
loading the weights. Which config field sets which tensor's size differs between architectures
(``intermediate_size``, GPT-2's ``n_inner``, ``head_dim`` or ``hidden_size // heads``, kv heads),
so it is measured rather than tabled: the model's class is built on the meta device (no memory)
with each integer field doubled, the fields that scale a pruned dim get the value that gives its
new size, and the solution is accepted only if a model built from it has exactly the pruned
model's tensor shapes. Where none does (widths differ per layer; sizes the config derives from
one another, as BERT's head size from ``hidden_size / num_attention_heads``), the config says so
and :func:`graphprune.load` rebuilds the model from the plan instead.
"""

from __future__ import annotations

import copy
import itertools
from typing import Any

import torch
import torch.nn as nn

#: the note where no config states the pruned sizes (``config.graphprune`` then holds the plan)
UNSTATED = ("config: the pruned widths are not one size per role (or not sizes this config can state): save_pretrained "
            "writes a checkpoint that graphprune.load rebuilds, AutoModel.from_pretrained cannot (prune with "
            "uniform_layers=True for that)")

#: the most configs tried while solving (each builds a one-layer model on the meta device)
MAX_TRIALS = 256


def is_hugging_face(model: nn.Module) -> bool:
    config = getattr(model, "config", None)
    return any(c.__name__ in ("PretrainedConfig", "PreTrainedConfig") for c in type(config).__mro__) and hasattr(model, "save_pretrained")


def describe_pruned_config(model: nn.Module, edits: dict[Any, Any] | None = None) -> str | None:
    """Set ``model.config`` (and the modules' copies of its fields) to the pruned sizes; a note for the report.

    ``edits``: {old value: new value} of non-size attributes the pruning changed (an RMS norm's eps),
    for the config fields that hold them."""
    if not is_hugging_face(model):
        return None
    config = model.config
    shapes = _shapes(model)
    if _built_shapes(type(model), config) == shapes:
        return None
    solved = _solve(type(model), config, shapes, _derived(model))
    if solved is None:
        return UNSTATED
    changed = {k: (getattr(config, k, None), v) for k, v in solved.items()}  # None: a derived field now stated
    for key, value in config.to_dict().items():
        if isinstance(value, float) and edits and value in edits:
            changed[key] = (value, edits[value])
    for key, (old, new) in changed.items():
        setattr(config, key, new)
        for m in model.modules():
            if old is not None and getattr(m, key, None) == old and type(getattr(m, key)) is type(old):
                setattr(m, key, new)
    return "config: " + ", ".join(f"{k} {old} -> {new}" for k, (old, new) in changed.items())


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Every parameter's and buffer's shape, non-persistent buffers included: a rotary embedding's
    ``inv_freq`` tells fewer heads from a smaller head dim, which give the projections one shape."""
    return {k: tuple(v.shape) for k, v in (*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False))}


def _built_shapes(cls: type, config: Any) -> dict[str, tuple[int, ...]] | None:
    """The tensor shapes of ``cls(config)``, built on the meta device; None where the config is refused."""
    try:
        with torch.device("meta"):
            return _shapes(cls(config))
    except Exception:
        return None


#: Hugging Face's conventional names of size fields, which some configs leave out and derive
_SIZE_FIELDS = ("head_dim", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads")


def _derived(model: nn.Module) -> dict[str, int]:
    """Config fields left None (derived when the model is built, as ``head_dim = hidden_size //
    heads``) with the one value every module holding them has: a solution may have to state them,
    when the fields they derive from change."""
    fields = model.config.to_dict()
    unset = [k for k in _SIZE_FIELDS if fields.get(k) is None]
    values: dict[str, set] = {}
    for m in model.modules():
        for k in unset:
            v = vars(m).get(k)
            if type(v) is int:
                values.setdefault(k, set()).add(v)
    return {k: v.pop() for k, v in values.items() if len(v) == 1}


def _solve(cls: type, config: Any, target: dict[str, tuple[int, ...]], derived: dict[str, int]) -> dict[str, int] | None:
    """Integer config fields whose values build a model of ``target``'s shapes (None: no such values);
    ``derived``: fields to state where the solution needs them (see :func:`_derived`)."""
    small = _one_layer(config)
    base = _built_shapes(cls, small)
    if base is None:
        small, base = config, _built_shapes(cls, config)
    if base is None:
        return None
    changed_dims = {(k, d) for k, shape in base.items() if k in target for d, n in enumerate(shape)
                    if len(target[k]) == len(shape) and target[k][d] != n}
    candidates: dict[str, set[int]] = {}
    for key, value in small.to_dict().items():
        if type(value) is not int or value <= 0 or key == "num_hidden_layers":
            continue
        doubled = _built_shapes(cls, _with(small, {key: 2 * value}))
        if doubled is None:
            continue
        for k, d in changed_dims:
            if k in doubled and len(doubled[k]) == len(base[k]) and doubled[k][d] == 2 * base[k][d]:
                new = value * target[k][d] / base[k][d]
                if new == int(new) and new >= 1:
                    candidates.setdefault(key, set()).add(int(new))
    for key, value in derived.items():
        candidates.setdefault(key, set()).add(value)
    fields = sorted(candidates)
    trials = 0
    for size in range(1, len(fields) + 1):
        for keys in itertools.combinations(fields, size):
            for values in itertools.product(*(sorted(candidates[k]) for k in keys)):
                trials += 1
                if trials > MAX_TRIALS:
                    return None
                values = dict(zip(keys, values))
                built = _built_shapes(cls, _with(small, values))
                if built is not None and all(target.get(k) == v for k, v in built.items() if k in target):
                    return values if _built_shapes(cls, _with(config, values)) == target else None
    return None


def _one_layer(config: Any) -> Any:
    """A copy of ``config`` with one layer: solving builds many models, and the first layer shows every per-layer size."""
    small = copy.deepcopy(config)
    if getattr(small, "num_hidden_layers", None):
        small.num_hidden_layers = 1
        if isinstance(getattr(small, "layer_types", None), list):
            small.layer_types = small.layer_types[:1]
    return small


def _with(config: Any, values: dict[str, int]) -> Any:
    out = copy.deepcopy(config)
    for k, v in values.items():
        setattr(out, k, v)
    return out
