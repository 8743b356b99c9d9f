"""Verified ONNX export: export, run in onnxruntime, compare with PyTorch, raise if they disagree.

Example inputs are what ``apply`` takes: a tensor, a tuple of positional inputs, or a dict of
forward's keyword inputs (``dict(input_ids=..., attention_mask=...)`` for a Hugging Face model),
whose tensors become ONNX inputs of those names. ONNX graphs take tensors only: non-tensor example
inputs (``model(x, 2)`` for a super-resolution scale, ``use_cache=False``) are baked into the
exported graph as constants, and input names, the dynamic axes, onnxruntime's feeds and the
checks at other sizes cover the tensor inputs only. The batch axis is dynamic (dim 0 of every input
whose first dim is the example's batch); for sequence models, whose integer token ids have shape
(batch, length), so is the length (dim 1 of the ids and of the 2-dim masks and position ids that
go with them, see :class:`graphprune.tracing.tracer.InputSizes`), and onnxruntime is checked against PyTorch
at twice the batch and at half the length too. ONNX cannot raise either: a graph traced along
the example inputs' path (see graphprune.tracing.tracer) exports that path without its guards, and the
export warns where (``ExportReport.unchecked_guards``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import re
import sys
import warnings
from typing import Any, Iterator

import numpy as np
import torch
import torch.fx as fx

from ..common.distributed import main_only
from ..errors import ExampleInputError, ExportError, GuardError
from ..ops import declaration_of, declared_functions
from ..tracing.tracer import OPAQUE_CALL, InputSizes, guard, mismatched_inputs, named_tensors, split_inputs


@dataclasses.dataclass
class ExportReport:
    path: str
    exporter: str
    opset: int
    file_bytes: int  # the .onnx file plus external weight data, if the exporter wrote any
    provider: str
    max_abs_diff: float
    output_scale: float
    dynamic_batch_checked: bool
    unchecked_guards: list[str] = dataclasses.field(default_factory=list)  # where the ONNX graph cannot re-check its path
    dynamic_length_checked: bool = False  # a sequence model's length axis is dynamic and checked at another length
    checked_sizes: list[str] = dataclasses.field(default_factory=list)  # the input sizes onnxruntime was compared at

    @property
    def relative_diff(self) -> float:
        return self.max_abs_diff / self.output_scale if self.output_scale else self.max_abs_diff


def _flat_outputs(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out.detach()]
    if isinstance(out, dict):
        out = list(out.values())
    return [a for o in out for a in _flat_outputs(o)]


def _providers() -> list[str]:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers() and torch.cuda.is_available():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class _TensorsOnly(torch.nn.Module):
    """``model`` called as the example inputs call it (positionally and by keyword), taking their
    tensors only, in order, with the non-tensors as constants: what the exporters see, since they
    pass an ONNX model's inputs positionally."""

    def __init__(self, model: torch.nn.Module, args: tuple, kwargs: dict[str, Any]):
        super().__init__()
        self.model = model
        self.args, self.kwargs = args, kwargs  # the example tensors in them are placeholders, replaced in forward

    def forward(self, *tensors: torch.Tensor) -> Any:
        given = iter(tensors)
        args = tuple(next(given) if isinstance(v, torch.Tensor) else v for v in self.args)
        return self.model(*args, **{k: next(given) if isinstance(v, torch.Tensor) else v for k, v in self.kwargs.items()})


def _unchecked_guards(model: torch.nn.Module) -> list[str]:
    """Locations of guards on traced values in ``model``'s graphs, and of the numbers its opaque
    calls compute (trace.OPAQUE_CALL): ONNX keeps the example's path and numbers without them.
    Guards on non-tensor inputs are left out: those inputs are baked in anyway."""
    nodes = [n for m in model.modules() if isinstance(m, fx.GraphModule) for n in m.graph.nodes]
    return ([n.args[3] for n in nodes if n.op == "call_function" and n.target is guard and n.args[1] != "value"]
            + list(dict.fromkeys(f"{n.meta[OPAQUE_CALL]} (ONNX holds the example's numbers)" for n in nodes if OPAQUE_CALL in n.meta)))


_COLOUR = re.compile(r"\x1b\[[0-9;]*m")


