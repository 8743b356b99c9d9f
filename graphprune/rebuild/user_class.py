"""The slim model as the user's own model: their class, attributes and ``forward``, resized.

slim.py proves a plan on the traced graph; users want their model back (``isinstance``, their
methods, ``nn.Sequential`` indexing, a ``state_dict`` their class loads, Hugging Face's
``generate`` and ``save_pretrained``). This pass gives the user's model the slim graph's modules
and tensors (shared with it, not copied again) and sets the attributes its ``forward`` reads:

- a module the graph calls (conv, linear, norm) is the slim graph's own, which slim.py resized;
- a literal the slim pass rewrote (a view's head dim, a split size, a functional conv's
  ``groups``) came from the code of the module it ran in: the one attribute of that module that
  holds the old value (``head_dim``, ``split_size``) gets the new one;
- a mean of squares over pruned channels (an RMS norm, whose divisor the slim graph keeps) gets
  its eps scaled by C/C' and its weight by sqrt(C/C'), which computes the same.

The result must then compute what the slim graph computes on the example inputs, on another batch
size and, for token inputs, on another sequence length. What cannot be carried over (a size the
code writes as a literal, two attributes holding one value, a library module whose arithmetic ties
its widths) is a :class:`ModelRebuildError` naming the user's file:line; ``api`` falls back to the
slim graph with that reason, or raises it where the user asked for their class.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import linecache
import math
import operator
from types import SimpleNamespace
from typing import Any, Callable, Iterator

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from ..tracing.equivalents import module_form
from ..errors import GuardError, ModelRebuildError
from ..budget.allocate import merge_ties, tie
from ..slimming.exactness import flat_outputs
from ..groups.graph import GroupGraph, _no_cyclic_gc
from ..ops import is_python_arithmetic, takes
from .records import record
from ..tracing.specs import TensorSpec
from .hf_config import UNSTATED, describe_pruned_config
from ..common.locations import FRAME, describe_node, qualified_name, user_location
from ..tracing.modes import in_eval
from ..groups.plan import Plan
from ..slimming.slim import _deepcopy, _layer_norm_compensation, _Resizer, _set_tensor, _slice_in_place, plan_resizer
from ..tracing.tracer import InputSizes, Specialization, guard, reads_values, split_inputs

#: how far the user's model may be from the slim graph, relative to the largest output (float32 rounding)
TOLERANCE = 1e-4


@dataclasses.dataclass
class _Carried:
    """What the user's model needs besides the slim graph's tensors: attribute values and tensor scales."""

    attributes: dict[tuple[str, str], tuple[Any, Any, fx.Node]] = dataclasses.field(default_factory=dict)  # (old, new, node)
    scales: dict[tuple[str, str], float] = dataclasses.field(default_factory=dict)
    problems: list[tuple[tuple[fx.Node, ...], str]] = dataclasses.field(default_factory=list)  # (where, why)
    # constants of the graph's ops, (node, argument path, value[, new value]): one attribute may feed both
    edited: list[tuple[fx.Node, tuple, Any, Any]] = dataclasses.field(default_factory=list)
    reads: list[tuple[fx.Node, tuple, Any]] = dataclasses.field(default_factory=list)

    def problem(self, text: str, *nodes: fx.Node) -> None:
        """What cannot be carried over, and the ops it involves: their groups only fit the class together."""
        self.problems.append((nodes, text))

    def set(self, model: nn.Module, node: fx.Node, old: Any, new: Any, path: tuple = ()) -> None:
        """The attribute of ``node``'s module that holds ``old`` (at ``path`` of its arguments) gets ``new``."""
        found = _owner_attribute(model, node, old, path)
        if found is None:
            return
        if isinstance(found, str):
            solved = _solved_attribute(model, node, old, new, path)
            if solved is None:
                self.problem(found, node)
                return
            found, old, new = solved
        prior = self.attributes.get(found)
        if prior is not None and prior[1] != new:
            text = (f"{describe_node(node)} needs {'.'.join(x for x in found if x)} = {new}, {describe_node(prior[2])} "
                    f"needs {prior[1]}: one attribute cannot hold both (e.g. q/k head dims pruned differently from v's)")
            self.problem(text, node, prior[2])
            return
        self.attributes[found] = (old, new, node)


