"""Latency budgets: the latency on a named runtime, measured per op and fitted in the MACs model's form.

What is measured. Each MAC-carrying node of the graph (conv, linear, matmul, attention: the budget
model's ``gg.mac_terms``) is cut out with its parameters and timed alone on the runtime (exported
to ONNX for onnxruntime) on a grid of kept channel counts of the channel maps it scales with, the
counts multiples of the widths ``round_to="auto"`` keeps (groups.auto_round_to). Nodes of one
layer configuration (op, shapes, what scales) are timed once: ResNet-50's 54 convs are 23
configurations. The unpruned model is timed whole; what the ops' sum at full width leaves out
(elementwise ops and copies the runtime did not fuse, its per-call overhead) is a constant remainder.

The fit. A node's latency is a multilinear polynomial in the kept shares x_i of its maps
(1, x_in, x_out, x_in * x_out for a conv: the MACs' bilinear term plus a kernel's fixed and
per-channel work), least squares in relative error, the non-constant coefficients non-negative so
that no channel costs less than nothing. Each x_i is linear in the groups' keep ratios, so the
total is quadratic in them, like MACs: it is installed in the cost model as the metric
"latency" (integer nanoseconds, ``CostModel.add_metric``) and every allocator and method reads
it unchanged. A step table at the kernels' preferred widths was the other candidate;
bench/latency.py measures both on held-out counts (bench/results/latency.md says which won and by
how much).

Timing: warm-up runs, then the median of repeated runs; the candidates of one configuration are
interleaved (every repeat runs each once, in a new random order) so drift and other load fall on
all alike. ``Runtime(timer=...)`` replaces the measurement (tests use a deterministic one).
Measurements are cached on disk, keyed by runtime, device, threads, batch, the op's shapes and
the library versions (:class:`MeasurementCache`).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import itertools
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.fx as fx

from ..groups.cost import CostModel, Product
from ..budget.targets import Budget, Runtime
from ..analysis.channels import ChannelMap
from ..common.distributed import broadcast_object, is_main
from ..errors import BudgetError, GraphPruneError
from .onnx import export_onnx
from ..groups.graph import GroupGraph
from ..tracing.modes import in_eval
from ..groups.plan import Plan
from ..slimming.slim import slim
from ..tracing.specs import TensorSpec
from ..tracing.tracer import InputSizes, named_tensors, split_inputs

#: kept shares of a map's prunable channels the grid is measured at (rounded to the auto widths)
LEVELS = (0.25, 0.5, 0.75, 1.0)
#: channel multiples probed for the preferred width (see preferred_width); the grid's own step is at most twice the largest
PROBE_WIDTHS = (1, 2, 4, 8)
#: how much slower than predicted a width's probes may run and the width still count as preferred
WIDTH_TOLERANCE = 0.05
#: runs of one op configuration's candidates (each a median of these, after WARMUP runs)
OP_REPEATS = 15
WARMUP = 3


# ----------------------------------------------------------------------------------- timing

Timer = Callable[[Sequence[torch.nn.Module], Sequence[Any], Runtime, int], list[float]]


def check_available(runtime: Runtime) -> None:
    """BudgetError where this machine cannot run ``runtime``, saying what to install or pick instead."""
    if runtime.name.startswith("onnxruntime"):
        try:
            import onnxruntime as ort
        except ImportError:
            raise BudgetError(f"runtime {runtime.name!r} needs onnxruntime: pip install onnxruntime "
                              "(onnxruntime-gpu for the CUDA provider)") from None
        if runtime.name == "onnxruntime-cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            raise BudgetError(f"runtime 'onnxruntime-cuda' needs onnxruntime's CUDA provider, and this onnxruntime has "
                              f"{', '.join(ort.get_available_providers())}: install onnxruntime-gpu with a CUDA it "
                              "supports, or measure on runtime='onnxruntime' (CPU)")
    if runtime.device == "cuda" and not torch.cuda.is_available():
        raise BudgetError(f"runtime {runtime.name!r} on cuda needs a GPU that PyTorch sees (torch.cuda.is_available() is "
                          "False): measure on the CPU instead (Runtime(device='cpu') or 'onnxruntime')")


def measure(modules: Sequence[torch.nn.Module], inputs: Sequence[Any], runtime: Runtime, repeats: int) -> list[float]:
    """Median seconds of one call of each module on its inputs on ``runtime``, after WARMUP calls;
    every repeat calls each module once, in a new random order (the runs are interleaved)."""
    with tempfile.TemporaryDirectory() as folder, _threads(runtime), in_eval(*modules):
        runs = [_runner(m, x, runtime, os.path.join(folder, f"{i}.onnx")) for i, (m, x) in enumerate(zip(modules, inputs))]
        for run in runs:
            for _ in range(WARMUP):
                run()
        times: list[list[float]] = [[] for _ in runs]
        rng = np.random.default_rng(0)
        for _ in range(repeats):
            for k in rng.permutation(len(runs)).tolist():
                start = time.perf_counter()
                runs[k]()
                times[k].append(time.perf_counter() - start)
    return [float(np.median(t)) for t in times]


@contextlib.contextmanager
def _threads(runtime: Runtime) -> Iterator[None]:
    """PyTorch's intra-op threads set to the runtime's for the PyTorch runtimes (onnxruntime's are per session)."""
    before = torch.get_num_threads()
    if runtime.name.startswith("torch") and runtime.device == "cpu":
        torch.set_num_threads(runtime.threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _runner(module: torch.nn.Module, inputs: Any, runtime: Runtime, path: str) -> Callable[[], Any]:
    """A call of ``module`` on ``inputs`` as ``runtime`` runs it (onnxruntime: exported to ``path``)."""
    args, kwargs = split_inputs(inputs)
    if runtime.name.startswith("onnxruntime"):
        import onnxruntime as ort

        export_onnx(module, path, inputs, verify=False, dynamic_batch=False, dynamic_length=False)
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = runtime.threads, 1
        provider = "CUDAExecutionProvider" if runtime.device == "cuda" else "CPUExecutionProvider"
        session = ort.InferenceSession(path, options, providers=[provider])
        taken = {i.name for i in session.get_inputs()}
        feed = {k: v.detach().cpu().numpy() for k, v in named_tensors(args, kwargs).items() if k in taken}
        return lambda: session.run(None, feed)
    device = torch.device(runtime.device)
    model = module if device.type == "cpu" else copy.deepcopy(module).to(device)
    fn = torch.compile(model, dynamic=False) if runtime.name == "torch.compile" else model
    args = tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in args)
    kwargs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}

    def run() -> None:
        with torch.inference_mode():
            fn(*args, **kwargs)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return run