def _cause(exc: BaseException, limit: int = 180) -> str:
    """The exporter's first meaningful line: the first line of the innermost cause (the outer ones
    are generic "step 1/3 failed" banners, and the TorchScript exporter appends its whole graph)."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    lines = [line.strip() for line in _COLOUR.sub("", str(exc)).splitlines() if line.strip()]
    line = lines[0] if lines else ""
    if len(line) > limit:
        line = line[: limit - 3] + "..."
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


@contextlib.contextmanager
def _silenced() -> Iterator[None]:
    """Keep the exporters quiet: the TorchScript one prints its whole graph from C++ (file descriptor
    1) when it fails, the dynamo one prints progress; what matters goes into the ExportError."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no file descriptor 1 to silence
        saved = None
    try:
        with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if saved is not None:
                os.dup2(null.fileno(), 1)
            yield
    finally:
        if saved is not None:
            os.dup2(saved, 1)
            os.close(saved)


@contextlib.contextmanager
def _declared_forms(model: torch.nn.Module) -> Iterator[list[str]]:
    """Ops declared with an ``onnx_form`` (ops.py) run it while the exporters trace: modules through
    their instance's ``forward``, functions where the modules' code looks them up (their forward's
    globals). onnxruntime is then checked against the model's own ops, so a wrong form is an error."""
    modules = [(m, d.onnx_form) for m in model.modules() for d in [declaration_of(m)] if d is not None and d.onnx_form]
    forms = {id(f): declaration_of(f).onnx_form for f in declared_functions() if declaration_of(f).onnx_form}
    patched: list[tuple[dict, str, Any]] = []
    for namespace in {id(g): g for m in model.modules() for g in [getattr(type(m).forward, "__globals__", None)] if g}.values():
        for name, value in list(namespace.items()):
            if callable(value) and id(value) in forms:
                patched.append((namespace, name, value))
                namespace[name] = forms[id(value)]
    for m, form in modules:
        m.forward = functools.partial(form, m)
    try:
        yield sorted({type(m).__qualname__ for m, _ in modules} | {value.__qualname__ for _, _, value in patched})
    finally:
        for m, _ in modules:
            del m.forward
        for namespace, name, value in patched:
            namespace[name] = value


_TRY = "another opset (opset=18 or newer), or replace the operation named above with ones ONNX supports"


def _dynamic_axes(named: dict[str, torch.Tensor], sizes: InputSizes | None, batch: bool,
                  length: bool) -> dict[str, dict[int, str]]:
    """The dynamic axes of each input, by name: dim 0 of batched inputs, dim 1 of sequenced ones (see InputSizes)."""
    axes: dict[str, dict[int, str]] = {}
    for name, x in named.items():
        found = {0: "batch"} if batch and sizes.batched(x) else {}
        if length and sizes.sequenced(x):
            found[1] = "length"
        if found:
            axes[name] = found
    return axes


def _export(model, named: dict[str, torch.Tensor], output_count: int, path: str, exporter: str, opset: int | None,
            axes: dict[str, dict[int, str]]) -> str:
    names, inputs = list(named), tuple(named.values())
    outputs = [f"output_{i}" for i in range(output_count)]  # naming outputs also keeps the exporter from reading an fx graph as a TorchScript one
    script_error = None
    if exporter in ("auto", "torchscript"):
        try:
            with _silenced():
                torch.onnx.export(
                    model, inputs, path, dynamo=False, input_names=names, output_names=outputs, opset_version=opset or 17,
                    dynamic_axes=axes or None,
                )
            return "torchscript"
        except Exception as exc:  # noqa: BLE001 - any exporter failure falls through to dynamo
            if exporter == "torchscript":
                raise ExportError(f"the TorchScript ONNX exporter failed: {_cause(exc)}\n  Try exporter='dynamo' or {_TRY}.") from exc
            script_error = exc
    dims = {"batch": torch.export.Dim("batch", min=1), "length": torch.export.Dim("length", min=1)}
    shapes = tuple({dim: dims[axis] for dim, axis in axes[n].items()} if n in axes else None for n in names)
    if isinstance(model, _TensorsOnly):
        shapes = (shapes,)  # forward(*tensors) takes the tensors as one argument
    try:
        with _silenced():
            torch.onnx.export(model, inputs, path, dynamo=True, input_names=names, opset_version=opset, dynamic_shapes=shapes, verbose=False)
    except Exception as exc:  # noqa: BLE001
        if script_error is None:
            raise ExportError(f"the dynamo ONNX exporter failed: {_cause(exc)}\n  Try exporter='torchscript' or {_TRY}.") from exc
        raise ExportError(
            f"ONNX export failed with both exporters.\n  TorchScript: {_cause(script_error)}\n  dynamo: {_cause(exc)}\n"
            f"  Try {_TRY}. The dynamo error is chained in full; exporter='torchscript' raises the TorchScript one."
        ) from exc
    return "dynamo"