def user_class_model(gg: GroupGraph, plan: Plan, graph: fx.GraphModule | None = None, *, inplace: bool = False
                     ) -> tuple[nn.Module, fx.GraphModule, list[str]]:
    """The analyzed model with ``plan`` applied: (the user's class, the slim graph, notes).

    ``graph``: the slim graph of ``plan`` if built already (a copy shares its tensors); with
    ``inplace`` the user's model itself is resized (no copy: memory stays near the model's own
    size) and the slim graph shares its modules. Raises :class:`ModelRebuildError` where the user's
    code fixes a size the plan changes; in place, this is found before anything is changed.
    """
    model = gg.traced.model
    branches = _value_branches(gg)
    if branches:
        raise ModelRebuildError(
            f"the model's forward branches at {branches[0].location} ({branches[0].conversion} {branches[0].value!r} on the "
            "example inputs): graphprune checked the pruned model on that path, which the slim graph guards, and the "
            "model's own code would take the other paths unchecked. Take the slim graph (output='graph'), or move the "
            "branching code into a submodule, which runs its Python for every input")
    resizer = plan_resizer(gg, plan)
    with _no_cyclic_gc():
        rewritten = resizer.rewritten_graph()
        carried = _carried(resizer, rewritten, model)
        if carried.problems:
            raise ModelRebuildError(_problem_text(list(dict.fromkeys(text for _, text in carried.problems))))
        if inplace:
            graph = _resize_in_place(resizer, rewritten, model)
            result = model
        else:
            graph = graph if graph is not None else resizer.run()
            result = _shared_copy(model, graph)
    for (path, attr), (_, value, _) in carried.attributes.items():
        owner = result.get_submodule(path)
        setattr(owner, attr, (value,) if isinstance(getattr(owner, attr), tuple) else value)
    for m in result.modules():
        rule = ATTRIBUTE_RULES.get(qualified_name(type(m)))
        if rule is not None:
            rule(m)
    for (path, name), factor in carried.scales.items():
        owner = result.get_submodule(path)
        _set_tensor(owner, name, _scaled(getattr(owner, name), factor))
    unchecked = [spec.location for spec in gg.traced.specializations if spec.guarded and spec not in branches]
    notes = [f"checked on the path the example inputs take at {'; '.join(unchecked)}: other values there run code of the "
             "model's that graphprune did not check"] if unchecked else []
    config_note = describe_pruned_config(result, {old: new for old, new, _ in carried.attributes.values() if isinstance(new, float)})
    if config_note:
        notes.append(config_note)
    if config_note == UNSTATED:  # save_pretrained's directory then holds what graphprune.load needs
        result.config.graphprune = record(plan, gg, result, tensors=False)
    problem = verify(result, graph, gg)
    if problem:
        raise ModelRebuildError(problem + (" The model was changed in place and is not usable: prune a fresh instance "
                                           "with output='graph'." if inplace else ""))
    return result, graph, notes


def _value_branches(gg: GroupGraph) -> list[Specialization]:
    """The guarded specializations that values decide: a condition on the inputs' data (``if
    x.max() > 0``) or on ``self.training``. The model's own code takes their other paths with
    ordinary inputs (and in training), which nothing checked. Conditions on dtypes, devices and
    sizes (``if pixel_values.dtype != expected_dtype``) and argument values are left to the note."""
    on_metadata = {n.args[3] for n in gg.gm.graph.nodes if n.op == "call_function" and n.target is guard
                   and not reads_values(n.args[0])}
    return [spec for spec in gg.traced.specializations if spec.guarded and not spec.location.startswith("argument ")
            and (spec.conversion == "mode" or spec.location not in on_metadata)]


