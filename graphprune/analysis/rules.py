"""The rules: how channels flow through each op kind.

Every fx node is handled by exactly one rule, looked up in the op table (op_table.py) by module
type, function or method name.
A rule reads the channel maps of its inputs from the :class:`~graphprune.analysis.runner.Analysis` context,
links atoms that must be pruned together, registers the parameters that must be sliced (members),
the MACs it performs, and sets the channel map of its output. An op without a rule is *unknown*:
every channel it touches is frozen with a reason. To support a new op, give its op_table.py entry
one of these rules, or write a new one here.

Rule kinds:
  producer    conv / conv-transpose / linear / embedding: output channels are new atoms
  norm        batch/instance/group/layer norm, PReLU: per-channel parameters follow the input
  elementwise activations, dropout, add/sub/mul/div/where...: operands share atoms (broadcasting)
  mixing      pooling, interpolate, softmax, reductions: must not mix the channel dim
  movement    view/reshape/permute/cat/split/slice/pad/pixel-shuffle...: executed on labels
  contraction matmul/bmm/einsum/scaled-dot-product attention: contracted dims share atoms
  shape       x.size(), x.shape: python values; checked for uses that pruning would change
"""

from __future__ import annotations

import inspect
import math
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from .. import ops
from .channels import ChannelMap
from ..tracing.specs import TensorSpec

if TYPE_CHECKING:
    from ..groups.graph import Analysis

Rule = Callable[["Analysis", fx.Node], None]


class RuleKind:
    PRODUCER = "producer"
    NORM = "norm"
    ELEMENTWISE = "elementwise"
    MIXING = "mixing"
    MOVEMENT = "movement"
    CONTRACTION = "contraction"
    SHAPE = "shape"


def _kind(kind: str):
    def tag(fn):
        fn.kind = kind
        return fn

    return tag


# ----------------------------------------------------------------------------------------- producers


def _producer(
    ctx: "Analysis",
    node: fx.Node,
    x: fx.Node,
    in_dim: int,
    out_dim: int,
    out_channels: int,
    groups: int,
    params: "ParamSlots",
) -> None:
    """Shared logic of conv, conv-transpose and linear (functional or module).

    ``params`` names where each parameter dim lives. Grouped convs are pruned a whole conv group
    at a time: the input and output channels of one group are linked into one channel, so the
    group count shrinks and each group keeps its width.
    """
    in_map = ctx.demand(x, in_dim, node)
    out = ctx.atoms.new(out_channels)
    out_map = ChannelMap(out_dim, out)
    if groups == 1:
        ctx.member(params.weight, params.weight_out_dim, out, "out", params.weight_rows)
        ctx.member(params.weight, params.weight_in_dim, in_map.labels, "in")
        factors = [in_map, out_map]
    else:
        ctx.atoms.link_rows(np.concatenate([in_map.labels.reshape(groups, -1), out.reshape(groups, -1)], axis=1))
        # the weight dim of size C/groups stays whole; only the dim of full size is sliced
        if params.transposed:
            ctx.member(params.weight, params.weight_in_dim, in_map.labels, "in")
        else:
            ctx.member(params.weight, params.weight_out_dim, out, "out")
        factors = [out_map]
    if params.bias is not None:
        ctx.member(params.bias, 0, out, "out", params.bias_rows)
    ctx.macs(node, factors)
    ctx.set(node, out_map)


class ParamSlots:
    """Where a producer's weight and bias live (module attribute or get_attr target).

    ``weight_rows`` / ``bias_rows``: the (start, stop) part of a packed parameter's output dim
    the producer reads (None: all of it).
    """

    def __init__(self, weight, bias, weight_out_dim: int, weight_in_dim: int, transposed: bool = False,
                 weight_rows: tuple[int, int] | None = None, bias_rows: tuple[int, int] | None = None):
        self.weight, self.bias = weight, bias
        self.weight_out_dim, self.weight_in_dim = weight_out_dim, weight_in_dim
        self.transposed = transposed
        self.weight_rows, self.bias_rows = weight_rows, bias_rows


@_kind(RuleKind.PRODUCER)
def conv_module(ctx: "Analysis", node: fx.Node) -> None:
    m = ctx.module(node)
    transposed = m.transposed
    slots = ParamSlots(
        (node.target, "weight"),
        (node.target, "bias") if m.bias is not None else None,
        weight_out_dim=1 if transposed else 0,
        weight_in_dim=0 if transposed else 1,
        transposed=transposed,
    )
    _producer(ctx, node, node.args[0], 1, 1, m.out_channels, m.groups, slots)


