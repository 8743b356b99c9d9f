"""A timm subset: analysis succeeds, counts are exact, untraceable parts fall back to reported leaves."""

import pytest
import torch

from zoo import check_model, check_slim

timm = pytest.importorskip("timm")

MODELS = [
    "resnet50d", "efficientnet_b0", "mobilenetv3_large_100", "ghostnet_100", "rexnet_100", "cspdarknet53",
    "dla34", "hrnet_w18_small", "res2net50_14w_8s", "repvgg_a0", "mobilevit_s", "tf_efficientnetv2_s",
]


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_timm_models(name, tmp_path):
    size = 256 if name.startswith("mobilevit") else 96
    model, x = timm.create_model(name, pretrained=False), torch.randn(1, 3, size, size)
    gg = check_model(model, x, name)
    check_slim(model, gg, x, str(tmp_path / "slim.onnx"))
    if name == "mobilevit_s":
        assert {f.module for f in gg.fallbacks} == {"stages.2.1", "stages.3.1", "stages.4.1"}
        assert any("'stages.2.1' (MobileVitBlock) could not be traced" in (g.reason or "") for g in gg.groups)


@pytest.mark.slow
def test_iformer_s_slims_exactly_with_half_of_every_group_pruned(tmp_path):
    """Reported slimming 69% off with half of every exact group pruned at once (the leak oracle
    then pruned one group at a time); check_slim prunes every group in one plan."""
    model, x = timm.create_model("iformer_s", pretrained=False), torch.randn(1, 3, 224, 224)
    gg = check_model(model, x, "iformer_s")
    assert sum(g.size for g in gg.prunable_groups if not g.inexact) > 1000
    check_slim(model, gg, x, str(tmp_path / "slim.onnx"))
