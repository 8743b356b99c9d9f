"""The slim pass: rewrite the traced graph into physically smaller layers.

Works on a deep copy (the user's model is untouched). Three steps, each driven by the analysis:
1. every member parameter (and buffer) is sliced along its dim to the kept positions;
2. module attributes that ``forward`` reads (conv ``groups``, GroupNorm ``num_groups``, LayerNorm
   ``normalized_shape``, ...) follow the new channel counts, through the fixup table below;
3. constants in the graph that encode channel counts (split sizes, chunk counts, slice bounds,
   literal view/reshape sizes, pad amounts, functional ``groups``) are recomputed.
Then the slim graph is run once on the example inputs and every node's shape is checked against
the shape the plan implies, so a constant that was not rewritten is an error, never a wrong model.

The machinery is written for a *count* per channel, not a keep flag: slimming keeps each channel
0 or 1 times, the widen pass (widen.py) 1 or more times, and both use the same tables.
"""

from __future__ import annotations

import copy
import copyreg
import functools
import math
import operator
from collections import OrderedDict
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn

from ..analysis.channels import ChannelMap
from ..errors import GraphPruneError, SlimError
from ..tracing.flops import NodeFlops, Restart, ShapeOnlyRuns
from ..groups.graph import GroupGraph, _no_cyclic_gc
from ..tracing.modes import defer_training_only
from ..ops import OpDeclaration, declaration_of, inherited, node_op
from ..groups.plan import Plan
from ..tracing.tracer import AnalysisGraphModule, GraphRunner, TensorSpec, value_spec