#: the export options that make each checked size dynamic
_OPTION = {"the example inputs": "dynamic_batch=False and dynamic_length=False",
           "twice the example's batch": "dynamic_batch=False", "another length": "dynamic_length=False"}


def _checked_inputs(named: dict[str, torch.Tensor], sizes: InputSizes | None, batch: bool,
                    length: bool) -> list[tuple[str, tuple[torch.Tensor, ...]]]:
    """The inputs onnxruntime is compared with PyTorch at, each with what it varies: the example,
    twice its batch (the example's rows, then them reversed), another length (the first half of
    the positions; 2 at length 1, the position repeated)."""
    inputs = tuple(named.values())
    checked = [("the example inputs", inputs)]
    if batch:
        checked.append(("twice the example's batch", tuple(
            torch.cat([x, x.flip(0)]) if sizes.batched(x) else x for x in inputs)))
    if length:
        other = sizes.length // 2 if sizes.length > 1 else 2
        checked.append(("another length", tuple(sizes.resized(x, length=other) for x in inputs)))
    return checked


def _describe_sizes(inputs: tuple[torch.Tensor, ...]) -> str:
    """The batch size and length of these inputs, as the report lists them."""
    sizes = InputSizes.of(inputs)
    if sizes is None:
        return "unbatched inputs"
    return f"batch {sizes.batch}" + ("" if sizes.length is None else f", length {sizes.length}")


