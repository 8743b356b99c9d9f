"""Trace a model into an fx graph and record what every node produces on the example inputs.

Tracing falls back automatically: when a submodule's ``forward`` cannot be traced symbolically
(data-dependent control flow, shape asserts, ``len()`` on proxies), that submodule becomes a leaf
and tracing is retried. Every fallback is recorded, because a leaf is opaque to the channel rules.

When the model's own ``forward`` cannot be traced symbolically (``if out.shape[0] > 10:``,
``if x.max() > 0:``, a bool argument choosing a branch, ``int(x.size(1) / 2)``), it is traced
along the path the example inputs take: non-tensor inputs reach it as their Python values, and
each Python value its code needs from a traced tensor (a condition, ``int()``, ``float()``,
``len()``) is taken from the example. The graph gets a :func:`guard` per such value that re-checks
it at run time, so an input that would take another path raises :class:`GuardError` instead of
computing something else. This keeps one graph over the whole model, so channels stay prunable across the
top-level submodules (splitting the model into separately analyzed submodules would freeze every
channel at their boundaries), and the slim model stays an ``fx.GraphModule`` like any other.
Values computed from channel counts only need no guard (no input changes a model's channel
counts), so they become constants the slim pass rewrites like any literal. Nor do conditions on
input sizes whose other path the graph computes too: the graph runs at batch 1 and, for sequence
models, length 1 (2 where the example's is 1) past its guards, and a condition that changed there
while the graph still gave the model's own outputs loses its guard (see
:func:`_unguard_size_branches`); the graph then runs at the batch sizes and lengths the model runs
at. Where the example's path at batch 1 misses one wider inputs take (an expand to the batch size),
the model is traced at batch 2 and checked at the example's batch.

Hugging Face transformers models are captured by this tracer too (transformers 5 no longer ships
``transformers.utils.fx``; ``torch.export`` would give an aten graph the rule table does not read,
without the ``nn.Linear``/``nn.LayerNorm`` modules the members name). Three things make them one
graph: their decorated ``forward(self, *args, **kwargs)`` is called by keyword with the decorated
function's named parameters as the graph's inputs (:func:`keyword_forward_parameters`); they are
traced along the example path into submodules as well, since every layer computes shapes in Python
(head splits, mask creation, attention dispatch), with a guard per value taken from the example
(ranks and channel counts need none; what is left checks e.g. ``q_length > 1``); and
``use_cache=False`` is a default concrete arg (a key/value cache is an object a graph cannot
return). The graph returns the model output's fields as a dict.

Along the example path the traced code sees what it would see running: an opaque leaf's output
is structured as the leaf's example output is (a tuple holding None, a list of dicts; each item,
length and key guarded), and ``isinstance`` in the model's code sees the type of a traced value's
example value (torchvision's box coder asserts ``isinstance(rel_codes, torch.Tensor)``). Anywhere,
iterating a split or chunk takes its count from its arguments (YOLO's ``list(x.chunk(2, 1))``),
``x.shape != None`` holds without a guard, ``x[idx] = v`` is recorded (analysis freezes what it
writes), and an object fx has no form for (torchvision's ``LevelMapper``) becomes a graph constant.

Other models' submodules are traced along the example path only when asked
(``specialize_submodules=True``): a leaf runs its Python for every input, a specialized submodule
only for inputs that take the example's path, so the default keeps such a submodule a leaf.
"""

from __future__ import annotations

import builtins
import collections
import contextlib
import dataclasses
import inspect
import operator
import sys
import types
from typing import Any, Callable, Iterable, Iterator, Mapping

import torch
import torch.fx as fx
from torch.overrides import handle_torch_function, has_torch_function

from .equivalents import function_form, module_form
from ..ops import declaration_of, declared_functions, module_rule, takes
from ..errors import ExampleInputError, GraphPruneError, GuardError, TraceError
from .flops import NodeFlops, Restart, ShapeOnlyRuns
from ..common.locations import FRAME, caller_location, describe_node, innermost_user_frame, is_user_code, qualified_name, user_frame, user_location
from .modes import FLIPPED, TRAINING_ONLY, ModeFlag, ModeGuard, in_eval, merge_mode_paths, mode_flags, owner_of, set_training
from .specs import TensorSpec

try:  # analysis only interprets its graph: its Python code is generated if it is ever called
    from torch.fx._lazy_graph_module import _LazyGraphModule as AnalysisGraphModule
except ImportError:  # pragma: no cover - another torch: compiled when built
    AnalysisGraphModule = fx.GraphModule


def analysis_graph_module(root: torch.nn.Module, graph: fx.Graph, class_name: str) -> fx.GraphModule:
    """``AnalysisGraphModule(root, graph, class_name)``, built faster.

    fx's constructor copies each call_module/get_attr target from ``root`` with a getattr/setattr
    chain along its path, an AttributeError for each level it has not made yet: a sixth of the
    time of tracing a CNN. This makes the same module tree (empty containers along each path,
    ``root``'s own module at its end) through the child dicts, and leaves parameters, buffers and
    other attributes to fx's own copy. Global module registration hooks see every module set, so
    with any registered fx builds it.
    """
    if torch.nn.modules.module._global_module_registration_hooks:
        return AnalysisGraphModule(root, graph, class_name)
    gm = AnalysisGraphModule(root, fx.Graph(tracer_cls=graph._tracer_cls, tracer_extras=graph._tracer_extras), class_name)
    for node in graph.nodes:
        if node.op not in ("call_module", "get_attr"):
            continue
        *path, field = node.target.split(".")
        source, dest = root, gm
        for item in path:
            source = source._modules[item] if item in source._modules else getattr(source, item)
            child = dest._modules.get(item)
            if child is source:  # the whole subtree is already there
                break
            if child is None:
                child = dest._modules[item] = torch.nn.Module()
            dest = child
        else:
            if field in source._modules:
                dest._modules[field] = source._modules[field]
            else:
                fx.graph_module._copy_attr(source, dest, field)
    gm.graph = graph
    return gm


@dataclasses.dataclass
class Fallback:
    """A submodule that was made a leaf because tracing through it failed, or a function whose calls
    stay opaque (``module``: its qualified name; see :class:`_FunctionLeaf`).

    ``needs_value``: it failed because its Python needed a value from a traced tensor (a branch,
    a loop, ``int()``): ``specialize_submodules=True`` traces it along the example inputs' path.
    """

    module: str
    error: str
    location: str
    needs_value: bool = False

    @property
    def advice(self) -> str:
        return " (analyze with specialize_submodules=True to trace it along the example inputs' path)" if self.needs_value else ""


def _needed_a_value(exc: BaseException) -> bool:
    """Whether symbolic tracing failed where Python needed a traced value: fx's TraceError for a
    branch or a loop on a proxy, a TypeError for ``int()``/``float()``/``len()`` of one."""
    text = str(exc)
    if isinstance(exc, fx.proxy.TraceError):
        return "control flow" in text or "iterated" in text
    return isinstance(exc, TypeError) and ("Proxy" in text or "traced value" in text)


def _hint(exc: BaseException) -> str:
    """What to change at the line where tracing along the example inputs' path failed, where the cause is known."""
    if isinstance(exc, TypeError) and "Proxy" in str(exc):
        return ("  Python needed an int from a traced value there (range(), indexing a list): write int(...) "
                "around it, which takes the example inputs' value and guards it.\n")
    return ""


@dataclasses.dataclass
class Specialization:
    """A Python value the top-level forward took from the example inputs while being traced along
    their path: a branch condition (``bool``), an ``int``/``float``/index, or a length; or
    ``mode``, False: the forward branches on ``self.training`` and the graph holds its eval path.
    (Where the model was traced at batch or length 2 for an example's 1, see :func:`trace`, the
    value is those inputs'.)

    ``guarded``: the graph re-checks it at run time and raises :class:`GuardError` when an input
    gives another value. Values computed from channel counts only are not guarded: no input
    changes them, and a guard would stop the channels from being pruned. Nor are conditions on
    input sizes whose other path the graph was shown to compute too: ``checked_at`` names the
    input sizes where the graph, run past the condition, gave the model's own outputs.
    """

    location: str
    conversion: str
    value: Any
    guarded: bool = True
    checked_at: tuple[str, ...] = ()


@dataclasses.dataclass
class TracedModel:
    """An fx graph plus, per node, its example value (TensorSpec for tensors) and its FLOPs."""

    model: torch.nn.Module
    gm: fx.GraphModule
    values: dict[fx.Node, Any]
    flops: dict[fx.Node, int]
    fallbacks: list[Fallback]
    placeholder_values: list[Any]
    specializations: list[Specialization] = dataclasses.field(default_factory=list)


