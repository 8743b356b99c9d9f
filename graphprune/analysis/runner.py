"""Run the rule table over a traced graph: the context every rule reads from and writes to."""

from __future__ import annotations

import dataclasses
import math
import operator
from typing import TYPE_CHECKING, Any, Callable, Iterable

import numpy as np
import torch
import torch.fx as fx

from .. import ops
from . import rules
from .channels import AtomGraph, ChannelMap, compress, label_tensor
from ..common.locations import describe_node
from ..tracing.modes import TRAINING_ONLY
from ..tracing.specs import TensorSpec

if TYPE_CHECKING:
    from ..tracing.tracer import TracedModel

ParamRef = tuple[str, str]  # (module qualified name, attribute name)

#: what the channels of a reshape into attention heads are (see ``groups.analyze``)
ATTENTION_MODES = ("head_dims", "heads")


@dataclasses.dataclass
class MemberRecord:
    """A parameter dim whose index ``i`` holds atom ``labels[i]``."""

    module: str
    param: str
    dim: int
    labels: np.ndarray
    role: str


@dataclasses.dataclass
class MacTerm:
    """``macs`` multiply-accumulates at full width, scaling linearly with each factor map's count."""

    node: fx.Node
    macs: int
    factors: list[ChannelMap]


class Analysis:
    """Walks the graph once in topological order, dispatching each node to its rule."""

    def __init__(self, traced: TracedModel, attention: str = "head_dims"):
        if attention not in ATTENTION_MODES:
            raise ValueError(f"attention={attention!r}: use one of {ATTENTION_MODES}")
        self.attention = attention
        self.traced = traced
        self.gm = traced.gm
        self.atoms = AtomGraph()
        self.maps: dict[fx.Node, Any] = {}
        self.opaque: dict[fx.Node, str] = {}
        self.members: dict[tuple[str, str, int], MemberRecord] = {}
        self.mac_terms: list[MacTerm] = []
        self.spaces: list[tuple[fx.Node, ChannelMap]] = []
        self.param_users: dict[ParamRef, set[fx.Node]] = {}
        self._modules = dict(self.gm.named_modules())
        self._fallback = {f.module: f for f in traced.fallbacks}
        self._current: fx.Node | None = None
        self._opaque_maps: dict[tuple[fx.Node, int], ChannelMap] = {}
        self._derived_from: dict[fx.Node, set[ParamRef]] = {}
        self._shape_reads: list[tuple[fx.Node, ChannelMap]] = []
        #: {view/reshape/expand node: positions of its size arguments the slim pass writes as literals}
        self.literal_sizes: dict[fx.Node, set[int]] = {}
        #: means over channels (RMS normalization written out) whose divisor the slim pass keeps at the original count
        self.channel_means: set[fx.Node] = set()
        self._channel_cache: np.ndarray | None = None

    # ---------------------------------------------------------------- driving
    def run(self) -> "Analysis":
        for node in self.gm.graph.nodes:
            self._current = node
            if node.op == "placeholder":
                self.set(node, None, opaque=f"model input '{node.target}'")
            elif node.op == "get_attr":
                self.set(node, None)
            elif node.op == "output":
                self.freeze_outputs(node)
            else:
                self._dispatch(node)
        self._check_shape_uses()
        self._check_param_uses()
        self._account_unmodelled_macs()
        return self

    def freeze_outputs(self, node: fx.Node) -> None:
        """The channels of every tensor ``node`` reads, however nested (a namedtuple's), are model outputs'."""
        for m in _flatten(fx.node.map_arg((node.args, node.kwargs), self.maps.get)):
            if isinstance(m, ChannelMap):
                self.atoms.freeze(m.labels, "model output")

    def _dispatch(self, node: fx.Node) -> None:
        m = self._modules.get(node.target) if node.op == "call_module" else None
        if not self.tensor_inputs(node) and not _holds_tensor(self.traced.values.get(node)):
            return self.set(node, None)  # python arithmetic on sizes and constants
        rule = rules.node_rule(node, m)
        if rule is not None:
            return rule(self, node)
        if node.target in self._fallback and node.op == "call_module":
            f = self._fallback[node.target]
            return rules.unknown(self, node, f"could not be traced ({f.error}, at {f.location}); it is an opaque leaf{f.advice}")
        rules.unknown(self, node)

    # ---------------------------------------------------------------- reading
    def module(self, node: fx.Node) -> torch.nn.Module:
        return self._modules[node.target]

    def spec(self, arg: fx.Node) -> TensorSpec:
        return self.traced.values[arg]

    def is_tensor(self, arg: Any) -> bool:
        return isinstance(arg, fx.Node) and isinstance(self.traced.values.get(arg), TensorSpec)

    def map(self, arg: Any) -> ChannelMap | None:
        m = self.maps.get(arg) if isinstance(arg, fx.Node) else None
        return m if isinstance(m, ChannelMap) else None

    def tensor_inputs(self, node: fx.Node) -> list[fx.Node]:
        """Tensor inputs that carry data into the result (shape-only arguments excluded)."""
        skip = rules.shape_only_arg(node)
        shape_only = node.args[skip] if skip is not None and len(node.args) > skip else None
        return [a for a in node.all_input_nodes if self.is_tensor(a) and a is not shape_only and not self._constant_index(node, a)]

    def _constant_index(self, node: fx.Node, a: fx.Node) -> bool:
        """Is ``a`` an integer buffer of the model indexing ``node = x[a]`` (a relative-position
        index)? It selects, carrying no data: label execution indexes with its values."""
        if node.target is not operator.getitem or not node.args or a is node.args[0] or self.param_ref(a) is None:
            return False
        return not (self.spec(a).dtype.is_floating_point or self.spec(a).dtype.is_complex or self.spec(a).dtype == torch.bool)

    def bound_args(self, node: fx.Node, names: tuple[str, ...]) -> dict[str, Any]:
        bound = dict(zip(names, node.args))
        bound.update(node.kwargs)
        return bound

    def param_ref(self, arg: Any) -> ParamRef | None:
        """(module, attribute) of a get_attr argument that is a parameter or buffer, else None."""
        if not (isinstance(arg, fx.Node) and arg.op == "get_attr"):
            return None
        module, _, name = arg.target.rpartition(".")
        owner = self._modules.get(module)
        if owner is None or not isinstance(getattr(owner, name, None), torch.Tensor):
            return None
        return module, name

    def describe(self, node: fx.Node) -> str:
        """The op as frozen reasons name it: the user's line and module (see locations.describe_node)."""
        return describe_node(node, type(self.module(node)).__name__ if node.op == "call_module" else None)

    def origin(self, node: fx.Node) -> str:
        if node in self.opaque:
            return self.opaque[node]
        return f"{self.describe(node)}, whose channels no rule could trace"

    # ---------------------------------------------------------------- writing
    def set(self, node: fx.Node, value: Any, opaque: str | None = None) -> None:
        self.maps[node] = value
        if opaque is not None:
            self.opaque[node] = opaque
        for m in _flatten(value):
            if isinstance(m, ChannelMap):
                self.spaces.append((node, m))

    def member(self, ref: ParamRef, dim: int, labels: np.ndarray, role: str, rows: tuple[int, int] | None = None) -> None:
        """Parameter ``ref`` must be sliced along ``dim`` with the channels ``labels``.

        A parameter registered twice (a module called twice, a shared weight) links both uses.
        ``rows``: ``labels`` are those of positions [start, stop) of a packed parameter (the q, k
        and v rows of one in-projection); the record covers the whole dim, parts no use read
        yet having atoms of their own.
        """
        module, name = ref
        key = (module, name, dim)
        if rows is not None:
            if key not in self.members:
                size = getattr(self._owner(module), name).shape[dim]
                self.members[key] = MemberRecord(module, name, dim, self.atoms.new(size), role)
            self.atoms.link(self.members[key].labels[rows[0] : rows[1]], labels)
        elif key in self.members:
            self.atoms.link(self.members[key].labels, labels)
        else:
            self.members[key] = MemberRecord(module, name, dim, np.asarray(labels), role)
        self.param_users.setdefault(ref, set()).add(self._current)

    def _owner(self, module: str) -> torch.nn.Module:
        return self._modules[module] if module in self._modules else self.gm.get_submodule(module)

    def macs(self, node: fx.Node, factors: list[ChannelMap], macs: int | None = None) -> None:
        if node.meta.get(TRAINING_ONLY):  # eval mode, which budgets are about, never runs it
            return
        total = self.traced.flops.get(node, 0) // 2 if macs is None else macs
        self.mac_terms.append(MacTerm(node, total, list(factors)))

    # ---------------------------------------------------------------- demanding channels
    def demand(self, x: fx.Node, dim: int, consumer: fx.Node) -> ChannelMap:
        """The channels of ``x`` along ``dim``, as ``consumer`` needs them.

        If ``x`` has no channel map there, it is derived from parameters (a get_attr, possibly
        reshaped or combined elementwise); failing that, the channels are opaque and frozen.
        """
        m = self.map(x)
        if m is not None:
            if m.dim == dim:
                for ref in self._derived_from.get(x, ()):  # a parameter's channels, used once more
                    self.param_users[ref].add(self._current)
                return m
            self.atoms.freeze(m.labels, f"{self.describe(consumer)} mixes dim {m.dim} of the result of {self.describe(x)}, "
                                        "which carries channels")
        derived = self._derive(x, dim, set())
        if derived is not None:
            return derived
        if (x, dim) not in self._opaque_maps:  # every consumer of an opaque tensor shares its channels
            reason = f"{self.describe(consumer)} reads channels from {self.origin(x)}, which graphprune cannot slice"
            atoms = self.atoms.new(self.spec(x).shape[dim], frozen=reason)
            self._opaque_maps[(x, dim)] = ChannelMap(dim, atoms)
        return self._opaque_maps[(x, dim)]

    def _derive(self, x: fx.Node, dim: int, chain: set[fx.Node]) -> ChannelMap | None:
        ref = self.param_ref(x)
        if ref is not None:
            labels = self.atoms.new(self.spec(x).shape[dim])
            self.member(ref, dim, labels, "channelwise")
            self.param_users[ref] |= chain | {x}
            if self.maps.get(x) is None:
                self.set(x, ChannelMap(dim, labels))
                self._derived_from[x] = {ref}
            return ChannelMap(dim, labels)
        kind = rules.rule_kind(x, self._modules.get(x.target) if x.op == "call_module" else None)
        chain = chain | {x}
        derived = None
        if kind == rules.RuleKind.ELEMENTWISE:
            linked = None
            for a in self.tensor_inputs(x):
                d = dim - (self.spec(x).ndim - self.spec(a).ndim)
                if d < 0 or self.spec(a).shape[d] == 1:
                    continue
                sub = self._derive(a, d, chain)
                if sub is None:
                    return None
                if linked is not None:
                    self.atoms.link(linked, sub.labels)
                linked = sub.labels
            derived = None if linked is None else ChannelMap(dim, linked)
        elif kind == rules.RuleKind.MOVEMENT and len(self.tensor_inputs(x)) == 1:
            (src,) = self.tensor_inputs(x)
            for d in range(self.spec(src).ndim):
                if self._moves_to(x, src, d, dim):
                    sub = self._derive(src, d, chain)
                    out = None if sub is None else self.execute_on_labels(x, {src: sub})
                    derived = out if isinstance(out, ChannelMap) else None
                    break
        if derived is not None and self.maps.get(x) is None:
            self.set(x, derived)  # later consumers and the slim pass see the parameter's channels
            self._derived_from[x] = set().union(*(self._derived_from.get(a, set()) for a in self.tensor_inputs(x)))
        return derived

    def _moves_to(self, x: fx.Node, src: fx.Node, src_dim: int, dim: int) -> bool:
        """Does movement op ``x`` carry dim ``src_dim`` of ``src`` onto its dim ``dim``, one to one?"""
        scratch = AtomGraph()
        probe = ChannelMap(src_dim, scratch.new(self.spec(src).shape[src_dim], "probe"))
        try:
            out = self._run_labels(x, {src: probe}, scratch)
        except Exception:  # not a movement of that dim on labels (an index whose values are unknown)
            return False
        return (
            isinstance(out, ChannelMap)
            and out.dim == dim
            and scratch.link_count == 0
            and np.array_equal(np.sort(out.labels), probe.labels)
        )

    # ---------------------------------------------------------------- label execution
    def execute_on_labels(self, node: fx.Node, given: dict[fx.Node, ChannelMap] | None = None) -> Any:
        """Channel maps of a movement node's output(s), found by running it on label tensors."""
        if node.target is operator.getitem and not self.is_tensor(node.args[0]):
            container = self.maps.get(node.args[0])
            return container[node.args[1]] if isinstance(container, (tuple, list)) else None
        given = dict(given or {})
        data = self.tensor_inputs(node)
        found = {a: given.get(a) or self.map(a) for a in data}
        mapped = [m for m in found.values() if m is not None]
        if not mapped:
            return None
        for a, m in found.items():
            if m is None:
                if self.spec(a).ndim != self.spec(_first_mapped(found)).ndim:
                    return rules.unknown(self, node, "mixes tensors of different ranks")
                found[a] = self.demand(a, mapped[0].dim, node)
        joined = self._concatenated(node, found)
        if joined is not None:
            return joined
        try:
            return self._run_labels(node, found, self.atoms)
        except Exception as exc:  # the op does something a label tensor cannot stand in for
            rules.unknown(self, node, f"cannot be followed channel by channel ({type(exc).__name__}: {exc})")
            return self.maps[node]

    def _concatenated(self, node: fx.Node, found: dict[fx.Node, ChannelMap]) -> ChannelMap | None:
        """``torch.cat`` along the dim where every part carries its channels: the result's channels
        are the parts' in list order, which is what running it on labels reads off (distinct
        positions along that dim alone), without building the full-size label tensors. None: run it."""
        if node.op != "call_function" or node.target not in (torch.cat, torch.concat) or node.kwargs.keys() - {"dim"}:
            return None
        parts = node.args[0] if node.args else None
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        out = self.traced.values.get(node)
        if not isinstance(parts, (list, tuple)) or type(dim) is not int or not isinstance(out, TensorSpec) or not all(out.shape):
            return None
        dim %= out.ndim
        if not all(isinstance(p, fx.Node) and p in found and found[p].dim == dim for p in parts):
            return None
        if sum(m.size for m in found.values()) < 2:  # one position: compress freezes it
            return None
        return ChannelMap(dim, np.concatenate([found[p].labels for p in parts]))

    def _run_labels(self, node: fx.Node, maps: dict[fx.Node, ChannelMap], atoms: AtomGraph) -> Any:
        atom_of = np.concatenate([m.labels for m in maps.values()])
        fn = rules.label_callable(node, self._modules.get(node.target) if node.op == "call_module" else None)

        def run(contiguous: bool) -> Any:
            labels, offset = {}, 0
            for a, m in maps.items():
                labels[a] = label_tensor(m, self.spec(a).shape, offset, contiguous)
                offset += m.size

            def substitute(n: fx.Node) -> Any:
                if n in labels:
                    return labels[n]
                if self._constant_index(node, n):
                    module, name = self.param_ref(n)
                    index = getattr(self._owner(module), name)
                    if index.is_meta:
                        raise ValueError(f"the values of index '{n.target}' are not known on the meta device")
                    return index.cpu()
                value = self.traced.values[n]
                if isinstance(value, TensorSpec):  # shape-only argument (expand_as, view_as, ...)
                    return torch.empty(value.shape, dtype=torch.float64)
                return value

            return fn(*fx.node.map_arg(node.args, substitute), **fx.node.map_arg(node.kwargs, substitute))

        try:  # labels broadcast without copies: the same values wherever the op accepts them
            out = run(contiguous=False)
        except Exception:  # an op that needs real memory (a view, an in-place op): as it always ran
            out = run(contiguous=True)
        outer = self.attention == "heads" and ops.takes(node) in ("shape", "dim sizes")
        return _map_tensors(out, lambda t: compress(t, atom_of, atoms, self.describe(node), outer))

    def _evaluate_from(self, read: fx.Node, target: fx.Node, dim: int, count: int) -> Any:
        """The value ``target`` takes when the tensor ``read`` looks at has ``count`` channels.

        Re-runs the python arithmetic between the shape read and ``target`` with example values for
        everything that does not depend on the read: the proof that a computed size follows the channels.
        """
        shape = list(self.spec(read.args[0]).shape)
        shape[dim] = count
        reads = _reads_channel_count(read, dim, len(shape))
        env: dict[fx.Node, Any] = {read: torch.Size(shape) if reads is None else (math.prod(shape) if read.target == "numel" else count)}
        downstream = _python_descendants(read, self.is_tensor)

        def value(n: Any) -> Any:
            if not isinstance(n, fx.Node):
                return n
            if n not in env:
                if n not in downstream:
                    return self.traced.values[n]
                env[n] = n.target(*fx.node.map_arg(n.args, value), **fx.node.map_arg(n.kwargs, value))
            return env[n]

        return value(target)

    # ---------------------------------------------------------------- checks at the end
    def check_shape_uses(self, node: fx.Node, m: ChannelMap) -> None:
        """Checked once the graph is done (reshapes after the read need their channel maps)."""
        self._shape_reads.append((node, m))

    def _check_shape_uses(self) -> None:
        """A channel count read at run time must keep its meaning after pruning.

        Its value (through python arithmetic) may size the channel dim of a view/reshape/expand of
        the *same* channels, when enumerating every kept count proves the reshape stays consistent,
        or give the sizes/bounds of a split or slice along a channel dim, which the slim pass
        rewrites from the plan. A size of a view/reshape/expand computed from channel counts alone
        (``C // heads`` with ``C`` read from the residual stream) is the same for every input: the
        slim pass writes it as a literal (``literal_sizes``): the new count at the op's channel dim,
        the original value at any other dim. Anywhere else (arithmetic on tensors, a new tensor's
        size, a python condition) pruning would change what it computes: the channels read, and
        those of the op using the value, are frozen.
        """
        proven: set[tuple[fx.Node, fx.Node]] = set()
        for node, m in self._shape_reads:
            ndim = self.spec(node.args[0]).ndim
            for use, via in _channel_count_sinks(node, _reads_channel_count(node, m.dim, ndim), m.dim, ndim, self.is_tensor):
                why = self._inconsistent_shape_use(node, m, use, via)
                if why is None or self._write_as_literal(use, via):
                    proven.add((use, via))
                    continue
                reason = f"{self.describe(use)} {why} computed from the channel count read by {self.describe(node)}"
                self._freeze_around(use, reason, m)
        for node in self.gm.graph.nodes:  # computed sizes of channel dims that no channel count proves
            out, sizes = self.map(node), _size_args(node)
            if out is None or sizes is None:
                continue
            value = sizes[out.dim] if len(sizes) > out.dim else None
            if isinstance(value, fx.Node) and (node, value) not in proven:
                self._freeze_around(node, f"{self.describe(node)} sizes its channel dim with the value of {self.describe(value)}, "
                                          "which is not the count of these channels")

    def _write_as_literal(self, use: fx.Node, via: fx.Node) -> bool:
        """Record the sizes ``via`` gives ``use`` as literals for the slim pass, if that is exact:
        ``use`` is a view/reshape/expand and ``via`` depends on channel counts and constants only."""
        where = [i for i, v in enumerate(_size_args(use) or ()) if v is via]
        if not where or not self._from_channel_counts(via):
            return False
        self.literal_sizes.setdefault(use, set()).update(where)
        return True

    def _from_channel_counts(self, value: Any) -> bool:
        """Is ``value`` python arithmetic on constants and channel counts (sizes of channel dims)
        only, so the same for every input of the model?"""
        if not isinstance(value, fx.Node):
            return all(self._from_channel_counts(v) for v in value) if isinstance(value, (list, tuple)) else True
        if value.op == "call_method" and value.target == "size" and not _is_shape_tuple(value):
            x, d = value.args[0], value.args[1] if len(value.args) > 1 else value.kwargs["dim"]
            m = self.map(x)
            return m is not None and d % self.spec(x).ndim == m.dim
        if value.op != "call_function" or self.is_tensor(value):
            return False
        if value.target is operator.getitem and isinstance(value.args[0], fx.Node) and _is_shape_tuple(value.args[0]):
            x, idx = value.args[0].args[0], value.args[1]
            m = self.map(x)
            return m is not None and isinstance(idx, int) and idx % self.spec(x).ndim == m.dim
        if not ops.is_python_arithmetic(value.target):
            return False
        return all(self._from_channel_counts(a) for a in (*value.args, *value.kwargs.values()))

    def _freeze_around(self, use: fx.Node, reason: str, read: ChannelMap | None = None) -> None:
        """Freeze the channels whose count a value carried (``read``), and those of the op using it."""
        if read is not None:
            self.atoms.freeze(read.labels, reason)
        for a in self.tensor_inputs(use) if use.op != "output" else []:
            if self.map(a) is not None:
                self.atoms.freeze(self.map(a).labels, reason)
        for out in _flatten(self.maps.get(use)):
            if isinstance(out, ChannelMap):
                self.atoms.freeze(out.labels, reason)

    def _inconsistent_shape_use(self, read: fx.Node, m: ChannelMap, use: fx.Node, via: fx.Node) -> str | None:
        """Why ``use`` receiving ``via`` (derived from ``read``'s channel count) breaks under pruning; None if it does not."""
        kind = rules.rule_kind(use, self._modules.get(use.target) if use.op == "call_module" else None) if use.op != "output" else None
        if kind != rules.RuleKind.MOVEMENT:
            return "uses a value"
        if ops.takes(use) in ("split sizes", "slice") and _splits_channel_dim(self, use, via):
            return None  # the slim pass writes the kept part sizes / bounds from the plan
        sizes = _size_args(use)
        out = self.map(use)
        if sizes is None or out is None:
            return "uses as a size a value"
        where = [i for i, v in enumerate(sizes) if v is via]
        # one computed tuple of all sizes (GPT-2's ``(-1,) + shape[1:] + (x.size(-1),)``): the slim
        # pass writes the new count at its channel dim, so every other entry must not follow the read
        spread = where == [0] and len(sizes) == 1 and self.spec(use).ndim > 1
        if where != [out.dim] and not spread:
            return "sizes a dim other than its channel dim with a value"
        # the channels read and those sized must be the same, in the same proportion each; then the
        # value must give the sized count for every count of the read channels a plan can leave
        channel = self._channels()
        read_ch, read_n = np.unique(channel[m.labels], return_counts=True)
        out_ch, out_n = np.unique(channel[out.labels], return_counts=True)
        if not np.array_equal(read_ch, out_ch) or not np.array_equal(read_n * out_n[0], out_n * read_n[0]):
            return "sizes the channels of another tensor with a value"
        reachable = np.zeros(int(read_n.sum()) + 1, dtype=bool)
        reachable[0] = True
        for a in read_n.tolist():  # the counts a plan keeping any subset of the channels can leave
            reachable[a:] |= reachable[:-a].copy()
        original = list(self.traced.values[via]) if spread else None
        for count in np.nonzero(reachable)[0][1:].tolist():
            value = self._evaluate_from(read, via, m.dim, count)
            if spread:
                value = list(value)
                if [v for i, v in enumerate(value) if i != out.dim] != [v for i, v in enumerate(original) if i != out.dim]:
                    return f"changes a dim other than its channel dim (with {count} of {m.size} left) with a value"
                value = value[out.dim]
            if value * int(read_n[0]) != count * int(out_n[0]):
                return f"would not follow the kept channels (with {count} of {m.size} left) with a value"
        return None

    def _channels(self) -> np.ndarray:
        """Channel (connected component) of every atom, as linked so far."""
        if self._channel_cache is None or len(self._channel_cache) != len(self.atoms):
            self._channel_cache = self.atoms.components()
        return self._channel_cache

    def _check_param_uses(self) -> None:
        """A sliced parameter may only be used where a rule accounted for its channels."""
        targets: dict[ParamRef, list[fx.Node]] = {}
        for n in self.gm.graph.nodes:
            if n.op == "get_attr":
                module, _, name = n.target.rpartition(".")
                targets.setdefault((module, name), []).append(n)
        for (module, name, dim), rec in self.members.items():
            allowed = self.param_users.get((module, name), set())
            for g in targets.get((module, name), []):
                stray = [u for u in g.users if u not in allowed and not _reads_metadata(u)]
                if stray:
                    self.atoms.freeze(rec.labels, f"parameter '{module}.{name}' is also used by {self.describe(stray[0])}, which graphprune cannot follow")

    def _account_unmodelled_macs(self) -> None:
        """Ops whose MACs no rule modelled keep them as a constant and freeze what they read."""
        modelled: dict[fx.Node, int] = {}
        for t in self.mac_terms:
            modelled[t.node] = modelled.get(t.node, 0) + t.macs
        for node, flops in self.traced.flops.items():
            measured = flops // 2
            if modelled.get(node, 0) == measured:
                continue
            reason = f"{self.describe(node)} performs MACs graphprune does not model"
            for t in [t for t in self.mac_terms if t.node is node]:
                for f in t.factors:
                    self.atoms.freeze(f.labels, reason)
            self.mac_terms = [t for t in self.mac_terms if t.node is not node]
            for a in self.tensor_inputs(node) if node.op not in ("placeholder", "output", "get_attr") else []:
                m = self.map(a)
                if m is not None:
                    self.atoms.freeze(m.labels, reason)
            if measured:
                self.mac_terms.append(MacTerm(node, measured, []))