@main_only
def export_onnx(
    model: torch.nn.Module,
    path: str,
    example_inputs: Any,
    verify: bool = True,
    dynamic_batch: bool = True,
    opset: int | None = None,
    exporter: str = "auto",
    tolerance: float = 1e-4,
    dynamic_length: bool = True,
) -> ExportReport | None:
    """Export ``model`` to ONNX and check onnxruntime reproduces PyTorch's outputs.

    ``example_inputs``: a tensor, a tuple of positional inputs or a dict of keyword inputs (see the
    module docstring). ``exporter``: "auto" (TorchScript exporter, falling back to torch.export),
    "torchscript" or "dynamo". ``tolerance``: allowed max |onnx - torch| relative to the largest
    output magnitude. With ``dynamic_batch`` the check also runs a batch twice as large as the example;
    with ``dynamic_length`` a sequence model's length axis is dynamic too, and the check also runs
    half the example's length (``ExportReport.checked_sizes`` lists the sizes checked).
    Raises ExportError where the export or its check fails, ExampleInputError where the model fails on
    example inputs that lie on another device, or hold another float dtype, than its weights.
    Under torchrun only rank 0 exports (and checks); the other ranks get None.
    """
    import onnx
    import onnxruntime as ort

    args, kwargs = split_inputs(example_inputs)
    tensors = named_tensors(args, kwargs)
    exported = model if not kwargs and len(tensors) == len(args) else _TensorsOnly(model, args, kwargs).eval()
    if verify and any(x.dtype == torch.bfloat16 for x in [*tensors.values(), *model.parameters(), *model.buffers()]):
        raise ExportError(
            "onnxruntime cannot check a bfloat16 model (numpy has no bfloat16, onnxruntime's CPU kernels few): "
            "export a float32 copy, export_onnx(copy.deepcopy(model).float(), path, x.float()), "
            "or pass verify=False to export bfloat16 unchecked"
        )
    was_training = model.training
    model.eval()
    if os.path.exists(path + ".data"):  # a stale weight file of an earlier export of this path
        os.remove(path + ".data")
    try:
        try:
            with torch.no_grad():
                output_count = len(_flat_outputs(exported(*tensors.values())))
        except Exception as exc:  # noqa: BLE001 - re-raised as it is unless the inputs do not match the weights
            mismatch = mismatched_inputs(model, tensors)
            if mismatch is None:
                raise
            raise ExampleInputError(mismatch) from exc
        sizes = InputSizes.of(tensors.values())
        dynamic_batch = dynamic_batch and sizes is not None  # no tensor with a batch dim: nothing to make dynamic
        dynamic_length = dynamic_length and sizes is not None and sizes.length is not None  # not a sequence model
        axes = _dynamic_axes(tensors, sizes, dynamic_batch, dynamic_length)
        with _declared_forms(exported) as forms:
            used = _export(exported, tensors, output_count, path, exporter, opset, axes)
        opset_used = next((o.version for o in onnx.load(path, load_external_data=False).opset_import if o.domain in ("", "ai.onnx")), 0)
        size = os.path.getsize(path) + (os.path.getsize(path + ".data") if os.path.exists(path + ".data") else 0)
        report = ExportReport(path, used, opset_used, size, _providers()[0], 0.0, 0.0, False, _unchecked_guards(model))
        if report.unchecked_guards:
            warnings.warn(
                f"{path} follows the path the example inputs took and, unlike PyTorch (GuardError), cannot check that "
                f"an input takes it too; inputs taking another path get wrong outputs. Where: {'; '.join(report.unchecked_guards)}",
                stacklevel=2,
            )
        if not verify:
            return report
        try:
            session = ort.InferenceSession(path, providers=_providers())
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise ExportError(f"onnxruntime cannot load the exported model: {_cause(exc)}\n  Try {_TRY}.") from exc
        taken = {i.name for i in session.get_inputs()}  # the exporter drops inputs the outputs do not depend on
        for what, inputs in _checked_inputs(tensors, sizes, dynamic_batch, dynamic_length):
            try:
                with torch.no_grad():
                    want = [w.cpu().numpy() for w in _flat_outputs(exported(*inputs))]
            except GuardError as exc:  # only other sizes can take another path than the example
                raise ExportError(f"the model rejects {what}: {exc}\n  Export with {_OPTION[what]}.") from exc
            except Exception as exc:  # noqa: BLE001 - it ran on the example: this size does not fit the model
                raise ExportError(f"the model fails on {what} in PyTorch: {_cause(exc)}\n  Export with {_OPTION[what]}.") from exc
            feed = {name: x.detach().cpu().numpy() for name, x in zip(tensors, inputs) if name in taken}
            try:
                got = session.run(None, feed)
            except Exception as exc:  # noqa: BLE001
                raise ExportError(
                    f"onnxruntime cannot run the exported model on {what}: {_cause(exc)}\n"
                    f"  Try {_OPTION[what]} if the model only runs at the example's sizes, or {_TRY}."
                ) from exc
            if len(got) != len(want):
                raise ExportError(f"onnxruntime returned {len(got)} outputs, PyTorch {len(want)}")
            for w, g in zip(want, got):
                if w.shape != g.shape:
                    raise ExportError(f"output shape {g.shape} in onnxruntime vs {w.shape} in PyTorch")
                report.max_abs_diff = max(report.max_abs_diff, float(np.abs(w - g).max(initial=0.0)))
                report.output_scale = max(report.output_scale, float(np.abs(w).max(initial=0.0)))
            report.checked_sizes.append(_describe_sizes(inputs))
        report.dynamic_batch_checked, report.dynamic_length_checked = dynamic_batch, dynamic_length
        if report.relative_diff > tolerance:
            raise ExportError(
                f"onnxruntime disagrees with PyTorch: max |diff| {report.max_abs_diff:.3g} "
                f"({report.relative_diff:.3g} of the output scale, tolerance {tolerance:g}). "
                + (f"The ONNX file runs the onnx_form declared with register_op for {', '.join(forms)}: check that it "
                   "computes what the op computes. " if forms else "")
                + "Try exporter='dynamo' or a newer opset."
            )
        return report
    finally:
        model.train(was_training)