class ModelState:
    """The Python state of every module of a model, to put back what running its forward changed.

    Tracing runs the user's ``forward`` with fx proxies, and analysis runs the graph and the model
    on the example inputs: whatever ``forward`` stores in the model (a cache dict keyed by
    ``str(x.device)``, a list, a call counter, a new attribute, a buffer updated in place) would
    stay there, proxies included, and change what the next trace sees (timm's EfficientFormer
    found two groups fewer when analyzed a second time). Each module's ``__dict__`` entries are
    kept as the same objects, and the contents of its dicts, lists and sets (its parameter, buffer
    and submodule dicts among them) are copied shallowly; buffers' values are copied too.
    Parameters' values are not (a copy would double the model's memory): a forward that writes
    its own weights in place (weight clipping) does so whenever it runs, here too.

    ``constants``: attributes fx's tracer set on the model itself (a tensor created in forward).
    The graphs built meanwhile copy them from the model, and a later trace must not reuse their
    names (merged graphs tell constants apart by name), so they stay until the last restore.
    """

    def __init__(self, model: torch.nn.Module):
        self.constants: list[str] = []
        self._root = model
        self._attributes = [(m, dict(vars(m))) for m in model.modules()]
        self._contents = {id(v): (v, (dict(v) if isinstance(v, dict) else list(v)) if v else ())
                          for _, attributes in self._attributes for v in attributes.values() if isinstance(v, (dict, list, set))}
        self._buffers = [(b, b.clone()) for b in model.buffers() if b.device.type != "meta"]  # meta: no values

    def restore(self, keep_constants: bool = False) -> None:
        """Put the state back; ``keep_constants``: leave ``constants`` on the model (between traces)."""
        for container, copy in self._contents.values():
            if (container or copy) and not _same_contents(container, copy):
                container.clear()
                if isinstance(container, list):
                    container.extend(copy)
                else:
                    container.update(copy)
        keep = set(self.constants) if keep_constants else set()
        for m, attributes in self._attributes:
            state = vars(m)
            if _same_contents(state, attributes):
                continue
            for name in [k for k in state if k not in attributes and not (m is self._root and k in keep)]:
                del state[name]
            state.update((k, v) for k, v in attributes.items() if state.get(k, _MISSING) is not v)
        with torch.no_grad():
            for b, value in self._buffers:
                if not torch.equal(b, value):
                    b.copy_(value)


_MISSING = object()

#: the state of each model being traced, which every trace attempt on it restores (see _unchanged)
_TRACED: dict[torch.nn.Module, ModelState] = {}


def _same_contents(container: dict | list | set, copy: dict | list | tuple) -> bool:
    """Whether a container holds the same objects as its copy, compared by identity (``==`` could
    call a proxy's ``__eq__``, which records a node, or a tensor's)."""
    if len(container) != len(copy):
        return False
    if isinstance(container, dict):
        return all(map(operator.is_, container, copy)) and all(map(operator.is_, container.values(), copy.values()))
    return all(map(operator.is_, container, copy))


@contextlib.contextmanager
def _unchanged(model: torch.nn.Module) -> Iterator[None]:
    """Leave ``model`` as it was, however the code inside ends.

    Every trace attempt inside starts from and restores this state: one snapshot per analysis,
    which with its restores takes about 8 of the 64 ms of analyzing a ResNet-152."""
    if model in _TRACED:
        yield
        return
    state = _TRACED[model] = ModelState(model)
    try:
        yield
    finally:
        del _TRACED[model]
        state.restore()


class _Proxy(fx.Proxy):
    """A proxy with a length where a split's arguments give it (``list(x.chunk(2, 1))`` asks), and
    that records item assignment (``y[:, 2::3] = y[:, 2::3].sigmoid()`` in YOLO's pose head), which
    fx's proxies refuse: the graph writes in place where the model's code does, and analysis freezes
    the channels of the tensor written (see the op table's ``operator.setitem``)."""

    def __getattr__(self, k: str) -> "_Attribute":
        return _Attribute(self, k)

    def __len__(self) -> int:
        count = split_count(self.node)
        return super().__len__() if count is None else count

    def __setitem__(self, key: Any, value: Any) -> None:
        self.tracer.create_proxy("call_function", operator.setitem, (self, key, value), {})


class _Attribute(fx.proxy.Attribute, _Proxy):
    """``x.shape`` and other attributes of a _Proxy (``x.data[idx] = v`` records too)."""


class _FallbackTracer(fx.Tracer):
    """Symbolic tracer that remembers which non-leaf module was being traced when an error hit.

    Modules' ``training`` flags are ModeFlags while tracing: ``training`` forces one mode for all
    modules (None: each module's own), and ``mode_reads`` maps each module whose code branched on
    its flag to where.
    """

    proxy_buffer_attributes = True  # in-place updates of buffers are recorded, not run at trace time

    def __init__(self, leaf_names: set[str] = frozenset(), leaf_types: tuple[type, ...] = ()):
        super().__init__()  # defaults: GraphModule unpickling builds a tracer with no arguments
        self._autowrap_function_ids.update(id(f) for f in declared_functions())  # calls stay nodes (ops.py)
        self._kept: dict[int, str] = {}  # see keep_calls
        self.leaf_names = leaf_names
        self.leaf_types = leaf_types
        self._stack: list[str] = []
        self.failed_module: str | None = None
        self.training: bool | None = None
        self.mode_reads: dict[str, str] = {}
        self._mode_nodes: dict[str, fx.Node] = {}
        self.root_call: Callable | None = None  # what forward's inputs are passed to, when not forward itself
        self._state: ModelState | None = None  # of the module being traced

    def trace(self, root, concrete_args=None):
        self._form_outputs: list[Any] = []
        if not isinstance(root, torch.nn.Module):
            graph = super().trace(root, concrete_args)
        else:
            # each attempt sees the model as it was, not what an earlier run of its code stored (a
            # proxy in a cache), and leaves it so for the graph's run on the example inputs
            self._state = _TRACED.get(root) or ModelState(root)
            self._state.restore(keep_constants=True)
            try:
                with mode_flags(root, self.training, self.mode_reads):
                    graph = super().trace(root, concrete_args)
            finally:
                self._state.restore(keep_constants=True)
        for out in self._form_outputs:  # fx marks what a wrapped call returned, and its generated code would
            if isinstance(out, fx.Proxy):  # torch.fx.wrap the op that computed it for every later trace
                out.node.meta.pop("is_wrapped", None)
        return graph

    def keep_calls(self, functions: Mapping[Callable, str]) -> None:
        """Calls of ``functions`` become nodes (fx's autowrap), looked up in the globals of the
        modules that define them and of every module whose forward is traced; each node's
        ``meta[OPAQUE_CALL]`` is where its function needed a Python number (the value)."""
        self._kept = {id(function): where for function, where in functions.items()}
        for function in functions:
            self._autowrap_function_ids.add(id(function))
            self._autowrap_search.append(sys.modules[function.__module__])

    def get_fresh_qualname(self, prefix: str) -> str:
        """fx stores a constant it makes (a tensor created in forward) on the model under this name:
        it stays there, for the graphs built from the model to copy, until the analysis ends."""
        name = super().get_fresh_qualname(prefix)
        if self._state is not None:
            self._state.constants.append(name)
        return name

    def create_node(self, *args, **kwargs) -> fx.Node:
        node = super().create_node(*args, **kwargs)
        node.meta[FRAME] = user_frame()  # messages about the node name the user's line (locations.describe_node)
        if node.op == "call_function" and id(node.target) in self._kept:
            node.meta[OPAQUE_CALL] = self._kept[id(node.target)]
        return node

    def create_proxy(self, kind, target, args, kwargs, *rest, **options):
        form = function_form(target) if kind == "call_function" else None
        if form is not None:  # a torch.fx.wrap'ed library function traced through (equivalents.py)
            out = form(*args, **kwargs)
            self._form_outputs.append(out)
            return _FORM_SEQUENCES[type(out)](out) if type(out) in _FORM_SEQUENCES else out
        return super().create_proxy(kind, target, args, kwargs, *rest, **options)

    def create_args_for_root(self, root_fn, is_module, concrete_args=None):
        names = keyword_forward_parameters(root_fn, concrete_args) if is_module else None
        if names is None:
            return super().create_args_for_root(root_fn, is_module, concrete_args)
        defaults = {n: concrete_args[n] if n in (concrete_args or {}) else _default(root_fn, n) for n in names}
        signature = inspect.Signature([inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=defaults[n])
                                       for n in names])  # a specialized input defaults to its value
        inputs = [self._proxy_placeholder(n, concrete_args, signature, root_fn) for n in names]

        def call_by_keyword(root: torch.nn.Module, *values: Any) -> Any:
            return root_fn(root, **dict(zip(names, values)))

        self.root_call = call_by_keyword
        return call_by_keyword, [self.root, *inputs]

    def create_arg(self, a: Any) -> Any:
        if isinstance(a, ModeFlag):
            if a.owner not in self._mode_nodes:
                target = f"{a.owner}.training" if a.owner else "training"
                self._mode_nodes[a.owner] = self.create_node("get_attr", target, (), {})
            return self._mode_nodes[a.owner]
        try:
            return super().create_arg(a)
        except NotImplementedError:  # an object fx has no form for, passed to a leaf (torchvision's LevelMapper)
            name = self.get_fresh_qualname("_constant")  # stored on the model, as fx stores a tensor constant
            setattr(self.root, name, a)
            return self.create_node("get_attr", name, (), {})

    def is_leaf_module(self, m: torch.nn.Module, module_qualified_name: str) -> bool:
        if module_qualified_name in self.leaf_names or isinstance(m, self.leaf_types + (ModeGuard,)):
            return True
        if declaration_of(m) is not None:  # declared with register_op: its code is not traced (ops.py)
            return True
        if module_form(m) is not None:
            return False
        return super().is_leaf_module(m, module_qualified_name)

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _Proxy(node, self)

    def to_bool(self, obj: fx.Proxy) -> bool:
        decided = compared_with_none(obj.node)
        return super().to_bool(obj) if decided is None else decided

    def iter(self, obj: fx.Proxy) -> Iterator[fx.Proxy]:
        count = split_count(obj.node)
        if count is None:
            return super().iter(obj)
        return iter([obj[i] for i in range(count)])

    def call_module(self, m, forward, args, kwargs):
        name = self.path_of_module(m)
        if self.is_leaf_module(m, name):
            return super().call_module(m, forward, args, kwargs)
        form = module_form(m)
        if form is not None:  # a library module traced through its plain-op form (equivalents.py)
            forward = lambda *a, **k: form(m, name, *a, **k)  # noqa: E731
        self._stack.append(name)
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_module is None:
                self.failed_module = name
            raise
        finally:
            self._stack.pop()


