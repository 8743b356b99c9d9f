"""Per-node FLOPs and example values, as ``torch.utils.flop_counter.FlopCounterMode`` and a real run
give them, at a fraction of the cost of running the graph.

``FlopCounterMode`` counts only contractions: its formulas cover matmul (mm, addmm, bmm, baddbmm,
_scaled_mm), convolution and attention kernels, nothing else. Under the mode every other aten op
is decomposed into primitive ops in Python (a BatchNorm becomes a handful of elementwise kernels)
and module hooks track the module hierarchy, which makes counting a node several times slower
than running it. And analysis needs each node's output *shape*, not its values. So:

* a node whose op provably runs no contraction (BatchNorm, activations, pooling, additions, views,
  concatenations, ... on plain tensors, with no hooks involved) is run as is and costs 0 FLOPs,
  which is what the mode reports for it; any doubt (a module subclass, a hook, a tensor subclass, an
  unknown function, a torch whose ``FlopCounterMode`` counts more kinds of ops) counts the node;
* a node that may contract runs under ``FlopCounterMode``'s own dispatch mode (the same
  decompositions and formulas), without the module tracker, whose only job is the per-module
  breakdown (totals are kept under "Global" either way);
* a convolution, linear or matmul whose result only ever reaches *shape-only* ops (the ops above
  and other contractions: none of them looks at the values of a tensor, only at its shape) is run
  on meta tensors under the mode, which gives its output shape and FLOPs without computing it, and
  passes zeros of that shape on. That removes most of a CNN's compute. A node downstream that turns
  out to read values after all (indexing with a tensor, ``math`` on a tensor) restarts the run
  without substitution; a contraction whose meta run fails runs for real.
"""

from __future__ import annotations

import math
import operator
from typing import Any, Callable

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from .errors import GraphPruneError

#: the ops ``FlopCounterMode`` has formulas for, by overload packet name, when the tables below were
#: written (torch 2.4 - 2.14). If the installed torch counts any other op, every node is counted.
CONTRACTIONS = frozenset({
    "aten.mm", "aten.addmm", "aten.bmm", "aten.baddbmm", "aten._scaled_mm",
    "aten.convolution", "aten._convolution", "aten.cudnn_convolution", "aten._slow_conv2d_forward",
    "aten.convolution_backward", "aten.convolution_overrideable",
    "aten._scaled_dot_product_efficient_attention", "aten._scaled_dot_product_flash_attention",
    "aten._scaled_dot_product_cudnn_attention", "aten._scaled_dot_product_efficient_attention_backward",
    "aten._scaled_dot_product_flash_attention_backward", "aten._scaled_dot_product_cudnn_attention_backward",
    "aten._efficient_attention_forward", "aten._efficient_attention_backward",
    "aten._flash_attention_forward", "aten._flash_attention_backward",
    "flex_attention", "flex_attention_backward",
})

#: leaf modules (exact types: a subclass may override forward) whose forward runs no contraction
FREE_MODULES: frozenset[type] = frozenset({
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d,
    nn.GroupNorm, nn.LayerNorm,
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid, nn.Tanh,
    nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.Softsign, nn.Tanhshrink, nn.LogSigmoid,
    nn.Threshold, nn.PReLU, nn.Softmax, nn.LogSoftmax, nn.Identity,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
    nn.Flatten, nn.Unflatten, nn.PixelShuffle, nn.PixelUnshuffle, nn.ChannelShuffle,
    nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d,
    nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d,
    nn.ReplicationPad1d, nn.ReplicationPad2d, nn.ReplicationPad3d,
})

