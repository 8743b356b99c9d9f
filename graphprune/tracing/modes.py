"""Training and eval mode in traced graphs: one graph that computes what the model computes in both.

fx bakes Python values in at trace time, ``self.training`` included. While tracing, every module's
``training`` is a :class:`ModeFlag`: passed to an op it becomes a node that reads the module's flag
when the graph runs; branched on, it makes the tracer trace the other mode too. Two traces that
differ only in constants and in side effects on buffers (BatchNorm-style code: ``if self.training:
self.num_batches_tracked.add_(1)`` and ``F.batch_norm(..., training, ...)``) merge into one graph
with :func:`merge_mode_paths`: a differing constant reads the flag at run time, and a side effect
runs in its own mode only. Paths that differ in what they compute stay apart (tracing/tracer.py makes such
a submodule a leaf, or guards the model's own forward with :class:`ModeGuard`).
"""

from __future__ import annotations

import builtins
import contextlib
import difflib
import functools
import importlib
import warnings
from typing import Any, Iterable, Iterator

import torch
import torch.fx as fx

from ..errors import GuardError
from ..common.locations import caller_location

FLIPPED = "flipped"  # trace every module in the mode it is not in
TRAINING_ONLY = "training_only"  # node.meta key: an op of the model's own training path, computed in both modes


class ModeFlag:
    """Stands in for a module's ``training`` bool while tracing, so mode-dependent code is seen.

    Passed to an op (``F.dropout(x, p, self.training)``) it becomes a graph node that reads the
    module's flag when the graph runs, instead of the mode at trace time baked in as a constant.
    Converted to a Python bool (``if self.training:``) it records that the module's code may take
    another path in the other mode.
    """

    __slots__ = ("owner", "value", "reads")

    def __init__(self, owner: str, value: bool, reads: dict[str, str]):
        self.owner, self.value, self.reads = owner, value, reads

    def __bool__(self) -> bool:
        self.reads.setdefault(self.owner, caller_location())
        return self.value

    def __eq__(self, other: object) -> bool:
        return bool(self) == other

    __hash__ = object.__hash__

    def __repr__(self) -> str:
        return f"{self.owner or 'model'}.training"


@contextlib.contextmanager
def mode_flags(root: torch.nn.Module, training: bool | str | None, reads: dict[str, str]) -> Iterator[None]:
    """Give every module of ``root`` a ModeFlag while tracing: its own mode (None), the other one
    (:data:`FLIPPED`), or ``training`` for all."""
    modes = {name: (m, m.training) for name, m in root.named_modules()}
    set_training((m, ModeFlag(name, mode if training is None else (not mode) if training == FLIPPED else training, reads))
                 for name, (m, mode) in modes.items())
    try:
        yield
    finally:
        set_training(modes.values())


def set_training(modes: Iterable[tuple[torch.nn.Module, Any]]) -> None:
    """``m.training = value`` for each pair. ``nn.Module.__setattr__`` looks ``training`` up among
    the parameters, submodules and buffers first, which around every trace and run of a model with
    hundreds of modules adds up to milliseconds; where a module keeps that ``__setattr__``, the
    attribute goes straight into its ``__dict__``, where it would end up."""
    for m, value in modes:
        if type(m).__setattr__ is _MODULE_SETATTR:
            m.__dict__["training"] = value
        else:
            m.training = value


@contextlib.contextmanager
def in_eval(*modules: torch.nn.Module) -> Iterator[None]:
    """Every module of ``modules`` in eval mode for the block (norm statistics untouched, dropout
    off), then each submodule's own mode back."""
    modes = {m: m.training for root in modules for m in root.modules()}
    set_training((m, False) for m in modes)
    try:
        yield
    finally:
        set_training(modes.items())


_MODULE_SETATTR = torch.nn.Module.__setattr__


class ModeGuard(torch.nn.Module):
    """A graph's first node where the model's own forward takes another path in training mode.

    The graph holds the eval-mode path, which is what analysis, slimming and export run, so the
    guard raises in training mode instead of computing the wrong path. As a submodule it follows
    ``model.train()``/``model.eval()`` like any other.
    """

    def __init__(self, model_name: str, location: str):
        super().__init__()
        self.model_name, self.location = model_name, location

    def forward(self) -> None:
        if self.training:
            raise GuardError(
                f"{self.location}\n  {self.model_name}.forward takes another path in training mode than in eval mode, "
                "and this graph holds the eval-mode path only: run it in eval mode (model.eval()). To train it, "
                "move the training-only code into a submodule (a submodule whose path depends on the mode runs "
                "as it is, as an opaque leaf) and analyze again."
            )