class _Resizer:
    """Builds a copy of the analyzed model in which every channel occurs ``counts[atom]`` times.

    Each position of a channel map becomes ``count`` adjacent positions (slicing is
    ``index_select`` with ``np.repeat(arange(n), counts)``), so every size, bound and group
    count of the new graph is a sum of counts. The class attributes word the errors of the pass.
    """

    error: type[GraphPruneError] = SlimError
    model_name = "slim model"
    implied_by = "the plan"
    verb = "pruned"
    advice = ("Keep those groups whole (leave them out of the plan) or make the module a leaf "
              "(leaf_modules=[...]), and report the model.")

    def __init__(self, gg: GroupGraph, counts: np.ndarray, changed: dict[int, str]):
        """``counts``: per atom (index it with a channel map's labels); ``changed``: {group id: what
        happens to it} for the groups whose counts are not all 1, as messages show it."""
        self.gg = gg
        self.changed = changed
        self.maps = gg.channel_maps
        self.values = gg.traced.values
        self._counts = counts
        self._sizes: dict[int, int] = {}  # per labels array (maps share them): its new size

    # ------------------------------------------------------------- counts
    def counts(self, cmap: ChannelMap) -> np.ndarray:
        """How many times each position of ``cmap`` occurs in the new graph."""
        return self._counts[cmap.labels]

    def count(self, cmap: ChannelMap) -> int:
        """The new size of ``cmap``'s channel dim."""
        size = self._sizes.get(id(cmap.labels))
        if size is None:
            size = self._sizes[id(cmap.labels)] = int(self.counts(cmap).sum())
        return size

    def size_after(self, old: fx.Node, dim: int) -> int:
        """Size of ``old``'s dim ``dim`` in the new graph."""
        m = self.maps.get(old)
        ndim = self.values[old].ndim
        if isinstance(m, ChannelMap) and m.dim == dim % ndim:
            return self.count(m)
        return self.values[old].shape[dim]

    def expected(self, old: fx.Node) -> Any:
        """The example value of ``old`` with every channel dim resized to its new count."""
        def resize(value, cmap):
            if isinstance(value, TensorSpec) and isinstance(cmap, ChannelMap):
                shape = list(value.shape)
                shape[cmap.dim] = self.count(cmap)
                return TensorSpec(tuple(shape), value.dtype)
            if isinstance(value, (tuple, list)) and isinstance(cmap, (tuple, list)):
                return type(value)(resize(v, c) for v, c in zip(value, cmap))
            return value
        return resize(self.values[old], self.maps.get(old))

    # ------------------------------------------------------------- the pass
    def slices(self) -> dict[tuple[str, str], list[tuple[int, torch.Tensor]]]:
        """{(module path, tensor name): [(dim, the positions it keeps, repeated by their counts)]}
        for every member tensor whose channels change."""
        slices: dict[tuple[str, str], list[tuple[int, torch.Tensor]]] = {}
        # one index per channel map: members along one map (a conv's outputs, its norm's scales) share it
        indices: dict[int, torch.Tensor | None] = {}
        for (module, name, dim), rec in self.gg.member_records.items():
            if id(rec.labels) not in indices:
                counts = self._counts[rec.labels]
                indices[id(rec.labels)] = None if (counts == 1).all() else torch.from_numpy(_repeat_index(counts))
            index = indices[id(rec.labels)]
            if index is not None:
                slices.setdefault((module, name), []).append((dim, index))
        return slices

    def fix_modules(self, modules: dict[str, nn.Module]) -> None:
        """Set the attributes of the called modules (conv ``groups``, norm sizes, ...) to their new
        channel counts: ``modules`` by their paths in the analyzed model, already sliced."""
        for old in self.gg.gm.graph.nodes:
            if old.op == "call_module":
                m = modules[old.target]
                declared = declaration_of(m)
                fix = _fix_declared(declared) if declared is not None else inherited(type(m), "fixup")
                if fix is not None:
                    fix(self, old, m)

    def rewritten_graph(self) -> fx.Graph:
        """A copy of the analyzed graph whose constants (split sizes, view sizes, ...) follow the
        new counts; its nodes keep their names."""
        graph = copy.deepcopy(self.gg.gm.graph)
        new_nodes = {n.name: n for n in graph.nodes}
        for old in self.gg.gm.graph.nodes:
            entry = node_op(old, None) if old.op in ("call_function", "call_method") else None
            rewrite = entry.rewrite if entry is not None else None
            if rewrite is not None:
                rewrite(self, old, new_nodes[old.name])
        return graph

    def run(self) -> fx.GraphModule:
        slices = self.slices()
        modules = dict(self.gg.gm.named_modules(remove_duplicate=False))  # a shared module under each of its names
        distinct = list({id(m): m for m in modules.values()}.values())
        held = _HeldTensors(distinct)
        presliced = _presliced(modules, slices, held)  # copied already sliced, not whole and then sliced
        # constants are rewritten in a copy of the graph before the module copy compiles it: one compile
        graph = self.rewritten_graph()
        memo = {id(t): new for t, new in presliced.values()}
        memo[id(self.gg.gm.graph)] = graph
        gm = _compiled(_deepcopy(self.gg.gm, memo, held, distinct))
        copied = dict(gm.named_modules(remove_duplicate=False))
        _slice_in_place(copied, {key: dims for key, dims in slices.items() if key not in presliced})
        self.fix_modules(copied)
        _keep_unused_modules(self.gg.traced.model, gm, copied)
        return gm

    def verify(self, gm: fx.GraphModule) -> None:
        """Run the new graph on the example inputs; every node must have the shape the counts imply."""
        _ShapeCheck(self, gm).check(self.gg.traced.placeholder_values)

    def group_ids_at(self, old: fx.Node) -> list[int]:
        """The changed groups whose channels flow through ``old`` (its inputs and its output)."""
        found: dict[int, None] = {}
        for n in [*old.all_input_nodes, old]:
            for cmap in _channel_maps(self.maps.get(n)):
                for g in self.gg.groups_of(cmap.labels).tolist():
                    if g in self.changed:
                        found[g] = None
        return list(found)

    def groups_at(self, old: fx.Node) -> str:
        """The changed groups at ``old``, as messages name them."""
        found = self.group_ids_at(old)
        if not found:
            return f"no {self.verb} group flows through it"
        return "groups " + ", ".join(f"{g} ({self.changed[g]})" for g in found)


def _repeat_index(counts: np.ndarray) -> np.ndarray:
    """Indices that take position ``i`` ``counts[i]`` times, in order (the kept ones for 0/1 counts)."""
    return np.repeat(np.arange(len(counts), dtype=np.int64), counts)