_PARTS_ARGUMENTS = ("split_size_or_sections", "split_size", "indices_or_sections", "sections", "indices", "chunks")


def split_count(node: fx.Node) -> int | None:
    """How many tensors a split, tensor_split or chunk returns, where its arguments say so; else None.

    Iterating such a result needs no example value (``y = list(x.chunk(2, 1))``,
    ``y.extend(m(y[-1]) for m in self.m)`` in YOLO's C2f): its arguments give the count. A
    ``chunk(n)`` of fewer than ``n`` channels returns fewer parts, and indexing the one past them
    raises at run time, so the count is never silently wrong.
    """
    what = takes(node) if node.op in ("call_function", "call_method") else None
    if what not in ("split sizes", "chunks"):
        return None
    parts = node.args[1] if len(node.args) > 1 else next((node.kwargs[k] for k in _PARTS_ARGUMENTS if k in node.kwargs), None)
    name = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
    if isinstance(parts, (list, tuple)) and all(type(p) is int for p in parts):
        return len(parts) + (name == "tensor_split")  # tensor_split's are the indices between the parts
    if type(parts) is int and name in ("tensor_split", "chunk"):
        return parts
    return None


def compared_with_none(node: fx.Node) -> bool | None:
    """``x.shape != None`` (``None != x.shape``), or ``==``: a shape is never None, so the types decide
    the condition for every input; else None.

    Code that caches what it computes from a shape compares it with the shape it kept, None at
    first (YOLO's head: ``if self.dynamic or self.shape != shape:``); traced, it takes the path
    that computes, which the graph then takes for every input, with no guard.
    """
    if node.op != "call_function" or node.target not in (operator.eq, operator.ne) or len(node.args) != 2:
        return None
    a, b = node.args
    if (a is None) == (b is None) or _shape_tuple_of(b if a is None else a) is None:
        return None
    return node.target is operator.ne


class _FormList(list):
    """A list a traced-through library function returns (torchvision's ``_filter_input`` picks
    feature maps): fx's wrapper of a torch.fx.wrap'ed function marks the ``node`` of what it returns."""

    node = types.SimpleNamespace(meta={})  # a stand-in that takes the mark


class _FormTuple(tuple):
    """A tuple a traced-through library function returns (see _FormList)."""

    node = _FormList.node


_FORM_SEQUENCES = {list: _FormList, tuple: _FormTuple}


class _RootFailure(Exception):
    """The model's own forward (not a submodule's) could not be traced."""

    def __init__(self, error: BaseException, location: str):
        super().__init__(f"{type(error).__name__}: {error}")
        self.error, self.location = error, location


class _FunctionLeaf(Exception):
    """A plain function of the model's code turns tensor values into a Python number (Mask R-CNN's
    ``int(box[2] - box[0])`` per detected box): traced, the graph would hold the example's numbers
    under guards that other inputs, and a pruned model's own example, fail. Its calls become opaque
    nodes instead, which run its Python for every input (and freeze the channels they read)."""

    def __init__(self, function: Callable, location: str):
        super().__init__(qualified_name(function))
        self.function, self.location = function, location


def _calling_function() -> Callable | None:
    """The function running at the innermost frame of the user's code, where it is one that
    ``torch.fx`` can keep as a call: defined at a module's top level under a public name (not a
    method, a lambda or a nested function)."""
    frame = innermost_user_frame()
    if frame is None:
        return None
    code = frame.f_code
    function = frame.f_globals.get(code.co_name)
    return function if getattr(function, "__code__", None) is code and not code.co_name.startswith("_") else None


def _trace_with_leaf_fallbacks(
    model: torch.nn.Module,
    make_tracer: Callable[[set[str], tuple[type, ...]], "_FallbackTracer"],
    leaf_modules: Iterable[str | type],
    concrete_args: Mapping[str, Any] | None,
    training: bool | None = None,
) -> tuple[fx.GraphModule, list[Fallback], "_FallbackTracer"]:
    """Trace, making every submodule whose forward fails a leaf and retrying; raises _RootFailure."""
    leaf_names = {m for m in leaf_modules if isinstance(m, str)}
    leaf_types = tuple(m for m in leaf_modules if isinstance(m, type))
    leaf_functions: dict[Callable, str] = {}
    fallbacks: list[Fallback] = []
    while True:
        tracer = make_tracer(leaf_names, leaf_types)
        tracer.training = training
        tracer.keep_calls(leaf_functions)
        try:
            graph = tracer.trace(model, concrete_args=dict(concrete_args) if concrete_args else None)
        except GraphPruneError:
            raise
        except _FunctionLeaf as leaf:
            if leaf.function in leaf_functions:  # its caller does not reach it through a module's globals
                raise TraceError(
                    f"cannot keep {leaf}, which turns tensor values into Python numbers, as one call: its caller "
                    f"reaches it other than by its name in a module\n  at {leaf.location}\n  Move that code into a "
                    "submodule: a submodule graphprune cannot trace becomes an opaque leaf (or list it in leaf_modules).") from leaf
            fallbacks.append(Fallback(str(leaf), "it turns tensor values into Python numbers, so its calls run it as "
                                                 "it is, opaque", leaf.location))
            leaf_functions[leaf.function] = leaf.location
            continue
        except Exception as exc:  # fx raises many types: TraceError, TypeError, RuntimeError, ...
            failed = tracer.failed_module
            location = user_location(exc)
            if not failed:
                raise _RootFailure(exc, location) from exc
            fallbacks.append(Fallback(failed, f"{type(exc).__name__}: {exc}", location, _needed_a_value(exc)))
            leaf_names.add(failed)
            continue
        return analysis_graph_module(tracer.root, graph, type(model).__name__), fallbacks, tracer


def symbolic_trace(
    model: torch.nn.Module,
    leaf_modules: Iterable[str | type] = (),
    concrete_args: Mapping[str, Any] | None = None,
) -> tuple[fx.GraphModule, list[Fallback]]:
    """Trace ``model``; submodules that fail to trace become leaves (recorded as fallbacks).

    Without example inputs a top-level forward that cannot be traced symbolically is an error;
    :func:`trace` traces it along the example inputs' path instead.
    """
    if isinstance(model, fx.GraphModule):
        return model, []
    try:
        with _unchanged(model):
            gm, fallbacks, _ = _trace_with_leaf_fallbacks(model, _FallbackTracer, leaf_modules, concrete_args)
    except _RootFailure as failure:
        raise TraceError(
            f"cannot trace {type(model).__name__}.forward itself: {failure}\n  at {failure.location}\n"
            "  Trace it with example inputs (graphprune.analyze / graphprune.trace), which follow the path "
            "they take, pass the branching arguments as concrete_args, or wrap the offending code in a "
            "submodule and list it in leaf_modules."
        ) from failure.error
    return gm, fallbacks


#: ``node.meta`` key of a call of a function kept opaque (see :class:`_FunctionLeaf`): where it needed a number
OPAQUE_CALL = "opaque_call"

_CONVERSIONS: dict[str, Callable[[Any], Any]] = {
    "bool": bool, "int": int, "float": float, "len": len, "value": lambda v: v, "keys": tuple, "range": int,
}
_WHAT = {"bool": "condition", "int": "int()", "float": "float()", "len": "length", "value": "value", "keys": "keys",
         "range": "range() bound"}


def guard(value: Any, conversion: str, expected: Any, location: str) -> None:
    """A graph node: raise GuardError unless ``value`` converts to what the example inputs gave.

    Written by tracing along the example inputs' path (see :class:`Specialization`).
    """
    if has_torch_function((value,)):  # fx tracing a graph that holds a guard (unpickling) records it again
        return handle_torch_function(guard, (value,), value, conversion, expected, location)
    got = _CONVERSIONS[conversion](value)
    if got != expected:
        raise GuardError(
            f"{location}\n  the graph follows the path the example inputs took, where this {_WHAT[conversion]} was "
            f"{expected!r}; this input gives {got!r}. Analyze with example inputs that take this path, or let the "
            "code that branches run as an opaque leaf, which runs its Python for every input: move it into a "
            "submodule (one graphprune cannot trace becomes a leaf, unless analyzed with specialize_submodules=True) "
            "or list it in leaf_modules."
        )


class _ExamplePathProxy(_Proxy):
    """A proxy Python can turn into an int, float or length (see _ExamplePathTracer).

    No ``__index__``: torch's argument parser probes it on every proxy passed where ints go
    (``torch.zeros((b, c))``), which would specialize sizes fx records symbolically.
    """

    def __getattr__(self, k: str) -> "_ExamplePathAttribute":
        return _ExamplePathAttribute(self, k)

    def __int__(self) -> int:
        return self.tracer.concretize(self, "int")

    def __float__(self) -> float:
        return self.tracer.concretize(self, "float")

    def __len__(self) -> int:
        count = split_count(self.node)
        return self.tracer.concretize(self, "len") if count is None else count


class _ExamplePathAttribute(fx.proxy.Attribute, _ExamplePathProxy):
    """``x.shape`` and other attributes of an _ExamplePathProxy, so ``len(x.shape)`` works too."""


