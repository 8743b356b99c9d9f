"""The op table: everything graphprune knows about each op, in one entry per op.

An op is a module class, a function, a tensor method (``torch.Tensor.view``) or an object of
another library by qualified name (so that the library need not be installed). Its :class:`Op`
entry holds what each stage needs: analysis its channel rule, FLOP counting whether it runs a
contraction and how a shape-only run stands in for it, slimming its module fix-up and
graph-constant rewrite, tracing its plain-op form; each stage looks its field up here.

:func:`register_op` is the one way into the table, in two forms. The built-in ops
(``graphprune/op_table.py``) set the entry's own fields (``rule=``, ``cost=``, ``fixup=``, ...),
each at most once: no op is described twice, so someone adding an op edits one entry. A user's
layer is usually *declared* instead (``flow=...``), which says what the fields would in terms
of its tensors.

A module class or function graphprune cannot see into (a custom layer whose ``forward`` is a
``torch.autograd.Function``, a CUDA extension, a fused block) is opaque to tracing: every
channel it touches is frozen. A declaration says how it treats channels, and every stage reads
that one declaration:

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
from typing import Any, Callable, Iterator, Mapping

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


#: the trace function for a wrapped library function whose own code traces as it is (``Op.form``)
OWN_CODE = "own code"


@dataclasses.dataclass
class Op:
    """What graphprune knows about one op; each stage reads its own fields (None: nothing)."""

    #: analysis (rules.py): how channels flow through it; an op without one is opaque
    rule: Callable | None = None
    #: FLOP counting (flops.py): "free", it runs nothing ``FlopCounterMode`` counts; "contraction",
    #: it runs one whose output shape needs no values
    cost: str | None = None
    #: how a shape-only run stands in for it (flops.ShapeOnlyRuns): "alias" (its input), "norm",
    #: "pool", "binary" (broadcast), "contraction" (a meta run)
    stand_in: str | None = None
    #: shape and FLOPs by formula, or checks before a meta run (flops.py): "conv", "conv_transpose",
    #: "linear", "adaptive_pool"
    formula: str | None = None
    #: spatial dims of a formula's op (an adaptive pool's output size)
    spatial_dims: int | None = None
    #: slimming (slim.py): sets a module's attributes to its new channel counts
    fixup: Callable | None = None
    #: slimming (slim.py): moves a graph node's constants (split sizes, view shapes) to the new counts
    rewrite: Callable | None = None
    #: tracing (equivalents.py): what is traced instead of the library code, or OWN_CODE
    form: Callable | str | None = None
    #: analysis: how a movement op runs on label tensors when calling it as is would be wrong
    on_labels: Callable | None = None
    #: analysis: the position of an argument that passes only a shape or dtype
    shape_only_arg: int | None = None
    #: what its constant arguments give, which pruning must rewrite: "shape" (view, reshape,
    #: expand), "dim sizes" (unflatten), "split sizes", "chunks", "slice" (narrow, indexing)
    takes: str | None = None
    #: analysis' RMS-norm pattern (rules.mean): "power" (x ** k, a square with k = 2), "rescale" (a product or quotient)
    arithmetic: str | None = None
    #: methods: NAP's K-FAC factors its weight (graphprune/passes/kfac.py); DHP's hypernetworks generate its
    #: weight (graphprune/passes/reparam.py). Both read a module class and its subclasses.
    kfac: bool | None = None
    generated: bool | None = None
    #: the user's register_op declaration
    declaration: "OpDeclaration | None" = None


_TABLE: dict[tuple[str, Any], Op] = {}
#: the entry of every namedtuple class: packing tensors into one
NAMEDTUPLE = "collections.namedtuple"
#: lookups by class and by function, remembered (analysis asks for every node); cleared when the table changes
_FOUND: dict[tuple[str, Any], Op | None] = {}


def module_op(cls: type) -> Op | None:
    """The entry of a module class itself (not of its bases), by class or qualified name."""
    key = ("class", cls)
    if key not in _FOUND:
        _FOUND[key] = _TABLE.get(("module", cls)) or _TABLE.get(("named", f"{cls.__module__}.{cls.__qualname__}"))
    return _FOUND[key]


def module_ops(cls: type) -> Iterator[tuple[type, Op]]:
    """The entries of ``cls`` and its bases, nearest first."""
    for base in cls.__mro__:
        entry = module_op(base)
        if entry is not None:
            yield base, entry


def inherited(cls: type, field: str, keeps_forward: bool = False) -> Any:
    """``field`` of the nearest entry among ``cls`` and its bases that sets it (isinstance semantics);
    ``keeps_forward``: only bases whose ``forward`` ``cls`` does not override (a rule, a declaration
    describes a forward). None where none does."""
    key = (field, cls, keeps_forward)
    if key not in _FOUND:
        _FOUND[key] = next((getattr(e, field) for base, e in module_ops(cls) if getattr(e, field) is not None
                            and (not keeps_forward or base is cls or cls.forward is base.forward)), None)
    return _FOUND[key]


def module_is(module: torch.nn.Module, field: str) -> bool:
    """Whether ``module``'s class or a base of it has ``field`` set (isinstance semantics)."""
    return bool(inherited(type(module), field))


