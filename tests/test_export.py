"""Verified ONNX export: the report, dynamic batch, and the error when onnxruntime disagrees."""

import onnxruntime
import pytest
import torch
import torch.nn.functional as F

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


class SuperResolution(torch.nn.Module):
    """Called as ``model(x, scale)``: the int sizes the pixel shuffle and the interpolated skip path."""

    def __init__(self, scale: int = 2):
        super().__init__()
        self.head = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.body = torch.nn.Conv2d(16, 3 * scale * scale, 3, padding=1)

    def forward(self, x, scale: int):
        y = self.body(torch.relu(self.head(x)))
        return F.pixel_shuffle(y, scale) + F.interpolate(x, scale_factor=scale, mode="bilinear")


def test_non_tensor_input_is_baked_into_the_export(tmp_path):
    x = torch.randn(1, 3, 8, 8)
    model = SuperResolution().eval()
    slim = graphprune.apply(model, "l1", 0.5, (x, 2)).model
    for m in (model, slim):
        report = graphprune.export_onnx(m, str(tmp_path / "sr.onnx"), (x, 2))
        assert report.exporter == "torchscript" and report.dynamic_batch_checked and report.relative_diff < 1e-5
        (only,) = onnxruntime.InferenceSession(str(tmp_path / "sr.onnx")).get_inputs()
        assert only.name == "input_0" and only.shape == ["batch", 3, 8, 8]


class Zeta(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 1)

    def forward(self, x):
        return torch.special.zeta(self.conv(x).abs() + 1.5, torch.tensor(2.0))


def test_export_failure_is_one_short_error_naming_the_cause(tmp_path, capfd):
    x = torch.randn(1, 3, 4, 4)
    with pytest.raises(graphprune.ExportError) as info:
        graphprune.export_onnx(Zeta().eval(), str(tmp_path / "z.onnx"), x)
    message = str(info.value)
    assert len(message) < 600 and "both exporters" in message and "graph(" not in message
    assert "aten::special_zeta" in message and "zeta" in message.split("dynamo:")[1]
    with pytest.raises(graphprune.ExportError, match="(?s)TorchScript ONNX exporter failed: .*special_zeta.*Try exporter='dynamo'"):
        graphprune.export_onnx(Zeta().eval(), str(tmp_path / "z.onnx"), x, exporter="torchscript")
    assert "Torch IR graph" not in capfd.readouterr().out


class MeanBranch(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Conv2d(3, 8, 1), torch.nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = torch.relu(self.a(x))
        return self.b(y * 2 if x.mean() > 0 else y)


def test_export_warns_where_onnx_cannot_check_the_traced_path(tmp_path):
    x = torch.rand(2, 3, 4, 4)
    slim = graphprune.apply(MeanBranch().eval(), "l1", 0.5, x).model
    with pytest.warns(UserWarning, match="cannot check.*x.mean\\(\\) > 0"):
        report = graphprune.export_onnx(slim, str(tmp_path / "m.onnx"), x)
    assert len(report.unchecked_guards) == 1 and report.relative_diff < 1e-5


class TokenMLP(torch.nn.Module):
    """Token ids and their mask, (batch, length) each: a sequence model."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(50, 16)
        self.fc1, self.fc2 = torch.nn.Linear(16, 32), torch.nn.Linear(32, 8)

    def forward(self, ids, mask):
        h = self.emb(ids) * mask[..., None]
        return self.fc2(torch.relu(self.fc1(h))).sum(1)


class FixedLength(torch.nn.Module):
    """Flattens the whole sequence into one linear layer: it runs at its example's length only."""

    def __init__(self):
        super().__init__()
        self.emb, self.fc = torch.nn.Embedding(50, 4), torch.nn.Linear(8 * 4, 3)

    def forward(self, ids):
        return self.fc(self.emb(ids).flatten(1))


def test_sequence_inputs_get_dynamic_batch_and_length(tmp_path):
    torch.manual_seed(0)
    ids, mask = torch.randint(0, 50, (2, 8)), torch.ones(2, 8)
    mask[1, 6:] = 0
    model = TokenMLP().eval()
    report = graphprune.export_onnx(model, str(tmp_path / "t.onnx"), dict(ids=ids, mask=mask))
    assert report.exporter == "torchscript" and report.dynamic_batch_checked and report.dynamic_length_checked
    assert report.checked_sizes == ["batch 2, length 8", "batch 4, length 8", "batch 2, length 4"]
    session = onnxruntime.InferenceSession(str(tmp_path / "t.onnx"))
    assert [(i.name, i.shape) for i in session.get_inputs()] == [("ids", ["batch", "length"]), ("mask", ["batch", "length"])]
    ids, mask = torch.randint(0, 50, (3, 5)), torch.ones(3, 5)
    (got,) = session.run(None, {"ids": ids.numpy(), "mask": mask.numpy()})
    assert abs(got - model(ids, mask).detach().numpy()).max() < 1e-5


def test_a_model_of_one_length_names_the_option_that_fixes_it(tmp_path):
    ids = torch.randint(0, 50, (2, 8))
    with pytest.raises(graphprune.ExportError, match="(?s)fails on another length in PyTorch.*dynamic_length=False"):
        graphprune.export_onnx(FixedLength().eval(), str(tmp_path / "f.onnx"), ids)
    report = graphprune.export_onnx(FixedLength().eval(), str(tmp_path / "f.onnx"), ids, dynamic_length=False)
    assert not report.dynamic_length_checked and report.checked_sizes == ["batch 2, length 8", "batch 4, length 8"]
    assert onnxruntime.InferenceSession(str(tmp_path / "f.onnx")).get_inputs()[0].shape == ["batch", 8]