@dataclasses.dataclass
class ClassFit:
    """What the model's own class needs of a plan: groups its code sizes together keep one count
    (``ties``: a chunk into equal parts, one ``head_dim`` attribute for q/k's and v's head dims);
    groups it cannot take pruned at all stay whole (``whole``: group id -> why, naming the line)."""

    ties: list[list[int]]
    whole: dict[int, str]

    def carried(self, plan: Plan, gg: GroupGraph) -> Plan:
        """``plan`` as far as the class takes it: the whole groups left whole, each tie's groups cut
        to the fewest channels any of them keeps (each the first of those it keeps)."""
        keep = {gid: kept for gid, kept in plan.keep.items() if gid not in self.whole}
        for gids in self.ties:
            count = min(len(keep[gid]) if gid in keep else gg.groups[gid].size for gid in gids)
            for gid in gids:
                if count < gg.groups[gid].size:
                    keep[gid] = keep.get(gid, list(range(gg.groups[gid].size)))[:count]
        return Plan.from_indices(gg, keep)


def class_fit(gg: GroupGraph) -> ClassFit:
    """The ties and the whole groups under which any plan carries over to the model's own class.

    Probe plans look for what cannot be carried: every group keeps half its channels, then, for
    each bit of the groups' (or ties') index, those with the bit set three quarters, then those
    without it (so that any two are also seen at different counts, either one larger: YOLO11s'
    attention views its 4 heads of 64 as its input's 256 channels, equal at equal fractions).
    The groups whose problems arise together and have one size are tied, and probed again tied:
    what still fails is kept whole, with its ties.
    """
    sizes = {g.id: g.size for g in gg.prunable_groups if g.size > 1}
    together = [[gid for gid in gids if sizes[gid] == size]
                for gids, _ in _probe(gg, [[gid] for gid in sizes]) for size in {sizes[gid] for gid in gids}]
    ties = merge_ties([gids for gids in together if len(gids) > 1])
    whole: dict[int, str] = {}
    for gids, text in _probe(gg, tie(list(sizes), ties)):
        for gid in gids:
            whole.setdefault(gid, text)
    for gids in ties:
        failed = next((gid for gid in gids if gid in whole), None)
        for gid in gids if failed is not None else ():
            whole.setdefault(gid, whole[failed])
    return ClassFit([gids for gids in ties if gids[0] not in whole], whole)


def _probe(gg: GroupGraph, units: list[list[int]]) -> list[tuple[list[int], str]]:
    """(the changed groups at the ops involved, why) for what the model's class cannot take of two
    probe plans, each unit of groups keeping one count."""
    found = []
    bits = range(max(1, (len(units) - 1).bit_length()))
    fractions = [lambda i: 0.5] + [lambda i, b=b, on=on: 0.75 if (i >> b) & 1 == on else 0.5 for b in bits for on in (1, 0)]
    for fraction in fractions:
        probe = Plan({gid: list(range(max(1, int(gg.groups[gid].size * fraction(i))))) for i, unit in enumerate(units) for gid in unit})
        resizer = plan_resizer(gg, probe)
        carried = _carried(resizer, resizer.rewritten_graph(), gg.traced.model)
        for nodes, text in carried.problems:
            found.append((list(dict.fromkeys(gid for node in nodes for gid in resizer.group_ids_at(node))), text))
    return found


def _problem_text(problems: list[str]) -> str:
    shown = problems[:3] + ([f"... and {len(problems) - 3} more"] if len(problems) > 3 else [])
    return ("graphprune cannot give the model its own class back: " + "; ".join(shown)
            + ". Keep those groups whole (leave them out of the plan), write the size as an attribute of the module, "
              "or take the slim graph (output='graph').")


# ------------------------------------------------------------------ what forward reads

def _conv1d_sizes(m: nn.Module) -> None:
    m.nx, m.nf = m.weight.shape


#: library classes (by qualified name) whose size attributes follow their weights, where values
#: alone cannot tell the attributes apart (GPT-2's Conv1D holds nx == nf == 768)
ATTRIBUTE_RULES: dict[str, Callable[[nn.Module], None]] = {
    "transformers.pytorch_utils.Conv1D": _conv1d_sizes,
}