def _holds_tensor(value: Any) -> bool:
    return any(isinstance(v, TensorSpec) for v in _flatten(value))


def _first_mapped(found: dict[fx.Node, ChannelMap | None]) -> fx.Node:
    return next(a for a, m in found.items() if m is not None)


def _flatten(value: Any) -> Iterable[Any]:
    if isinstance(value, (tuple, list)):
        for v in value:
            yield from _flatten(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _flatten(v)
    else:
        yield value


def _map_tensors(value: Any, fn) -> Any:
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, (tuple, list)):
        return tuple(_map_tensors(v, fn) for v in value)
    return None


def _reads_metadata(node: fx.Node) -> bool:
    """``p.dtype``, ``p.device``: reads no values and no channel count (ViT's patch embedding casts to its weight's dtype)."""
    return node.op == "call_function" and node.target is getattr and node.args[1] in ("dtype", "device")


def _reads_channel_count(node: fx.Node, dim: int, ndim: int) -> bool | None:
    """True: the value is the channel count (or a product with it); None: a tuple of sizes; False: unrelated."""
    if node.op == "call_function":  # getattr(x, name)
        return None if node.args[1] == "shape" else False
    if node.target == "size":
        d = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        return None if d is None else d % ndim == dim
    return node.target == "numel"


def _is_shape_tuple(node: fx.Node) -> bool:
    """``x.shape`` or ``x.size()``: a tuple of all of a tensor's sizes."""
    if node.op == "call_function":
        return node.target is getattr and node.args[1] == "shape"
    return node.op == "call_method" and node.target == "size" and len(node.args) == 1 and "dim" not in node.kwargs