class _ShapeCheck(GraphRunner):
    """Runs the new graph node by node: a failing op or a wrong shape is the pass's error naming the node and its groups."""

    def __init__(self, resizer: _Resizer, gm: fx.GraphModule):
        super().__init__(gm)
        self.extra_traceback = False  # our message names the node already; fx would append the whole graph
        self.resizer = resizer
        self.old = {n.name: n for n in resizer.gg.gm.graph.nodes}
        # shapes as a real run gives them, without computing what only shapes depend on (see flops.py)
        self._stand_ins = ShapeOnlyRuns(gm, NodeFlops(gm, self.submodules), count=False)
        self._stand_ins = self._stand_ins if self._stand_ins.closed else None

    def check(self, inputs: list) -> None:
        modes = {m: m.training for m in self.submodules.values()}
        for m in modes:  # eval mode; ``training`` is a plain attribute, set without Module.__setattr__'s checks
            vars(m)["training"] = False
        try:
            try:
                self.run(*inputs)  # grad mode on, as in analysis: modules take their training-time paths
            except Restart:  # a stand-in was read or failed: the real run decides
                self._stand_ins = None
                self.run(*inputs)
        finally:
            for m, mode in modes.items():
                vars(m)["training"] = mode

    def run_node(self, n: fx.Node) -> Any:
        old = self.old.get(n.name)
        try:
            done = None
            if self._stand_ins is not None:
                args, kwargs = self.fetch_args_kwargs_from_env(n)
                self._stand_ins.check(n, args, kwargs)
                if n in self._stand_ins.closed:
                    done = self._stand_ins.run(n, args, kwargs)
            out = super().run_node(n) if done is None else done[0]
            out = fx.node.map_aggregate(out, lambda v: v.detach() if isinstance(v, torch.Tensor) else v)
        except Restart:
            raise
        except Exception as exc:
            if self._stand_ins is not None and (n in self._stand_ins.closed or n in self._stand_ins.tainted):
                raise self._stand_ins.restart(n, exc) from exc
            r = self.resizer
            where = r.groups_at(old) if old is not None else "a node the pass added"
            raise r.error(
                f"the {r.model_name} fails at node '{n.name}' ({n.op} {_target_name(n)}): {type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}\n  {r.verb} here: {where}.\n  graphprune could not "
                f"rewrite a value this op depends on. {r.advice}"
            ) from exc
        if old is not None and old.op not in ("output", "get_attr"):
            r = self.resizer
            got, want = _tensor_shapes(value_spec(out)), _tensor_shapes(r.expected(old))
            if got != want:
                raise r.error(
                    f"in the {r.model_name}, node '{old.name}' has shape {got} but {r.implied_by} implies {want}; "
                    f"{r.verb} here: {r.groups_at(old)}. graphprune could not rewrite a constant of this op. {r.advice}"
                )
        return out


def _channel_maps(value: Any) -> list[ChannelMap]:
    if isinstance(value, ChannelMap):
        return [value]
    if isinstance(value, (tuple, list)):
        return [m for v in value for m in _channel_maps(v)]
    return []


def _target_name(n: fx.Node) -> str:
    t = n.target
    return t if isinstance(t, str) else getattr(t, "__qualname__", getattr(t, "__name__", repr(t)))


def slim(gg: GroupGraph, plan: Plan, verify: bool = True) -> fx.GraphModule:
    """A physically smaller copy of the analyzed model that keeps ``plan``'s channels.

    Copying the model makes many long-lived objects, as analysis does: the cyclic collector
    pauses meanwhile (see ``groups._no_cyclic_gc``)."""
    with _no_cyclic_gc():
        slimmer = plan_resizer(gg, plan)
        gm = slimmer.run()
        if verify:
            slimmer.verify(gm)
    defer_training_only(gm)
    return gm


def plan_resizer(gg: GroupGraph, plan: Plan) -> _Resizer:
    """The resizer that keeps ``plan``'s channels (validated against ``gg``)."""
    plan.validate(gg)
    keep = {g: k for g, k in plan.keep.items() if len(k) < gg.groups[g].size}
    return _Resizer(gg, gg.kept_atoms(keep), {g: f"keeps {len(k)} of {gg.groups[g].size}" for g, k in keep.items()})


def _tensor_shapes(value: Any) -> Any:
    if isinstance(value, TensorSpec):
        return value.shape
    if isinstance(value, (tuple, list)):
        return tuple(_tensor_shapes(v) for v in value)
    if isinstance(value, dict):
        return {k: _tensor_shapes(v) for k, v in value.items()}
    return None