def _carried(s: _Resizer, rewritten: fx.Graph, model: nn.Module) -> _Carried:
    """Compare every rewritten node with its original: each changed constant is an attribute to set."""
    carried = _Carried()
    new_nodes = {n.name: n for n in rewritten.nodes}
    for old in s.gg.gm.graph.nodes:
        if old.op not in ("call_function", "call_method"):
            continue
        new = new_nodes[old.name]
        if takes(old) in ("split sizes", "chunks"):
            _carry_split(carried, model, old, new)
        else:
            _carry_constants(s, carried, model, old, new)
        if old in s.gg.channel_means:
            _carry_channel_mean(s, carried, model, old)
    _shared_sizes(carried)
    _library_forms(s, carried, model)
    return carried


def _shared_sizes(carried: _Carried) -> None:
    """Ops of one kind in one module that read one value at one argument (q, k and v views of a
    head dim) read one attribute: pruning it for one but not another cannot be carried over."""
    stays = {(n.target, _module_path(n), path, value): n for n, path, value in carried.reads}
    for node, path, value, new in carried.edited:
        other = stays.get((node.target, _module_path(node), path, value))
        if other is not None:
            text = (f"{describe_node(node)} needs {new} where {describe_node(other)} keeps {value}, and the module's "
                    "code gives both the same size (e.g. v's head dims pruned, q's and k's not)")
            carried.problem(text, node, other)  # the groups at either op: tied to one count, they carry over


def _library_forms(s: _Resizer, carried: _Carried, model: nn.Module) -> None:
    """A module traced through its plain-op form (equivalents.py: ``nn.MultiheadAttention``) runs
    its own code in the user's model, which ties its widths together: no channel through it can go."""
    forms = {path for path, m in model.named_modules() if path and module_form(m) is not None}
    if not forms:
        return
    for node in s.gg.gm.graph.nodes:
        path = next((p for p in _module_paths(node) if p in forms), None)
        if path is not None and s.group_ids_at(node):
            carried.problem(f"'{path}' ({type(model.get_submodule(path)).__name__}) ties its inner width to its "
                                  "input width in its own code: its pruned sizes exist only in the slim graph", node)




def _carry_split(carried: _Carried, model: nn.Module, old: fx.Node, new: fx.Node) -> None:
    before, after = old.args[1], new.args[1]
    if before == after:
        return
    chunks = old.target in ("chunk", torch.chunk)
    if isinstance(after, (list, tuple)) and isinstance(before, int) and len(set(after[:-1])) <= 1 and after[-1] <= after[0]:
        if chunks:  # chunk(n) of the new width gives these parts itself
            if len(set(after)) == 1 and len(after) == before:
                return
        else:  # split(size): the size that splits the new width into these parts
            carried.set(model, old, before, after[0], (0, 1))
            return
    if isinstance(before, (list, tuple)) and isinstance(after, (list, tuple)) and len(before) == len(after):
        for i, (b, a) in enumerate(zip(before, after)):
            if isinstance(b, int) and b != a:
                carried.set(model, old, b, a, (0, 1, i))
        return
    carried.problem(f"{describe_node(old)} splits pruned channels into {list(after)}; its code cannot be made to", old)