@_kind(RuleKind.PRODUCER)
def conv_function(ctx: "Analysis", node: fx.Node) -> None:
    args = ctx.bound_args(node, ("input", "weight", "bias", "stride", "padding", "dilation", "groups"))
    weight, bias = ctx.param_ref(args.get("weight")), ctx.param_ref(args.get("bias"))
    if weight is None or (args.get("bias") is not None and bias is None):
        return unknown(ctx, node, "its weight is computed in forward, so graphprune cannot slice it")
    out_channels = ctx.spec(node).shape[1]
    slots = ParamSlots(weight, bias, weight_out_dim=0, weight_in_dim=1)
    _producer(ctx, node, args["input"], 1, 1, out_channels, int(args.get("groups", 1) or 1), slots)


@_kind(RuleKind.PRODUCER)
def linear_module(ctx: "Analysis", node: fx.Node) -> None:
    m = ctx.module(node)
    slots = ParamSlots((node.target, "weight"), (node.target, "bias") if m.bias is not None else None, 0, 1)
    _linear(ctx, node, node.args[0], m.out_features, slots)


@_kind(RuleKind.PRODUCER)
def linear_function(ctx: "Analysis", node: fx.Node) -> None:
    args = ctx.bound_args(node, ("input", "weight", "bias"))
    weight, bias = ctx.param_ref(args.get("weight")), ctx.param_ref(args.get("bias"))
    if weight is None or (args.get("bias") is not None and bias is None):
        return unknown(ctx, node, "its weight is computed in forward, so graphprune cannot slice it")
    _linear(ctx, node, args["input"], ctx.spec(node).shape[-1], ParamSlots(weight, bias, 0, 1))


@_kind(RuleKind.PRODUCER)
def addmm_function(ctx: "Analysis", node: fx.Node) -> None:
    """``torch.addmm(bias, x, weight)`` with an (in, out) weight: Hugging Face's ``Conv1D`` (GPT-2)."""
    args = ctx.bound_args(node, ("input", "mat1", "mat2"))
    weight, bias = ctx.param_ref(args.get("mat2")), ctx.param_ref(args.get("input"))
    if weight is None or bias is None or ctx.spec(args["input"]).ndim != 1 or node.kwargs:
        return unknown(ctx, node, "it is not a linear layer (bias + x @ weight with both parameters, no beta/alpha)")
    _linear(ctx, node, args["mat1"], ctx.spec(node).shape[-1], ParamSlots(weight, bias, 1, 0))


@_kind(RuleKind.PRODUCER)
def linear_rows(ctx: "Analysis", node: fx.Node) -> None:
    """A linear reading rows of packed parameters (equivalents.linear_rows): members at an offset."""
    args = ctx.bound_args(node, ("input", "weight", "bias", "weight_rows", "bias_rows"))
    weight, bias = ctx.param_ref(args["weight"]), ctx.param_ref(args.get("bias"))
    if weight is None or (args.get("bias") is not None and bias is None):
        return unknown(ctx, node, "its weight is computed in forward, so graphprune cannot slice it")
    slots = ParamSlots(weight, bias, 0, 1, weight_rows=args["weight_rows"], bias_rows=args.get("bias_rows"))
    _linear(ctx, node, args["input"], ctx.spec(node).shape[-1], slots)


def _linear(ctx: "Analysis", node: fx.Node, x: fx.Node, out_features: int, slots: ParamSlots) -> None:
    last = ctx.spec(x).ndim - 1
    m = ctx.map(x)
    if m is not None and m.dim != last:
        # a linear over a non-channel dim (e.g. tokens) is channel-wise for the dim it leaves alone;
        # its own weights are then not tied to any channel
        ctx.macs(node, [m])
        ctx.set(node, m)
        return
    _producer(ctx, node, x, last, last, out_features, 1, slots)


@_kind(RuleKind.PRODUCER)
def embedding_module(ctx: "Analysis", node: fx.Node) -> None:
    m = ctx.module(node)
    out = ctx.atoms.new(m.embedding_dim)
    ctx.member((node.target, "weight"), 1, out, "out")
    ctx.set(node, ChannelMap(ctx.spec(node).ndim - 1, out))


# --------------------------------------------------------------------------------------- norms

def _norm(ctx: "Analysis", node: fx.Node, x: fx.Node, params: list, channel_dim: int | None, group_count: int = 0) -> None:
    """Per-channel parameters (``params``: refs, None for absent) follow the input's channels.

    ``channel_dim`` None means the norm normalizes *across* the last dim (LayerNorm): pruning is
    allowed but not exact, and the group is marked as such.
    """
    who = ctx.describe(node)
    if channel_dim is None:
        m = ctx.map(x)
        last = ctx.spec(x).ndim - 1
        if m is None or m.dim != last:
            ctx.set(node, m)
            return
        ctx.atoms.mark_inexact(m.labels, f"{who} normalizes across these channels")
    else:
        m = ctx.demand(x, channel_dim, node)
    if group_count:
        ctx.atoms.link_rows(m.labels.reshape(group_count, -1))
    for ref in params:
        if ref is not None:
            ctx.member(ref, 0, m.labels, "channelwise")
    ctx.set(node, m)