class _ExamplePathTracer(_FallbackTracer):
    """Traces the top-level forward along the path the example inputs take.

    Non-tensor inputs (``model(x, 2)``, ``forward(self, x, training=True)``, None) reach the
    forward as their Python values, so any code may branch on them, and one guard per input checks
    that later calls pass the same value. Where the forward's own code needs a Python value from a
    traced one (``if``, ``int()``, ``float()``, ``len()``, iteration), the value is computed by
    running the graph built so far on the example inputs, and a :func:`guard` node re-checks it.
    Submodules are specialized only with ``specialize_submodules`` (Hugging Face models always);
    otherwise one whose code needs such a value becomes an opaque leaf, as with plain tracing,
    since a leaf runs its Python for every input.
    """

    def __init__(
        self,
        leaf_names: set[str] = frozenset(),
        leaf_types: tuple[type, ...] = (),
        example_values: Callable[[list[fx.Node]], list[Any]] | None = None,
        specialize_submodules: bool = False,
    ):  # defaults: unpickling re-traces the straight-line graph, which needs no example values
        super().__init__(leaf_names, leaf_types)
        self._example_values = example_values
        self.specialize_submodules = specialize_submodules
        self._interpreter: GraphRunner | None = None
        self._evaluating = False  # running the graph: modules and attributes are the real ones
        self.guards: list[tuple[Specialization, fx.Node]] = []

    def create_args_for_root(self, root_fn, is_module, concrete_args=None):
        fn, args = super().create_args_for_root(root_fn, is_module, concrete_args)
        if fn not in (root_fn, self.root_call) or self._example_values is None:  # *args or nested inputs; unpickling
            return fn, args
        placeholders = [n for n in self.graph.nodes if n.op == "placeholder"]
        inputs = self._example_values(placeholders)
        self._interpreter = GraphRunner(self.root, garbage_collect_values=False, graph=self.graph)
        self._interpreter.args_iter = iter(inputs)
        values = dict(zip(placeholders, inputs))
        args = list(args)
        for i, a in enumerate(args):
            if isinstance(a, fx.Proxy) and a.node in values and _is_python_constant(values[a.node]):
                value = values[a.node]
                location = f"argument '{a.node.target}' of {type(self.root).__name__}.forward"
                self._add_guard(a, "value", value, location)
                args[i] = value
        return fn, args

    def trace(self, root, concrete_args=None):
        try:
            with _example_isinstance(self), _example_range():
                return super().trace(root, concrete_args)
        finally:  # the example values of every node: a failed trace stays alive in reference cycles
            self._interpreter = None  # while the collector pauses (groups._no_cyclic_gc), one per retry

    def is_leaf_module(self, m: torch.nn.Module, module_qualified_name: str) -> bool:
        """With ``specialize_submodules``, a module the rule table describes (timm's Conv2dSame) is a
        leaf its rule prunes: traced, its code would read its weight's shape, which freezes its channels."""
        if self.specialize_submodules and module_rule(m) is not None:
            return True
        return super().is_leaf_module(m, module_qualified_name)

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _ExamplePathProxy(node, self)

    def to_bool(self, obj: fx.Proxy) -> bool:
        decided = compared_with_none(obj.node)
        return self.concretize(obj, "bool") if decided is None else decided

    def isinstance(self, obj: fx.Proxy, classes: Any) -> bool:
        """Python's ``isinstance`` of a proxy while this tracer traces (see :func:`_example_isinstance`):
        in the model's code, the proxy is a proxy and also what its example value is, where the code
        may take values from the example. No guard: an op's result has one type for every input."""
        if _ISINSTANCE(obj, classes):  # still a proxy: code asking whether it is traced (HF's is_tracing) is told so
            return True
        if self._interpreter is not None and not self._evaluating and self._specializes_here() \
                and is_user_code(sys._getframe(2).f_code.co_filename):
            return _ISINSTANCE(self._example_value(obj.node), classes)
        return False

    def iter(self, obj: fx.Proxy):
        if not self._specializes_here() or split_count(obj.node) is not None:
            return super().iter(obj)
        return iter([obj[i] for i in range(self.concretize(obj, "len"))])

    def call_module(self, m, forward, args, kwargs):
        if self._evaluating:
            return forward(*args, **kwargs)
        out = super().call_module(m, forward, args, kwargs)
        if isinstance(out, fx.Proxy) and out.node.op == "call_module" and self._specializes_here() \
                and module_rule(m) is None and declaration_of(m) is None:
            return self._structured(out, self._example_value(out.node), caller_location(), f"'{out.node.target}'")
        return out

    def _structured(self, proxy: fx.Proxy, value: Any, where: str, path: str) -> Any:
        """An opaque leaf's output as the code after it sees it where it runs: its Python values as
        they are (a leaf returns ``(images, None)``: ``if targets is not None`` takes the example's
        branch, not a proxy's), its tuples, lists and dicts as tuples, lists and dicts of their
        items (``"masks" in pred``), each guarded (their lengths and keys too: a leaf's list may be
        as long as the batch). ``where``: the line calling the leaf; ``path``: the item's, from the leaf."""
        location = f"{where} (the output of {path})"
        if _is_python_constant(value):
            self._add_guard(proxy, "value", value, location)
            return value
        if type(value) in (tuple, list):
            self._add_guard(proxy, "len", len(value), location)
            return type(value)(self._structured(proxy[i], v, where, f"{path}[{i}]") for i, v in enumerate(value))
        if type(value) in (dict, collections.OrderedDict):
            self._add_guard(proxy, "keys", tuple(value), location)
            return type(value)((k, self._structured(proxy[k], v, where, f"{path}[{k!r}]")) for k, v in value.items())
        return proxy

    def getattr(self, attr, attr_val, parameter_proxy_cache):
        if self._evaluating:
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def concretize(self, proxy: fx.Proxy, conversion: str) -> Any:
        """The example inputs' value of ``proxy``, converted; the graph gets a guard re-checking it."""
        if not self._specializes_here():  # inside a submodule: it becomes an opaque leaf
            if conversion == "bool":
                return super().to_bool(proxy)
            raise TypeError(f"symbolic tracing cannot compute {conversion}() of a traced value")
        if conversion in ("int", "float") and reads_values(proxy.node):
            function = _calling_function()
            if function is not None:
                raise _FunctionLeaf(function, caller_location())
        value = _CONVERSIONS[conversion](self._example_value(proxy.node))
        self._add_guard(proxy, conversion, value, caller_location())
        return value

    def _specializes_here(self) -> bool:
        """Whether the code being traced may take values from the example: the model's own forward,
        and submodules with ``specialize_submodules``."""
        return not self._stack or self.specialize_submodules

    def _add_guard(self, proxy: fx.Proxy, conversion: str, value: Any, location: str) -> None:
        node = self.create_proxy("call_function", guard, (proxy, conversion, value, location), {}).node
        self.guards.append((Specialization(location, conversion, value), node))

    def _example_value(self, node: fx.Node) -> Any:
        """Run the nodes traced since the last call on the example inputs (modules in eval mode, as
        :func:`propagate` runs them, so the guards hold there)."""
        if self._interpreter is None:
            raise TypeError("a traced value needs its example value, but the forward takes *args or nested inputs")
        env = self._interpreter.env
        modes = {m: m.training for m in self.root.modules()}
        self._evaluating = True
        self.root.eval()
        try:
            for n in self.graph.nodes:
                if n not in env:
                    try:
                        env[n] = _detach(self._interpreter.run_node(n))
                    except GraphPruneError:
                        raise
                    except Exception as exc:
                        if self._stack:  # a submodule's trace that cannot compute its own values: a leaf
                            raise _UncomputableTrace(n, exc) from exc
                        raise _node_failure(n, [env.get(a) for a in n.all_input_nodes], exc) from exc
        finally:
            self._evaluating = False
            for m, mode in modes.items():
                m.training = mode
        return env[node]


_ISINSTANCE = builtins.isinstance


@contextlib.contextmanager
def _example_isinstance(tracer: _ExamplePathTracer) -> Iterator[None]:
    """``isinstance`` as :meth:`_ExamplePathTracer.isinstance` answers it, for the block.

    torchvision's box coder asserts ``isinstance(rel_codes, torch.Tensor)``, which a proxy fails.
    Python code calls the builtin, which this replaces; C code checks types itself and still sees
    the proxy (a proxy that claimed to be a tensor there, through ``__class__``, crashed torch's
    argument parser). fx's, torch's and graphprune's own checks see the proxy too.
    """
    def example_isinstance(obj: Any, classes: Any) -> bool:
        if type(obj) in (_ExamplePathProxy, _ExamplePathAttribute):
            return tracer.isinstance(obj, classes)
        return _ISINSTANCE(obj, classes)

    builtins.isinstance = example_isinstance
    try:
        yield
    finally:
        builtins.isinstance = _ISINSTANCE


_RANGE = builtins.range


class _RangeType(type):
    def __instancecheck__(cls, obj: Any) -> bool:
        return _ISINSTANCE(obj, _RANGE)

    def __subclasscheck__(cls, sub: type) -> bool:
        return issubclass(sub, _RANGE)


class _ExampleRange(metaclass=_RangeType):
    """``range`` while tracing along the example path. In the model's own forward, a traced bound
    takes the example's value (a proxy has no ``__index__``, see :class:`_ExamplePathProxy`, so the
    builtin refuses it and the whole trace would fail). :meth:`_Call.trace` accepts it, guarded,
    where it is computed from sizes of dims other than the batch dim (torchvision's SSD:
    ``range(1, num_classes)`` over ``scores.size(-1)``), and refuses any other as before, asking for
    ``int(...)``: a loop over the batch would pin the graph to the example's batch size, and a count
    from tensor data would rarely pass its guard. The guard stays where the bound is a channel count
    too: the graph holds the loop unrolled as many times as the example's count, which pruning could
    not change, so the guard's read of the count freezes those channels. In a
    submodule the builtin still refuses it and the submodule becomes a leaf, which runs its loop
    for every input (torchvision's image-list transform, ``for i in range(batched_imgs.shape[0])``,
    then takes any image size). ``isinstance(r, range)`` holds; the object made is the builtin's."""

    def __new__(cls, *args: Any) -> Any:
        return _RANGE(*(a.tracer.concretize(a, "range") if type(a) in (_ExamplePathProxy, _ExamplePathAttribute)
                        and not a.tracer._stack else a for a in args))