def batched(example_inputs: Any, runtime: Runtime) -> Any:
    """The example inputs at the runtime's batch size (their rows repeated or cut; see InputSizes)."""
    args, kwargs = split_inputs(example_inputs)
    sizes = InputSizes.of([*args, *kwargs.values()])
    if runtime.batch is None or sizes is None or sizes.batch == runtime.batch:
        return example_inputs
    args, kwargs = sizes.call_at(args, kwargs, batch=runtime.batch)
    return kwargs if isinstance(example_inputs, dict) else args[0] if isinstance(example_inputs, torch.Tensor) else args


# ----------------------------------------------------------------------------------- the cache

class MeasurementCache:
    """Measured seconds by key, in one JSON file per measuring environment: the runtime, its
    threads and batch, the device, the library versions and the timer. Keys name an op's shapes
    and counts (or the whole model's graph), so a second model with the same layers measures
    nothing again. ``runtime.cache``: a folder, True for ``~/.cache/graphprune/latency``
    (``$XDG_CACHE_HOME`` is honoured), False to measure every time."""

    def __init__(self, runtime: Runtime):
        self.environment = environment(runtime)
        self.entries: dict[str, float] = {}
        self.path: Path | None = None
        if runtime.cache is not False:
            folder = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "graphprune" / "latency" \
                if runtime.cache is True else Path(runtime.cache)
            self.path = folder / (hashlib.sha256(json.dumps(self.environment, sort_keys=True).encode()).hexdigest()[:20] + ".json")
            if self.path.exists():
                with contextlib.suppress(ValueError, OSError):
                    self.entries = json.loads(self.path.read_text())["entries"]

    def get(self, key: str) -> float | None:
        return self.entries.get(key)

    def put(self, key: str, seconds: float) -> None:
        self.entries[key] = seconds

    def save(self) -> None:
        """Write atomically (a process profiling beside this one never reads half a file)."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"environment": self.environment, "entries": self.entries}, indent=0, sort_keys=True))
        os.replace(tmp, self.path)


def environment(runtime: Runtime) -> dict[str, Any]:
    """What a measurement depends on besides the op: runtime, threads, batch, device, versions, timer."""
    versions = {"torch": torch.__version__}
    if runtime.name.startswith("onnxruntime"):
        import onnx
        import onnxruntime

        versions.update(onnxruntime=onnxruntime.__version__, onnx=onnx.__version__)
    timer = runtime.timer
    return {"runtime": runtime.name, "threads": runtime.threads, "batch": runtime.batch, "device": _device_name(runtime),
            "versions": versions, "timer": None if timer is None else f"{getattr(timer, '__module__', '')}.{getattr(timer, '__qualname__', type(timer).__qualname__)}"}


def _device_name(runtime: Runtime) -> str:
    if runtime.device == "cuda":
        return torch.cuda.get_device_name() if torch.cuda.is_available() else "cuda"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} CPUs)"
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} CPUs)"


# ----------------------------------------------------------------------------------- one op alone

@dataclasses.dataclass
class OpCase:
    """One MAC-carrying node, cut out of the graph and resizable along the channel maps it scales with.

    ``variables``: the labels of those maps (distinct, each with prunable channels); ``basis``: the
    monomials over them its latency is fitted in (every product of a subset of each MAC term's
    factors); ``macs``: the node's MACs per monomial of its terms. ``key``: the layer configuration
    (op, shapes, which dims scale with which variable): nodes with equal keys are measured once.
    ``resizable``: False where the node cannot be run alone at other widths (an op whose
    attributes graphprune cannot set from outside the graph): it is measured at full width only and
    scaled with its MACs (``LatencyModel.notes`` names it).
    """

    gg: GroupGraph = dataclasses.field(repr=False)
    node: fx.Node
    variables: list[np.ndarray] = dataclasses.field(repr=False)
    basis: list[tuple[int, ...]]
    macs: dict[tuple[int, ...], int]
    batch: int | None
    key: str = ""
    resizable: bool = True
    why: str = ""

    def __post_init__(self) -> None:
        self._channels = [prunable_channels(self.gg, v) for v in self.variables]
        shapes = [(tuple(self._spec(n).shape), self._spec(n).dtype) for n in self._inputs()]
        self.key = hashlib.sha256(repr((self._describe(), shapes, self._structure(), self.sizes, self.basis,
                                        self.batch)).encode()).hexdigest()[:24]

    def check(self) -> None:
        """Run the narrowest candidate once, where a size the node cannot follow shows first; on
        failure the node is not resizable (measured at full width, scaled with its MACs)."""
        try:
            module, inputs = self.build(self.grid[0], device="meta")  # shapes only
            with torch.no_grad():
                module(*inputs)
        except Exception as exc:  # noqa: BLE001 - any failure: measured at full width and scaled with its MACs
            self.resizable, self.why = False, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"

    # -- channels
    @property
    def sizes(self) -> list[int]:
        """Prunable channels per variable."""
        return [len(c) for c in self._channels]

    @property
    def grid(self) -> list[tuple[int, ...]]:
        """Counts per variable to fit on: the LEVELS of its channels, at multiples of 16, 8, 4, 2
        or 1, the coarsest that leaves four levels (the full width only where the node is not resizable)."""
        if not self.resizable:
            return [tuple(self.sizes)]
        axes = []
        for n in self.sizes:
            step = next(w for w in (16, 8, 4, 2, 1) if n >= 4 * w)
            axes.append(sorted({min(n, max(step, step * round(level * n / step))) for level in LEVELS}))
        return list(itertools.product(*axes))

    @property
    def probes(self) -> dict[int, tuple[int, ...]]:
        """Per probed width w: ``w`` fewer channels in each variable than at full width (see preferred_width)."""
        if not self.resizable:
            return {}
        return {w: tuple(n - w for n in self.sizes) for w in PROBE_WIDTHS if min(self.sizes) > 2 * w}

    def _dropped(self, counts: Sequence[int]) -> np.ndarray:
        return np.concatenate([c[k:] for c, k in zip(self._channels, counts)] or [np.zeros(0, dtype=np.int64)])

    def _kept(self, labels: np.ndarray, dropped: np.ndarray) -> np.ndarray:
        return ~np.isin(channel_ids(self.gg, labels), dropped)

    def fractions(self, counts: Sequence[int]) -> np.ndarray:
        """Kept share of each variable's map (frozen positions stay) with ``counts`` prunable channels kept."""
        dropped = self._dropped(counts)
        return np.array([self._kept(v, dropped).mean() for v in self.variables])

    # -- the op alone
    def _inputs(self) -> list[fx.Node]:
        return [n for n in self.node.all_input_nodes if n.op != "get_attr" and isinstance(self._spec(n), TensorSpec)]

    def _spec(self, n: fx.Node) -> Any:
        return self.gg.traced.values.get(n)

    def _describe(self) -> str:
        """The op and its arguments, tensors by shape."""
        n = self.node
        if n.op == "call_module":
            m = self.gg.gm.get_submodule(n.target)
            what = f"{type(m).__qualname__}({m.extra_repr()})"
        else:
            what = getattr(n.target, "__qualname__", str(n.target))
        spec = lambda a: ("tensor", tuple(v.shape)) if isinstance(v := self._spec(a), TensorSpec) else v  # noqa: E731
        return f"{what} {fx.node.map_arg((n.args, n.kwargs), spec)!r}"

    def _structure(self) -> list:
        """Per dim of the op's tensors that carries channels: how many of its positions each variable holds."""
        def held(labels: np.ndarray) -> list[int]:
            ids = channel_ids(self.gg, labels)
            return [int(np.isin(ids, c).sum()) for c in self._channels]

        maps = [self.gg.channel_maps.get(n) for n in self._inputs()]
        out = [(i, m.dim, len(m.labels), held(m.labels)) for i, m in enumerate(maps) if isinstance(m, ChannelMap)]
        return out + sorted((r.param, r.dim, len(r.labels), held(r.labels)) for r in self._records())

    def _records(self) -> list:
        """The member records of the op's own parameters (its module's, or those it reads with get_attr)."""
        owners = {self.node.target} if self.node.op == "call_module" else set()
        attrs = {a.target for a in self.node.all_input_nodes if a.op == "get_attr"}
        return [r for r in self.gg.member_records.values() if r.module in owners or f"{r.module}.{r.param}" in attrs]

    def build(self, counts: Sequence[int], device: str = "cpu") -> tuple[fx.GraphModule, tuple[torch.Tensor, ...]]:
        """The node alone, as a graph module holding its (sliced) parameters, and random inputs,
        with ``counts`` prunable channels of each variable kept (on ``device``: "meta" checks shapes only)."""
        dropped = self._dropped(counts)
        gm, node = self.gg.gm, self.node
        graph, root = fx.Graph(), {}
        inputs, env = [], {}
        for a in node.all_input_nodes:
            spec = self._spec(a)
            if a.op == "get_attr":
                env[a] = graph.get_attr(a.target)
                root[a.target] = self._sliced(gm.get_parameter(a.target) if _is_param(gm, a.target) else _attr(gm, a.target),
                                              *a.target.rpartition(".")[::2], dropped).to(device)
            elif isinstance(spec, TensorSpec):
                env[a] = graph.placeholder(f"x{len(inputs)}")
                inputs.append(self._random(a, spec, dropped, device))
            else:  # a value computed from shapes or constants: its example value
                env[a] = spec
        if node.op == "call_module":
            root[node.target] = self._module(dropped, device)
        out = graph.node_copy(node, lambda a: env[a])
        if node.op == "call_function" and _is_conv_function(node.target):
            _set_groups(out, self._conv_groups(dropped))
        graph.output(out)
        return fx.GraphModule(root, graph), tuple(inputs)

    def _random(self, a: fx.Node, spec: TensorSpec, dropped: np.ndarray, device: str) -> torch.Tensor:
        shape = list(spec.shape)
        m = self.gg.channel_maps.get(a)
        if isinstance(m, ChannelMap):
            shape[m.dim] = int(self._kept(m.labels, dropped).sum())
        example = InputSizes.of([t for t in self.gg.traced.placeholder_values if isinstance(t, torch.Tensor)])
        if self.batch is not None and example is not None and shape and shape[0] == example.batch:
            shape[0] = self.batch
        generator = torch.Generator().manual_seed(0)
        if device == "meta":
            return torch.empty(shape, dtype=spec.dtype, device=device)
        if spec.dtype.is_floating_point:
            return torch.randn(shape, generator=generator).to(spec.dtype)
        return torch.zeros(shape, dtype=spec.dtype)

    def _sliced(self, t: torch.Tensor, module: str, param: str, dropped: np.ndarray) -> torch.Tensor:
        t = t.detach()
        for r in self._records():
            if (r.module, r.param) == (module, param):
                keep = torch.from_numpy(np.nonzero(self._kept(r.labels, dropped))[0])
                t = t.index_select(r.dim, keep)
        return t

    def _module(self, dropped: np.ndarray, device: str) -> torch.nn.Module:
        """A shallow copy of the node's module with its own (sliced) parameters; the model's stay as they are."""
        original = self.gg.gm.get_submodule(self.node.target)
        m = copy.copy(original)
        m._parameters, m._buffers, m._modules = dict(original._parameters), dict(original._buffers), dict(original._modules)
        for name, _ in list(m.named_parameters(recurse=False)):
            setattr(m, name, torch.nn.Parameter(self._sliced(getattr(m, name), self.node.target, name, dropped).to(device),
                                                requires_grad=False))
        if isinstance(m, torch.nn.modules.conv._ConvNd):
            old_out = m.out_channels
            m.groups = self._conv_groups(dropped)
            m.out_channels = self._out_channels(dropped)
            m.in_channels = m.in_channels * m.out_channels // old_out if m.groups > 1 else m.weight.shape[0 if m.transposed else 1]
        elif isinstance(m, torch.nn.Linear):
            m.out_features, m.in_features = m.weight.shape
        return m

    def _out_channels(self, dropped: np.ndarray) -> int:
        m = self.gg.channel_maps.get(self.node)
        return int(self._kept(m.labels, dropped).sum()) if isinstance(m, ChannelMap) else self._spec(self.node).shape[1]

    def _conv_groups(self, dropped: np.ndarray) -> int:
        """A grouped conv loses whole conv groups (rules._producer): the count follows the output channels."""
        if self.node.op == "call_module":
            groups = self.gg.gm.get_submodule(self.node.target).groups
        else:
            groups = self.node.kwargs.get("groups", self.node.args[6] if len(self.node.args) > 6 else 1)
        full = self._spec(self.node).shape[1]
        return groups if groups == 1 else groups * self._out_channels(dropped) // full