@fx.node.has_side_effect
def run_in_mode(training: bool, mode: bool, method: str | None, function: str | None, *args: Any, **kwargs: Any) -> Any:
    """Run one op of a merged graph only when the module is in ``mode`` (None otherwise): the
    method ``method`` of ``args[0]``, or the function named ``function`` (by name: the graph's
    generated code can hold a string, not a function)."""
    if bool(training) != mode:
        return None
    if method is not None:
        return getattr(args[0], method)(*args[1:], **kwargs)
    return named_function(function)(*args, **kwargs)


@functools.cache
def named_function(name: str) -> Any:
    """The function a qualified name as fx writes it names (``getattr``, ``torch.relu``,
    ``torch.Tensor.add``, ``torch.nn.functional.relu``)."""
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):  # the longest prefix that is a module
        try:
            found = importlib.import_module(".".join(parts[:i]))
            break
        except ImportError:
            continue
    else:
        found, i = builtins, 0
    for part in parts[i:]:
        found = getattr(found, part)
    return found


def _function_name(fn: Any) -> str | None:
    """A name :func:`named_function` turns back into ``fn``, or None (a lambda, a local function)."""
    try:
        name = fx.node._get_qualified_name(fn)
        return name if named_function(name) is fn else None
    except Exception:  # no name, or one that does not import
        return None


def mode_select(training: bool, if_training: Any, if_eval: Any) -> Any:
    """A constant that differs between the modes, chosen when the graph runs."""
    return if_training if training else if_eval


def _module_paths(n: fx.Node) -> list[str]:
    return [path for path, _ in (n.meta.get("nn_module_stack") or {}).values()]


class _Unmergeable(Exception):
    def __init__(self, node: fx.Node):
        self.node = node


class _Differs:
    """A constant argument that differs between the two traces (ours: traced in the own mode)."""

    def __init__(self, ours: Any, theirs: Any):
        self.ours, self.theirs = ours, theirs