def _module_params(node: fx.Node, m: nn.Module, names: tuple[str, ...]) -> list:
    return [(node.target, n) if getattr(m, n, None) is not None else None for n in names]


_BN_PARAMS = ("weight", "bias", "running_mean", "running_var")


@_kind(RuleKind.NORM)
def batchnorm_module(ctx: "Analysis", node: fx.Node) -> None:
    m = ctx.module(node)
    _norm(ctx, node, node.args[0], _module_params(node, m, _BN_PARAMS), 1)


@_kind(RuleKind.NORM)
def groupnorm_module(ctx: "Analysis", node: fx.Node) -> None:
    m = ctx.module(node)
    _norm(ctx, node, node.args[0], _module_params(node, m, ("weight", "bias")), 1, m.num_groups)


@_kind(RuleKind.NORM)
def layernorm_module(ctx: "Analysis", node: fx.Node) -> None:
    m = ctx.module(node)
    if len(m.normalized_shape) != 1:
        return unknown(ctx, node, "it normalizes over several dims")
    _norm(ctx, node, node.args[0], _module_params(node, m, ("weight", "bias")), None)


@_kind(RuleKind.NORM)
def prelu_module(ctx: "Analysis", node: fx.Node) -> None:
    m = ctx.module(node)
    if m.num_parameters == 1:
        return elementwise(ctx, node)
    _norm(ctx, node, node.args[0], [(node.target, "weight")], 1)


def _functional_params(ctx: "Analysis", node: fx.Node, names: tuple[str, ...], signature: tuple[str, ...]):
    args = ctx.bound_args(node, signature)
    refs = []
    for n in names:
        a = args.get(n)
        ref = ctx.param_ref(a)
        if a is not None and ref is None:
            return args, None
        refs.append(ref)
    return args, refs


@_kind(RuleKind.NORM)
def batchnorm_function(ctx: "Analysis", node: fx.Node) -> None:
    sig = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")
    args, refs = _functional_params(ctx, node, ("running_mean", "running_var", "weight", "bias"), sig)
    if refs is None:
        return unknown(ctx, node, "its parameters are computed in forward")
    _norm(ctx, node, args["input"], refs, 1)


@_kind(RuleKind.NORM)
def groupnorm_function(ctx: "Analysis", node: fx.Node) -> None:
    args, refs = _functional_params(ctx, node, ("weight", "bias"), ("input", "num_groups", "weight", "bias", "eps"))
    if refs is None:
        return unknown(ctx, node, "its parameters are computed in forward")
    _norm(ctx, node, args["input"], refs, 1, int(args["num_groups"]))


@_kind(RuleKind.NORM)
def layernorm_function(ctx: "Analysis", node: fx.Node) -> None:
    args, refs = _functional_params(ctx, node, ("weight", "bias"), ("input", "normalized_shape", "weight", "bias", "eps"))
    if refs is None or len(tuple(args["normalized_shape"])) != 1:
        return unknown(ctx, node, "its parameters are computed in forward or it normalizes over several dims")
    _norm(ctx, node, args["input"], refs, None)


# -------------------------------------------------------------------------------- elementwise

@_kind(RuleKind.ELEMENTWISE)
def elementwise(ctx: "Analysis", node: fx.Node) -> None:
    """Operands share channels where they are not broadcast (residual add, SE gating, where...)."""
    out_spec = ctx.spec(node)
    if not isinstance(out_spec, TensorSpec):
        return unknown(ctx, node, "returns a non-tensor computed from tensors")
    operands = ctx.tensor_inputs(node)
    out_ndim = out_spec.ndim
    mapped = {}
    for a in operands:
        m = ctx.map(a)
        if m is not None and m.size == out_spec.shape[m.dim + out_ndim - ctx.spec(a).ndim] and m.size > 1:
            mapped.setdefault(m.dim + out_ndim - ctx.spec(a).ndim, []).append((a, m))
    if not mapped:
        return ctx.set(node, None)
    if len(mapped) > 1:
        for pairs in mapped.values():
            for _, m in pairs:
                ctx.atoms.freeze(m.labels, f"{ctx.describe(node)} combines two channel dims in one tensor")
        return ctx.set(node, None)
    (out_dim, pairs), = mapped.items()
    labels = pairs[0][1].labels
    for a in operands:
        d = out_dim - (out_ndim - ctx.spec(a).ndim)
        if d < 0 or ctx.spec(a).shape[d] == 1:
            continue  # broadcast along the channel dim: no per-channel values
        ctx.atoms.link(labels, ctx.demand(a, d, node).labels)
    ctx.set(node, ChannelMap(out_dim, labels))


# ------------------------------------------------------------------------------------- mixing

