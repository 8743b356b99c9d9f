"""What re-applying a plan to a fresh instance of the model needs, as data: the record that a
checkpoint file holds next to the weights (checkpoint.py) and that a Hugging Face config holds
where it cannot state the pruned widths (rebuild/user_class.py)."""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from ..errors import GraphPruneError
from ..groups.graph import GroupGraph
from ..common.locations import qualified_name
from ..groups.plan import Plan
from ..tracing.tracer import split_inputs

FORMAT = "graphprune.checkpoint/1"


def record(plan: Plan, gg: GroupGraph, model: nn.Module, tensors: bool = True) -> dict[str, Any]:
    """What re-applying ``plan`` needs; ``tensors=False``: the example inputs as shapes and dtypes
    (JSON, for a config), else as they are."""
    options = gg.options
    leaves = [x if isinstance(x, str) else qualified_name(x) for x in options["leaf_modules"]]
    if options["concrete_args"]:
        raise GraphPruneError("the model was analyzed with concrete_args, which a checkpoint cannot hold: save "
                              "result.plan.to_json() and the state dict, and re-apply with graphprune.apply_plan")
    args, kwargs = split_inputs(gg.example_inputs)
    describe = (lambda x: x) if tensors else _spec
    return {
        "format": FORMAT,
        "class": qualified_name(type(gg.traced.model)),
        "output": "graph" if isinstance(model, fx.GraphModule) and not isinstance(gg.traced.model, fx.GraphModule) else "module",
        "plan": plan.to_json(),
        "analysis": {"attention": options["attention"], "specialize_submodules": options["specialize_submodules"],
                     "leaf_modules": leaves},
        "inputs": {"args": [describe(x) for x in args], "kwargs": {k: describe(x) for k, x in kwargs.items()}},
    }


def _spec(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return {"shape": list(x.shape), "dtype": str(x.dtype).removeprefix("torch.")}
    return x