def merge_mode_paths(gm: fx.GraphModule, other: fx.GraphModule, own_modes: dict[str, bool],
                     reads: dict[str, str], share_training_only: bool = True) -> fx.Node | None:
    """Merge ``other`` (every module traced in the mode it is not in) into ``gm`` (each in its own).

    Returns None when merged (``gm.graph`` is rewritten: make a GraphModule on it), or the first
    node, of either graph, whose path differs in what it computes; ``gm`` is then unchanged.
    Nodes are aligned by op and target; aligned nodes must read the same nodes and may differ in
    constants of a module that branched on its flag; the other nodes of each trace may only feed
    each other (side effects such as ``num_batches_tracked.add_(1)``) and the graph's output, which
    the flag then chooses (YOLO's detection head returns its raw outputs in training mode and adds
    the decoded boxes in eval mode: each mode computes its own, and the graph returns that mode's).
    Ops of one mode only run under :func:`run_in_mode`, opaque to analysis, except the training-only
    ops of the model's own forward (googlenet's auxiliary heads): those run in both modes, marked
    :data:`TRAINING_ONLY`, so that analysis sees what they read and slimming resizes them (the
    model's own class trains with them); their cost is not counted, eval mode never pays it.
    Without ``share_training_only`` (inputs too small for that path) the model's own forward
    choosing its output is unmergeable.
    """
    ours, theirs = list(gm.graph.nodes), list(other.graph.nodes)
    outputs = {ours[-1], theirs[-1]}
    key = lambda n: (n.op, str(n.target))  # noqa: E731
    matcher = difflib.SequenceMatcher(None, [key(n) for n in ours], [key(n) for n in theirs], autojunk=False)
    same: dict[fx.Node, fx.Node] = {}  # their node -> ours
    only_ours: set[fx.Node] = set()
    only_theirs: list[tuple[fx.Node, fx.Node]] = []  # (their node, our node it goes before)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            same.update(zip(theirs[j1:j2], ours[i1:i2]))
        else:
            only_ours.update(ours[i1:i2])
            only_theirs += [(n, ours[i1]) for n in theirs[j1:j2]]
    only_theirs_nodes = {o for o, _ in only_theirs}
    one_sided = only_ours | only_theirs_nodes
    training_only = only_theirs_nodes if not own_modes[""] else only_ours
    shared: set[fx.Node] = set()  # the model's own training-only ops: they run in both modes (see below)
    constants: dict[fx.Node, Any] = {}
    try:
        for n, side in [(n, only_ours) for n in ours if n in only_ours] + [(o, only_theirs_nodes) for o, _ in only_theirs]:
            if n.op not in ("get_attr", "call_function", "call_method", "call_module") or not set(n.users) <= side | outputs:
                raise _Unmergeable(n)
            if (share_training_only and _owner(n, reads) == "" and n in training_only and not n.is_impure()
                    and all(a in shared for a in n.all_input_nodes if a in one_sided)):
                shared.add(n)
            elif n.op == "call_function" and _function_name(n.target) is None:  # run_in_mode could not name it
                raise _Unmergeable(n)
        output_owner = _output_owner(ours[-1], theirs[-1], one_sided, shared, reads)
        for o, g in same.items():
            if g.op == "output" and output_owner is not None:
                continue  # chosen by the flag below
            for a in [a for a in o.all_input_nodes if a not in same] + [a for a in g.all_input_nodes if a in only_ours]:
                raise _Unmergeable(a)  # where the paths part, inside the module that took another
            differs: list[_Differs] = []
            merged = _merge_constants((g.args, g.kwargs), fx.node.map_arg((o.args, o.kwargs), same.__getitem__), g, differs)
            if differs:
                _owner(g, reads)
                constants[g] = merged
    except _Unmergeable as failure:
        return failure.node

    def flag_of(n: fx.Node) -> tuple[fx.Node, bool]:
        owner = _owner(n, reads)
        return _flag(gm.graph, owner), own_modes[owner]

    for g, (args, kwargs) in constants.items():
        flag, mode = flag_of(g)
        g.args, g.kwargs = _resolve((args, kwargs), gm.graph, g, flag, mode)
    for n in ours:
        if n in shared:
            n.meta[TRAINING_ONLY] = True
        elif n in only_ours and n.op != "get_attr":
            flag, mode = flag_of(n)
            _run_only_in(n, flag, mode)
    copies: dict[fx.Node, fx.Node] = {}
    for o, before in only_theirs:
        with gm.graph.inserting_before(before):
            copies[o] = gm.graph.node_copy(o, lambda a: copies[a] if a in copies else same[a])
        if o in shared:
            copies[o].meta[TRAINING_ONLY] = True
        elif o.op != "get_attr":
            flag, mode = flag_of(o)
            _run_only_in(copies[o], flag, not mode)
    if output_owner is not None:
        flag, mode = flag_of(output_owner)
        their_output = fx.node.map_arg(theirs[-1].args[0], lambda a: copies[a] if a in copies else same[a])
        if_training, if_eval = (ours[-1].args[0], their_output) if mode else (their_output, ours[-1].args[0])
        with gm.graph.inserting_before(ours[-1]):
            ours[-1].args = (gm.graph.call_function(mode_select, (flag, if_training, if_eval)),)
    return None


def _output_owner(ours: fx.Node, theirs: fx.Node, one_sided: set[fx.Node], shared: set[fx.Node],
                  reads: dict[str, str]) -> fx.Node | None:
    """A one-sided node whose module's flag chooses the output, where one output reads such nodes;
    None where neither does (their constants may still differ: merged as any node's). Raises
    _Unmergeable where several modules' flags would choose, or the model's own with outputs of
    one mode that ``shared`` does not compute in both: run_in_mode's ops are opaque to analysis,
    which would freeze what they read, where tracing/tracer.py's guarded eval path keeps it prunable."""
    feeding = [a for a in ours.all_input_nodes + theirs.all_input_nodes if a in one_sided]
    if not feeding:
        return None
    if len({_owner(n, reads) for n in feeding}) != 1 or (not _owner(feeding[0], reads) and not set(feeding) <= shared):
        raise _Unmergeable(ours)
    return feeding[0]