#: functions that run no contraction on plain tensors
FREE_FUNCTIONS: frozenset[Callable] = frozenset({
    getattr, len, math.sqrt, math.prod,
    operator.add, operator.sub, operator.mul, operator.truediv, operator.floordiv, operator.mod, operator.neg,
    operator.pow, operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.getitem,
    operator.eq, operator.ne, operator.lt, operator.le, operator.gt, operator.ge,
    torch.add, torch.sub, torch.subtract, torch.mul, torch.multiply, torch.div, torch.divide, torch.neg,
    torch.abs, torch.exp, torch.sqrt, torch.rsqrt, torch.pow, torch.relu, torch.sigmoid, torch.tanh,
    torch.erf, torch.square, torch.reciprocal, torch.log, torch.sin, torch.cos, torch.where,
    torch.maximum, torch.minimum, torch.clamp, torch.clip,
    torch.flatten, torch.reshape, torch.permute, torch.transpose, torch.swapaxes, torch.swapdims,
    torch.movedim, torch.moveaxis, torch.squeeze, torch.unsqueeze, torch.cat, torch.concat,
    torch.concatenate, torch.stack, torch.split, torch.chunk, torch.unbind, torch.tensor_split,
    torch.narrow, torch.flip, torch.roll, torch.t, torch.unflatten,
    torch.pixel_shuffle, torch.pixel_unshuffle, torch.channel_shuffle,
    torch.sum, torch.mean, torch.amax, torch.amin, torch.softmax, torch.log_softmax,
    F.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu, F.gelu, F.silu, F.mish, F.hardswish,
    F.hardsigmoid, F.hardtanh, F.sigmoid, F.tanh, F.softplus, F.softsign, F.logsigmoid, F.threshold,
    F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout,
    F.batch_norm, F.instance_norm, F.group_norm, F.layer_norm, F.softmax, F.log_softmax, F.pad,
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
    F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d,
    F.pixel_shuffle, F.pixel_unshuffle, F.channel_shuffle,
})

#: tensor methods that run no contraction
FREE_METHODS: frozenset[str] = frozenset({
    "size", "dim", "numel", "contiguous", "clone", "float", "double", "half", "bfloat16", "to", "type_as",
    "detach", "view", "view_as", "reshape", "reshape_as", "flatten", "unflatten", "permute", "transpose",
    "t", "movedim", "squeeze", "unsqueeze", "expand", "expand_as", "repeat", "split", "chunk", "unbind",
    "tensor_split", "narrow", "flip", "roll", "swapaxes", "swapdims",
    "add", "sub", "mul", "div", "add_", "sub_", "mul_", "div_", "neg", "abs", "exp", "sqrt", "rsqrt", "pow",
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "clamp", "clamp_", "clip", "square", "reciprocal",
    "masked_fill", "where", "maximum", "minimum", "erf",
    "sum", "mean", "amax", "amin", "softmax", "log_softmax",
})

_PLAIN_TENSORS = (torch.Tensor, nn.Parameter)
_LITERALS = (int, float, bool, str, slice, type(None), type(Ellipsis), torch.dtype, torch.device, torch.memory_format)
_MODULE_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
_GLOBAL_HOOKS = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks", "_global_backward_pre_hooks")


def _plain(value: Any) -> bool:
    """A plain tensor, a python literal, or a tuple/list of them: nothing that can override an op."""
    if type(value) in _PLAIN_TENSORS or isinstance(value, _LITERALS):
        return True
    if type(value) in (tuple, list, torch.Size):
        return all(_plain(v) for v in value)
    return False