@contextlib.contextmanager
def _example_range() -> Iterator[None]:
    """``range`` as :class:`_ExampleRange` makes it, for the block (torchvision's SSD loops
    ``for label in range(1, num_classes)`` over ``num_classes = scores.size(-1)`` in its own forward)."""
    builtins.range = _ExampleRange
    try:
        yield
    finally:
        builtins.range = _RANGE


class _UncomputableTrace(Exception):
    """Tracing a submodule along the example path made a node that fails on the example inputs
    where the module's own code does not (a proxy that stands for None: ``p is not None and
    p.any()``): the submodule becomes an opaque leaf, and the example inputs are not to blame."""

    def __init__(self, node: fx.Node, error: Exception):
        super().__init__(f"its trace cannot compute node {describe_node(node)} on the example "
                         f"inputs: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")


def _is_python_constant(value: Any) -> bool:
    """None, bool, int, float, str, or tuples/lists of them: values a guard can compare."""
    if isinstance(value, (tuple, list)):
        return all(_is_python_constant(v) for v in value)
    return value is None or type(value) in (bool, int, float, str)


def _trace_example_path(
    model: torch.nn.Module,
    leaf_modules: Iterable[str | type],
    concrete_args: Mapping[str, Any] | None,
    example_values: Callable[[list[fx.Node]], list[Any]],
    training: bool | None = None,
    specialize_submodules: bool = False,
) -> tuple[fx.GraphModule, list[Fallback], "_ExamplePathTracer"]:
    """Trace a model whose own forward fails symbolic tracing along its example inputs' path."""
    try:
        gm, fallbacks, tracer = _trace_with_leaf_fallbacks(
            model, lambda names, types: _ExamplePathTracer(names, types, example_values, specialize_submodules),
            leaf_modules, concrete_args, training,
        )
    except _RootFailure as failure:
        raise TraceError(
            f"cannot trace {type(model).__name__}.forward, even along the example inputs' path: {failure}\n"
            f"  at {failure.location}\n{_hint(failure.error)}"
            "  Move that code into a submodule: a submodule graphprune cannot trace becomes an opaque leaf "
            "and the rest of the model is still analyzed (or list it in leaf_modules)."
        ) from failure.error
    return gm, fallbacks, tracer


def value_spec(value: Any) -> Any:
    """Replace tensors in a (nested) value by their TensorSpec, keep python values as they are."""
    if isinstance(value, torch.Tensor):
        return TensorSpec(tuple(value.shape), value.dtype)
    if isinstance(value, torch.Size):
        return tuple(value)
    if isinstance(value, (tuple, list)):
        specs = [value_spec(v) for v in value]
        return tuple(specs) if isinstance(value, tuple) else specs
    if isinstance(value, dict):
        return {k: value_spec(v) for k, v in value.items()}
    return value


class GraphRunner(fx.Interpreter):
    """Runs a graph node by node as its generated code runs it: each call gets new lists and dicts
    where the node's arguments hold some (fx keeps them immutable), so a leaf module may change the
    list it is given (a YOLO detection head writes its outputs into its input list)."""

    def fetch_args_kwargs_from_env(self, n: fx.Node) -> tuple[tuple, dict]:
        args, kwargs = super().fetch_args_kwargs_from_env(n)
        return _mutable(args), _mutable(kwargs)


def _mutable(value: Any) -> Any:
    if isinstance(value, fx.immutable_collections.immutable_list):
        return [_mutable(v) for v in value]
    if isinstance(value, fx.immutable_collections.immutable_dict):
        return {k: _mutable(v) for k, v in value.items()}
    if type(value) is tuple:
        return tuple(_mutable(v) for v in value)
    return value


class _ShapeRecorder(GraphRunner):
    """Runs the graph once, keeping each node's example value (as specs) and its FLOPs.

    FLOPs are ``FlopCounterMode``'s and specs those of a real run, at a fraction of its cost:
    nodes that provably run no op the mode counts run without it, and contractions whose results
    only reach shape-only ops run on meta tensors (graphprune/tracing/flops.py says which and why).
    """

    def __init__(self, gm: fx.GraphModule, substitute: bool = True):
        super().__init__(gm)
        self.values: dict[fx.Node, Any] = {}
        self.flops: dict[fx.Node, int] = {}
        self._counter = NodeFlops(gm, self.submodules)
        self._shape_only = ShapeOnlyRuns(gm, self._counter) if substitute else None
        if self._shape_only is not None and not self._shape_only.closed:
            self._shape_only = None

    def run_node(self, n: fx.Node) -> Any:
        try:
            done = None
            if self._shape_only is not None:
                args, kwargs = self.fetch_args_kwargs_from_env(n)
                self._shape_only.check(n, args, kwargs)  # raises Restart if it reads values
                if n in self._shape_only.closed:
                    done = self._shape_only.run(n, args, kwargs)
            if done is not None:
                out, flops = done
            elif self._counter.free(n, self.env):
                out, flops = super().run_node(n), 0
            else:
                out, flops = self._counter.count(lambda: fx.Interpreter.run_node(self, n))
            out = _detach(out)
        except (GraphPruneError, Restart):  # Restart: propagate() runs the graph again for real
            raise
        except Exception as exc:
            if self._shape_only is not None and (n in self._shape_only.closed or n in self._shape_only.tainted):
                raise self._shape_only.restart(n, exc) from exc  # the real run decides what fails
            raise _node_failure(n, [self.env.get(a) for a in n.all_input_nodes], exc) from exc
        self.values[n] = value_spec(out)
        self.flops[n] = 0 if n.meta.get(TRAINING_ONLY) else flops  # eval mode, which budgets are about, never runs it
        return out


def _node_failure(n: fx.Node, inputs: list[Any], exc: Exception) -> ExampleInputError:
    """The error for a node that failed on the example inputs (usually a wrong input shape)."""
    args = ", ".join(_describe(v) for v in inputs)
    error = ExampleInputError(
        f"running node {describe_node(n)} on the example inputs failed: "
        f"{type(exc).__name__}: {exc}\n  its inputs were: [{args}]\n"
        "  Check that example_inputs have the shapes and dtypes the model expects "
        "(e.g. --input-shape 1,3,224,224)."
    )
    error.node = n
    return error


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


def trace(
    model: torch.nn.Module,
    example_inputs: Any,
    leaf_modules: Iterable[str | type] = (),
    concrete_args: Mapping[str, Any] | None = None,
    specialize_submodules: bool = False,
    channel_dims: Callable[[TracedModel], Callable[[fx.Node, int], bool]] | None = None,
) -> TracedModel:
    """Trace ``model`` and propagate the example inputs through the graph.

    ``example_inputs`` is a tensor, a tuple of positional inputs, or a dict of keyword inputs.
    The model's modules run in eval mode during propagation (so BatchNorm statistics are not
    updated) and get their previous mode back afterwards. Grad mode stays enabled, so modules with
    inference fast paths (nn.MultiheadAttention) run, and are counted, as they do in training.
    A top-level forward that cannot be traced symbolically is traced along the example inputs'
    path; ``specializations`` records every value taken from them (see the module docstring).
    ``specialize_submodules``: submodules are traced along that path too, instead of becoming
    opaque leaves where their code needs a Python value from a traced one.
    The graph runs at other batch sizes and lengths where the model does: conditions on sizes
    whose other path it computes too lose their guards (:func:`_unguard_size_branches`); where the
    example has batch (or length) 1 and the graph cannot run wider inputs, the model is traced at
    2 instead and kept where it runs the example (its values are still the example's).
    Whatever the model's code stores in the model meanwhile is undone (see :class:`ModelState`).
    ``channel_dims``: the analysis' answer to whether a dim of a node holds channels (``analyze``
    passes :func:`graphprune.analysis.runner.channel_dims`): values computed from channel counts
    only then lose their guards (see :func:`_unguard_channel_counts`); without it they keep them.
    """
    args, kwargs = split_inputs(example_inputs)
    concrete_args = {**_none_arguments(model, args, kwargs), **_library_defaults(model, kwargs), **(concrete_args or {})}
    call = _Call(model, leaf_modules, concrete_args, specialize_submodules, channel_dims)
    traced, blocked = call.trace(args, kwargs)
    wider = _widened(args, kwargs) if blocked else None
    if wider is not None:  # the example's path misses one wider inputs take (an expand to the batch size)
        try:
            general = call.trace(*wider)[0]
        except GraphPruneError:  # the model does not trace at the wider inputs: the example's graph stays
            return traced
        traced = _at_example(general, traced, call.bind(args, kwargs))
    return traced


