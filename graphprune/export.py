"""Verified ONNX export: export, run in onnxruntime, compare with PyTorch, raise if they disagree."""

from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Any

import numpy as np
import torch

from .errors import ExportError


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

    @property
    def relative_diff(self) -> float:
        return self.max_abs_diff / self.output_scale if self.output_scale else self.max_abs_diff


def _flat_outputs(out: Any) -> list[np.ndarray]:
    if isinstance(out, torch.Tensor):
        return [out.detach().cpu().numpy()]
    if isinstance(out, dict):
        out = list(out.values())
    return [a for o in out for a in _flat_outputs(o)]


def _providers() -> list[str]:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers() and torch.cuda.is_available():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _export(model, inputs: tuple, path: str, exporter: str, opset: int | None, dynamic_batch: bool) -> str:
    names = [f"input_{i}" for i in range(len(inputs))]
    with torch.no_grad():  # naming outputs also keeps the exporter from reading an fx graph as a TorchScript one
        outputs = [f"output_{i}" for i in range(len(_flat_outputs(model(*inputs))))]
    if exporter in ("auto", "torchscript"):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    model, inputs, path, dynamo=False, input_names=names, output_names=outputs, opset_version=opset or 17,
                    dynamic_axes={n: {0: "batch"} for n in names} if dynamic_batch else None,
                )
            return "torchscript"
        except Exception as exc:  # noqa: BLE001 - any exporter failure falls through to dynamo
            if exporter == "torchscript":
                raise ExportError(f"the TorchScript ONNX exporter failed: {exc}; try exporter='dynamo'") from exc
    batch = torch.export.Dim("batch", min=1) if dynamic_batch else None
    shapes = tuple({0: batch} if dynamic_batch else None for _ in inputs)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, inputs, path, dynamo=True, input_names=names, opset_version=opset, dynamic_shapes=shapes, verbose=False)
    except Exception as exc:  # noqa: BLE001
        raise ExportError(f"ONNX export failed with both exporters: {exc}") from exc
    return "dynamo"


def export_onnx(
    model: torch.nn.Module,
    path: str,
    example_inputs: Any,
    verify: bool = True,
    dynamic_batch: bool = True,
    opset: int | None = None,
    exporter: str = "auto",
    tolerance: float = 1e-4,
) -> ExportReport:
    """Export ``model`` to ONNX and check onnxruntime reproduces PyTorch's outputs.

    ``exporter``: "auto" (TorchScript exporter, falling back to torch.export), "torchscript" or
    "dynamo". ``tolerance``: allowed max |onnx - torch| relative to the largest output magnitude.
    With ``dynamic_batch`` the check also runs a batch twice as large as the example.
    """
    import onnx
    import onnxruntime as ort

    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    was_training = model.training
    model.eval()
    if os.path.exists(path + ".data"):  # a stale weight file of an earlier export of this path
        os.remove(path + ".data")
    try:
        used = _export(model, inputs, path, exporter, opset, dynamic_batch)
        opset_used = next((o.version for o in onnx.load(path, load_external_data=False).opset_import if o.domain in ("", "ai.onnx")), 0)
        size = os.path.getsize(path) + (os.path.getsize(path + ".data") if os.path.exists(path + ".data") else 0)
        report = ExportReport(path, used, opset_used, size, _providers()[0], 0.0, 0.0, False)
        if not verify:
            return report
        session = ort.InferenceSession(path, providers=_providers())
        batches = [inputs] + ([tuple(torch.cat([x, x.flip(0)]) for x in inputs)] if dynamic_batch else [])
        for batch in batches:
            with torch.no_grad():
                want = _flat_outputs(model(*batch))
            feed = {i.name: x.detach().cpu().numpy() for i, x in zip(session.get_inputs(), batch)}
            got = session.run(None, feed)
            if len(got) != len(want):
                raise ExportError(f"onnxruntime returned {len(got)} outputs, PyTorch {len(want)}")
            for w, g in zip(want, got):
                if w.shape != g.shape:
                    raise ExportError(f"output shape {g.shape} in onnxruntime vs {w.shape} in PyTorch")
                report.max_abs_diff = max(report.max_abs_diff, float(np.abs(w - g).max(initial=0.0)))
                report.output_scale = max(report.output_scale, float(np.abs(w).max(initial=0.0)))
        report.dynamic_batch_checked = dynamic_batch
        if report.relative_diff > tolerance:
            raise ExportError(
                f"onnxruntime disagrees with PyTorch: max |diff| {report.max_abs_diff:.3g} "
                f"({report.relative_diff:.3g} of the output scale, tolerance {tolerance:g}). "
                "Try exporter='dynamo' or a newer opset."
            )
        return report
    finally:
        model.train(was_training)