def _carry_constants(s: _Resizer, carried: _Carried, model: nn.Module, old: fx.Node, new: fx.Node) -> None:
    before, after = dict(_leaves((old.args, old.kwargs))), dict(_leaves((new.args, new.kwargs)))
    if takes(old) == "shape" and before.keys() != after.keys():  # a computed size tuple became literals (slim.rewrite_sizes)
        was, now = s.values[old].shape, s.expected(old).shape
        for size, new_size in zip(was, now):
            if size != new_size:
                carried.set(model, old, size, new_size)
        return
    for path, value in before.items():
        now = after.get(path, _MISSING)
        if now is _MISSING:
            carried.problem(f"{describe_node(old)}: the slim pass changed its arguments' structure", old)
        elif _is_number(value):
            if _is_number(now):
                if now != value:
                    carried.set(model, old, value, now, path)
                    carried.edited.append((old, path, value, now))
                else:
                    carried.reads.append((old, path, value))
            else:
                carried.problem(f"{describe_node(old)} has the constant {value} where the plan needs a computed value", old)
        elif isinstance(value, fx.Node) and isinstance(now, fx.Node) and now.name != value.name:
            if value in s.gg.channel_means:
                continue  # the rescaled mean: _carry_channel_mean compensates it
            if old.target is F.layer_norm and value.op == "get_attr":  # the weight's sqrt(C/C') (slim.rewrite_layer_norm)
                module, _, name = value.target.rpartition(".")
                carried.scales[module, name] = math.sqrt(_layer_norm_compensation(s, old.args[0]))
            else:
                carried.problem(f"{describe_node(old)}: the slim graph computes one of its arguments anew", old)
        elif isinstance(value, fx.Node) and _is_number(now) and _recomputed(s, value) != now:
            carried.problem(f"{describe_node(old)} takes a size from a tensor's shape ({value.name}) where the plan needs "
                            f"{now}: its code ties the pruned width to that tensor's", old, *_shape_sources(s, value))
    for path in after.keys() - before.keys():
        if old.target is F.scaled_dot_product_attention and path == (1, "scale"):
            query = old.args[0] if old.args else old.kwargs["query"]
            if s.size_after(query, -1) != s.values[query].shape[-1]:
                carried.problem(f"{describe_node(old)} takes scaled_dot_product_attention's default scale, 1/sqrt(head dim), which "
                    "the pruned head dims change; pass scale= from an attribute (as Hugging Face's attention does)", old)
        elif _is_number(after[path]) or isinstance(after[path], (tuple, list)):
            carried.problem(f"{describe_node(old)} needs the argument {path[-1]!r} = {after[path]!r}, which its code does not pass", old)


def _recomputed(s: _Resizer, size: fx.Node) -> Any:
    """What the model's own code computes for ``size`` (``x.shape[-1] // 2``) from the pruned
    tensors' shapes; _MISSING where it computes more than sizes."""
    env: dict[fx.Node, Any] = {}

    def value(n: fx.Node) -> Any:
        if n not in env:
            spec = s.expected(n)
            if isinstance(spec, TensorSpec):
                env[n] = torch.empty(spec.shape, dtype=spec.dtype, device="meta")
            elif n.op == "call_method" and n.target in ("size", "dim"):
                args, kwargs = fx.node.map_arg((n.args, n.kwargs), value)
                env[n] = getattr(args[0], n.target)(*args[1:], **kwargs)
            elif n.op == "call_function" and is_python_arithmetic(n.target):
                args, kwargs = fx.node.map_arg((n.args, n.kwargs), value)
                env[n] = n.target(*args, **kwargs)
            else:
                raise LookupError(n.name)
        return env[n]

    try:
        return value(size)
    except LookupError:
        return _MISSING


def _shape_sources(s: _Resizer, size: fx.Node) -> list[fx.Node]:
    """The tensors whose shapes a size computed in the graph (``B, G, P, D = x.shape``) reads."""
    found, stack, seen = [], [size], set()
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if n is not size and s.maps.get(n) is not None:
            found.append(n)
        else:
            stack.extend(n.all_input_nodes)
    return found


def _carry_channel_mean(s: _Resizer, carried: _Carried, model: nn.Module, mean: fx.Node) -> None:
    """A mean of squares over C channels cut to C' (an RMS norm): eps x C/C' and weight x sqrt(C/C')
    compute what the slim graph's rescaled mean computes."""
    x = mean.args[0] if mean.args else mean.kwargs["input"]
    before, after = s.values[x].shape[s.maps[x].dim], s.count(s.maps[x])
    if before == after:
        return
    ratio = before / after
    eps = [(user, v) for user in mean.users if user.op == "call_function" and user.target in (operator.add, torch.add)
           for v in user.args if isinstance(v, float)]
    path = _module_path(mean)
    owner = model.get_submodule(path)
    weights = [name for name, p in owner.named_parameters(recurse=False)
               if p.ndim == 1 and (path, name, 0) in s.gg.member_records]
    if len(eps) != 1 or len(weights) != 1:
        carried.problem(f"{describe_node(mean)} averages over pruned channels, and graphprune finds no single eps "
                                "and weight in its module to compensate", mean)
        return
    carried.set(model, eps[0][0], eps[0][1], eps[0][1] * ratio)
    carried.scales[path, weights[0]] = math.sqrt(ratio)