@dataclasses.dataclass
class _Call:
    """How :func:`trace` traces ``model``, at whichever inputs."""

    model: torch.nn.Module
    leaf_modules: Iterable[str | type]
    concrete_args: Mapping[str, Any]
    specialize_submodules: bool
    channel_dims: Callable[[TracedModel], Callable[[fx.Node, int], bool]] | None

    def bind(self, args: tuple, kwargs: dict[str, Any]) -> Callable[[list[fx.Node]], list[Any]]:
        """The graph's placeholder values for inputs called as ``model(*args, **kwargs)``."""
        given = {**self.concrete_args, **kwargs}
        return lambda placeholders: _bind_placeholders(
            placeholders, _forward_parameters(self.model, len(placeholders), self.concrete_args), args, given)

    def trace(self, args: tuple, kwargs: dict[str, Any]) -> tuple[TracedModel, bool]:
        """The model traced along the path of ``args``/``kwargs`` and propagated through them; and
        whether a condition on sizes keeps its guard because another size took a path the graph
        misses (see :func:`_unguard_size_branches`)."""
        model, example_values = self.model, self.bind(args, kwargs)
        leaves, stale, share, unshared = list(self.leaf_modules), [], True, ""
        with _unchanged(model):  # the graphs, propagation and _stale_module's run all run the model's code
            while True:
                gm, fallbacks, guards, mode = _trace_mode_independent(model, leaves, self.concrete_args, example_values,
                                                                      self.specialize_submodules, share)
                flat = example_values([n for n in gm.graph.nodes if n.op == "placeholder"])
                try:
                    values, flops = propagate(gm, flat)
                    break
                except ExampleInputError as exc:
                    if share and any(n.meta.get(TRAINING_ONLY) for n in gm.graph.nodes):
                        share = False  # inputs too small for the training-only path (inception_v3's auxiliary head under 299x299)
                        unshared = (f" (its training-only outputs fail at the example inputs' sizes, {str(exc).splitlines()[0]}: "
                                    "larger example inputs let graphprune analyze and resize them)")
                        continue
                    mismatch = mismatched_inputs(model, named_tensors(args, kwargs))
                    if mismatch is not None:
                        raise ExampleInputError(f"{mismatch}\n  (running the model on them failed: {str(exc).splitlines()[0]})") from exc
                    leaf = _stale_module(exc, model, args, kwargs, leaves)
                    if leaf is None:
                        raise
                    leaves.append(leaf)
                    stale.append(Fallback(leaf, f"its traced graph failed where the model runs: {str(exc).splitlines()[0]}",
                                          "<traced graph>"))
        mode = [dataclasses.replace(spec, location=spec.location + unshared) for spec in mode]
        traced = TracedModel(model, gm, values, flops, stale + fallbacks, flat, [s for s, _ in guards] + mode)
        if not guards:
            return traced, False
        if self.channel_dims is not None:
            _unguard_channel_counts(traced, guards, self.channel_dims(traced))
        bound = next((spec for spec, node in guards if spec.conversion == "range" and not _off_the_batch(node, traced)), None)
        if bound is not None:  # see _ExampleRange
            raise TraceError(
                f"cannot trace {type(model).__name__}.forward, even along the example inputs' path: range() of a "
                f"traced value other than a size off the batch dim\n  at {bound.location}\n{_hint(TypeError('Proxy'))}"
                "  Move that code into a submodule: a submodule graphprune cannot trace becomes an opaque leaf "
                "and the rest of the model is still analyzed (or list it in leaf_modules).")
        return traced, _unguard_size_branches(traced, guards, args, kwargs, self)


def _at_example(general: TracedModel, traced: TracedModel, example_values: Callable[[list[fx.Node]], list[Any]]) -> TracedModel:
    """``general``, traced at wider inputs than the example, with the example's values where its
    guards let the example through (its conditions on sizes were checked there); else ``traced``."""
    flat = example_values([n for n in general.gm.graph.nodes if n.op == "placeholder"])
    with _unchanged(general.model):
        try:
            general.values, general.flops = propagate(general.gm, flat)
        except GraphPruneError:
            return traced
    general.placeholder_values = flat
    return general


_Traced = tuple[fx.GraphModule, list[Fallback], list[tuple[Specialization, fx.Node]], dict[str, str]]


def _trace_graph(
    model: torch.nn.Module,
    leaves: list[str | type],
    concrete_args: Mapping[str, Any],
    example_values: Callable[[list[fx.Node]], list[Any]],
    training: bool | None = None,
    specialize_submodules: bool = False,
) -> _Traced:
    """One trace (symbolic, or along the example path when the top-level forward needs it, or
    into every submodule when asked to): graph, fallbacks, guards, and the modules whose code
    branched on their mode."""
    if isinstance(model, fx.GraphModule):
        return model, [], [], {}
    if specialize_submodules or _python_shapes_throughout(model):
        gm, fallbacks, tracer = _trace_example_path(model, leaves, concrete_args, example_values, training, True)
        return gm, fallbacks, tracer.guards, tracer.mode_reads
    try:
        gm, fallbacks, tracer = _trace_with_leaf_fallbacks(model, _FallbackTracer, leaves, concrete_args, training)
        return gm, fallbacks, [], tracer.mode_reads
    except _RootFailure:
        gm, fallbacks, tracer = _trace_example_path(model, leaves, concrete_args, example_values, training)
        return gm, fallbacks, tracer.guards, tracer.mode_reads


def _library_defaults(model: torch.nn.Module, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Concrete args a library's models need to be one graph: Hugging Face's ``use_cache=False``
    (a key/value cache is a Python object the graph cannot return; the pruned model is its plain
    forward), unless the example inputs pass it."""
    if not _python_shapes_throughout(model) or "use_cache" in kwargs:
        return {}
    return {"use_cache": False} if "use_cache" in inspect.signature(model.forward).parameters else {}


def _python_shapes_throughout(model: torch.nn.Module) -> bool:
    """Hugging Face transformers models: every layer computes shapes in Python.

    Their attention splits heads with ``(*x.shape[:-1], -1, head_dim)``, their mask and rotary
    code branches on lengths and devices; plain tracing would make every attention block an
    opaque leaf. They are traced along the example inputs' path into submodules too, with a guard
    per value taken from the example (most are ranks and channel counts, which need none).
    """
    return any(c.__module__.startswith("transformers.") for c in type(model).__mro__)


def _trace_mode_independent(
    model: torch.nn.Module,
    leaves: list[str | type],
    concrete_args: Mapping[str, Any],
    example_values: Callable[[list[fx.Node]], list[Any]],
    specialize_submodules: bool = False,
    share_training_only: bool = True,
) -> tuple[fx.GraphModule, list[Fallback], list[tuple[Specialization, fx.Node]], list[Specialization]]:
    """A graph that computes what the model computes in both training and eval mode.

    Mode flags passed to ops read the module's flag at run time (see :class:`ModeFlag`). Code that
    branches on a flag is traced in the other mode too, and the two traces are merged where they
    differ only in constants, side effects and a submodule's ops that only the model's output reads
    (see :func:`merge_mode_paths`). Where a submodule's
    path differs in what it computes, that submodule becomes a leaf (it runs its own Python, in
    whatever mode it is); where the model's own forward branches on its mode too (torchvision's
    detectors return losses in training mode) or differs itself, the graph holds its eval-mode
    path, and every submodule's, behind a :class:`ModeGuard` (recorded as a specialization on
    ``training``, value False).
    Before this, a model analyzed in training mode kept dropping activations in eval mode after
    slimming.
    """
    mode_leaves: list[Fallback] = []
    while True:
        names = leaves + [f.module for f in mode_leaves]
        gm, fallbacks, guards, reads = _trace_graph(model, names, concrete_args, example_values, None, specialize_submodules)
        if not reads:
            return gm, mode_leaves + fallbacks, guards, []
        try:
            other = _trace_graph(model, names, concrete_args, example_values, FLIPPED, specialize_submodules)[0]
        except GraphPruneError:  # the other mode does not trace: every module that branched runs as it is
            owners = [o for o in reads if o and not any(d.startswith(o + ".") for d in reads)]
        else:
            own_modes = {name: m.training for name, m in model.named_modules()}  # tracing gave them back
            differing = merge_mode_paths(gm, other, own_modes, reads, share_training_only)
            if differing is None:
                return analysis_graph_module(model, gm.graph, type(model).__name__), mode_leaves + fallbacks, guards, []
            owners = [owner for owner in [owner_of(differing, reads)] if owner]
        owners = [o for o in owners if o not in names]  # a leaf's method the forward calls (transform.postprocess) is traced
        if not owners or "" in reads:  # the graph will hold the eval path of the model's own forward: of every module's too
            break
        mode_leaves += [Fallback(o, "its forward takes another path in training mode than in eval mode (it branches on "
                                    "self.training), so it runs as it is", reads[o]) for o in owners]
    gm, fallbacks, guards, _ = _trace_graph(model, names, concrete_args, example_values, False, specialize_submodules)
    gm.add_submodule("mode_guard", ModeGuard(type(model).__name__, reads.get("", "<forward>")))
    with gm.graph.inserting_before(next(n for n in gm.graph.nodes if n.op != "placeholder")):
        gm.graph.call_module("mode_guard")
    gm.recompile()
    gm.mode_guard.train(model.training)
    return gm, mode_leaves + fallbacks, guards, [Specialization(gm.mode_guard.location, "mode", False)]


def _none_arguments(model: torch.nn.Module, args: tuple, kwargs: dict) -> dict[str, Any]:
    """Forward's arguments that are None in the example call, defaults included (``mask=None``).

    As fx concrete args, ``if mask is not None`` takes the example's branch (a proxy is never
    None, so it would trace the other one) and the graph asserts the argument is None at run
    time. Other Python values (bools, scale factors) are traced along the example path with
    guards (see :class:`Specialization`)."""
    if isinstance(model, fx.GraphModule):
        return {}
    try:
        bound = inspect.signature(model.forward).bind(*args, **kwargs)
    except TypeError:
        return {}  # _bind_placeholders reports what is missing
    bound.apply_defaults()
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    params = inspect.signature(model.forward).parameters
    return {k: v for k, v in bound.arguments.items() if v is None and params[k].kind in kinds}


def _stale_module(exc: ExampleInputError, model: torch.nn.Module, args: tuple, kwargs: dict, leaves: list) -> str | None:
    """The submodule to make a leaf when the traced graph fails on inputs the model itself runs on.

    Symbolic tracing can bake a value into the graph that is not what the model computes (a cached
    tensor, a shape read through a helper fx cannot see); the innermost module around the failing
    node then runs as it is. None when the model itself fails (the inputs are wrong) or no module
    is left to make a leaf.
    """
    node = getattr(exc, "node", None)
    stack = list((node.meta.get("nn_module_stack") or {}).values()) if node is not None else []
    candidates = [name for name, _ in reversed(stack) if name and name not in leaves]
    if node is not None and node.op == "call_module" and node.target not in leaves:
        candidates.insert(0, node.target)
    if not candidates:
        return None
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            model(*args, **kwargs)
    except Exception:  # noqa: BLE001 - the model fails on its inputs: the user's error stands
        return None
    finally:
        for m, mode in modes.items():
            m.training = mode
    return candidates[0]


def _off_the_batch(node: fx.Node, traced: TracedModel) -> bool:
    """Whether a guard's value is computed from sizes of dims other than the batch dim only."""
    sources = _size_sources(node.args[0], traced.values)
    return sources is not None and all(d not in (None, 0) for _, d in sources)


