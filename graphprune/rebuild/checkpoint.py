"""Checkpoints of pruned models: the plan, how the model was analyzed, and the pruned weights.

A pruned model's class builds full-width layers, so its weights load only into an instance the
plan was applied to again. A checkpoint therefore holds what re-applying needs (the plan, the
analysis options, the example inputs) next to the state dict, as plain data and tensors that
``torch.load(path, weights_only=True)`` reads. A Hugging Face model whose widths its config
cannot state carries the same record in its config (``config.graphprune``), so the directory
``save_pretrained`` writes is a checkpoint too.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
import torch.nn as nn

from ..errors import GraphPruneError
from ..groups.graph import GroupGraph, analyze
from ..common.locations import qualified_name
from ..groups.plan import Plan
from .user_class import user_class_model
from .records import FORMAT, record
from ..slimming.slim import slim

def save(path: str, model: nn.Module, plan: Plan, gg: GroupGraph) -> None:
    torch.save({**record(plan, gg, model), "state_dict": model.state_dict()}, path)


def load(path: str, model: nn.Module, example_inputs: Any = None) -> nn.Module:
    """A fresh instance ``model`` of the pruned model's class, with the plan of the checkpoint at
    ``path`` re-applied (in place) and its weights loaded; ``path`` is a file ``PruneResult.save``
    wrote or a directory a pruned Hugging Face model's ``save_pretrained`` wrote.
    ``example_inputs``: inputs to analyze with instead of the stored ones."""
    saved, state = _read(path)
    if saved.get("format") != FORMAT:
        raise GraphPruneError(f"{path} is no graphprune checkpoint (format {saved.get('format')!r}): save one with result.save(path)")
    if saved["class"] != qualified_name(type(model)):
        raise GraphPruneError(f"{path} holds a pruned {saved['class']}; pass a fresh instance of that class, not a {qualified_name(type(model))}")
    names = model.state_dict().keys()  # pruning changes sizes, not names: check before resizing the model
    if state.keys() - names or names - state.keys() - _tied(model):
        raise GraphPruneError(f"the weights in {path} do not name this model's tensors (e.g. {sorted(state.keys() ^ names)[:3]}): "
                              "Hugging Face renames some models' keys when it saves; save with result.save(path) and load that file")
    options = saved["analysis"]
    leaves = [_leaf(model, name) for name in options["leaf_modules"]]
    inputs = example_inputs if example_inputs is not None else _inputs(saved["inputs"])
    gg = analyze(model, inputs, leaf_modules=leaves, attention=options["attention"],
                 specialize_submodules=options["specialize_submodules"])
    plan = Plan.from_json(saved["plan"])
    out = slim(gg, plan) if saved["output"] == "graph" else user_class_model(gg, plan, inplace=True)[0]
    out.load_state_dict(state, strict=False)  # only tied tensors are left out (checked above)
    return out


def _tied(model: nn.Module) -> set[str]:
    """The names under which a tensor appears a second time (a tied weight), which checkpoints may leave out."""
    seen: set[int] = set()
    tied = set()
    for name, t in model.state_dict(keep_vars=True).items():
        if id(t) in seen:
            tied.add(name)
        seen.add(id(t))
    return tied


def _read(path: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    if not os.path.isdir(path):
        saved = torch.load(path, weights_only=True, map_location="cpu")
        return saved, saved.pop("state_dict")
    config = os.path.join(path, "config.json")
    with open(config) as f:
        saved = json.load(f).get("graphprune")
    if saved is None:
        raise GraphPruneError(f"{config} has no graphprune record: its config states the pruned sizes, so "
                              "AutoModel.from_pretrained loads it as it is")
    from safetensors.torch import load_file

    files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
    return saved, {k: v for f in files for k, v in load_file(os.path.join(path, f)).items()}


def _inputs(stored: dict[str, Any]) -> Any:
    """The example inputs as stored (zeros where only their shapes and dtypes were): positional or keyword, as analyzed."""
    def value(x):
        return torch.zeros(x["shape"], dtype=getattr(torch, x["dtype"])) if isinstance(x, dict) and "shape" in x else x
    return tuple(value(x) for x in stored["args"]) if stored["args"] else {k: value(x) for k, x in stored["kwargs"].items()}


def _leaf(model: nn.Module, name: str) -> str | type:
    """A stored leaf: a module path, or a class named by its qualified name."""
    for m in model.modules():
        if qualified_name(type(m)) == name:
            return type(m)
    return name