def _python_descendants(node: fx.Node, is_tensor) -> set[fx.Node]:
    """Nodes computed from ``node`` by python-level ops (arithmetic, indexing), ``node`` excluded."""
    seen: set[fx.Node] = set()
    todo = list(node.users)
    while todo:
        n = todo.pop()
        if n in seen or n.op != "call_function" or is_tensor(n):
            continue
        seen.add(n)
        todo.extend(n.users)
    return seen


def _channel_count_sinks(node: fx.Node, reads: bool | None, dim: int, ndim: int, is_tensor) -> Iterable[tuple[fx.Node, fx.Node]]:
    """(tensor op, the value it receives) pairs reached from a shape value through python arithmetic
    and indexing. ``reads`` None means ``node`` is a tuple of sizes: only its entry ``dim`` is a channel count.
    """
    if reads is False:
        return
    for use in node.users:
        if reads is None and use.op == "call_function" and use.target is operator.getitem and use.args[0] is node:
            idx = use.args[1]
            if isinstance(idx, slice) and not any(isinstance(i, fx.Node) for i in (idx.start, idx.stop, idx.step)):
                kept = list(range(ndim))[idx]  # x.size()[:-1]: still sizes, the channel count in them or not
                if dim in kept:
                    yield from _channel_count_sinks(use, None, kept.index(dim), len(kept), is_tensor)
                continue
            hit = idx % ndim == dim if isinstance(idx, int) else True
            yield from _channel_count_sinks(use, hit, dim, ndim, is_tensor)
        elif use.op == "call_function" and not is_tensor(use) and getattr(use.target, "__module__", None) in ("_operator", "math", "builtins"):
            yield from _channel_count_sinks(use, True, dim, ndim, is_tensor)
        else:
            yield use, node