def _unguard_channel_counts(traced: TracedModel, guards: list[tuple[Specialization, fx.Node]],
                            is_channel_dim: Callable[[fx.Node, int], bool]) -> None:
    """Remove the guards of values computed from channel counts only (and ranks), but for
    ``range()`` bounds: the graph holds their loops unrolled, which a pruned count would not
    change, so their guards stay and the analysis freezes the channels they read (see :class:`_ExampleRange`).

    No input changes a model's channel counts, so such a value needs no check; a guard would read
    the channel count where pruning changes it, and the analysis would freeze those channels.
    Which dims hold channels is the analysis' answer (``is_channel_dim``).
    """
    def holds_channels(t: fx.Node, dim: int | None) -> bool:
        return dim is None or is_channel_dim(t, dim)

    for spec, node in guards:
        value = node.args[0]
        sources = _size_sources(value, traced.values)
        if spec.conversion == "len" and _shape_tuple_of(value) is not None:
            sources = [(_shape_tuple_of(value), None)]  # len(x.shape) is the rank
        elif spec.conversion == "len" and _shape_slice_of(value) is not None:
            sources = [(_shape_slice_of(value), None)]  # len(x.shape[:-1]) too
        if sources is None or not all(holds_channels(t, d) for t, d in sources) or spec.conversion == "range":
            continue
        spec.guarded = False
        _erase_with_dead_inputs(node, traced)
    traced.gm.recompile()


def _unguard_size_branches(
    traced: TracedModel, guards: list[tuple[Specialization, fx.Node]], args: tuple, kwargs: dict[str, Any], call: _Call,
) -> bool:
    """Remove the guards of conditions on sizes whose other path the graph is shown to compute too;
    return whether one keeps its guard because the graph failed or differed where it changed.

    Such a condition is decided by the input's shape: Hugging Face's mask code expands position
    ids to the batch size ``if batch_size != position_ids.shape[0]``, a no-op where they are equal,
    and its attention takes other (equivalent) paths at length 1. With their guards the graph would
    refuse batch sizes and lengths the model runs at. The graph runs at other sizes
    (:func:`_at_other_sizes`) with its guards recording instead of raising; where only such
    conditions changed and its outputs equal the model's own on the same inputs (both in eval mode),
    each condition that changed has had both its values checked against the model, and its guard
    goes. A condition that changed where the outputs differ, where either run fails or where another
    guard changed (a data branch, an int) keeps its guard, as does one no other size changed.
    Nothing can be compared on the meta device: its guards stay.
    """
    candidates = {node for spec, node in guards if spec.guarded and spec.conversion == "bool"
                  and _size_sources(node.args[0], traced.values) is not None}
    model, gm = traced.model, traced.gm
    tensors = [*model.parameters(), *model.buffers(), *named_tensors(args, kwargs).values()]
    if not candidates or any(t.device.type == "meta" for t in tensors):
        return False
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    passed: dict[fx.Node, list[str]] = {}
    failed: set[fx.Node] = set()
    with _unchanged(model), in_eval(model, gm), torch.no_grad():
        for label, other_args, other_kwargs in _at_other_sizes(args, kwargs):
            runner = _GuardRecorder(gm)
            got = _outcome(lambda: runner.run(*call.bind(other_args, other_kwargs)(placeholders)))
            changed = [n for n, value in runner.seen.items() if value != n.args[2]]
            if not changed:
                continue
            same = (got is not _FAILED and candidates.issuperset(changed)
                    and _same_outputs(_outcome(lambda: _call(model, other_args, other_kwargs, call.concrete_args)), got))
            for n in candidates.intersection(changed):
                if same:
                    passed.setdefault(n, []).append(label)
                else:
                    failed.add(n)
    specs = {node: spec for spec, node in guards}
    for node, labels in passed.items():
        if node not in failed:
            specs[node].guarded, specs[node].checked_at = False, tuple(labels)
            _erase_with_dead_inputs(node, traced)
    gm.recompile()
    return bool(failed)


def _at_other_sizes(args: tuple, kwargs: dict[str, Any]) -> list[tuple[str, tuple, dict[str, Any]]]:
    """The example inputs at another batch size, and for sequence models at another length and at
    both (see :class:`InputSizes`), each with what differs: batch 1 (2 where the example's is 1),
    length 1 (2).

    Conditions on sizes compare them with 1 (``q_length > 1``) or with each other (a tensor of one
    row against the batch), so these sizes give them their other values; a condition none of them
    changes keeps its guard, which is safe.
    """
    sizes = InputSizes.of((*args, *kwargs.values()))
    if sizes is None:
        return []
    other_batch = 1 if sizes.batch > 1 else 2
    others = [(other_batch, None)]
    if sizes.length is not None:
        other_length = 1 if sizes.length > 1 else 2
        others += [(None, other_length), (other_batch, other_length)]
    return [
        (", ".join(f"{what} {size}" for what, size in (("batch", b), ("length", n)) if size is not None),
         *sizes.call_at(args, kwargs, b, n))
        for b, n in others
    ]


def _widened(args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]] | None:
    """The example inputs at batch 2 where theirs is 1, and at length 2 where theirs is 1 (see
    :class:`InputSizes`); None where they are wider already. Paths special to size 1 (a no-op
    expand left out, a decoding fast path) are then conditions the wider trace checks at the
    example's size."""
    sizes = InputSizes.of((*args, *kwargs.values()))
    if sizes is None or sizes.batch > 1 and (sizes.length is None or sizes.length > 1):
        return None
    return sizes.call_at(args, kwargs, 2 if sizes.batch == 1 else None, 2 if sizes.length == 1 else None)