def _is_param(gm: torch.nn.Module, target: str) -> bool:
    with contextlib.suppress(AttributeError):
        gm.get_parameter(target)
        return True
    return False


def _attr(gm: torch.nn.Module, target: str) -> torch.Tensor:
    owner, _, name = target.rpartition(".")
    return getattr(gm.get_submodule(owner) if owner else gm, name)


def _is_conv_function(target: Any) -> bool:
    return getattr(target, "__name__", "") in ("conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d")


def _set_groups(node: fx.Node, groups: int) -> None:
    if "groups" in node.kwargs or len(node.args) <= 6:
        node.kwargs = {**node.kwargs, "groups": groups}
    else:
        node.args = (*node.args[:6], groups, *node.args[7:])


def op_cases(gg: GroupGraph, batch: int | None = None) -> list[OpCase]:
    """One case per MAC-carrying node with channels to prune; nodes whose every map is frozen cost a
    constant and are left to the remainder. Maps holding the same channels (attention's q and v
    head dims, one group) are one variable; maps sharing only some are not resizable alone."""
    terms: dict[fx.Node, list] = {}
    for t in gg.mac_terms:
        terms.setdefault(t.node, []).append(t)
    cases, checked = [], {}
    for node, node_terms in terms.items():
        variables: dict[frozenset, np.ndarray] = {}
        index: dict[int, int] = {}  # id of a factor's labels -> its variable
        for f in (f for t in node_terms for f in t.factors):
            held = frozenset(prunable_channels(gg, f.labels).tolist())
            if held:
                index[id(f.labels)] = list(variables).index(held) if held in variables else len(variables)
                variables.setdefault(held, f.labels)
        if not variables:
            continue
        basis: set[tuple[int, ...]] = set()
        macs: dict[tuple[int, ...], int] = {}
        for t in node_terms:
            scaled = tuple(sorted(index[id(f.labels)] for f in t.factors if id(f.labels) in index))
            macs[scaled] = macs.get(scaled, 0) + t.macs
            for r in range(len(scaled) + 1):
                basis.update(itertools.combinations(scaled, r))
        case = OpCase(gg, node, list(variables.values()), sorted(basis, key=lambda m: (len(m), m)), macs, batch)
        sets = list(variables)
        if any(a & b for i, a in enumerate(sets) for b in sets[i + 1:]):
            case.resizable, case.why = False, "its channel maps share some channels but not all"
        elif case.key not in checked:
            case.check()
            checked[case.key] = case
        if case.key in checked:
            case.resizable, case.why = checked[case.key].resizable, checked[case.key].why
        cases.append(case)
    return cases