def _owner_attribute(model: nn.Module, node: fx.Node, value: Any, at: tuple = ()) -> tuple[str, str] | str | None:
    """(module path, attribute) of the one attribute holding ``value`` in the innermost module
    around ``node`` that holds it at all (where several do, the one the line of code passes at
    argument path ``at``); None where that module's class has an attribute rule; or why there is none."""
    for path in _module_paths(node):
        owner = model.get_submodule(path)
        if qualified_name(type(owner)) in ATTRIBUTE_RULES:
            return None
        names = [k for k, v in vars(owner).items() if not k.startswith("_") and k != "training" and _holds(v, value)]
        if len(names) > 1:
            named = _attribute_in_code(node, at)
            names = [k for k in names if k == named] or names
        if len(names) == 1:
            return path, names[0]
        if names:
            return (f"{describe_node(node)} uses {value}, which {len(names)} attributes of '{path or type(model).__name__}' "
                    f"hold ({', '.join(names)}): graphprune cannot tell which one to change")
    return f"{describe_node(node)} uses {value} where the plan needs another size, and no attribute of its module holds it (a literal?)"


def _attribute_in_code(node: fx.Node, at: tuple) -> str | None:
    """The ``self.<name>`` the user's line passes at argument path ``at`` of ``node``'s call
    (``F.pad(x, (0, 0, self.before, self.after))``)."""
    found = _argument_in_code(node, at)
    return found.attr if _is_self_attribute(found) else None


def _solved_attribute(model: nn.Module, node: fx.Node, old: int, new: int, at: tuple
                      ) -> tuple[tuple[str, str], int, int] | None:
    """((module path, attribute), its value, the value it needs) where the user's line computes the
    argument at ``at`` from one integer attribute and integer constants (``x.split(self.expand_chs // 2)``),
    and a value of the attribute gives ``new``; None where not."""
    expression = _argument_in_code(node, at)
    names = [a.attr for a in ast.walk(expression) if _is_self_attribute(a)] if expression is not None and _is_arithmetic(expression) else []
    if len(names) != 1 or not isinstance(new, int):
        return None
    for path in _module_paths(node):
        current = getattr(model.get_submodule(path), names[0], None)
        if isinstance(current, int) and not isinstance(current, bool):
            break
    else:
        return None
    if _evaluate(expression, current) != old:
        return None
    needed = _inverse(expression, new, current)
    return ((path, names[0]), current, needed) if needed is not None and _evaluate(expression, needed) == new else None


def _is_arithmetic(expression: ast.expr) -> bool:
    """Integer constants and ``self.<name>`` combined by + - * //: what :func:`_inverse` can solve."""
    if isinstance(expression, ast.BinOp):
        return (isinstance(expression.op, (ast.Add, ast.Sub, ast.Mult, ast.FloorDiv))
                and _is_arithmetic(expression.left) and _is_arithmetic(expression.right))
    return _is_self_attribute(expression) or (isinstance(expression, ast.Constant) and type(expression.value) is int)


def _evaluate(expression: ast.expr, value: int) -> int:
    """``expression`` (checked by :func:`_is_arithmetic`) with its one attribute at ``value``."""
    names = {a.attr: value for a in ast.walk(expression) if _is_self_attribute(a)}
    return eval(compile(ast.Expression(expression), "<size>", "eval"), {"__builtins__": {}}, {"self": SimpleNamespace(**names)})


def _inverse(expression: ast.expr, target: int, current: int) -> int | None:
    """The attribute's value for which ``expression`` gives ``target`` (a floor division keeps the
    remainder it has at ``current``); None where no integer does."""
    if not isinstance(expression, ast.BinOp):
        return target if _is_self_attribute(expression) else None
    inner, constant, left = ((expression.left, expression.right, True) if _has_attribute(expression.left)
                             else (expression.right, expression.left, False))
    c, op = _evaluate(constant, 0), type(expression.op)
    if op is ast.Add:
        target -= c
    elif op is ast.Sub:
        target = target + c if left else c - target
    elif op is ast.Mult:
        if c == 0 or target % c:
            return None
        target //= c
    elif left and c > 0:  # inner // c
        target = target * c + _evaluate(inner, current) % c
    else:
        return None
    return _inverse(inner, target, current)