def _deepcopy(module: nn.Module, memo: dict[int, Any] | None = None, held: _HeldTensors | None = None,
              modules: list[nn.Module] | None = None) -> nn.Module:
    """``copy.deepcopy`` that also copies tensors a module caches in plain attributes with their
    autograd history (e.g. attention-bias caches filled while analysis ran the model), detached.
    ``memo``: copies to use for some objects (by id), as ``copy.deepcopy`` takes it; ``held`` and
    ``modules``: the module's tensors and its modules if the caller walked them already."""
    memo = dict(memo or {})
    modules = list(module.modules()) if modules is None else modules
    for t in (held or _HeldTensors(modules)).with_history:
        memo[id(t)] = t.detach().clone()
    for m in modules:
        if m is not module:
            _copy_module(m, memo)
    return copy.deepcopy(module, memo)


class _HeldTensors:
    """One walk over every module's state (parameters, buffers, plain attributes and the containers
    they hold): how many places hold each tensor, and the tensors with autograd history, which
    ``copy.deepcopy`` refuses and the copy takes detached."""

    def __init__(self, modules: Iterable[nn.Module]):
        self.places: dict[int, int] = {}
        self.with_history: list[torch.Tensor] = []
        for m in modules:
            for key, value in vars(m).items():
                if key not in _MODULE_BOOKKEEPING and type(value) not in _ATOMIC:
                    self._visit(value)

    def _visit(self, value: Any) -> None:
        if isinstance(value, torch.Tensor):
            self.places[id(value)] = self.places.get(id(value), 0) + 1
            if value.grad_fn is not None:
                self.with_history.append(value)
        elif isinstance(value, dict):
            for v in value.values():
                if type(v) not in _ATOMIC:
                    self._visit(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                if type(v) not in _ATOMIC:
                    self._visit(v)


def _copy_module(m: nn.Module, memo: dict[int, Any]) -> nn.Module:
    """``copy.deepcopy(m, memo)``, made the same way (``__new__``, ``__getstate__``, a deep copy of
    the state, ``__setstate__``) without going through ``__reduce_ex__`` for every attribute and
    every (mostly empty) hook dict: that generic path is most of a model copy's time. Classes that
    copy or pickle themselves differently take ``copy.deepcopy``."""
    if id(m) in memo:
        return memo[id(m)]
    cls = type(m)
    if not _plain_state(cls):
        return copy.deepcopy(m, memo)
    new = cls.__new__(cls)
    memo[id(m)] = new
    state = {}  # a temporary: not memoized (its id is free again once it is gone)
    for k, v in m.__getstate__().items():
        kind = type(v)
        if kind in _ATOMIC:
            state[k] = v
        elif (kind is OrderedDict or kind is dict) and not v and id(v) not in memo:  # most hook dicts
            state[k] = memo[id(v)] = kind()
        else:
            state[k] = _copy_state(v, memo)
    new.__setstate__(state)
    return new


@functools.cache
def _plain_state(cls: type) -> bool:
    """Whether ``copy.deepcopy`` copies instances of ``cls`` through ``cls.__new__`` and the state
    ``nn.Module.__getstate__`` gives, with no arguments, slots or copy hooks of its own."""
    return (
        cls.__reduce_ex__ is object.__reduce_ex__ and cls.__reduce__ is object.__reduce__
        and cls.__getstate__ is nn.Module.__getstate__ and getattr(cls, "__deepcopy__", None) is None
        and cls not in copyreg.dispatch_table and not hasattr(cls, "__getnewargs_ex__")
        and not hasattr(cls, "__getnewargs__") and not copyreg._slotnames(cls)
    )


_ATOMIC = frozenset({type(None), int, float, bool, complex, str, bytes})
# what every nn.Module keeps besides its parameters and buffers: hook dicts, submodules, flags
_MODULE_BOOKKEEPING = frozenset(vars(nn.Module())) - {"_parameters", "_buffers"}


def _copy_state(value: Any, memo: dict[int, Any]) -> Any:
    """``copy.deepcopy(value, memo)`` for a module's state: dicts, lists, tuples, sets and python
    literals the way ``copy`` copies them, submodules by ``_copy_module``, anything else by ``copy``."""
    cls = type(value)
    if cls in _ATOMIC:
        return value
    found = memo.get(id(value))
    if found is not None:
        return found
    if cls is dict or cls is OrderedDict:
        out = memo[id(value)] = cls()
        for k, v in value.items():
            out[k if type(k) in _ATOMIC else _copy_state(k, memo)] = v if type(v) in _ATOMIC else _copy_state(v, memo)
        return out
    if cls is list:
        out = memo[id(value)] = []
        out.extend(_copy_state(v, memo) for v in value)
        return out
    if cls is tuple:
        items = [_copy_state(v, memo) for v in value]
        if all(a is b for a, b in zip(items, value)):
            return value
        return memo.setdefault(id(value), tuple(items))
    if cls is set and all(type(v) in _ATOMIC for v in value):
        out = memo[id(value)] = set(value)
        return out
    if isinstance(value, nn.Module):
        return _copy_module(value, memo)
    return copy.deepcopy(value, memo)


def _compiled(gm: fx.GraphModule) -> fx.GraphModule:
    """A copy of the analysis graph (compiled lazily, see tracing/tracer.py) as a plain GraphModule with its
    code generated now: the model handed to users scripts, saves and runs like any GraphModule."""
    if AnalysisGraphModule is not fx.GraphModule and isinstance(gm, AnalysisGraphModule):
        gm.__class__ = type(fx.GraphModule.__new__(fx.GraphModule))  # the per-instance class fx gives
        gm.recompile()
    return gm


def _keep_unused_modules(model: nn.Module, gm: fx.GraphModule, present: dict[str, nn.Module]) -> None:
    """Submodules the traced graph never calls (e.g. auxiliary heads in eval mode) are carried over
    unchanged, so the slim model has every parameter the budget counts; they stay unpruned.
    ``present``: ``gm``'s modules by name (updated here)."""
    for name, module in model.named_modules():
        parent = name.rpartition(".")[0]
        if name and name not in present and (not parent or parent in present):
            gm.add_submodule(name, _deepcopy(module))
            present.update({f"{name}.{n}" if n else name: m for n, m in module.named_modules()})


def _presliced(modules: dict[str, nn.Module], slices: dict[tuple[str, str], list[tuple[int, torch.Tensor]]],
               held: _HeldTensors) -> dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]]:
    """{(module, name): (tensor, its sliced copy)} for the sliced tensors held in exactly one place
    (a parameter, buffer or plain attribute of one module), made as ``_slice_in_place`` would make
    them; a deep copy given these copies never copies those tensors whole. Shared tensors are
    left to the copy-then-slice path."""
    out = {}
    for (module, name), dims in slices.items():
        owner = modules[module]
        t = getattr(owner, name)
        if not isinstance(t, torch.Tensor) or held.places.get(id(t)) != 1:
            continue
        if isinstance(t, nn.Parameter) or name in owner._buffers or not t.requires_grad:
            out[module, name] = (t, _sliced(t, dims))
    return out


