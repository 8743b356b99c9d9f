"""graphprune.models: published parameter counts, and every model through analyze/slim/ONNX."""

import pytest
import torch

from graphprune import models
from zoo import check_model, check_slim


def params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def layer_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_nap_table5_lenets():
    lenet = models.get("lenet_300_100")
    assert [round(layer_params(m) / 1e3) for m in (lenet.fc1, lenet.fc2, lenet.fc3)] == [236, 30, 1]  # 235.5K: "235K"
    assert layer_params(lenet.fc1) == 235_500 and round(params(lenet) / 1e3) == 267
    lenet5 = models.get("lenet5")
    assert [layer_params(m) for m in (lenet5.conv1, lenet5.conv2, lenet5.fc1, lenet5.fc2)] == [520, 25_050, 400_500, 5_010]
    assert round(params(lenet5) / 1e3) == 431


def test_lwdna_table1_cifar_models():
    assert round(params(models.get("resnet56")) / 1e6, 3) == 0.856
    assert round(params(models.get("densenet40")) / 1e6, 3) == 1.059


def test_dhp_dncnn_parameters():
    assert round(params(models.get("dncnn")) / 1e6, 2) == 0.56


def test_he_et_al_resnet_sizes_with_option_a():
    sizes = {d: params(models.get(f"resnet{d}", shortcut="A")) / 1e6 for d in (20, 32, 56, 110)}
    assert [round(sizes[d], 2) for d in (20, 32, 56, 110)] == [0.27, 0.46, 0.85, 1.73]


def test_width_multiplier_and_bad_names():
    assert params(models.get("resnet20", width=0.5)) < params(models.get("resnet20")) / 3
    with pytest.raises(Exception, match="unknown model"):
        models.get("resnet21")


@pytest.mark.parametrize("name", models.names())
def test_every_zoo_model_analyzes_slims_and_exports(name, tmp_path):
    model = models.get(name).eval()
    x = torch.randn(2, *models.input_shape(name)[1:])
    gg = check_model(model, x, name)
    check_slim(model, gg, x, str(tmp_path / "slim.onnx"))


def test_option_a_shortcut_pads_are_rewritten(tmp_path):
    model = models.get("resnet20", shortcut="A").eval()
    x = torch.randn(2, 3, 32, 32)
    gg = check_model(model, x, "resnet20")
    check_slim(model, gg, x, str(tmp_path / "slim.onnx"))