def _has_attribute(expression: ast.expr) -> bool:
    return any(_is_self_attribute(a) for a in ast.walk(expression))


def _is_self_attribute(expression: ast.expr | None) -> bool:
    return (isinstance(expression, ast.Attribute) and isinstance(expression.value, ast.Name)
            and expression.value.id == "self")


def _argument_in_code(node: fx.Node, at: tuple) -> ast.expr | None:
    """The expression the user's line passes at argument path ``at`` of ``node``'s call, where the
    line parses and holds one such call."""
    frame = node.meta.get(FRAME)
    try:
        tree = ast.parse(linecache.getline(*frame).strip()) if frame and at else None
    except SyntaxError:
        return None
    name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
    calls = [c for c in ast.walk(tree) if isinstance(c, ast.Call)
             and name == (c.func.attr if isinstance(c.func, ast.Attribute) else getattr(c.func, "id", None))] if tree else []
    if len(calls) != 1:
        return None
    (call,), (where, key, *inner) = calls, at
    if where == 1:
        found = next((k.value for k in call.keywords if k.arg == key), None)
    else:
        index = key - (node.op == "call_method")  # a method's first argument is the tensor it is called on
        args = call.args
        found = args[index] if 0 <= index < len(args) and not any(isinstance(a, ast.Starred) for a in args[: index + 1]) else None
    for k in inner:
        found = found.elts[k] if isinstance(found, (ast.Tuple, ast.List)) and k < len(found.elts) else None
    return found


def _holds(attribute: Any, value: Any) -> bool:
    if type(attribute) is type(value):
        return attribute == value
    return isinstance(attribute, tuple) and len(attribute) == 1 and type(attribute[0]) is type(value) and attribute[0] == value


def _module_paths(node: fx.Node) -> list[str]:
    """The modules whose code made ``node``, innermost first, ending with the model itself."""
    stack = [path for path, _ in (node.meta.get("nn_module_stack") or {}).values()]
    return [*reversed(stack), ""] if stack[:1] != [""] else list(reversed(stack))


def _module_path(node: fx.Node) -> str:
    return _module_paths(node)[0]


_MISSING = object()


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _leaves(value: Any, path: tuple = ()) -> Iterator[tuple[tuple, Any]]:
    """(path, leaf) of a node's arguments, through tuples, lists, dicts and slices."""
    if isinstance(value, (tuple, list)):
        for i, v in enumerate(value):
            yield from _leaves(v, (*path, i))
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(value, slice):
        yield from _leaves((value.start, value.stop, value.step), (*path, "slice"))
    else:
        yield path, value


# ------------------------------------------------------------------ building it

def _shared_copy(model: nn.Module, graph: fx.GraphModule) -> nn.Module:
    """A copy of ``model`` holding the slim graph's modules and tensors under their paths."""
    memo: dict[int, Any] = {}
    ours = dict(model.named_modules(remove_duplicate=False))
    for name, m in graph.named_modules(remove_duplicate=False):
        if name and type(m) is not nn.Module and name in ours:  # plain nn.Module: a container fx made
            memo[id(ours[name])] = m
    for node in graph.graph.nodes:
        if node.op == "get_attr":
            original = _attribute(model, node.target)
            if isinstance(original, torch.Tensor):
                memo[id(original)] = _attribute(graph, node.target)
    return _deepcopy(model, memo)


def _resize_in_place(s: _Resizer, rewritten: fx.Graph, model: nn.Module) -> fx.GraphModule:
    """Slice the user's own tensors and fix their modules; the slim graph over the same modules."""
    modules = dict(model.named_modules(remove_duplicate=False))
    _slice_in_place(modules, s.slices())
    s.fix_modules(modules)
    root = {}
    for node in rewritten.nodes:
        if node.op in ("call_module", "get_attr"):
            found = _attribute(model, node.target)
            root[node.target] = found if found is not None else _attribute(s.gg.gm, node.target)  # tracer constants
    return fx.GraphModule(root, rewritten)


def _attribute(owner: Any, target: str) -> Any:
    for part in target.split("."):
        owner = getattr(owner, part, None)
        if owner is None:
            return None
    return owner