def module_rule(module: torch.nn.Module) -> Any:
    """The rule for a leaf module: its class's, or a base's whose ``forward`` it does not override."""
    return inherited(type(module), "rule", keeps_forward=True)


def function_op(fn: Any) -> Op | None:
    key = ("function", fn)
    try:
        if key in _FOUND:
            return _FOUND[key]
    except TypeError:  # unhashable: never an op
        return None
    found = _TABLE.get(key) or _TABLE.get(("named", f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', '')}"))
    if found is None and isinstance(fn, type) and issubclass(fn, tuple) and hasattr(fn, "_fields"):
        found = _TABLE.get(("named", NAMEDTUPLE))  # every namedtuple class (googlenet's training outputs) packs alike
    _FOUND[key] = found
    return found


def method_op(name: str) -> Op | None:
    return _TABLE.get(("method", name))


def node_op(node: Any, module: torch.nn.Module | None) -> Op | None:
    """The entry of an fx node's op: its module's class (exactly), function or method."""
    if node.op == "call_module":
        return module_op(type(module)) if module is not None else None
    if node.op == "call_function":
        return function_op(node.target)
    if node.op == "call_method":
        return method_op(node.target)
    return None



def is_python_arithmetic(fn: Any) -> bool:
    """Whether ``fn`` is Python's own (operator, math, builtins): on sizes and constants, arithmetic no rule needs to see."""
    return getattr(fn, "__module__", None) in ("_operator", "math", "builtins")


def takes(node: Any) -> str | None:
    """What a function or method node's constant arguments give (``Op.takes``), or None."""
    entry = node_op(node, None) if node.op in ("call_function", "call_method") else None
    return entry.takes if entry is not None else None


#: the values the table's string fields take (see :class:`Op`)
CHOICES = {
    "cost": ("free", "contraction"),
    "stand_in": ("alias", "norm", "pool", "binary", "contraction"),
    "formula": ("conv", "conv_transpose", "linear", "adaptive_pool"),
    "takes": ("shape", "dim sizes", "split sizes", "chunks", "slice"),
    "arithmetic": ("power", "rescale"),
}


def register_op(
    target: Any,
    *,
    flow: str | None = None,
    channel_dim: int = 1,
    params: Mapping[str, int | Mapping[str, int]] | None = None,
    attributes: Mapping[str, str] | None = None,
    onnx_form: Callable | None = None,
    **fields: Any,
) -> OpDeclaration | None:
    """Tell graphprune how ``target`` treats channels: declare it (``flow=...``), or set fields of
    its op-table entry (the form ``graphprune/op_table.py`` uses for the built-in ops).

    ``target``: an ``nn.Module`` subclass, a function, a tensor method (``torch.Tensor.view``), a
    qualified name (``"timm.layers.attention.maybe_add_mask"``: the library need not be
    installed), or a tuple of them.

    **A declaration** (a module class or function): ``flow``, ``"channelwise"`` or ``"producer"``
    (see the module docstring). ``channel_dim``: the dim of its inputs and output that holds
    channels (1 for NCHW, -1 for tokens). ``params``: the tensors holding channels, by name (a
    module's parameters and buffers; a function's argument names), each with its dims: an int for
    a channelwise op (``{"scale": 0}``; a tuple where several dims hold the channels,
    ``{"proj.weight": (0, 1)}``, which makes its MACs quadratic in them), a mapping for a producer
    (``{"weight": {"out": 0, "in": 1}, "bias": {"out": 0}}``). Submodules' tensors and attributes
    are named with dots. ``attributes``: module attributes that ``forward`` reads as channel
    counts, with the count each follows (``{"num_features": "channels"}``, ``{"in_features":
    "in", "out_features": "out"}``). ``onnx_form``: the op in plain PyTorch ops, called as
    ``onnx_form(module, *inputs)`` for a module or with the function's own arguments, used by
    :func:`graphprune.export_onnx`. Declaring a target again replaces its declaration;
    :func:`unregister_op` removes it. Returns the declaration.

    **Fields** (the fields of :class:`Op`, e.g. ``rule=rules.movement, cost="free"``): each is set
    once; describing a field an entry already has is an error.
    """
    targets = tuple(dict.fromkeys(target if isinstance(target, tuple) else (target,)))  # aliases (F.pad is torch's) once
    if flow is None:
        if params or attributes or onnx_form is not None or channel_dim != 1:
            raise OptionError(f"register_op({_name(target)}): params, attributes, channel_dim and onnx_form are part of "
                              "a declaration: give flow= too")
        if not fields:
            raise OptionError(f"register_op({_name(target)}): give flow= (a declaration) or the op table's fields")
        for t in targets:
            _set_fields(t, fields)
        return None
    if fields:
        raise OptionError(f"register_op({_name(target)}): flow= declares the op, {', '.join(fields)} set the op table's "
                          "fields directly: give one or the other")
    if len(targets) != 1 or _key(targets[0])[0] not in ("module", "function"):
        raise OptionError(f"register_op({_name(target)}): a declaration is of one nn.Module subclass or one function")
    declaration = OpDeclaration(target, flow, channel_dim, _checked_params(target, flow, params or {}),
                                dict(attributes or {}), onnx_form)
    _check(declaration)
    _FOUND.clear()
    _TABLE.setdefault(_key(target), Op()).declaration = declaration
    return declaration


def _set_fields(target: Any, fields: Mapping[str, Any]) -> None:
    where = f"register_op({_name(target)})"
    known = [f.name for f in dataclasses.fields(Op) if f.name != "declaration"]  # that one: flow=
    for field, value in fields.items():
        if field not in known:
            raise OptionError(f"{where}: unknown field {field!r}; a declaration takes flow=, params=, attributes=, "
                              f"onnx_form=; the op table's fields are {', '.join(known)}")
        if field in CHOICES and value not in CHOICES[field]:
            raise OptionError(f"{where}: {field}={value!r}; use one of {', '.join(map(repr, CHOICES[field]))}")
    _FOUND.clear()
    entry = _TABLE.setdefault(_key(target), Op())
    for field, value in fields.items():
        if getattr(entry, field) is not None:
            raise OptionError(f"{where}: its {field} is already {getattr(entry, field)!r}; each op is described once "
                              "(graphprune/op_table.py describes the built-in ones)")
        setattr(entry, field, value)


def unregister_op(target: Any) -> None:
    """Forget what :func:`register_op` said about ``target``: its declaration where it has one,
    else its entry's fields. Either way it is opaque again."""
    key = _key(target)
    entry = _TABLE.get(key)
    if entry is None:
        raise OptionError(f"{_name(target)} is not in graphprune's op table: nothing to unregister")
    _FOUND.clear()
    if entry.declaration is not None:
        entry.declaration = None
    else:
        del _TABLE[key]


def declaration_of(target: Any) -> OpDeclaration | None:
    """The declaration of a module (by its class, or a declared base class it does not override
    ``forward`` of), of a module class, or of a function; or None."""
    if isinstance(target, torch.nn.Module):
        return inherited(type(target), "declaration", keeps_forward=True)
    entry = module_op(target) if isinstance(target, type) else function_op(target)
    return entry.declaration if entry is not None else None


def declared_functions() -> tuple[Callable, ...]:
    """The functions declared with register_op: tracing keeps their calls as nodes."""
    return tuple(target for (kind, target), e in _TABLE.items() if kind == "function" and e.declaration is not None)


def _key(target: Any) -> tuple[str, Any]:
    if isinstance(target, str):
        return ("named", target)
    if isinstance(target, type) and issubclass(target, torch.nn.Module):
        return ("module", target)
    name = getattr(target, "__name__", None)
    if isinstance(name, str) and getattr(torch.Tensor, name, None) is target:
        return ("method", name)
    return ("function", target)


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