def channel_ids(gg: GroupGraph, labels: np.ndarray) -> np.ndarray:
    """The channel at each position of ``labels``, as one int: group id * largest group size + index in the group."""
    return gg.groups_of(labels).astype(np.int64) * max((g.size for g in gg.groups), default=1) + gg.channels_of(labels)


def prunable_channels(gg: GroupGraph, labels: np.ndarray) -> np.ndarray:
    """The prunable channels at the positions of ``labels`` (see channel_ids), each once, in order of first position."""
    ids = channel_ids(gg, labels)[np.isin(gg.groups_of(labels), [g.id for g in gg.prunable_groups])]
    return ids[np.sort(np.unique(ids, return_index=True)[1])]


# ----------------------------------------------------------------------------------- the model

@dataclasses.dataclass
class Fit:
    """One op configuration's fitted latency: ``coefficients[k]`` seconds for ``basis[k]``."""

    basis: list[tuple[int, ...]]
    coefficients: np.ndarray
    points: list[tuple[tuple[int, ...], float]]  # (counts, measured seconds)

    def predict(self, fractions: np.ndarray) -> np.ndarray:
        """Seconds at kept shares of shape (variables,) or (n, variables)."""
        x = np.atleast_2d(fractions)
        design = np.stack([np.prod(x[:, list(m)], axis=1) if m else np.ones(len(x)) for m in self.basis], axis=1)
        out = design @ self.coefficients
        return out if np.ndim(fractions) > 1 else out[0]