def _splits_channel_dim(ctx: Analysis, use: fx.Node, via: fx.Node) -> bool:
    """Is ``via`` only a part size or slice bound along the channel dim of ``use``'s input?"""
    m = ctx.map(use.args[0])
    if m is None:
        return False
    ndim = ctx.spec(use.args[0]).ndim
    if use.target is operator.getitem:
        items = use.args[1] if isinstance(use.args[1], tuple) else (use.args[1],)
        consumed = sum(1 for i in items if i is not None and i is not Ellipsis)
        dim = 0
        for item in items:
            if item is Ellipsis:
                dim += ndim - consumed
            elif item is not None:
                if isinstance(item, slice) and via in (item.start, item.stop):
                    return dim == m.dim and item.step in (None, 1)
                if item is via:
                    return False  # an integer index removes the dim
                dim += 1
        return False
    dim = use.args[2] if len(use.args) > 2 else use.kwargs.get("dim", 0)
    if use.target in ("narrow", torch.narrow):
        dim, rest = use.args[1], use.args[2:]
        return isinstance(dim, int) and dim % ndim == m.dim and via in rest
    sizes = use.args[1] if len(use.args) > 1 else use.kwargs.get("split_size_or_sections", use.kwargs.get("split_size"))
    return isinstance(dim, int) and dim % ndim == m.dim and isinstance(sizes, (list, tuple)) and via in sizes





def _size_args(node: fx.Node) -> list | None:
    """The target sizes of a view/reshape/expand, one per output dim (None for other ops)."""
    if ops.takes(node) != "shape":
        return None
    if len(node.args) == 2 and isinstance(node.args[1], (tuple, list)):
        return list(node.args[1])
    return list(node.args[1:])


def channel_dims(traced: TracedModel) -> Callable[[fx.Node, int], bool]:
    """Whether a dim of a node holds one parameter channel per position: what the tracer needs to
    drop the guards of values computed from channel counts only."""
    analysis = Analysis(traced).run()

    def is_channel_dim(node: fx.Node, dim: int) -> bool:
        m = analysis.map(node)
        return m is not None and m.dim == dim and len(np.unique(m.labels)) == len(m.labels)
    return is_channel_dim