def _scaled(current: torch.Tensor, factor: float) -> torch.Tensor:
    """``current * factor``, a parameter again where it was one (a new tensor: the slim graph keeps its own)."""
    value = current.detach() * factor
    return nn.Parameter(value, requires_grad=current.requires_grad) if isinstance(current, nn.Parameter) else value


# ------------------------------------------------------------------ proving it

def verify(model: nn.Module, graph: fx.GraphModule, gg: GroupGraph) -> str | None:
    """Why ``model`` does not compute what ``graph`` computes (None: it does) on the example
    inputs, another batch size and, for token inputs, another length."""
    with in_eval(model, graph), torch.no_grad():
        for what, args, kwargs in input_variants(gg.example_inputs):
            try:
                want = flat_outputs(graph(*args, **kwargs))
            except GuardError:
                continue  # the graph takes one path only; the user's code takes every path
            try:
                got = flat_outputs(model(*args, **kwargs))
            except Exception as exc:
                return (f"the model of its own class fails on {what}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
                        f"at {user_location(exc)}")
            if got.shape != want.shape or (want.numel() and (got - want).abs().max() > TOLERANCE * max(want.abs().max(), 1e-6)):
                return f"the model of its own class computes other outputs than the slim graph on {what}{_first_difference(model, graph, args, kwargs)}"
    return None


def input_variants(example_inputs: Any) -> list[tuple[str, tuple, dict]]:
    """(description, args, kwargs): the example; another batch size (1, or 2 where the example's
    is 1); for token inputs, two thirds of the length (see :class:`graphprune.tracing.tracer.InputSizes`)."""
    args, kwargs = split_inputs(example_inputs)
    variants = [("the example inputs", args, kwargs)]
    sizes = InputSizes.of((*args, *kwargs.values()))
    if sizes is None:
        return variants
    batch = 1 if sizes.batch > 1 else 2
    variants.append((f"a batch of {batch}", *sizes.call_at(args, kwargs, batch=batch)))
    if sizes.length is not None and sizes.length > 2:
        length = max(2, 2 * sizes.length // 3)
        variants.append((f"sequences of length {length}", *sizes.call_at(args, kwargs, length=length)))
    return variants


def _first_difference(model: nn.Module, graph: fx.GraphModule, args: tuple, kwargs: dict) -> str:
    """': first at the output of <module>, whose code is <file:line>' for the first module the
    graph calls whose output differs between the two runs; '' where none does."""
    called = [n.target for n in graph.graph.nodes if n.op == "call_module"]
    seen: dict[str, list[torch.Tensor]] = {}
    hooks = []

    def record(runs: dict[str, list[torch.Tensor]]):
        def hook(name):
            return lambda m, i, out: runs.setdefault(name, []).append(flat_outputs(out))
        return hook

    try:
        want: dict[str, list[torch.Tensor]] = {}
        hooks = [graph.get_submodule(t).register_forward_hook(record(want)(t)) for t in dict.fromkeys(called)]
        graph(*args, **kwargs)
        for h in hooks:
            h.remove()
        hooks = [model.get_submodule(t).register_forward_hook(record(seen)(t)) for t in dict.fromkeys(called)
                 if _attribute(model, t) is not None]
        model(*args, **kwargs)
    except Exception:
        return ""
    finally:
        for h in hooks:
            h.remove()
    for target in dict.fromkeys(called):
        a, b = want.get(target, []), seen.get(target, [])
        if len(a) != len(b) or any(x.shape != y.shape or not torch.allclose(x, y, rtol=1e-4, atol=1e-5) for x, y in zip(a, b)):
            return f"; the first difference is at the input or output of '{target}'{_code_of(model, target)}"
    return ""


def _code_of(model: nn.Module, target: str) -> str:
    """', called from <file:line>': the forward of the module around ``target``, where the user's code decides its input."""
    parent = target.rpartition(".")[0]
    forward = type(model.get_submodule(parent)).forward
    try:
        return f", called from {inspect.getsourcefile(forward)}:{inspect.getsourcelines(forward)[1]} ({type(model.get_submodule(parent)).__qualname__}.forward)"
    except (OSError, TypeError):
        return ""

