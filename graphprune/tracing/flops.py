"""Per-node FLOPs and example values, as ``torch.utils.flop_counter.FlopCounterMode`` and a real run
give them, at a fraction of the cost of running the graph.

``FlopCounterMode`` counts only contractions: its formulas cover matmul (mm, addmm, bmm, baddbmm,
_scaled_mm), convolution and attention kernels, nothing else. Under the mode every other aten op
is decomposed into primitive ops in Python (a BatchNorm becomes a handful of elementwise kernels)
and module hooks track the module hierarchy, which makes counting a node several times slower
than running it. And analysis needs each node's output *shape* (and dtype), not its values. So:

* ``NodeFlops``: a node whose op provably runs no contraction (BatchNorm, activations, pooling,
  additions, views, concatenations, ... on plain tensors, with no hooks involved) runs as is and
  costs 0 FLOPs, which is what the mode reports for it; any doubt (a module subclass, a hook, a
  tensor subclass, an unknown function, a torch whose ``FlopCounterMode`` counts more kinds of
  ops) counts the node. A counted node runs under ``FlopCounterMode``'s own dispatch mode (the
  same decompositions and formulas), without the module tracker, whose only job is the
  per-module breakdown (totals are kept under "Global" either way).
* ``ShapeOnlyRuns``: a node whose result only ever reaches *shape-only* ops (the ops above and
  convolutions, linears and matmuls: none of them looks at a tensor's values to decide its
  output's shape) gets a stand-in of the right shape, dtype and layout instead of being computed:
  contractions and big pools run on meta tensors (the reference shape computation; FLOPs from the
  mode, or for a plain convolution from the mode's own formula for the one op it dispatches),
  cached per configuration, and pass zeros on; elementwise modules, eval-mode norms and binary
  ops pass on the operand that already has the result's shape and dtype, after the checks the
  real op would make. That removes nearly all of a CNN's compute. A node downstream that reads
  values after all (indexing with a tensor, ``math`` on a tensor), or any failure near a
  stand-in, restarts the run for real, so errors are the real run's.

``tests/test_flops.py`` checks node by node that specs and FLOPs equal a real run under the mode.
"""

from __future__ import annotations

import math
import operator
from typing import Any, Callable

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from ..ops import module_op, node_op


def _cpu_attention_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


#: formulas ``FlopCounterMode`` lacks. Its attention formulas cover the CUDA kernels and the math
#: fallback (two bmm), not the CPU flash kernel, which it counts as 0: which kernel runs depends on
#: shapes (q and v head dims that differ after pruning pick the math one), so without this the same
#: attention would cost 0 or its full MACs depending on the device and on the plan.
EXTRA_FORMULAS: dict[Any, Callable] = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flop}


def flop_counter(display: bool = False) -> FlopCounterMode:
    """``FlopCounterMode`` with :data:`EXTRA_FORMULAS`: what the cost model's MACs are checked
    against (attention costs the same on every device and kernel). Use it like the mode itself."""
    return FlopCounterMode(display=display, custom_mapping=EXTRA_FORMULAS)