def fit(case: OpCase, points: list[tuple[tuple[int, ...], float]]) -> Fit:
    """Least squares in relative error; coefficients of the non-constant monomials at least 0. A
    node that is not resizable: its full-width time shared out as its MACs are."""
    from scipy.optimize import lsq_linear

    if not case.resizable:
        total = sum(case.macs.values()) or 1
        return Fit(case.basis, np.array([points[0][1] * case.macs.get(m, 0) / total for m in case.basis]), points)

    x = np.array([case.fractions(counts) for counts, _ in points])
    y = np.array([s for _, s in points])
    design = np.stack([np.prod(x[:, list(m)], axis=1) if m else np.ones(len(x)) for m in case.basis], axis=1)
    weights = 1 / np.maximum(y, 1e-12)
    lower = np.array([-np.inf if not m else 0.0 for m in case.basis])
    scale = np.abs(design * weights[:, None]).max(axis=0) + 1e-30  # columns of one magnitude for the solver
    solution = lsq_linear(design * weights[:, None] / scale, y * weights, bounds=(lower / scale, np.full(len(scale), np.inf)),
                          method="bvls")
    return Fit(case.basis, solution.x / scale, points)


@dataclasses.dataclass
class LatencyModel:
    """The fitted latency of a model on a runtime: per op, a polynomial in its maps' kept shares,
    their sum scaled by one measured factor, plus the measured remainder; :meth:`install` makes it
    the cost model's "latency" metric.

    The scale: ops timed alone are not ops inside the model (the runtime fuses their norms and
    activations, keeps its blocked layout between them instead of converting at every op, reuses
    caches, and a loaded machine stretches a long run more than a short one), so the whole model
    is also timed at ``half`` (every group at half its channels, at the preferred width),
    interleaved with the unpruned one, and the ops' share is scaled to pass through both:
    latency(a) = full + scale * (ops(a) - ops(1)). bench/latency.py measures the held-out error
    with and without it.
    """

    runtime: Runtime
    cases: list[OpCase]
    fits: dict[str, Fit]  # by configuration key
    width: int  # the preferred channel multiple (preferred_width): allocations under round_to="auto" keep multiples of it
    slowdown: dict[int, float]  # per probed width, measured over predicted time of its probes
    full_seconds: float  # the unpruned model, measured
    half_seconds: float  # the model with every group at ``half``, measured interleaved with it
    half: dict[int, int]  # group id -> kept count of that plan
    scale: float  # of the ops' sum; 1 before calibration
    configurations: int
    measured: int  # measurements taken now (the others came from the cache)
    seconds: float  # profiling time

    @property
    def ops_seconds(self) -> float:
        """The ops' fitted sum at full width, as timed alone."""
        return float(sum(self.fits[c.key].predict(np.ones(len(c.variables))) for c in self.cases))

    @property
    def remainder_seconds(self) -> float:
        """What no group scales: the measured model less the (scaled) ops' sum at full width."""
        return self.full_seconds - self.scale * self.ops_seconds

    def products(self) -> list[Product]:
        """The model as the cost model's products: (maps, integer nanoseconds) per op monomial, the remainder with no map."""
        out: list[Product] = []
        for c in self.cases:
            f = self.fits[c.key]
            out += [([c.variables[i] for i in m], round(1e9 * self.scale * coef)) for m, coef in zip(f.basis, f.coefficients) if coef]
        return out + [([], round(1e9 * self.remainder_seconds))]

    def install(self, cost: CostModel) -> None:
        cost.add_metric("latency", self.products(), self.width)

    @property
    def notes(self) -> list[str]:
        """The nodes timed at full width only, and why."""
        return [f"latency: {c.node.name} is timed at full width only and scaled with its MACs ({c.why})"
                for c in self.cases if not c.resizable]