class NodeFlops:
    """Decides which nodes to count and counts them (one instance per graph run)."""

    def __init__(self, gm: fx.GraphModule):
        self._modules = dict(gm.named_modules())
        self._counter = FlopCounterMode(display=False)
        registry = {str(k) for k in self._counter.flop_registry}
        global_hooks = any(getattr(nn.modules.module, h, None) for h in _GLOBAL_HOOKS)
        self._skip = registry <= CONTRACTIONS  # else: count every node
        self._skip_modules = self._skip and not global_hooks
        self._light = None
        try:
            from torch.utils.flop_counter import _FlopCounterMode

            self._light = _FlopCounterMode
        except ImportError:  # pragma: no cover - another torch: the public mode, module tracker included
            pass

    def free(self, n: fx.Node, env: dict[fx.Node, Any]) -> bool:
        """Whether ``n`` provably performs no operation ``FlopCounterMode`` counts."""
        if n.op in ("placeholder", "get_attr", "output"):
            return True
        if not self._skip:
            return False
        if n.op == "call_module":
            m = self._modules.get(n.target)
            if not self._skip_modules or type(m) not in FREE_MODULES or any(getattr(m, h, None) for h in _MODULE_HOOKS):
                return False
            if not all(type(t) in _PLAIN_TENSORS for t in (*m._parameters.values(), *m._buffers.values()) if t is not None):
                return False
        elif n.op == "call_function":
            if n.target not in FREE_FUNCTIONS:
                return False
        elif n.op == "call_method":
            if n.target not in FREE_METHODS:
                return False
        else:
            return False
        plain = True

        def check(a: Any) -> Any:
            nonlocal plain
            plain = plain and _plain(env[a] if isinstance(a, fx.Node) else a)
            return a

        fx.node.map_aggregate(n.args, check)
        fx.node.map_aggregate(n.kwargs, check)
        return plain

    def count(self, run: Callable[[], Any]) -> tuple[Any, int]:
        """``run()`` under FlopCounterMode's dispatch mode: its result and the FLOPs it performed."""
        if self._light is not None:
            try:
                mode = self._light(self._counter)
            except TypeError:  # pragma: no cover - another torch's private signature
                self._light = None
            else:
                self._counter.flop_counts.clear()
                with mode:
                    out = run()
                return out, int(self._counter.get_total_flops())
        counter = FlopCounterMode(display=False)
        with counter:
            out = run()
        return out, int(counter.get_total_flops())


# ------------------------------------------------------------------ shape-only runs

#: leaf modules (exact types) computing a contraction whose output shape needs no values
CONTRACTION_MODULES: frozenset[type] = frozenset({
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear,
})
#: contraction functions and methods whose output shape needs no values. Not attention: its CPU
#: kernel is not one FlopCounterMode has a formula for, the meta one decomposes into bmm.
CONTRACTION_FUNCTIONS: frozenset[Callable] = frozenset({
    F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d, F.linear,
    torch.matmul, operator.matmul, torch.bmm, torch.mm,
})
CONTRACTION_METHODS: frozenset[str] = frozenset({"matmul", "bmm", "mm"})
#: functions outside torch whose output shape needs no values, by qualified name
SHAPE_ONLY_NAMED = frozenset({"torchvision.ops.stochastic_depth.stochastic_depth"})


class Restart(GraphPruneError):
    """A node downstream of a substituted contraction reads values: run the graph again for real
    (raised and caught inside :func:`graphprune.trace.propagate`)."""


def _qualified(f: Any) -> str:
    return f"{getattr(f, '__module__', '')}.{getattr(f, '__qualname__', '')}"