def _mixing(mixed_dims: Callable[["Analysis", fx.Node], tuple[int, ...]], reduces: bool = False) -> Rule:
    """Ops that combine values along ``mixed_dims``: fine for other dims, frozen on the channel dim
    (a pruned channel's value, e.g. sigmoid(0), would be missing from the combination).

    ``reduces``: the mixed dims disappear (unless keepdim), so the channel dim index shifts.
    """

    @_kind(RuleKind.MIXING)
    def rule(ctx: "Analysis", node: fx.Node) -> None:
        x = node.args[0] if node.args else next(iter(node.kwargs.values()))
        m = ctx.map(x)
        if m is None:
            return ctx.set(node, None)
        ndim = ctx.spec(x).ndim
        dims = sorted({d % ndim for d in mixed_dims(ctx, node)})
        if m.dim in dims:
            ctx.atoms.freeze(m.labels, f"{ctx.describe(node)} combines values across the channels")
            return ctx.set(node, None)
        out_ndim = ctx.spec(node).ndim
        shift = sum(d < m.dim for d in dims) if reduces and out_ndim < ndim else 0
        ctx.set(node, m.moved(m.dim - shift))

    return rule


def _spatial(ctx: "Analysis", node: fx.Node) -> tuple[int, ...]:
    return tuple(range(2, ctx.spec(node.args[0]).ndim))


def _dim_arg(*names: str, default=None):
    def dims(ctx: "Analysis", node: fx.Node) -> tuple[int, ...]:
        args = ctx.bound_args(node, ("input",) + names)
        d = args.get(names[0], default)
        if d is None:
            return tuple(range(ctx.spec(node.args[0]).ndim))
        return tuple(d) if isinstance(d, (tuple, list)) else (int(d),)

    return dims


def _softmax_dim(ctx: "Analysis", node: fx.Node) -> tuple[int, ...]:
    """The dim softmax normalizes over: its ``dim`` (the module's, or the call's), or without one
    torch's implicit choice (``torch.nn.functional._get_softmax_dim``: 0 for 0-, 1- and 3-d inputs,
    else 1), which ``nn.Softmax()`` and ``F.softmax(x)`` still use."""
    args = ctx.bound_args(node, ("input", "dim"))
    dim = ctx.module(node).dim if node.op == "call_module" else args.get("dim")
    if dim is None:
        dim = 0 if ctx.spec(args["input"]).ndim in (0, 1, 3) else 1
    return (dim,)


pool = _mixing(_spatial)
softmax = _mixing(_softmax_dim)
reduce = _mixing(_dim_arg("dim"), reduces=True)

@_kind(RuleKind.MIXING)
def mean(ctx: "Analysis", node: fx.Node) -> None:
    """A mean across the channels is frozen like any reduction, except RMS normalization written
    out (Llama's ``x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)``): prunable and exact,
    since pruned channels add zero squares and the slim pass keeps the mean's original divisor."""
    if _rms_normalized(ctx, node) is None:
        return reduce(ctx, node)
    ctx.channel_means.add(node)
    ctx.set(node, None)


def _rms_normalized(ctx: "Analysis", node: fx.Node) -> ChannelMap | None:
    """The channels of ``x`` if ``node`` is ``mean(x ** 2)`` over exactly the channel dim (keepdim) and
    its value reaches nothing but (through elementwise ops of it alone) a product or quotient with ``x``."""
    args = ctx.bound_args(node, ("input", "dim", "keepdim"))
    square, dims = args.get("input"), args.get("dim")
    if not (isinstance(square, fx.Node) and _arithmetic(square) == "power" and args.get("keepdim")):
        return None
    exponent = square.args[1] if len(square.args) > 1 else 2
    x = square.args[0]
    m = ctx.map(x) if isinstance(x, fx.Node) else None
    if m is None or exponent != 2 or ctx.map(square) is None or not np.array_equal(ctx.map(square).labels, m.labels):
        return None
    ndim = ctx.spec(square).ndim
    if sorted(d % ndim for d in (dims if isinstance(dims, (tuple, list)) else [dims])) != [m.dim]:
        return None
    todo = list(node.users)
    while todo:
        use = todo.pop()
        inputs = ctx.tensor_inputs(use)
        if len(inputs) == 1 and rule_kind(use, None) == RuleKind.ELEMENTWISE and use.op != "call_module":
            todo.extend(use.users)  # + eps, rsqrt, sqrt, reciprocal, .to(dtype)
            continue
        others = [a for a in inputs if a not in (node,) and ctx.map(a) is not None]
        if _arithmetic(use) != "rescale" or len(inputs) != 2 or len(others) != 1 or not np.array_equal(ctx.map(others[0]).labels, m.labels):
            return None
    return m


def _arithmetic(node: fx.Node) -> str | None:
    entry = ops.node_op(node, None) if node.op in ("call_function", "call_method") else None
    return entry.arithmetic if entry is not None else None


# ----------------------------------------------------------------------------------- movement