class _GuardRecorder(GraphRunner):
    """Runs a graph past its guards, recording the value each got (converted as it checks it)."""

    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm)
        self.seen: dict[fx.Node, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        if n.op == "call_function" and n.target is guard:
            value = self.env[n.args[0]] if isinstance(n.args[0], fx.Node) else n.args[0]
            self.seen[n] = _CONVERSIONS[n.args[1]](value)
            return None
        return super().run_node(n)


_FAILED = object()


def _outcome(run: Callable[[], Any]) -> Any:
    """What ``run`` returns, or _FAILED where it raises (then nothing is shown at that size)."""
    try:
        return run()
    except Exception:  # noqa: BLE001 - any failure only means the guards it would check stay
        return _FAILED


def _call(model: torch.nn.Module, args: tuple, kwargs: dict[str, Any], concrete_args: Mapping[str, Any]) -> Any:
    """``model`` called as its graph is: with the concrete args it was traced with (``use_cache=False``)."""
    try:
        positional = inspect.signature(model.forward).bind_partial(*args).arguments
    except TypeError:
        positional = {}
    extra = {k: v for k, v in concrete_args.items() if k not in positional and k not in kwargs}
    return model(*args, **kwargs, **extra)


def _same_outputs(want: Any, got: Any) -> bool:
    """Whether two outputs hold the same values: tensors within a few roundings of their scale
    (equivalent paths may order a reduction differently), anything else equal."""
    if want is _FAILED:
        return False
    want, got = _leaves(want), _leaves(got)
    if len(want) != len(got):
        return False
    for w, g in zip(want, got):
        if not isinstance(w, torch.Tensor) or not isinstance(g, torch.Tensor):
            if isinstance(w, torch.Tensor) or isinstance(g, torch.Tensor) or not _is_python_constant(w) or w != g:
                return False
        elif w.shape != g.shape or w.dtype != g.dtype:
            return False
        elif not w.is_floating_point():
            if not torch.equal(w, g):
                return False
        elif not (torch.isfinite(w).all() and torch.isfinite(g).all()):
            return False
        elif w.numel() and (w - g).abs().max() > min(64 * torch.finfo(w.dtype).eps, 1e-2) * w.abs().max():
            return False
    return True


def _leaves(out: Any) -> list[Any]:
    """The values of a (nested) output, in order; a dict's (a Hugging Face ModelOutput's) values."""
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        return [leaf for o in out for leaf in _leaves(o)]
    return [out]


_METADATA = ("dtype", "device", "shape", "ndim", "is_cuda", "layout")


def reads_values(value: Any) -> bool:
    """Whether ``value`` (a node or constant) is computed from tensors' values, not from their
    dtypes, devices and sizes alone."""
    stack, seen = [value], set()
    while stack:
        n = stack.pop()
        if not isinstance(n, fx.Node) or n in seen:
            continue
        seen.add(n)
        if (n.op == "call_function" and n.target is getattr and n.args[1] in _METADATA) or (n.op == "call_method" and n.target in ("size", "dim")):
            continue
        if n.op in ("placeholder", "get_attr", "call_module"):
            return True
        stack.extend(n.all_input_nodes)
    return False


def _size_sources(value: Any, values: Mapping[fx.Node, Any]) -> list[tuple[fx.Node, int | None]] | None:
    """The (tensor, dim) sizes a Python value was computed from (dim None: the tensor's rank), or
    None when it depends on anything else: tensor values, a model input, an op that is not arithmetic."""
    if not isinstance(value, fx.Node):
        return []
    if isinstance(values.get(value), TensorSpec) or value.op != "call_function" and value.op != "call_method":
        return None
    target, args = value.target, value.args
    if target in ("dim", "ndimension") or target is getattr and args[1] == "ndim":
        return [(args[0], None)]
    if target in ("size", "numel") or target is getattr and args[1] == "shape":
        ndim = values[args[0]].ndim
        dim = (args[1] if len(args) > 1 else value.kwargs.get("dim")) if target == "size" else None
        return [(args[0], d) for d in range(ndim)] if dim is None else [(args[0], dim % ndim)]
    if target is operator.getitem and isinstance(args[1], int) and _shape_tuple_of(args[0]) is not None:
        t = _shape_tuple_of(args[0])
        return [(t, args[1] % values[t].ndim)]
    if value.op == "call_function" and getattr(target, "__module__", None) in ("_operator", "math", "builtins"):
        found: list[tuple[fx.Node, int | None]] = []
        for a in value.all_input_nodes:
            sub = _size_sources(a, values)
            if sub is None:
                return None
            found += sub
        return found
    return None


def _shape_tuple_of(value: Any) -> fx.Node | None:
    """The tensor whose whole shape ``value`` is (``x.shape``, ``x.size()``), else None."""
    if not isinstance(value, fx.Node):
        return None
    if value.op == "call_function" and value.target is getattr and value.args[1] == "shape":
        return value.args[0]
    if value.op == "call_method" and value.target == "size" and len(value.args) == 1 and "dim" not in value.kwargs:
        return value.args[0]
    return None


def _shape_slice_of(value: Any) -> fx.Node | None:
    """The tensor whose shape ``value`` slices (``x.shape[:-1]``, Hugging Face's head split), else None."""
    if isinstance(value, fx.Node) and value.op == "call_function" and value.target is operator.getitem:
        if isinstance(value.args[1], slice) and len(value.all_input_nodes) == 1:
            return _shape_tuple_of(value.args[0])
    return None


def _erase_with_dead_inputs(node: fx.Node, traced: TracedModel) -> None:
    """Erase ``node`` and the python values (size reads, arithmetic) only it used."""
    inputs = [a for a in node.all_input_nodes if not isinstance(traced.values.get(a), TensorSpec)]
    traced.gm.graph.erase_node(node)
    traced.values.pop(node, None)
    traced.flops.pop(node, None)
    for a in inputs:
        if not a.users and a.op in ("call_function", "call_method"):
            _erase_with_dead_inputs(a, traced)


def propagate(gm: fx.GraphModule, placeholder_values: list[Any]) -> tuple[dict[fx.Node, Any], dict[fx.Node, int]]:
    """Run ``gm`` once: every node's example value (specs for tensors) and FLOPs.

    Modules run in eval mode (BatchNorm statistics are not updated) and get their mode back.
    """
    recorder = _ShapeRecorder(gm)
    training = [m for m in recorder.submodules.values() if m.training]
    if any(type(m).train is not torch.nn.Module.train for m in recorder.submodules.values()):
        gm.eval()
    else:  # what eval() does, without a Module.__setattr__ per module (fx's path containers are in training mode)
        set_training((m, False) for m in training)
    try:
        try:
            recorder.run(*placeholder_values)
        except Restart:  # a node read values a shape-only run left out: run everything for real
            recorder = _ShapeRecorder(gm, substitute=False)
            recorder.run(*placeholder_values)
    finally:
        set_training((m, True) for m in training)  # eval() left every module in eval mode
    return recorder.values, recorder.flops


def split_inputs(example_inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Example inputs as (positional, keyword): a tensor, a tuple of inputs or a dict of keyword inputs."""
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


def named_tensors(args: tuple, kwargs: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The example's tensors by name: ``input_<i>`` positionally (as ONNX inputs are named), keywords as given."""
    positional = {f"input_{i}": x for i, x in enumerate(x for x in args if isinstance(x, torch.Tensor))}
    return {**positional, **{k: x for k, x in kwargs.items() if isinstance(x, torch.Tensor)}}


@dataclasses.dataclass(frozen=True)
class InputSizes:
    """The example inputs' batch size (their first tensor's first dim) and, where an integer input
    has shape (batch, length) (token ids), length: the sizes a graph should run at other values of.

    Tensors whose first dim is the batch's are batched; 2-dim ones of shape (batch or 1, length)
    (ids, masks, position ids) have the length at dim 1.
    """

    batch: int
    length: int | None

    @staticmethod
    def of(values: Iterable[Any]) -> InputSizes | None:
        """The sizes of these example inputs; None without a tensor of at least one dim."""
        tensors = [t for t in values if isinstance(t, torch.Tensor) and t.ndim]
        if not tensors:
            return None
        batch = tensors[0].shape[0]
        ids = next((t for t in tensors if t.ndim == 2 and t.shape[0] == batch and not t.is_floating_point()
                    and not t.is_complex() and t.dtype != torch.bool), None)
        return InputSizes(batch, None if ids is None else ids.shape[1])

    def batched(self, value: Any) -> bool:
        return isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == self.batch

    def sequenced(self, value: Any) -> bool:
        return (self.length is not None and isinstance(value, torch.Tensor) and value.ndim == 2
                and value.shape[1] == self.length and value.shape[0] in (self.batch, 1))

    def resized(self, value: Any, batch: int | None = None, length: int | None = None) -> Any:
        """``value`` at another batch size and/or length, taking the example's rows and positions
        cyclically (the first ones where smaller); anything else as it is."""
        if length is not None and self.sequenced(value):
            value = value.index_select(1, torch.arange(length, device=value.device) % self.length)
        if batch is not None and self.batched(value):
            value = value.index_select(0, torch.arange(batch, device=value.device) % self.batch)
        return value

    def call_at(self, args: tuple, kwargs: dict[str, Any], batch: int | None = None,
                length: int | None = None) -> tuple[tuple, dict[str, Any]]:
        """Positional and keyword example inputs resized (see :meth:`resized`)."""
        return (tuple(self.resized(a, batch, length) for a in args),
                {k: self.resized(v, batch, length) for k, v in kwargs.items()})


def mismatched_inputs(model: torch.nn.Module, tensors: Mapping[str, torch.Tensor]) -> str | None:
    """What to change where an example input lies on another device, or holds another floating
    dtype, than all of the model's weights (the likely cause of the model failing on it); None where none does."""
    weights = [*model.parameters(), *model.buffers()]
    devices = {w.device for w in weights}
    dtypes = {w.dtype for w in weights if w.is_floating_point()}
    for name, x in tensors.items():
        if len(devices) == 1 and x.device not in devices:
            (device,) = devices
            return (f"example input {name!r} is on {x.device} but the model's weights are on {device}: "
                    f"give example inputs on the model's device (x.to('{device}')), or move the model")
        if x.is_floating_point() and len(dtypes) == 1 and x.dtype not in dtypes:
            (dtype,) = dtypes
            return (f"example input {name!r} is {x.dtype} but the model's weights are {dtype}: "
                    f"give example inputs of the weights' dtype (x.to({dtype})), or convert the model")
    return None


def _forward_parameters(model: torch.nn.Module, count: int, concrete_args: Mapping[str, Any]) -> list[str]:
    """Names of forward's parameters, in placeholder order (fx may rename its placeholders)."""
    if isinstance(model, fx.GraphModule):
        return [n.target.lstrip("*") for n in model.graph.nodes if n.op == "placeholder"]
    names = keyword_forward_parameters(type(model).forward, concrete_args)
    if names is None:
        names = [p for p in inspect.signature(model.forward).parameters]
    return names[:count]


def keyword_forward_parameters(forward: Callable, concrete_args: Mapping[str, Any] | None) -> list[str] | None:
    """The graph's inputs when ``forward`` takes ``*args`` or ``**kwargs``: its named parameters,
    then the concrete args that go to ``**kwargs`` (``return_dict=False``); None where fx binds the inputs.

    fx would make ``*args`` and ``**kwargs`` one proxy each, which code that passes them on
    (Ultralytics' ``forward(self, x, *args, **kwargs)`` calls ``self.predict(x, *args, **kwargs)``)
    cannot unpack. The graph calls ``forward`` by keyword instead, with its named parameters, so
    ``*args`` is empty and ``**kwargs`` holds the concrete args, as in a user's call. Hugging Face
    forwards are decorated: the code fx sees is a ``(self, *args, **kwargs)`` wrapper and the named
    parameters are those of the function it wraps (``input_ids``, ``attention_mask``, ...).
    """
    params = inspect.signature(forward).parameters.values()  # follows __wrapped__ to the decorated function
    if not any(p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD) for p in params):
        return None
    named = [p.name for p in params if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
    return named[1:] + [k for k in (concrete_args or {}) if k not in named]  # [1:]: self


def _default(forward: Callable, name: str) -> Any:
    parameter = inspect.signature(forward).parameters.get(name)
    return inspect.Parameter.empty if parameter is None else parameter.default


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
