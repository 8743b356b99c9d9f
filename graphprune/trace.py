"""Trace a model into an fx graph and record what every node produces on the example inputs.

Tracing falls back automatically: when a submodule's ``forward`` cannot be traced symbolically
(data-dependent control flow, shape asserts, ``len()`` on proxies), that submodule becomes a leaf
and tracing is retried. Every fallback is recorded, because a leaf is opaque to the channel rules.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import traceback
from typing import Any, Iterable, Mapping

import torch
import torch.fx as fx
from torch.utils.flop_counter import FlopCounterMode

from .errors import ExampleInputError, TraceError

_TORCH_DIR = os.path.dirname(torch.__file__)


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """Shape and dtype of a tensor an fx node produced on the example inputs."""

    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)


@dataclasses.dataclass
class Fallback:
    """A submodule that was made a leaf because tracing through it failed."""

    module: str
    error: str
    location: str


@dataclasses.dataclass
class TracedModel:
    """An fx graph plus, per node, its example value (TensorSpec for tensors) and its FLOPs."""

    model: torch.nn.Module
    gm: fx.GraphModule
    values: dict[fx.Node, Any]
    flops: dict[fx.Node, int]
    fallbacks: list[Fallback]
    placeholder_values: list[Any]


class _FallbackTracer(fx.Tracer):
    """Symbolic tracer that remembers which non-leaf module was being traced when an error hit."""

    def __init__(self, leaf_names: set[str] = frozenset(), leaf_types: tuple[type, ...] = ()):
        super().__init__()  # defaults: GraphModule unpickling builds a tracer with no arguments
        self.leaf_names = leaf_names
        self.leaf_types = leaf_types
        self._stack: list[str] = []
        self.failed_module: str | None = None

    def is_leaf_module(self, m: torch.nn.Module, module_qualified_name: str) -> bool:
        if module_qualified_name in self.leaf_names or isinstance(m, self.leaf_types):
            return True
        return super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m, forward, args, kwargs):
        name = self.path_of_module(m)
        if self.is_leaf_module(m, name):
            return super().call_module(m, forward, args, kwargs)
        self._stack.append(name)
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_module is None:
                self.failed_module = name
            raise
        finally:
            self._stack.pop()


def _user_location(exc: BaseException) -> str:
    """The innermost stack frame outside torch: the user's line that broke tracing."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith(_TORCH_DIR)]
    if not frames:
        return "<unknown location>"
    f = frames[-1]
    return f"{f.filename}:{f.lineno}: {(f.line or '').strip()}"


def symbolic_trace(
    model: torch.nn.Module,
    leaf_modules: Iterable[str | type] = (),
    concrete_args: Mapping[str, Any] | None = None,
) -> tuple[fx.GraphModule, list[Fallback]]:
    """Trace ``model``; submodules that fail to trace become leaves (recorded as fallbacks)."""
    if isinstance(model, fx.GraphModule):
        return model, []
    leaf_names = {m for m in leaf_modules if isinstance(m, str)}
    leaf_types = tuple(m for m in leaf_modules if isinstance(m, type))
    fallbacks: list[Fallback] = []
    while True:
        tracer = _FallbackTracer(leaf_names, leaf_types)
        try:
            graph = tracer.trace(model, concrete_args=dict(concrete_args) if concrete_args else None)
        except Exception as exc:  # fx raises many types: TraceError, TypeError, RuntimeError, ...
            failed = tracer.failed_module
            location = _user_location(exc)
            if not failed:
                raise TraceError(
                    f"cannot trace {type(model).__name__}.forward itself: {type(exc).__name__}: {exc}\n"
                    f"  at {location}\n"
                    "  Make the top-level forward free of data-dependent control flow, pass the branching "
                    "arguments as concrete_args, or wrap the offending code in a submodule and list it in "
                    "leaf_modules."
                ) from exc
            fallbacks.append(Fallback(failed, f"{type(exc).__name__}: {exc}", location))
            leaf_names.add(failed)
            continue
        name = type(model).__name__
        return fx.GraphModule(tracer.root, graph, name), fallbacks


def _spec(value: Any) -> Any:
    """Replace tensors in a (nested) value by their TensorSpec, keep python values as they are."""
    if isinstance(value, torch.Tensor):
        return TensorSpec(tuple(value.shape), value.dtype)
    if isinstance(value, torch.Size):
        return tuple(value)
    if isinstance(value, (tuple, list)):
        specs = [_spec(v) for v in value]
        return tuple(specs) if isinstance(value, tuple) else specs
    if isinstance(value, dict):
        return {k: _spec(v) for k, v in value.items()}
    return value