class ShapeOnlyRuns:
    """Which contractions of ``gm`` run on meta tensors, and running them (see the module docstring)."""

    def __init__(self, gm: fx.GraphModule, flops: NodeFlops):
        self._flops = flops
        self._modules = flops._modules
        self.nodes: set[fx.Node] = set()
        self.tainted: set[fx.Node] = set()
        if not flops._skip_modules:
            return
        closed: dict[fx.Node, bool] = {}  # every node downstream is shape-only
        for n in reversed(gm.graph.nodes):
            closed[n] = all(closed[u] and self._shape_only(u) for u in n.users)
            if closed[n] and self._contraction(n):
                self.nodes.add(n)

    def _module_ok(self, m: Any, types: frozenset) -> bool:
        return (
            type(m) in types
            and not any(getattr(m, h, None) for h in _MODULE_HOOKS)
            and all(type(t) in _PLAIN_TENSORS for t in (*m._parameters.values(), *m._buffers.values()) if t is not None)
        )

    def _contraction(self, n: fx.Node) -> bool:
        if n.op == "call_module":
            return self._module_ok(self._modules.get(n.target), CONTRACTION_MODULES)
        if n.op == "call_function":
            return n.target in CONTRACTION_FUNCTIONS
        return n.op == "call_method" and n.target in CONTRACTION_METHODS

    def _shape_only(self, n: fx.Node) -> bool:
        if n.op == "output":
            return True
        if n.op == "call_module":
            m = self._modules.get(n.target)
            return self._module_ok(m, FREE_MODULES) or self._module_ok(m, CONTRACTION_MODULES)
        if n.op == "call_function":
            return n.target in FREE_FUNCTIONS or n.target in CONTRACTION_FUNCTIONS or _qualified(n.target) in SHAPE_ONLY_NAMED
        if n.op == "call_method":
            return n.target in FREE_METHODS or n.target in CONTRACTION_METHODS
        return False

    def check(self, n: fx.Node, args: tuple, kwargs: dict) -> None:
        """Before running ``n``: raise Restart if it reads the values of a substituted result."""
        if not any(a in self.tainted for a in n.all_input_nodes):
            return
        self.tainted.add(n)
        values = []
        fx.node.map_aggregate((args, kwargs), lambda v: values.append(v) if isinstance(v, torch.Tensor) else None)
        if n.op == "call_function" and n.target is operator.getitem and _holds_tensor(args[1:]):
            raise Restart(f"'{n.name}' indexes with a tensor")
        if n.op == "call_function" and n.target is torch.where and len(args) + len(kwargs) == 1:
            raise Restart(f"'{n.name}' is torch.where(condition)")
        if n.op == "call_function" and n.target in (math.sqrt, math.prod) and values:
            raise Restart(f"'{n.name}' reads a tensor's values")
        if n.op == "output":
            return
        if not all(_plain(v) for v in values):
            raise Restart(f"'{n.name}' gets a tensor subclass")

    def run(self, n: fx.Node, args: tuple, kwargs: dict) -> tuple[Any, int] | None:
        """Output (zeros of the real output's shape, dtype and strides) and FLOPs of contraction ``n``
        computed on meta tensors; None if that cannot be done (then ``n`` runs for real)."""
        devices = set()
        plain = True

        def meta(v: Any) -> Any:
            nonlocal plain
            if isinstance(v, torch.Tensor):
                plain = plain and type(v) in _PLAIN_TENSORS
                devices.add(v.device)
                return torch.empty_like(v, device="meta").requires_grad_(v.requires_grad)
            return v

        margs, mkwargs = fx.node.map_aggregate(args, meta), fx.node.map_aggregate(kwargs, meta)
        if n.op == "call_module":
            m = self._modules[n.target]
            state = {k: meta(v) for k, v in (*m.named_parameters(), *m.named_buffers())}
            call = lambda: torch.func.functional_call(m, state, margs, mkwargs)  # noqa: E731
        elif n.op == "call_function":
            call = lambda: n.target(*margs, **mkwargs)  # noqa: E731
        else:
            call = lambda: getattr(margs[0], n.target)(*margs[1:], **mkwargs)  # noqa: E731
        if not plain or len(devices) != 1:
            return None
        (device,) = devices
        try:
            out, flops = self._flops.count(call)
        except Exception:  # no meta kernel, or the op fails: the real run decides
            return None
        if not isinstance(out, torch.Tensor) or out.device.type != "meta":
            return None
        self.tainted.add(n)
        return torch.zeros_like(out, device=device), flops


def _holds_tensor(value: Any) -> bool:
    found = False

    def visit(v: Any) -> Any:
        nonlocal found
        found = found or isinstance(v, torch.Tensor)
        return v

    fx.node.map_aggregate(value, visit)
    return found
