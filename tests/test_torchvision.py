"""torchvision classification models: a representative subset by default, the whole zoo when slow."""

import pytest
import torchvision

from helpers import group_with
from zoo import TOO_LARGE, check_model, check_slim, input_for

SUBSET = [
    "resnet50", "mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0", "densenet121", "regnet_y_400mf",
    "convnext_tiny", "shufflenet_v2_x1_0", "googlenet", "inception_v3", "squeezenet1_0", "vgg16_bn",
    "resnext50_32x4d", "swin_t", "vit_b_16",
]
ALL = torchvision.models.list_models(module=torchvision.models)


def analyze_and_slim(name, onnx_path):
    kwargs, x = input_for(name, reduced=True)
    model = torchvision.models.get_model(name, weights=None, **kwargs)
    gg = check_model(model, x, name)
    check_slim(model, gg, x, onnx_path)


@pytest.mark.parametrize("name", SUBSET)
def test_representative_models(name, tmp_path):
    analyze_and_slim(name, str(tmp_path / "slim.onnx"))


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in ALL if n not in SUBSET])
def test_whole_zoo(name, tmp_path):
    if name in TOO_LARGE:
        pytest.skip(f"too large for this machine: {TOO_LARGE[name]}")
    analyze_and_slim(name, str(tmp_path / "slim.onnx"))


def test_vit_hidden_stream_is_prunable_through_multihead_attention():
    kwargs, x = input_for("vit_b_16", reduced=True)
    gg = check_model(torchvision.models.get_model("vit_b_16", weights=None, **kwargs), x, "vit_b_16", leak_seeds=0)
    assert not any("MultiheadAttention" in g.reason for g in gg.groups if not g.prunable)
    hidden = group_with(gg, "encoder.layers.encoder_layer_0.self_attention", "in_proj_weight", dim=1)
    assert hidden.prunable and hidden.inexact and hidden.size == 768  # LayerNorm normalizes across it
    assert hidden is group_with(gg, "conv_proj") is group_with(gg, "", "class_token", dim=2)
    mlp = [group_with(gg, f"encoder.layers.encoder_layer_{i}.mlp.0") for i in range(12)]
    assert all(g.prunable and g.size == 3072 for g in mlp)
    assert gg.prunable_mac_share() == 1.0