class _ShapeRecorder(fx.Interpreter):
    """Runs the graph once, keeping each node's example value (as specs) and its FLOPs."""

    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm)
        self.values: dict[fx.Node, Any] = {}
        self.flops: dict[fx.Node, int] = {}

    def run_node(self, n: fx.Node) -> Any:
        counter = FlopCounterMode(display=False)
        try:
            with counter:
                out = super().run_node(n)
            out = _detach(out)
        except Exception as exc:
            args = ", ".join(_describe(self.env.get(a)) for a in n.all_input_nodes)
            raise ExampleInputError(
                f"running node '{n.name}' ({n.op} {_target_name(n)}) on the example inputs failed: "
                f"{type(exc).__name__}: {exc}\n  its inputs were: [{args}]\n"
                "  Check that example_inputs have the shapes and dtypes the model expects "
                "(e.g. --input-shape 1,3,224,224)."
            ) from exc
        self.values[n] = _spec(out)
        self.flops[n] = int(counter.get_total_flops())
        return out


def _detach(value: Any) -> Any:
    """Keep autograd graphs local to one node: grad mode stays on so ops take their training paths."""
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, (tuple, list)) and not hasattr(value, "_fields"):
        return type(value)(_detach(v) for v in value)
    return value


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"Tensor{list(value.shape)}:{str(value.dtype).replace('torch.', '')}"
    return repr(value)[:60]


def _target_name(n: fx.Node) -> str:
    t = n.target
    return t if isinstance(t, str) else getattr(t, "__qualname__", getattr(t, "__name__", repr(t)))


def trace(
    model: torch.nn.Module,
    example_inputs: Any,
    leaf_modules: Iterable[str | type] = (),
    concrete_args: Mapping[str, Any] | None = None,
) -> TracedModel:
    """Trace ``model`` and propagate the example inputs through the graph.

    ``example_inputs`` is a tensor, a tuple of positional inputs, or a dict of keyword inputs.
    The model's modules run in eval mode during propagation (so BatchNorm statistics are not
    updated) and get their previous mode back afterwards. Grad mode stays enabled, so modules with
    inference fast paths (nn.MultiheadAttention) run, and are counted, as they do in training.
    """
    args, kwargs = _split_inputs(example_inputs)
    gm, fallbacks = symbolic_trace(model, leaf_modules, concrete_args)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    names = _forward_parameters(model, len(placeholders))
    flat = _bind_placeholders(placeholders, names, args, {**(concrete_args or {}), **kwargs})
    values, flops = propagate(gm, flat)
    return TracedModel(model, gm, values, flops, fallbacks, flat)


def propagate(gm: fx.GraphModule, placeholder_values: list[Any]) -> tuple[dict[fx.Node, Any], dict[fx.Node, int]]:
    """Run ``gm`` once: every node's example value (specs for tensors) and FLOPs.

    Modules run in eval mode (BatchNorm statistics are not updated) and get their mode back.
    """
    modes = {m: m.training for m in gm.modules()}
    gm.eval()
    recorder = _ShapeRecorder(gm)
    try:
        recorder.run(*placeholder_values)
    finally:
        for m, mode in modes.items():
            m.training = mode
    return recorder.values, recorder.flops


def _split_inputs(example_inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,), {}
    if isinstance(example_inputs, dict):
        return (), dict(example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    raise ExampleInputError(
        f"example_inputs must be a tensor, a tuple of inputs or a dict of keyword inputs, "
        f"got {type(example_inputs).__name__}"
    )


def _forward_parameters(model: torch.nn.Module, count: int) -> list[str]:
    """Names of forward's parameters, in placeholder order (fx may rename its placeholders)."""
    if isinstance(model, fx.GraphModule):
        return [n.target.lstrip("*") for n in model.graph.nodes if n.op == "placeholder"]
    names = [p for p in inspect.signature(model.forward).parameters]
    return names[:count]


def _bind_placeholders(placeholders: list[fx.Node], names: list[str], args: tuple, kwargs: dict) -> list[Any]:
    """Match positional and keyword example inputs (and concrete args, which fx keeps as checked
    placeholders) to the graph's placeholders."""
    if len(args) > len(placeholders):
        raise ExampleInputError(f"{len(args)} example inputs given but the model takes {len(placeholders)}: {names}")
    values: list[Any] = []
    for i, (p, name) in enumerate(zip(placeholders, names)):
        if i < len(args):
            values.append(args[i])
        elif name in kwargs:
            values.append(kwargs[name])
        elif p.args:  # the parameter's default value
            values.append(p.args[0])
        else:
            raise ExampleInputError(f"no example value for model input '{name}': pass it positionally or as a keyword (the model takes {names})")
    return values