def _sliced(t: torch.Tensor, dims: list[tuple[int, torch.Tensor]]) -> torch.Tensor:
    """``t`` at the given indices of each dim, detached; a parameter stays one, trainable as it was."""
    out = t.detach()
    # the dim that keeps the smallest share first: the intermediate copy is as small as it can be
    for dim, index in sorted(dims, key=lambda d: len(d[1]) / t.shape[d[0]]):
        out = out.index_select(dim, index)
    return nn.Parameter(out, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else out


def _slice_in_place(modules: dict[str, nn.Module], slices: dict[tuple[str, str], list[tuple[int, torch.Tensor]]]) -> None:
    """Slice the model's tensors where they are. A tensor held in several places (GPT-2's lm_head
    weight is its token embedding) is sliced once and the slice shared, so the tie survives and
    parameters are counted once, as in the original. No reference to a tensor outlives its
    slicing, so resizing a model in place frees each original as its slice replaces it."""
    # smallest first: the largest tensors (embeddings) are copied last, once the rest has shrunk
    slices = dict(sorted(slices.items(), key=lambda item: getattr(modules[item[0][0]], item[0][1]).numel()))
    first: dict[int, tuple[str, str]] = {}  # ids are taken while every tensor is alive: no id is reused
    for key in slices:
        first.setdefault(id(getattr(modules[key[0]], key[1])), key)
    tie = {key: first[id(getattr(modules[key[0]], key[1]))] for key in slices}
    done: dict[tuple[str, str], torch.Tensor] = {}
    for (module, name), dims in slices.items():
        owner = modules[module]
        source = tie[module, name]
        if source in done and _same_slices(slices[source], dims):
            _set_tensor(owner, name, done[source])
            continue
        sliced = _sliced(getattr(owner, name), dims)
        _set_tensor(owner, name, sliced)
        if source == (module, name):
            done[source] = sliced


def _same_slices(a: list[tuple[int, torch.Tensor]], b: list[tuple[int, torch.Tensor]]) -> bool:
    return len(a) == len(b) and all(da == db and torch.equal(ia, ib) for (da, ia), (db, ib) in zip(sorted(a, key=lambda x: x[0]), sorted(b, key=lambda x: x[0])))


def _set_tensor(owner: nn.Module, name: str, value: torch.Tensor) -> None:
    if name in owner._buffers:
        owner._buffers[name] = value
    else:
        setattr(owner, name, value)


# ------------------------------------------------------------------ module attribute fixups

def fix_conv(s: _Resizer, old: fx.Node, m: nn.Module) -> None:
    new_in, new_out = s.size_after(old.args[0], 1), s.size_after(old, 1)
    if m.groups > 1:  # whole conv groups were pruned (or copied): the group count follows the channels
        m.groups = m.groups * new_out // m.out_channels
    m.in_channels, m.out_channels = new_in, new_out


def fix_linear(s: _Resizer, old: fx.Node, m: nn.Linear) -> None:
    m.in_features, m.out_features = m.weight.shape[1], m.weight.shape[0]


def fix_batchnorm(s: _Resizer, old: fx.Node, m: nn.Module) -> None:
    m.num_features = s.size_after(old.args[0], 1)


def fix_groupnorm(s: _Resizer, old: fx.Node, m: nn.GroupNorm) -> None:
    new = s.size_after(old.args[0], 1)
    m.num_groups, m.num_channels = m.num_groups * new // m.num_channels, new


def _layer_norm_compensation(s: _Resizer, x: fx.Node) -> float:
    """C / C' for a LayerNorm over the last dim of ``x`` whose C channels the plan cuts to C'.

    The zeroed original normalizes over all C channels, the slim one over C'. Scaling the weight by
    sqrt(C/C') and eps by C/C' makes the two equal wherever a token's kept channels have zero mean
    (the variance parts then differ by exactly that factor); with kept mean m and
    s = sqrt((1 - r) var + eps), r = 1 - C'/C, u = m / s, a = the slim norm's normalized value,
    |y_slim - y| <= |weight| (r |u| + r (1 - r) u**2 |a| / 2) per channel (tests/test_slim.py
    checks it). Without the compensation even zero-mean tokens would be off by sqrt(C'/C).
    """
    return s.values[x].shape[-1] / s.size_after(x, -1)


def fix_layernorm(s: _Resizer, old: fx.Node, m: nn.LayerNorm) -> None:
    if len(m.normalized_shape) == 1:
        m.normalized_shape = (s.size_after(old.args[0], -1),)
        ratio = _layer_norm_compensation(s, old.args[0])
        if ratio != 1:
            m.eps *= ratio
            if m.weight is not None:
                with torch.no_grad():
                    m.weight.mul_(math.sqrt(ratio))


def fix_prelu(s: _Resizer, old: fx.Node, m: nn.PReLU) -> None:
    m.num_parameters = m.weight.numel()


def fix_embedding(s: _Resizer, old: fx.Node, m: nn.Embedding) -> None:
    m.embedding_dim = m.weight.shape[1]


def _fix_declared(d: OpDeclaration) -> Callable[[_Resizer, fx.Node, nn.Module], None]:
    """Set the attributes a register_op declaration names to the counts they follow."""
    def fix(s: _Resizer, old: fx.Node, m: nn.Module) -> None:
        x = next(a for a in old.all_input_nodes if isinstance(s.values.get(a), TensorSpec))
        counts = {"in": s.size_after(x, d.channel_dim), "out": s.size_after(old, d.channel_dim)}
        counts["channels"] = counts["out"]
        for attribute, count in d.attributes.items():
            *path, name = attribute.split(".")
            setattr(m.get_submodule(".".join(path)), name, counts[count])
    return fix




# ------------------------------------------------------------------ graph constant rewrites

def _arg(node: fx.Node, pos: int, name: str, default=None):
    if len(node.args) > pos:
        return node.args[pos]
    return node.kwargs.get(name, default)


def _set_arg(node: fx.Node, pos: int, name: str, value) -> None:
    if len(node.args) > pos:
        args = list(node.args)
        args[pos] = value
        node.args = tuple(args)
    else:
        node.kwargs = {**node.kwargs, name: value}


def _split_sizes(s: _Resizer, old: fx.Node) -> tuple[list[int], int] | None:
    """New part sizes of a split/chunk along the channel dim (None: it splits another dim)."""
    x = old.args[0]
    m = s.maps.get(x)
    parts = s.maps.get(old)
    ndim = s.values[x].ndim
    dim = _arg(old, 2, "dim", 0)
    if not isinstance(m, ChannelMap) or m.dim != dim % ndim or not isinstance(parts, (tuple, list)):
        return None
    sizes = [s.count(p) if isinstance(p, ChannelMap) else v.shape[dim] for p, v in zip(parts, s.values[old])]
    return sizes, dim


def rewrite_split(s: _Resizer, old: fx.Node, new: fx.Node) -> None:
    """split/chunk/tensor_split along the channel dim become split with the new part sizes."""
    found = _split_sizes(s, old)
    if found is None:
        return
    sizes, dim = found
    new.args, new.kwargs = (new.args[0], sizes, dim), {}
    if new.op == "call_method":
        new.target = "split"
    else:
        new.target = torch.split


def _concrete(s: _Resizer, value: Any) -> Any:
    """``value`` with every fx node replaced by its example value (a bound computed from shapes)."""
    return fx.node.map_arg(value, lambda n: s.values[n])


def rewrite_getitem(s: _Resizer, old: fx.Node, new: fx.Node) -> None:
    """A slice of the channel dim takes the new positions of the channels inside its bounds
    (computed bounds included): a bound moves to the count of the positions before it."""
    x, index = old.args[0], old.args[1]
    m = s.maps.get(x)
    if not isinstance(m, ChannelMap) or not isinstance(s.values.get(x), TensorSpec):
        return
    items = list(index) if isinstance(index, tuple) else [index]
    consumed = sum(1 for i in items if i is not None and i is not Ellipsis)
    dim = 0
    for pos, item in enumerate(items):
        if item is Ellipsis:
            dim += s.values[x].ndim - consumed
            continue
        if item is None:
            continue
        if dim == m.dim and isinstance(item, slice):
            item = _concrete(s, item)
            counts = s.counts(m)
            if item.step not in (None, 1):
                if (counts == 1).all():
                    return  # these channels keep their count: the slice stays as it is
                raise s.error(f"'{old.name}' slices the channel dim with step {item.step}; graphprune cannot rewrite it")
            start, stop, _ = item.indices(m.size)
            new_items = list(new.args[1]) if isinstance(index, tuple) else [new.args[1]]
            new_items[pos] = slice(int(counts[:start].sum()), int(counts[:stop].sum()))
            new.args = (new.args[0], tuple(new_items) if isinstance(index, tuple) else new_items[0])
            return
        dim += 1


def rewrite_narrow(s: _Resizer, old: fx.Node, new: fx.Node) -> None:
    x = old.args[0]
    m = s.maps.get(x)
    dim, start, length = _concrete(s, old.args[1:4])
    if isinstance(m, ChannelMap) and dim % s.values[x].ndim == m.dim:
        counts = s.counts(m)
        new.args = (new.args[0], dim, int(counts[:start].sum()), int(counts[start : start + length].sum()))


def rewrite_sizes(s: _Resizer, old: fx.Node, new: fx.Node) -> None:
    """view/reshape/expand: the channel dim's literal becomes the new count. Sizes the analysis
    found computed from channel counts alone (``literal_sizes``) become literals: the new count
    at the channel dim, the original value at any other dim (it has no channels: it keeps its size)."""
    out = s.maps.get(old)
    literal = s.gg.literal_sizes.get(old, set())
    if not isinstance(out, ChannelMap) and not literal:
        return
    packed = len(new.args) == 2 and isinstance(new.args[1], (tuple, list))
    sizes = list(new.args[1] if packed else new.args[1:])
    channel_dim = out.dim if isinstance(out, ChannelMap) else None
    if channel_dim is not None and not literal and len(sizes) == 1 and isinstance(sizes[0], fx.Node) and s.values[old].ndim > 1:
        # one computed tuple (GPT-2's x.size()[:-1] + (nf,)): its entries, the channel dim's the new count
        with new.graph.inserting_before(new):
            entries = [new.graph.call_function(operator.getitem, (sizes[0], i)) for i in range(s.values[old].ndim)]
        entries[channel_dim] = s.count(out)
        new.args = (new.args[0], tuple(entries))
        return
    for i in literal:
        sizes[i] = s.count(out) if i == channel_dim else _concrete(s, (old.args[1] if packed else old.args[1:])[i])
    if channel_dim is not None and isinstance(sizes[channel_dim], int) and sizes[channel_dim] != -1:
        sizes[channel_dim] = s.count(out)
    new.args = (new.args[0], tuple(sizes)) if packed else (new.args[0], *sizes)


def rewrite_attention_scale(s: _Resizer, old: fx.Node, new: fx.Node) -> None:
    """scaled_dot_product_attention's default scale is 1/sqrt(q.size(-1)): pruned head dims would
    change it, so the slim call passes the original value."""
    if _arg(new, 6, "scale") is None:
        _set_arg(new, 6, "scale", 1.0 / math.sqrt(s.values[_arg(old, 0, "query")].shape[-1]))


def rewrite_pad(s: _Resizer, old: fx.Node, new: fx.Node) -> None:
    out = s.maps.get(old)
    pad = list(_arg(new, 1, "pad"))
    ndim = s.values[old].ndim
    at = 2 * (ndim - 1 - out.dim) if isinstance(out, ChannelMap) else len(pad)
    if at + 1 < len(pad) and all(isinstance(p, int) for p in pad[at : at + 2]):
        counts = s.counts(out)
        before, after = pad[at], pad[at + 1]
        pad[at], pad[at + 1] = int(counts[:before].sum()), int(counts[len(counts) - after :].sum())
        _set_arg(new, 1, "pad", pad)


def rewrite_conv_groups(s: _Resizer, old: fx.Node, new: fx.Node) -> None:
    groups = _arg(new, 6, "groups", 1)
    if isinstance(groups, int) and groups > 1:
        _set_arg(new, 6, "groups", groups * s.size_after(old, 1) // s.values[old].shape[1])


def rewrite_group_norm(s: _Resizer, old: fx.Node, new: fx.Node) -> None:
    x = old.args[0]
    groups = _arg(new, 1, "num_groups")
    _set_arg(new, 1, "num_groups", groups * s.size_after(x, 1) // s.values[x].shape[1])


def rewrite_layer_norm(s: _Resizer, old: fx.Node, new: fx.Node) -> None:
    shape = tuple(_arg(new, 1, "normalized_shape"))
    if len(shape) != 1:
        return
    _set_arg(new, 1, "normalized_shape", (s.size_after(old.args[0], -1),))
    ratio = _layer_norm_compensation(s, old.args[0])
    if ratio != 1:  # as fix_layernorm does for the module
        _set_arg(new, 4, "eps", _arg(new, 4, "eps", 1e-5) * ratio)
        weight = _arg(new, 2, "weight")
        if isinstance(weight, fx.Node):
            with new.graph.inserting_before(new):
                _set_arg(new, 2, "weight", new.graph.call_function(operator.mul, (weight, math.sqrt(ratio))))


def rewrite_channel_mean(s: _Resizer, old: fx.Node, new: fx.Node) -> None:
    """A mean of squares over pruned channels (RMS normalization) keeps the original divisor: the
    zeroed channels it no longer sees added nothing, so the slim mean is the original's."""
    if old not in s.gg.channel_means:
        return
    x = _arg(old, 0, "input")
    before, after = s.values[x].shape[s.maps[x].dim], s.count(s.maps[x])
    if after != before:
        with new.graph.inserting_after(new):
            scaled = new.graph.call_function(operator.mul, (new, after / before))
        new.replace_all_uses_with(scaled, delete_user_cb=lambda user: user is not scaled)


def rewrite_linear_rows(s: _Resizer, old: fx.Node, new: fx.Node) -> None:
    """The parts of packed parameters a linear_rows reads move to their kept rows."""
    for pos, name, param in ((3, "weight_rows", 1), (4, "bias_rows", 2)):
        rows, ref = _arg(old, pos, name), _arg(old, param, ("weight", "bias")[param - 1])
        if rows is None or not isinstance(ref, fx.Node):
            continue
        module, _, attr = ref.target.rpartition(".")
        counts = s._counts[s.gg.member_records[(module, attr, 0)].labels]
        _set_arg(new, pos, name, (int(counts[: rows[0]].sum()), int(counts[: rows[1]].sum())))