#: the ops ``FlopCounterMode`` has formulas for, by overload packet name, when the tables below were
#: written (torch 2.4 - 2.14). If the installed torch counts any other op, every node is counted.
CONTRACTIONS = frozenset({
    "aten.mm", "aten.addmm", "aten.bmm", "aten.baddbmm", "aten._scaled_mm",
    "aten.convolution", "aten._convolution", "aten.cudnn_convolution", "aten._slow_conv2d_forward",
    "aten.convolution_backward", "aten.convolution_overrideable",
    "aten._scaled_dot_product_efficient_attention", "aten._scaled_dot_product_flash_attention",
    "aten._scaled_dot_product_cudnn_attention", "aten._scaled_dot_product_flash_attention_for_cpu",
    "aten._scaled_dot_product_efficient_attention_backward",
    "aten._scaled_dot_product_flash_attention_backward", "aten._scaled_dot_product_cudnn_attention_backward",
    "aten._efficient_attention_forward", "aten._efficient_attention_backward",
    "aten._flash_attention_forward", "aten._flash_attention_backward",
    "flex_attention", "flex_attention_backward",
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


def _args_plain(value: Any, env: dict[fx.Node, Any]) -> bool:
    """``_plain`` for every leaf of a node's arguments (graph nodes read from ``env``)."""
    if isinstance(value, fx.Node):
        return _plain(env[value])
    if isinstance(value, (tuple, list)):
        return all(_args_plain(v, env) for v in value)
    if isinstance(value, dict):
        return all(_args_plain(v, env) for v in value.values())
    if isinstance(value, slice):
        return _args_plain((value.start, value.stop, value.step), env)
    return _plain(value)


class NodeFlops:
    """Decides which nodes to count and counts them (one instance per graph run)."""

    def __init__(self, gm: fx.GraphModule, modules: dict[str, nn.Module] | None = None):
        self._modules = dict(gm.named_modules()) if modules is None else modules
        self._counter = flop_counter()
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
            if not self._skip_modules or _cost(n, m) != "free" or any(getattr(m, h, None) for h in _MODULE_HOOKS):
                return False
            if not all(type(t) in _PLAIN_TENSORS for t in (*m._parameters.values(), *m._buffers.values()) if t is not None):
                return False
        elif n.op not in ("call_function", "call_method") or _cost(n) != "free":
            return False
        return _args_plain(n.args, env) and _args_plain(n.kwargs, env)

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
        counter = flop_counter()
        with counter:
            out = run()
        return out, int(counter.get_total_flops())


# ------------------------------------------------------------------ shape-only runs

#: a meta run of a pool costs about as much as pooling this many elements for real; smaller pools
#: run for real unless their configuration is cached. (Contractions always run on meta tensors:
#: counting a small one for real costs as much, and their configurations repeat.) Only speed
#: depends on it.
SUBSTITUTE_ELEMENTS = 200_000


class Restart(Exception):
    """A node downstream of a shape-only result reads values or fails: run the graph again for
    real. Control flow, never a user's error (so no :class:`GraphPruneError`): raised by
    :class:`ShapeOnlyRuns` and caught by whoever runs the graph with it
    (:func:`graphprune.tracing.tracer.propagate`, the slim pass's shape check), which then runs it for real."""



class ShapeOnlyRuns:
    """Shape-only execution of the nodes whose results only reach shape-only ops.

    Such a node's output values are never looked at, so a tensor of the right shape, dtype and
    layout stands in for it: contractions and pooling run on meta tensors (the reference shape
    and FLOP computation; results are cached per configuration), elementwise modules, norms and
    binary ops pass on the operand that already has the result's shape and dtype. Each shortcut
    applies only where its preconditions are checked; otherwise the node runs for real.
    """

    def __init__(self, gm: fx.GraphModule, flops: NodeFlops, count: bool = True):
        """``count``: contractions report their FLOPs (a check of shapes alone needs none)."""
        self._flops = flops
        self._count = count
        self._modules = flops._modules
        self.closed: set[fx.Node] = set()  # nodes whose value only reaches shape-only ops
        self.tainted: set[fx.Node] = set()  # nodes whose value is a stand-in (or computed from one)
        self._cache: dict[Any, tuple[tuple[int, ...], torch.dtype, tuple[int, ...], int]] = {}
        self._kind: dict[fx.Node, str | None] = {}  # the stand-in each closed node may get
        self._module_keys: dict[int, Any] = {}
        self._zeros = _ZeroBlocks()
        self._unhooked: dict[str, bool] = {}  # per module: no hooks, plain parameters and buffers
        if not flops._skip_modules:
            return
        closed: dict[fx.Node, bool] = {}  # the node's value only reaches shape-only ops
        ok: dict[fx.Node, bool] = {}  # closed and shape-only itself
        for n in reversed(gm.graph.nodes):
            closed[n] = all(ok[u] for u in n.users)
            ok[n] = closed[n] and self._shape_only(n)
            if closed[n] and n.op in ("call_module", "call_function", "call_method"):
                self.closed.add(n)
                self._kind[n] = self._classify(n)

    # ---------------------------------------------------------------- classification
    def _module_ok(self, n: fx.Node) -> bool:
        """Whether ``n`` calls a module with no hooks and plain tensors."""
        m = self._modules.get(n.target)
        if n.target not in self._unhooked:
            self._unhooked[n.target] = not any(getattr(m, h, None) for h in _MODULE_HOOKS) and all(
                type(t) in _PLAIN_TENSORS for t in (*m._parameters.values(), *m._buffers.values()) if t is not None)
        return self._unhooked[n.target]

    def _shape_only(self, n: fx.Node) -> bool:
        """Whether ``n`` never looks at its inputs' values to decide its output's shape."""
        if n.op == "output":
            return True
        if n.op not in ("call_module", "call_function", "call_method"):
            return False
        return _cost(n, self._modules.get(n.target)) in ("free", "contraction") and (n.op != "call_module" or self._module_ok(n))

    def _classify(self, n: fx.Node) -> str | None:
        entry = node_op(n, self._modules.get(n.target))
        kind = entry.stand_in if entry is not None else None
        if n.op == "call_module":
            return kind if kind is not None and self._module_ok(n) else None
        return kind if kind in ("binary", "contraction") else None

    # ---------------------------------------------------------------- running
    def check(self, n: fx.Node, args: tuple, kwargs: dict) -> None:
        """Before running ``n``: raise Restart if it reads the values of a stand-in."""
        if not any(a in self.tainted for a in n.all_input_nodes):
            return
        self.tainted.add(n)
        if n.op == "output":
            return
        values = _tensors((args, kwargs))
        if n.op == "call_function":
            if n.target is operator.getitem and _holds_tensor(args[1:]):
                raise Restart(f"'{n.name}' indexes with a tensor")
            if n.target is torch.where and len(args) + len(kwargs) == 1:
                raise Restart(f"'{n.name}' is torch.where(condition)")
            if n.target in (math.sqrt, math.prod) and values:
                raise Restart(f"'{n.name}' reads a tensor's values")
        for v in values:
            if type(v) not in _PLAIN_TENSORS:
                raise Restart(f"'{n.name}' gets a tensor subclass")

    def run(self, n: fx.Node, args: tuple, kwargs: dict) -> tuple[Any, int] | None:
        """A stand-in for closed node ``n``'s output and its FLOPs, or None: run ``n`` for real."""
        kind = self._kind.get(n)
        if kind is None:
            return None
        tensors = _tensors((args, kwargs))
        if not tensors or not all(type(t) in _PLAIN_TENSORS for t in tensors):
            return None
        done = self._stand_in(n, kind, args, kwargs, tensors)
        if done is not None:
            self.tainted.add(n)
        return done

    def _stand_in(self, n: fx.Node, kind: str, args: tuple, kwargs: dict, tensors: list[torch.Tensor]) -> tuple[Any, int] | None:
        m = self._modules[n.target] if n.op == "call_module" else None
        if kind == "alias":
            return self._alias(n, 0, _same_as_input(m, args, kwargs))
        if kind == "norm":
            return self._alias(n, 0, _normalized(m, args, kwargs))
        if kind == "binary":
            found = _binary(args, kwargs)
            return None if found is None else self._alias(n, found[0], (args[found[0]], 0))
        if kind == "contraction":
            return self._meta(n, m, args, kwargs, tensors, count=self._count)
        if kind == "pool" and len(args) == 1 and not kwargs:
            return self._meta(n, m, args, kwargs, tensors, count=False, worth=args[0].numel() >= SUBSTITUTE_ELEMENTS)
        return None

    def restart(self, n: fx.Node, exc: Exception) -> Restart:
        return Restart(f"'{n.name}' failed on stand-in values ({type(exc).__name__}: {exc})")

    def _alias(self, n: fx.Node, i: int, done: tuple[Any, int] | None) -> tuple[Any, int] | None:
        """A stand-in that is input ``i`` itself: only if that input's values reach shape-only ops
        alone, so writing to one (an in-place op downstream, or one the real op would have done)
        can change no value that is looked at."""
        if done is None or i >= len(n.args) or not isinstance(n.args[i], fx.Node) or n.args[i] not in self.closed:
            return None
        return done

    def _meta(self, n: fx.Node, m: Any, args: tuple, kwargs: dict, tensors: list[torch.Tensor], count: bool,
              worth: bool = True) -> tuple[Any, int] | None:
        """Run ``n`` on meta tensors (under FlopCounterMode's dispatch mode if ``count``): zeros of
        its output's shape, dtype and strides, and its FLOPs. Cached per configuration; a miss
        that is not ``worth`` a meta run (a small op computes faster) runs for real. ``tensors``:
        those in ``args`` and ``kwargs``."""
        if any(t.numel() == 0 for t in tensors):  # meta kernels accept some empty inputs CPU ones reject
            return None
        devices = {t.device for t in tensors}
        if m is not None:
            devices |= {t.device for t in (*m._parameters.values(), *m._buffers.values()) if t is not None}
        if len(devices) != 1:
            return None
        (device,) = devices
        formula = node_op(n, m).formula if m is not None else None
        if formula == "conv":
            found = self._conv_by_formula(m, args, kwargs, count)
        elif formula == "linear":
            found = self._linear_by_formula(m, args, kwargs, count)
        else:
            found = _adaptive_pool_by_formula(m, args, kwargs) if formula == "adaptive_pool" else None
        key = self._config_key(n, m, args, kwargs, count) if found is None else None
        found = self._cache.get(key) if key is not None else found
        if found is None:
            if not worth:
                return None
            found = self._meta_run(n, m, args, kwargs, count)
            if found is None:
                return None
            if key is not None:
                self._cache[key] = found
        shape, dtype, stride, flops = found
        self.tainted.add(n)
        return self._zeros.take(shape, stride, dtype, device), flops

    def _config_key(self, n: fx.Node, m: Any, args: tuple, kwargs: dict, count: bool) -> Any:
        """Everything a meta run of ``n`` depends on, or None (then it is not cached)."""
        try:
            if m is not None:
                what = self._module_keys.get(id(m))
                if what is None:
                    config = tuple(sorted((k, _spec_key(v)) for k, v in vars(m).items() if not k.startswith("_")))
                    state = tuple((k, _spec_key(v)) for k, v in (*m._parameters.items(), *m._buffers.items()))
                    what = self._module_keys[id(m)] = (type(m), config, state)
            else:
                what = (n.op, n.target)
            return (what, _spec_key(args), _spec_key(kwargs), count, torch.is_grad_enabled())
        except TypeError:
            return None

    def _meta_run(self, n: fx.Node, m: Any, args: tuple, kwargs: dict, count: bool):
        def meta(v: Any) -> Any:
            if isinstance(v, torch.Tensor):
                return torch.empty_like(v, device="meta").requires_grad_(v.requires_grad)
            return v

        margs, mkwargs = fx.node.map_aggregate(args, meta), fx.node.map_aggregate(kwargs, meta)
        if m is not None:
            weight, bias = meta(getattr(m, "weight", None)), meta(getattr(m, "bias", None))
            formula = module_op(type(m)).formula if module_op(type(m)) is not None else None
            if formula in ("conv", "conv_transpose") and not _conv_checks(weight, bias, m.groups):
                return None
            if formula == "conv" and len(margs) == 1 and not mkwargs:
                call = lambda: m._conv_forward(margs[0], weight, bias)  # noqa: E731  (their forward, verbatim)
            elif formula == "linear" and len(margs) == 1 and not mkwargs:
                call = lambda: F.linear(margs[0], weight, bias)  # noqa: E731
            elif not any(v is not None for v in (*m._parameters.values(), *m._buffers.values())):  # pools
                call = lambda: m.forward(*margs, **mkwargs)  # noqa: E731  (no state to swap, no hooks)
            else:
                state = {k: meta(v) for k, v in (*m._parameters.items(), *m._buffers.items()) if v is not None}
                call = lambda: torch.func.functional_call(m, state, margs, mkwargs)  # noqa: E731
        elif n.op == "call_function":
            if node_op(n, None) is not None and node_op(n, None).formula == "conv":
                bound = dict(zip(("input", "weight", "bias", "stride", "padding", "dilation", "groups"), margs), **mkwargs)
                if not _conv_checks(bound.get("weight"), bound.get("bias"), bound.get("groups", 1)):
                    return None
            call = lambda: n.target(*margs, **mkwargs)  # noqa: E731
        else:
            call = lambda: getattr(margs[0], n.target)(*margs[1:], **mkwargs)  # noqa: E731
        try:
            out, flops = self._flops.count(call) if count else (call(), 0)
        except Exception:  # no meta kernel, or the op fails: the real run decides
            return None
        if not isinstance(out, torch.Tensor) or out.device.type != "meta":
            return None
        return tuple(out.shape), out.dtype, tuple(out.stride()), flops

    def _conv_by_formula(self, m: nn.Module, args: tuple, kwargs: dict, count: bool):
        """A batched Conv1d/2d/3d on a contiguous float input, zero padding given as numbers,
        without a meta run: the output the CPU kernel makes (``calc_conv_nd_return_shape``'s
        shape, contiguous), after the checks it makes, and the FLOPs of the one op it dispatches
        (``aten.convolution``) from the mode's formula, called as the mode calls it. None: the
        meta run decides."""
        x, weight, bias = args[0] if len(args) == 1 and not kwargs else None, m.weight, m.bias
        dims = x.ndim - 2 if isinstance(x, torch.Tensor) else -1
        if (
            dims < 1 or not _conv_checks(weight, bias, m.groups) or x.ndim != weight.ndim or m.padding_mode != "zeros"
            or not x.is_contiguous() or x.dtype not in (torch.float32, torch.float64) or weight.dtype != x.dtype
            or (bias is not None and bias.dtype != x.dtype) or weight.shape[1] * m.groups != x.shape[1]
            or not all(type(v) is int for v in (*m.stride, *m.padding, *m.dilation))
            or not len(m.stride) == len(m.padding) == len(m.dilation) == dims
        ):
            return None
        shape = [x.shape[0], weight.shape[0]]
        for size, p, d, k, s in zip(x.shape[2:], m.padding, m.dilation, weight.shape[2:], m.stride):
            if s < 1 or d < 1 or p < 0 or size + 2 * p < d * (k - 1) + 1:  # the kernel must fit the padded input
                return None
            shape.append((size + 2 * p - d * (k - 1) - 1) // s + 1)
        flops = 0
        if count:
            formula = self._flops._counter.flop_registry.get(torch.ops.aten.convolution)
            if formula is None:
                return None
            aten_args = (x, weight, bias, list(m.stride), list(m.padding), list(m.dilation), False, [0] * dims, m.groups)
            flops = int(_call_formula(formula, aten_args, torch.Size(shape)))
        return tuple(shape), x.dtype, _contiguous_strides(shape), flops

    def _linear_by_formula(self, m: nn.Linear, args: tuple, kwargs: dict, count: bool):
        """A Linear on a contiguous float input of 2 or more dims, without a meta run: the input's
        leading dims and ``out_features``, contiguous, after the checks the CPU kernel makes; the
        FLOPs from the mode's formula for the matrix product it dispatches (addmm or mm, whose
        formulas agree) on the input folded to 2 dims. None: the meta run decides."""
        x, weight, bias = args[0] if len(args) == 1 and not kwargs else None, m.weight, m.bias
        if (
            not isinstance(x, torch.Tensor) or x.ndim < 2 or not x.is_contiguous() or x.dtype not in (torch.float32, torch.float64)
            or not isinstance(weight, torch.Tensor) or weight.ndim != 2 or weight.dtype != x.dtype
            or x.shape[-1] != weight.shape[1] or (bias is not None and (bias.dtype != x.dtype or tuple(bias.shape) != (weight.shape[0],)))
        ):
            return None
        shape = (*x.shape[:-1], weight.shape[0])
        flops = 0
        if count:
            formula = self._flops._counter.flop_registry.get(torch.ops.aten.mm)
            if formula is None:
                return None
            folded = x.reshape(-1, x.shape[-1])
            flops = int(_call_formula(formula, (folded, weight.t()), torch.Size((folded.shape[0], weight.shape[0]))))
        return shape, x.dtype, _contiguous_strides(shape), flops


def _adaptive_pool_by_formula(m: nn.Module, args: tuple, kwargs: dict):
    """An adaptive pool of a contiguous float input (no indices returned), without a meta run:
    the input's leading dims, then the output size (None: the input's size there), contiguous
    as the CPU kernel makes it for such an input, 0 FLOPs (the 1d pools take no None sizes).
    None: the meta run decides."""
    x = args[0] if len(args) == 1 and not kwargs else None
    dims = module_op(type(m)).spatial_dims
    if (
        not isinstance(x, torch.Tensor) or x.ndim not in (dims + 1, dims + 2) or x.dtype not in (torch.float32, torch.float64)
        or not x.is_contiguous() or getattr(m, "return_indices", False)
    ):
        return None
    size = m.output_size if isinstance(m.output_size, (tuple, list)) else (m.output_size,) * dims
    if len(size) != dims or not all((s is None and dims > 1) or (type(s) is int and s > 0) for s in size):
        return None
    shape = (*x.shape[:-dims], *(x.shape[x.ndim - dims + i] if s is None else s for i, s in enumerate(size)))
    return shape, x.dtype, _contiguous_strides(shape), 0


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The strides ``torch.empty(shape)`` has."""
    stride = [1] * len(shape)
    for i in range(len(shape) - 2, -1, -1):
        stride[i] = stride[i + 1] * max(shape[i + 1], 1)
    return tuple(stride)



try:
    from torch.utils.flop_counter import shape_wrapper

    _SHAPE_WRAPPER_CODE = shape_wrapper(lambda: 0).__code__
except ImportError:  # pragma: no cover - another torch: formulas are called as they are
    _SHAPE_WRAPPER_CODE = None


def _call_formula(formula: Callable, args: tuple, out_shape: torch.Size) -> int:
    """``formula(*args, out_val=out)``, as FlopCounterMode calls it, for flat ``args`` and an
    output of ``out_shape``. A formula registered through ``shape_wrapper`` only maps each tensor to
    its shape first, with a pytree walk that costs 20 times the formula: the function it wraps
    gets the shapes directly."""
    raw = getattr(formula, "__wrapped__", None)
    if raw is None or _SHAPE_WRAPPER_CODE is None or getattr(formula, "__code__", None) is not _SHAPE_WRAPPER_CODE:
        return formula(*args, out_val=torch.empty(out_shape, device="meta"))
    return raw(*(a.shape if isinstance(a, torch.Tensor) else a for a in args), out_shape=out_shape)


class _ZeroBlocks:
    """Zeros of a given shape, strides and dtype for stand-ins, each in memory of its own.

    A stand-in's values are never read, so filling it (a parallel kernel, whose pool wakes up for
    each of the sporadic stand-ins) is wasted work. On the CPU they are cut from blocks of at least
    ``BLOCK_BYTES`` made by ``np.zeros`` (calloc): a block that large is mapped fresh from the OS,
    zeroed pages nothing writes to cost nothing. (One calloc per stand-in costs 20 times more:
    once large arrays have been freed the heap serves them, and calloc clears reused memory.)
    """

    BLOCK_BYTES = 64 << 20  # above glibc's largest threshold for mapping an allocation by itself
    ALIGN = 64  # bytes: each stand-in starts on a cache line, as allocations do

    def __init__(self) -> None:
        self._blocks: dict[torch.dtype, tuple[torch.Tensor, int]] = {}  # dtype -> (block, elements used)

    def take(self, shape: tuple[int, ...], stride: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        if device.type != "cpu" or dtype not in _NUMPY_DTYPES:
            return torch.empty_strided(shape, stride, dtype=dtype, device=device).zero_()
        span = 1 + sum((n - 1) * s for n, s in zip(shape, stride)) if all(shape) else 0
        align = self.ALIGN // dtype.itemsize
        need = -(-span // align) * align
        block, used = self._blocks.get(dtype, (None, 0))
        if block is None or used + need > block.numel():
            block, used = torch.from_numpy(np.zeros(max(need, self.BLOCK_BYTES // dtype.itemsize), dtype=_NUMPY_DTYPES[dtype])), 0
        self._blocks[dtype] = (block, used + need)
        return block.as_strided(shape, stride, used)


_NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64, torch.float16: np.float16}


def _conv_checks(weight: Any, bias: Any, groups: Any) -> bool:
    """What CPU convolutions check and their meta kernel does not (then the real run decides)."""
    if not isinstance(weight, torch.Tensor) or not isinstance(groups, int) or groups < 1 or weight.ndim < 3:
        return False
    if weight.shape[0] % groups:
        return False
    return bias is None or (isinstance(bias, torch.Tensor) and bias.ndim == 1 and bias.shape[0] == weight.shape[0])


def _cost(n: fx.Node, m: nn.Module | None = None) -> str | None:
    """"free" or "contraction" (ops.Op.cost), by the op table."""
    entry = node_op(n, m)
    return entry.cost if entry is not None else None


def _single_input(args: tuple, kwargs: dict) -> torch.Tensor | None:
    x = args[0] if len(args) == 1 and not kwargs else None
    return x if isinstance(x, torch.Tensor) and x.is_floating_point() else None


def _same_as_input(m: nn.Module, args: tuple, kwargs: dict) -> tuple[Any, int] | None:
    """Elementwise activations and eval dropout: the output has the input's shape, dtype and layout."""
    if type(m) is nn.Identity:
        return (args[0], 0) if len(args) == 1 and not kwargs else None
    x = _single_input(args, kwargs)
    if x is None or (type(m) is nn.Dropout and m.training):
        return None
    return x, 0


def _normalized(m: nn.Module, args: tuple, kwargs: dict) -> tuple[Any, int] | None:
    """Norms in eval mode with running statistics (BatchNorm) or over matching trailing dims
    (LayerNorm) or channels (GroupNorm), parameters of the input's dtype: shaped like the input."""
    x = _single_input(args, kwargs)
    if x is None or m.training:
        return None
    tensors = [t for t in (*m._parameters.values(), *m._buffers.values()) if t is not None and t.is_floating_point()]
    if any(t.dtype != x.dtype for t in tensors):
        return None
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        if m.running_mean is None or x.ndim < 2 or x.shape[1] != m.num_features:
            return None
        m._check_input_dim(x)  # the same ValueError as the real forward (caught as a restart)
        per_channel = x.shape[1]
    elif type(m) is nn.LayerNorm:
        if tuple(x.shape[x.ndim - len(m.normalized_shape):]) != tuple(m.normalized_shape) or x.ndim < len(m.normalized_shape):
            return None
        per_channel = math.prod(m.normalized_shape)
    elif type(m) is nn.GroupNorm:  # group_norm also rejects a single value per group
        if x.ndim < 2 or x.shape[1] != m.num_channels or x.shape[0] * x.shape[1] // m.num_groups * math.prod(x.shape[2:]) <= 1:
            return None
        per_channel = x.shape[1]
    else:
        return None
    if any(t.numel() != per_channel for t in tensors if t.ndim):  # weight, bias, running statistics
        return None
    return x, 0


def _binary(args: tuple, kwargs: dict) -> tuple[int, int] | None:
    """``a op b`` with a floating point result: (index of the operand that has the result's
    broadcast shape and dtype, 0 FLOPs), or None when neither has (e.g. both are broadcast)."""
    if len(args) != 2 or kwargs:
        return None
    a, b = args
    tensors = [t for t in (a, b) if isinstance(t, torch.Tensor)]
    if not tensors or any(not isinstance(v, (torch.Tensor, int, float, bool)) for v in (a, b)):
        return None
    dtype = torch.result_type(a, b)
    if not dtype.is_floating_point or len({t.device for t in tensors}) != 1:
        return None
    shape = torch.broadcast_shapes(*(t.shape for t in tensors))
    for i, t in enumerate((a, b)):
        if isinstance(t, torch.Tensor) and t.shape == shape and t.dtype == dtype:
            return i, 0
    return None


def _tensors(value: Any, found: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """The tensors in a (nested) argument structure, as ``fx.node.map_aggregate`` visits it."""
    found = [] if found is None else found
    if isinstance(value, torch.Tensor):
        found.append(value)
    elif isinstance(value, (tuple, list)):
        for v in value:
            _tensors(v, found)
    elif isinstance(value, dict):
        for v in value.values():
            _tensors(v, found)
    elif isinstance(value, slice):
        _tensors((value.start, value.stop, value.step), found)
    return found


def _spec_key(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return ("T", tuple(v.shape), v.dtype, tuple(v.stride()), v.requires_grad)
    if isinstance(v, (tuple, list)):
        return (type(v).__name__, tuple(_spec_key(x) for x in v))
    if isinstance(v, dict):
        return ("dict", tuple((k, _spec_key(x)) for k, x in v.items()))
    hash(v)  # TypeError: not a cacheable configuration
    return v


def _holds_tensor(value: Any) -> bool:
    return bool(_tensors(value))
