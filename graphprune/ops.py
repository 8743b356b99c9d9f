"""Declaring how a module class or a function that graphprune cannot see into treats channels.

A custom layer whose ``forward`` is a ``torch.autograd.Function``, a CUDA extension or a fused
block is opaque to tracing: every channel it touches is frozen. :func:`register_op` declares it
once, and every stage reads that one declaration:

* tracing keeps it a leaf: a ``call_module`` or ``call_function`` node whose code is not traced;
* analysis links its channels as ``flow`` says and records the tensors ``params`` names as
  members of their groups, sliced with them;
* the budget counts the MACs its PyTorch ops perform on the example inputs (as
  ``FlopCounterMode`` does), scaled with the channels it keeps;
* slimming, in the slim graph and in the user's model, sets ``attributes`` to the new counts;
* ONNX export runs ``onnx_form`` in its place, so that an op the exporters cannot see into
  exports as plain ops.

Flows:

``channelwise``
    output channel ``c`` reads only channel ``c`` of each tensor input along ``channel_dim`` (a
    per-channel scale and bias, an activation, a pooling); inputs and output share channels.
``producer``
    its output channels are new ones, each computed from all input channels (a linear or a
    convolution): the input's channels are contracted. ``params`` give each tensor's ``"out"``
    and ``"in"`` dims.

The declaration is a claim about the op: graphprune still checks the slim model against the
masked one on the example inputs, so a wrong declaration is an error, never a wrong model.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import torch

from .errors import OptionError

FLOWS = ("channelwise", "producer")
#: the attribute values a declaration can set from the new channel counts
COUNTS = ("in", "out", "channels")


@dataclasses.dataclass(frozen=True)
class OpDeclaration:
    """What :func:`register_op` was told about one module class or function."""

    target: type | Callable
    flow: str
    channel_dim: int
    #: tensor name (a module's parameter or buffer, dotted for a submodule's; a function's
    #: argument) -> {role: dims}; roles "channel" (channelwise) or "out" / "in" (producer)
    params: Mapping[str, Mapping[str, tuple[int, ...]]]
    #: module attribute (dotted for a submodule's) -> "in", "out" or "channels": set to that
    #: channel count after slimming
    attributes: Mapping[str, str]
    #: (module, *inputs) or (*inputs) -> output in plain PyTorch ops, for ONNX export
    onnx_form: Callable | None

    @property
    def is_module(self) -> bool:
        return isinstance(self.target, type)


_DECLARED: dict[Any, OpDeclaration] = {}


def register_op(
    target: type[torch.nn.Module] | Callable,
    *,
    flow: str,
    channel_dim: int = 1,
    params: Mapping[str, int | Mapping[str, int]] | None = None,
    attributes: Mapping[str, str] | None = None,
    onnx_form: Callable | None = None,
) -> OpDeclaration:
    """Declare how ``target`` (an ``nn.Module`` subclass, or a function) treats channels.

    ``flow``: ``"channelwise"`` or ``"producer"`` (see the module docstring). ``channel_dim``: the
    dim of its inputs and output that holds channels (1 for NCHW, -1 for tokens). ``params``: the
    tensors holding channels, by name (a module's parameters and buffers; a function's argument
    names), each with its dims: an int for a channelwise op (``{"scale": 0}``; a tuple where
    several dims hold the channels, ``{"proj.weight": (0, 1)}``, which makes its MACs quadratic in
    them), a mapping for a producer (``{"weight": {"out": 0, "in": 1}, "bias": {"out": 0}}``).
    Submodules' tensors and attributes are named with dots. ``attributes``: module
    attributes that ``forward`` reads as channel counts, with the count each follows
    (``{"num_features": "channels"}``, ``{"in_features": "in", "out_features": "out"}``).
    ``onnx_form``: the op in plain PyTorch ops, called as ``onnx_form(module, *inputs)`` for a
    module or with the function's own arguments, used by :func:`graphprune.export_onnx`.

    Declaring a target again replaces its declaration; :func:`unregister_op` removes it.
    """
    declaration = OpDeclaration(target, flow, channel_dim, _checked_params(target, flow, params or {}),
                                dict(attributes or {}), onnx_form)
    _check(declaration)
    _DECLARED[target] = declaration
    return declaration


def unregister_op(target: type[torch.nn.Module] | Callable) -> None:
    """Forget ``target``'s declaration: it is opaque again."""
    if _DECLARED.pop(target, None) is None:
        raise OptionError(f"{_name(target)} was not registered with graphprune.register_op")


def declaration_of(target: Any) -> OpDeclaration | None:
    """The declaration of a module (by its class, or a declared base class it does not override
    ``forward`` of) or of a function, or None."""
    if isinstance(target, torch.nn.Module):
        for cls in type(target).__mro__:
            found = _DECLARED.get(cls)
            if found is not None and (cls is type(target) or type(target).forward is cls.forward):
                return found
        return None
    try:
        return _DECLARED.get(target)
    except TypeError:  # unhashable targets are never declared
        return None


def declared_module_types() -> tuple[type, ...]:
    return tuple(t for t in _DECLARED if isinstance(t, type))


def declared_functions() -> tuple[Callable, ...]:
    return tuple(t for t in _DECLARED if not isinstance(t, type))


def _checked_params(target: Any, flow: str, params: Mapping[str, Any]) -> dict[str, dict[str, int]]:
    out = {}
    for name, dims in params.items():
        if isinstance(dims, int) and flow == "channelwise":
            out[name] = {"channel": (dims,)}
        elif isinstance(dims, tuple) and dims and all(isinstance(d, int) for d in dims) and flow == "channelwise":
            out[name] = {"channel": dims}
        elif isinstance(dims, Mapping) and all(isinstance(d, int) for d in dims.values()):
            out[name] = {role: (d,) for role, d in dims.items()}
        else:
            example = ("an int, its channel dim (a tuple where several dims hold the channels)" if flow == "channelwise"
                       else "a mapping like {'out': 0, 'in': 1}")
            raise OptionError(f"register_op({_name(target)}): params['{name}'] is {dims!r}; give {example}")
    return out


def _check(d: OpDeclaration) -> None:
    where = f"register_op({_name(d.target)})"
    if not (isinstance(d.target, type) and issubclass(d.target, torch.nn.Module)) and not callable(d.target):
        raise OptionError(f"{where}: the target must be an nn.Module subclass or a function")
    if d.flow not in FLOWS:
        raise OptionError(f"{where}: flow={d.flow!r}; use one of {', '.join(FLOWS)}")
    roles = {"channel"} if d.flow == "channelwise" else {"in", "out"}
    for name, dims in d.params.items():
        wrong = set(dims) - roles
        if wrong:
            raise OptionError(f"{where}: params['{name}'] has role(s) {sorted(wrong)}; a {d.flow} op's tensors take "
                              f"{' and '.join(sorted(roles))}")
    counts = {"channels"} if d.flow == "channelwise" else {"in", "out"}
    for attribute, count in d.attributes.items():
        if count not in counts:
            raise OptionError(f"{where}: attributes['{attribute}'] = {count!r}; a {d.flow} op's attributes follow "
                              f"{' or '.join(repr(c) for c in sorted(counts))}")
    if d.attributes and not isinstance(d.target, type):
        raise OptionError(f"{where}: a function has no attributes; declare them on the module that calls it")
    if d.onnx_form is not None and not callable(d.onnx_form):
        raise OptionError(f"{where}: onnx_form must be a function")


def _name(target: Any) -> str:
    return getattr(target, "__qualname__", None) or repr(target)