@_kind(RuleKind.MOVEMENT)
def movement(ctx: "Analysis", node: fx.Node) -> None:
    """Pure data movement: run the op on label tensors, read the channel map off the result."""
    out = ctx.execute_on_labels(node)
    if node.op == "call_method" and shape_only_arg(node) is not None:  # expand_as, view_as, reshape_as
        _tie_to_shape_source(ctx, node, out)
    ctx.set(node, out)


def _tie_to_shape_source(ctx: "Analysis", node: fx.Node, out: ChannelMap | None) -> None:
    """``y.view_as(x)``, ``reshape_as``, ``expand_as``: the result takes ``x``'s size, channel dim included.

    Where both carry channels at the same dim, they must keep equal counts: linking them does it.
    Where only one does, pruning would change one size but not the other: it is frozen (a dim of
    size one that ``expand_as`` broadcasts follows any count).
    """
    source = node.args[1]
    sm = ctx.map(source) if isinstance(source, fx.Node) else None
    if out is not None and sm is not None and out.dim == sm.dim and out.size == sm.size:
        return ctx.atoms.link(out.labels, sm.labels)
    reason = (f"{ctx.describe(node)} takes its shape from the result of {ctx.describe(source)}, "
              "whose channel count would not follow")
    if out is not None:
        ctx.atoms.freeze(out.labels, reason)
    if sm is not None:
        x = ctx.spec(node.args[0])
        offset = ctx.spec(source).ndim - x.ndim
        broadcast = node.target == "expand_as" and (sm.dim < offset or x.shape[sm.dim - offset] == 1)
        if not broadcast:
            ctx.atoms.freeze(sm.labels, reason)


def _pad_module_as_function(m: nn.Module):
    if isinstance(m, (nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d)):
        return lambda x: F.pad(x, m.padding, "constant", -1.0)
    return m


def pad_function(x, pad, mode="constant", value=None):
    """F.pad on labels: constant padding holds no channel (label -1)."""
    return F.pad(x, pad, mode, -1.0 if mode == "constant" else None)


# -------------------------------------------------------------------------------- contraction

def _contraction_is_inexact(ctx: "Analysis", node: fx.Node, contracted: ChannelMap) -> None:
    """Two activations contracted over channels: no weight is there to zero, so removing a channel
    is exact only if its values are zero at the product (true for q/k straight from a linear)."""
    ctx.atoms.mark_inexact(contracted.labels, f"{ctx.describe(node)} contracts two activations over these channels")


@_kind(RuleKind.CONTRACTION)
def matmul(ctx: "Analysis", node: fx.Node) -> None:
    a, b = ctx.tensor_inputs(node)[:2]
    sa, sb, so = ctx.spec(a), ctx.spec(b), ctx.spec(node)
    if sa.ndim < 2 or sb.ndim < 2:
        return unknown(ctx, node, "matrix-vector products are not supported")
    ma, mb = ctx.map(a), ctx.map(b)
    factors, out_map = [], None
    batch = _batch_channels(ctx, node, [(a, ma), (b, mb)])
    if batch is not None:  # attention heads: channels along a batch dim are carried through
        factors.append(batch)
        out_map = batch
        ma = None if ma is not None and ma.dim < sa.ndim - 2 else ma
        mb = None if mb is not None and mb.dim < sb.ndim - 2 else mb
    if (ma is not None and ma.dim == sa.ndim - 1) or (mb is not None and mb.dim == sb.ndim - 2):
        ka, kb = ctx.demand(a, sa.ndim - 1, node), ctx.demand(b, sb.ndim - 2, node)
        ctx.atoms.link(ka.labels, kb.labels)
        _contraction_is_inexact(ctx, node, ka)
        factors.append(ka)
        ma = None if ma is not None and ma.dim == sa.ndim - 1 else ma
        mb = None if mb is not None and mb.dim == sb.ndim - 2 else mb
    for m, keep_dim, offset in ((ma, sa.ndim - 2, so.ndim - 2), (mb, sb.ndim - 1, so.ndim - 1)):
        if m is None:
            continue
        if m.dim != keep_dim or out_map is not None:
            ctx.atoms.freeze(m.labels, f"{ctx.describe(node)} mixes batch and channel dims")
            continue
        out_map = m.moved(offset)
        factors.append(m)
    ctx.macs(node, factors)
    ctx.set(node, out_map)


def _batch_channels(ctx: "Analysis", node: fx.Node, operands: list) -> ChannelMap | None:
    """The channels of a contraction's operands along one of their batch dims (every dim before the
    last two, aligned from the right: attention heads), linked where not broadcast; as the output's map."""
    out_ndim = ctx.spec(node).ndim
    found = [m.dim - ctx.spec(x).ndim for x, m in operands if m is not None and m.dim < ctx.spec(x).ndim - 2]
    if not found:
        return None
    labels = None
    for x, given in operands:
        d = found[0] + ctx.spec(x).ndim
        if d < 0 or ctx.spec(x).shape[d] == 1:
            continue  # broadcast along the heads
        m = given if given is not None and given.dim == d else ctx.demand(x, d, node)
        if labels is not None:
            ctx.atoms.link(labels, m.labels)
        labels = m.labels if labels is None else labels
    return ChannelMap(found[0] + out_ndim, labels)


