"""Verified ONNX export: the report, dynamic batch, and the error when onnxruntime disagrees."""

import onnxruntime
import pytest
import torch

import graphprune
import toy_models


def test_report_fields_and_dynamic_batch(tmp_path):
    model, x = toy_models.build("dense_concat")
    report = graphprune.export_onnx(model, str(tmp_path / "m.onnx"), x)
    assert report.exporter == "torchscript" and report.opset == 17
    assert report.file_bytes == (tmp_path / "m.onnx").stat().st_size
    assert report.provider == "CPUExecutionProvider" and report.dynamic_batch_checked
    assert report.relative_diff < 1e-5
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"))
    assert session.get_inputs()[0].shape[0] == "batch"


def test_dynamo_exporter_on_request(tmp_path):
    model, x = toy_models.build("residual")
    report = graphprune.export_onnx(model, str(tmp_path / "m.onnx"), x, exporter="dynamo", dynamic_batch=False)
    assert report.exporter == "dynamo" and report.relative_diff < 1e-5


def test_disagreement_raises_export_error(tmp_path, monkeypatch):
    model, x = toy_models.build("residual")
    real_run = onnxruntime.InferenceSession.run
    monkeypatch.setattr(onnxruntime.InferenceSession, "run", lambda self, *a, **k: [o + 1.0 for o in real_run(self, *a, **k)])
    with pytest.raises(graphprune.ExportError, match="onnxruntime disagrees"):
        graphprune.export_onnx(model, str(tmp_path / "m.onnx"), x)


def test_export_leaves_training_mode_alone(tmp_path):
    model, x = toy_models.build("residual")
    model.train()
    graphprune.export_onnx(model, str(tmp_path / "m.onnx"), x, verify=False)
    assert model.training
    assert torch.isfinite(model(x)).all()