def profile(gg: GroupGraph, example_inputs: Any, runtime: Runtime, calibrate: bool = True) -> LatencyModel:
    """Measure (or read from the cache) and fit the latency model of ``gg``'s model on ``runtime``,
    and install it as ``gg.cost``'s "latency" metric. ``calibrate``: scale the ops' sum to the
    model measured at half width (see :class:`LatencyModel`; False keeps the ops as timed alone).
    Under torchrun rank 0 measures and every rank fits its measurements: one model everywhere."""
    check_available(runtime)
    started = time.perf_counter()
    cases = op_cases(gg, runtime.batch)
    configs: dict[str, OpCase] = {}
    for c in cases:
        configs.setdefault(c.key, c)
    wanted = {key: list(dict.fromkeys([*c.grid, *c.probes.values()])) for key, c in configs.items()}
    cache = MeasurementCache(runtime)
    missing = {key: [k for k in points if cache.get(f"{key}:{k}") is None] for key, points in wanted.items()}
    todo = [key for key, m in missing.items() if m]
    with _progress(len(todo) + 1, f"profiling latency on {runtime.describe()}") as advance:
        measured = _measure_ops(cache, configs, {key: missing[key] for key in todo}, runtime, advance) if is_main() else 0
        seconds = broadcast_object(cache.entries)
        fits = {key: fit(c, [(k, seconds[f"{key}:{k}"]) for k in c.grid]) for key, c in configs.items()}
        probes = {key: {w: seconds[f"{key}:{k}"] for w, k in c.probes.items()} for key, c in configs.items()}
        width, slowdown = preferred_width(configs, fits, probes)
        half = {g.id: min(g.size, width * -(-g.size // (2 * width))) for g in gg.prunable_groups}
        key = "model:" + hashlib.sha256(repr((gg.gm.code, [tuple(p.shape) for p in gg.gm.parameters()], half, [
            tuple(getattr(v, "shape", ())) for v in gg.traced.placeholder_values])).encode()).hexdigest()[:24]
        if is_main() and cache.get(f"{key}:full") is None:
            pair = [gg.traced.model, slim(gg, Plan.from_indices(gg, {gid: list(range(n)) for gid, n in half.items()}))]
            inputs = batched(example_inputs, runtime)
            for name, t in zip(("full", "half"), (runtime.timer or measure)(pair, [inputs, inputs], runtime, runtime.repeats)):
                cache.put(f"{key}:{name}", t)
            measured += 2
            cache.save()
        advance()
    full, at_half = broadcast_object((cache.get(f"{key}:full"), cache.get(f"{key}:half")))
    model = LatencyModel(runtime, cases, fits, width, slowdown, full, at_half, half, 1.0, len(configs), measured, 0.0)
    model.install(gg.cost)
    predicted = gg.cost.exact("latency", half) / 1e9 - full  # the ops' change, as timed alone
    if calibrate and predicted < 0:
        model.scale = max((at_half - full) / predicted, 0.0)
        model.install(gg.cost)
    model.seconds = time.perf_counter() - started
    return model


def _measure_ops(cache: MeasurementCache, configs: dict[str, OpCase], missing: dict[str, list[tuple[int, ...]]],
                 runtime: Runtime, advance: Callable[[], None]) -> int:
    """Time each configuration's ``missing`` counts (interleaved) into the cache, saved as it fills; how many were timed."""
    timer: Timer = runtime.timer or measure
    measured = 0
    for key, points in missing.items():
        case = configs[key]
        built = [case.build(k) for k in points]
        try:
            seconds = timer([m for m, _ in built], [x for _, x in built], runtime, OP_REPEATS)
        except GraphPruneError:
            raise
        except Exception as exc:  # noqa: BLE001 - the runtime's own errors, named with the op
            raise BudgetError(f"timing {case.node.format_node()} alone on {runtime.name} failed: {exc}") from exc
        for k, t in zip(points, seconds):
            cache.put(f"{key}:{k}", t)
        measured += len(seconds)
        advance()
        cache.save()  # an interrupted profile keeps what it measured
    return measured


def preferred_width(configs: dict[str, OpCase], fits: dict[str, Fit], probes: dict[str, dict[int, float]]) -> tuple[int, dict[int, float]]:
    """The smallest channel multiple whose counts run as fast as the fit (made at multiples of the
    grid's steps) predicts: for each width w of PROBE_WIDTHS, every op configuration is measured
    with w fewer channels in each of its maps than at full width, and the sum of those times over
    the sum of the predicted ones is w's slowdown. Widths are taken from the largest down while
    the slowdown stays within WIDTH_TOLERANCE; onnxruntime's CPU kernels, which leave their
    blocked-layout path at counts that are not multiples of 4, 8 or 16, end at a coarse width,
    a runtime without such steps at 1. Returns the width and every probed width's slowdown."""
    slowdown = {}
    for w in PROBE_WIDTHS:
        pairs = [(probes[key][w], float(fits[key].predict(c.fractions(c.probes[w])))) for key, c in configs.items() if w in c.probes]
        if pairs:
            slowdown[w] = sum(m for m, _ in pairs) / max(sum(p for _, p in pairs), 1e-12)
    width = 2 * max(PROBE_WIDTHS)
    for w in sorted(slowdown, reverse=True):
        if slowdown[w] > 1 + WIDTH_TOLERANCE:
            break
        width = w
    return width, slowdown


@contextlib.contextmanager
def _progress(total: int, description: str) -> Iterator[Callable[[], None]]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  disable=not total or not is_main()) as bar:
        task = bar.add_task(description, total=total)
        yield lambda: bar.advance(task)


# ----------------------------------------------------------------------------------- after slimming

def meet_measured(model: LatencyModel, gg: GroupGraph, budget: Budget, allocate: Callable[[Budget], Plan],
                  example_inputs: Any) -> tuple[Plan, list[tuple[float, float]], list[str]]:
    """The plan ``allocate(budget)`` gives, allocated again to corrected targets until the slim
    model, measured beside the unpruned one, is within ``runtime.tolerance`` of the target ratio
    (an absolute target: of the unpruned model's profiled latency), at most ``runtime.replans`` times.

    The fit errs where a plan is unlike the uniform one it was scaled at (depthwise networks,
    whose cheapest-looking channels save less inside the model than alone, landed 5-8 points
    over): the target the method allocates to is moved by the measurements, proportionally after
    the first, by the secant through the last two after that. Of the plans measured, the one
    closest to the target within the tolerance is kept, else the slowest under it, else the
    fastest. Returns the plan, each (target allocated to, measured ratio) and what the report says."""
    runtime = model.runtime
    timer: Timer = runtime.timer or measure
    inputs = batched(example_inputs, runtime)
    full = gg.cost.exact("latency")
    target = budget.target(full) / full
    aimed, plan = target, allocate(budget)
    tried: list[tuple[float, float, Plan]] = []  # (target allocated to, measured ratio, plan)
    for round_ in range(runtime.replans + 1):
        before, after = timer([gg.traced.model, slim(gg, plan)], [inputs, inputs], runtime, runtime.repeats)
        tried.append((aimed, after / before, plan))
        if abs(after / before - target) <= runtime.tolerance or round_ == runtime.replans:
            break
        (a0, m0, _), (a1, m1, _) = tried[-2] if len(tried) > 1 else (0.0, 0.0, None), tried[-1]
        aimed = a1 + (target - m1) * (a1 - a0) / (m1 - m0) if len(tried) > 1 and m1 != m0 else a1 * target / m1
        aimed = min(max(aimed, 0.5 * a1), 1.0)
        try:
            plan = allocate(dataclasses.replace(budget, latency=aimed, latency_ms=None))
        except BudgetError:  # floors reached: keep what was measured
            break
    close = [t for t in tried if abs(t[1] - target) <= runtime.tolerance]
    under = [t for t in tried if t[1] <= target]
    _, ratio, plan = (min(close, key=lambda t: abs(t[1] - target)) if close else max(under, key=lambda t: t[1]) if under
                      else min(tried, key=lambda t: t[1]))
    notes = []
    if len(tried) > 1:
        notes.append(f"latency: the pruned model measured {', '.join(f'{m:.3f}' for _, m, _ in tried)} of the unpruned one, "
                     f"allocated to {', '.join(f'{a:.3f}' for a, _, _ in tried)} of it by the latency model (target {target:.3f}); "
                     f"the plan measured at {ratio:.3f} is kept")
    if ratio > target + runtime.tolerance:
        notes.append(f"latency: the pruned model measured {ratio:.3f} of the unpruned one, over the target {target:.3f} by more "
                     f"than the tolerance {runtime.tolerance:g} after {len(tried) - 1} re-plans: lower the budget, or raise "
                     "Runtime(replans=)")
    return plan, [(a, m) for a, m, _ in tried], notes


@dataclasses.dataclass
class LatencyReport:
    """A latency budget's outcome: predicted by the latency model, and measured on the runtime
    after slimming (medians of runs interleaved with the unpruned model's)."""

    runtime: str
    predicted_before_ms: float
    predicted_after_ms: float
    measured_before_ms: float | None = None
    measured_after_ms: float | None = None
    repeats: int = 0
    interleaved: bool = True  # False: the unpruned model was resized in place; its time from profiling stands in
    attempts: list[tuple[float, float]] = dataclasses.field(default_factory=list)  # re-plans: (ratio allocated to, measured)

    @property
    def predicted_ratio(self) -> float:
        return self.predicted_after_ms / self.predicted_before_ms

    @property
    def measured_ratio(self) -> float | None:
        if self.measured_after_ms is None or self.measured_before_ms is None:
            return None
        return self.measured_after_ms / self.measured_before_ms


def measure_pruned(model: LatencyModel, report: LatencyReport, unpruned: torch.nn.Module | None, pruned: torch.nn.Module,
                   example_inputs: Any) -> LatencyReport:
    """``report`` with ``pruned`` measured beside ``unpruned`` on the model's runtime (runs
    interleaved); ``unpruned`` None (resized in place): its measurement from profiling stands in."""
    runtime = model.runtime
    timer: Timer = runtime.timer or measure
    inputs = batched(example_inputs, runtime)
    if unpruned is None:
        before, after = model.full_seconds, timer([pruned], [inputs], runtime, runtime.repeats)[0]
    else:
        before, after = timer([unpruned, pruned], [inputs, inputs], runtime, runtime.repeats)
    return dataclasses.replace(report, measured_before_ms=1e3 * before, measured_after_ms=1e3 * after, repeats=runtime.repeats,
                               interleaved=unpruned is not None)