def owner_of(n: fx.Node, reads: dict[str, str]) -> str | None:
    """The innermost module around ``n`` whose code branched on its flag ("": the model's own)."""
    paths = _module_paths(n)
    owners = [o for o in reads if o == "" or any(p == o or p.startswith(o + ".") for p in paths)]
    return max(owners, key=len) if owners else None


def _owner(n: fx.Node, reads: dict[str, str]) -> str:
    owner = owner_of(n, reads)
    if owner is None:
        raise _Unmergeable(n)
    return owner


def _merge_constants(ours: Any, theirs: Any, node: fx.Node, differs: list[_Differs]) -> Any:
    """``ours`` with every constant that differs from ``theirs`` replaced by a _Differs (listed in
    ``differs``); nodes and container shapes must agree."""
    if isinstance(ours, fx.Node) or isinstance(theirs, fx.Node):
        if ours is not theirs:
            raise _Unmergeable(node)
        return ours
    if type(ours) is type(theirs) and isinstance(ours, (tuple, list)):
        if len(ours) != len(theirs):
            raise _Unmergeable(node)
        return type(ours)(_merge_constants(a, b, node, differs) for a, b in zip(ours, theirs))
    if type(ours) is type(theirs) and isinstance(ours, dict):
        if ours.keys() != theirs.keys():
            raise _Unmergeable(node)
        return {k: _merge_constants(v, theirs[k], node, differs) for k, v in ours.items()}
    if ours is theirs or (type(ours) is type(theirs) and not isinstance(ours, torch.Tensor) and ours == theirs):
        return ours
    if isinstance(ours, (tuple, list, dict)) or isinstance(theirs, (tuple, list, dict)):
        raise _Unmergeable(node)
    differs.append(_Differs(ours, theirs))
    return differs[-1]


def _resolve(value: Any, graph: fx.Graph, node: fx.Node, flag: fx.Node, mode: bool) -> Any:
    """Replace each _Differs by the flag itself (True in training, False in eval) or a mode_select."""
    if isinstance(value, (tuple, list)):
        return type(value)(_resolve(v, graph, node, flag, mode) for v in value)
    if isinstance(value, dict):
        return {k: _resolve(v, graph, node, flag, mode) for k, v in value.items()}
    if not isinstance(value, _Differs):
        return value
    if_training, if_eval = (value.ours, value.theirs) if mode else (value.theirs, value.ours)
    if if_training is True and if_eval is False:
        return flag
    with graph.inserting_before(node):
        return graph.call_function(mode_select, (flag, if_training, if_eval))


def defer_training_only(gm: fx.GraphModule) -> None:
    """Run the model's own training-only ops (:data:`TRAINING_ONLY`) in training mode only: analysis
    and slimming need them in both modes, to see and resize what they read; a slim model's eval
    mode need not pay for them."""
    deferred = [n for n in gm.graph.nodes if n.meta.pop(TRAINING_ONLY, False) and n.op != "get_attr"]
    if not deferred:
        return
    for n in deferred:
        _run_only_in(n, _flag(gm.graph, ""), True)
    gm.recompile()


def _flag(graph: fx.Graph, owner: str) -> fx.Node:
    """The node reading ``owner``'s training flag (the model's own: ""), made once, first in the graph."""
    target = f"{owner}.training" if owner else "training"
    found = next((n for n in graph.nodes if n.op == "get_attr" and n.target == target), None)
    if found is None:
        with graph.inserting_before(next(n for n in graph.nodes if n.op != "placeholder")), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # fx warns that a bool is not a parameter, buffer or module
            found = graph.get_attr(target)
    return found


def _run_only_in(n: fx.Node, flag: fx.Node, mode: bool) -> None:
    if n.op == "call_module":  # the module is called as the method __call__ of itself
        with n.graph.inserting_before(n):
            n.args = (n.graph.get_attr(n.target), *n.args)
        n.target, n.op = "__call__", "call_method"
    method = n.target if n.op == "call_method" else None
    n.args = (flag, mode, method, None if method else _function_name(n.target), *n.args)
    n.op, n.target = "call_function", run_in_mode