def _shared_heads(ctx: "Analysis", node: fx.Node, kv: fx.Node, query_heads: int) -> ChannelMap:
    """sdpa's ``enable_gqa``: key/value head ``j`` serves query heads ``j * n_rep ... (j + 1) * n_rep - 1``
    (``repeat_interleave``); its map as the query heads see it, each kv head's atoms ``n_rep`` times, so
    pruning a kv head prunes the query heads sharing it and the ratio stays."""
    d = ctx.spec(kv).ndim - 3
    m = ctx.demand(kv, d, node)
    return ChannelMap(d, np.repeat(m.labels, query_heads // m.size))


@_kind(RuleKind.CONTRACTION)
def scaled_dot_product_attention(ctx: "Analysis", node: fx.Node) -> None:
    """q and k share their head dims (contracted), v's are the output's. With whole heads
    (``attention="heads"``) q, k, v and an additive mask indexed by heads (a learned attention
    bias) share the heads."""
    args = ctx.bound_args(node, ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale"))
    q, k, v = args["query"], args["key"], args["value"]
    mask = args.get("attn_mask") if ctx.is_tensor(args.get("attn_mask")) else None
    last = ctx.spec(q).ndim - 1
    who = ctx.describe(node)
    # FlopCounterMode's convention: q@kT costs batch*L*S*E MACs, attn@v costs batch*L*S*Ev, on every
    # kernel (graphprune.tracing.flops.EXTRA_FORMULAS adds the CPU one it lacks)
    sq, sv = ctx.spec(q).shape, ctx.spec(v).shape
    rows = math.prod(sq[:-1]) * sv[-2]
    if any(ctx.map(t) is not None and ctx.map(t).dim < last - 1 for t in (q, k, v)):  # whole heads
        operands = [(t, ctx.map(t)) for t in (q, k, v, mask) if t is not None]
        if args.get("enable_gqa") and ctx.spec(k).shape[:-3] == sq[:-3] and ctx.spec(k).shape[-3] != sq[-3]:
            operands[1:3] = [(t, _shared_heads(ctx, node, t, sq[-3])) for t in (k, v)]
        elif len({ctx.spec(t).shape[:-2] for t in (q, k, v)}) > 1:
            return unknown(ctx, node, "has q, k and v with different batch or head dims (without enable_gqa)")
        heads = _batch_channels(ctx, node, operands)
        ctx.macs(node, [heads], macs=rows * (sq[-1] + sv[-1]))
        return ctx.set(node, heads)
    if mask is not None and ctx.map(mask) is not None:
        ctx.atoms.freeze(ctx.map(mask).labels, f"{who} uses it as an attention mask")
    qm, km = ctx.demand(q, last, node), ctx.demand(k, last, node)
    ctx.atoms.link(qm.labels, km.labels)
    _contraction_is_inexact(ctx, node, qm)
    # a default scale (from q's head dim) is passed explicitly by the slim pass: it keeps its value
    vm = ctx.demand(v, ctx.spec(v).ndim - 1, node)
    ctx.macs(node, [qm], macs=rows * sq[-1])
    ctx.macs(node, [vm], macs=rows * sv[-1])
    ctx.set(node, vm)


@_kind(RuleKind.CONTRACTION)
def einsum(ctx: "Analysis", node: fx.Node) -> None:
    """``torch.einsum`` with explicit output labels: a label carrying channels links them in every
    operand that has it; kept in the output, it is the output's channel dim, contracted, it is
    matmul's contraction (a parameter operand is sliced as a consumer, ``in``); a label only a weight
    has that is kept in the output is a producer's new channels (``out``)."""
    equation, *operands = node.args
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = list(operands[0])
    who = ctx.describe(node)
    terms = _einsum_terms(equation, [ctx.spec(o).ndim if ctx.is_tensor(o) else -1 for o in operands])
    if terms is None:
        return unknown(ctx, node, f"has an einsum equation graphprune does not follow ({equation!r}: it needs "
                                  "explicit '->' output labels, no '...' and no label repeated within an operand)")
    ins, out = terms
    out_map, factors = None, []
    for label in dict.fromkeys("".join(ins)):
        where = [(o, s.index(label)) for o, s in zip(operands, ins) if label in s]
        acts = [(o, d) for o, d in where if ctx.param_ref(o) is None and ctx.spec(o).shape[d] > 1]
        weights = [(ctx.param_ref(o), d) for o, d in where if ctx.param_ref(o) is not None]
        if any(ctx.map(o) is not None and ctx.map(o).dim == d for o, d in acts):
            labels = None
            for o, d in acts:
                m = ctx.demand(o, d, node)
                if labels is not None:
                    ctx.atoms.link(labels, m.labels)
                labels = m.labels if labels is None else labels
            for ref, d in weights:
                ctx.member(ref, d, labels, "channelwise" if label in out else "in")
        elif label in out and weights and not acts:
            labels = ctx.atoms.new(ctx.spec(node).shape[out.index(label)])
            for ref, d in weights:
                ctx.member(ref, d, labels, "out")
        else:
            continue
        cmap = ChannelMap(out.index(label) if label in out else 0, labels)
        if label not in out:
            if len(where) == 1:
                ctx.atoms.freeze(labels, f"{who} sums over these channels")
                continue
            if len(acts) > 1:
                _contraction_is_inexact(ctx, node, cmap)
        elif out_map is not None:
            ctx.atoms.freeze(labels, f"{who} puts a second channel dim in its output")
            continue
        else:
            out_map = cmap
        factors.append(cmap)
    ctx.macs(node, factors)
    ctx.set(node, out_map)


def _einsum_terms(equation: object, ndims: list[int]) -> tuple[list[str], str] | None:
    """Input and output labels of an einsum equation graphprune follows, else None."""
    if not isinstance(equation, str) or "->" not in equation or "." in equation:
        return None
    lhs, out = equation.replace(" ", "").split("->")
    ins = lhs.split(",")
    if len(ins) != len(ndims) or any(len(s) != n or len(set(s)) != n for s, n in zip(ins, ndims)):
        return None
    if len(set(out)) != len(out) or not set(out) <= set(lhs):
        return None
    return ins, out


# ------------------------------------------------------------------------------------- shapes

@_kind(RuleKind.SHAPE)
def shape_read(ctx: "Analysis", node: fx.Node) -> None:
    """``x.size()``/``x.shape``: fine where the value only feeds reshapes (they follow the new size)."""
    x = node.args[0]
    m = ctx.map(x)
    if m is not None:
        ctx.check_shape_uses(node, m)
    ctx.set(node, None)


# ------------------------------------------------------------------------------------- masks

def attention_mask(ctx: "Analysis", node: fx.Node) -> None:
    """Masks built at run time (equivalents.py) hold no channels: a consumer that would need them
    per channel (a mask per head) freezes those channels, with this node named as the cause."""
    unknown(ctx, node, "builds an attention mask, which holds no channels")


# ---------------------------------------------------------------------------- declared ops

def declared(ctx: "Analysis", node: fx.Node) -> None:
    """An op the user declared with :func:`graphprune.register_op` (see ops.py)."""
    m = ctx.module(node) if node.op == "call_module" else None
    d = ops.declaration_of(m if m is not None else node.target)
    out_spec = ctx.spec(node)
    if not isinstance(out_spec, TensorSpec):
        return unknown(ctx, node, "is declared with register_op but does not return one tensor")
    if m is not None:
        refs = {name: (".".join([node.target, *name.split(".")[:-1]]), name.rpartition(".")[2])
                for name in d.params if isinstance(_dotted(m, name), torch.Tensor)}
        inputs = ctx.tensor_inputs(node)
    else:
        bound = _declared_arguments(node)
        refs = {name: ctx.param_ref(bound.get(name)) for name in d.params if bound.get(name) is not None}
        missing = [name for name, ref in refs.items() if ref is None]
        if missing:
            return unknown(ctx, node, f"is declared with register_op, but its argument '{missing[0]}' is computed in "
                                      "forward, so graphprune cannot slice it")
        held = {bound[name] for name in refs}
        inputs = [a for a in ctx.tensor_inputs(node) if a not in held]
    if not inputs:
        return unknown(ctx, node, "is declared with register_op but has no tensor input besides its declared params")
    dim = d.channel_dim % out_spec.ndim
    if d.flow == "channelwise":
        channels = ctx.demand(inputs[0], dim, node)
        for a in inputs[1:]:
            ctx.atoms.link(channels.labels, ctx.demand(a, d.channel_dim % ctx.spec(a).ndim, node).labels)
        for name, ref in refs.items():
            for param_dim in d.params[name]["channel"]:
                ctx.member(ref, param_dim, channels.labels, "channelwise")
        # MACs scale with the channels once per dim of one tensor that holds them (a square projection: twice)
        ctx.macs(node, [channels] * max([len(d.params[name]["channel"]) for name in refs] or [1]))
        return ctx.set(node, ChannelMap(dim, channels.labels))
    if len(inputs) != 1:
        return unknown(ctx, node, "is declared a producer with register_op but takes several tensor inputs")
    x = inputs[0]
    in_map = ctx.demand(x, d.channel_dim % ctx.spec(x).ndim, node)
    out_map = ChannelMap(dim, ctx.atoms.new(out_spec.shape[dim]))
    for name, ref in refs.items():
        for role, labels in (("out", out_map.labels), ("in", in_map.labels)):
            for param_dim in d.params[name].get(role, ()):
                ctx.member(ref, param_dim, labels, role)
    ctx.macs(node, [in_map, out_map])
    ctx.set(node, out_map)


def _dotted(owner: Any, name: str) -> Any:
    for part in name.split("."):
        owner = getattr(owner, part, None)
    return owner


def _declared_arguments(node: fx.Node) -> dict[str, Any]:
    """A declared function's arguments by name (its signature binds the positional ones)."""
    try:
        return dict(inspect.signature(node.target).bind(*node.args, **node.kwargs).arguments)
    except (TypeError, ValueError):
        return dict(node.kwargs)


# ------------------------------------------------------------------------------------- unknown

def unknown(ctx: "Analysis", node: fx.Node, why: str | None = None) -> None:
    """Freeze every channel the op touches; its output is opaque."""
    reason = f"{ctx.describe(node)} " + (why or "is not in graphprune's rule table")
    for a in ctx.tensor_inputs(node):
        m = ctx.map(a)
        if m is not None:
            ctx.atoms.freeze(m.labels, reason)
    ctx.set(node, None, opaque=reason)


unknown.kind = None


def roi_pool(ctx: "Analysis", node: fx.Node) -> None:
    """RoI pooling (torchvision's ``roi_align``, ``roi_pool``, ``MultiScaleRoIAlign``): each output
    channel pools that channel of the feature maps (the first argument: one tensor, or a list of
    them, which share their channels) over boxes; the boxes' dims carry no channels."""
    out_spec = ctx.spec(node)
    features = node.args[0] if node.args else None
    maps = [features] if isinstance(features, fx.Node) else list(features) if isinstance(features, (list, tuple)) else []
    if not isinstance(out_spec, TensorSpec) or out_spec.ndim != 4 or not maps or not all(ctx.is_tensor(f) for f in maps):
        return unknown(ctx, node, "pools regions of something other than NCHW feature maps")
    channels = ctx.demand(maps[0], 1, node)
    for f in maps[1:]:
        ctx.atoms.link(channels.labels, ctx.demand(f, 1, node).labels)
    for a in ctx.tensor_inputs(node):
        m = ctx.map(a)
        if a not in maps and m is not None:
            ctx.atoms.freeze(m.labels, f"{ctx.describe(node)} reads them as box coordinates")
    ctx.set(node, ChannelMap(1, channels.labels))


def assigns_in_place(ctx: "Analysis", node: fx.Node) -> None:
    """``x[idx] = v``: the tensor written and what is written into it are frozen."""
    unknown(ctx, node, "writes into a tensor in place, which the channel rules do not follow")


def mode_only(ctx: "Analysis", node: fx.Node) -> None:
    """An op of one mode's path only (modes.run_in_mode): what it reads is frozen."""
    unknown(ctx, node, f"runs in {'training' if node.args[1] else 'eval'} mode only (its module's forward takes another "
                       "path in the other mode), which the channel rules do not follow")


def mode_output(ctx: "Analysis", node: fx.Node) -> None:
    """The graph's output in training or eval mode, chosen when it runs (modes.merge_mode_paths):
    the tensors of both are model outputs."""
    ctx.freeze_outputs(node)
    ctx.set(node, None)


# --------------------------------------------------------------------------------- lookup
# which op gets which rule: op_table.py

def builds_attention_mask(ctx: "Analysis", node: fx.Node) -> None:
    """A library function building an attention mask from its argument: a mask with channels freezes them."""
    unknown(ctx, node, "builds an attention mask from it")


def shape_only_arg(node: fx.Node) -> int | None:
    """Position of ``node``'s argument that passes only a shape or dtype, if any."""
    entry = ops.node_op(node, None) if node.op != "call_module" else None
    return entry.shape_only_arg if entry is not None else None


def label_callable(node: fx.Node, m: nn.Module | None):
    """What to call when executing a movement node on label tensors."""
    if node.op == "call_module":
        return _pad_module_as_function(m)
    if node.op == "call_method":
        return lambda self, *a, **k: getattr(self, node.target)(*a, **k)
    entry = ops.function_op(node.target)
    return entry.on_labels if entry is not None and entry.on_labels is not None else node.target


def node_rule(node: fx.Node, m: nn.Module | None) -> Rule | None:
    if node.op in ("call_module", "call_function") and ops.declaration_of(m if m is not None else node.target):
        return declared
    if node.op == "call_module":
        return ops.module_rule(m)
    entry = ops.node_op(node, m)
    return entry.rule if entry is not None else None


def rule_kind(node: fx.Node, m: nn.Module | None) -> str | None:
    rule = node_rule(node, m)
    return getattr(rule, "kind", None) if rule is not None else None

