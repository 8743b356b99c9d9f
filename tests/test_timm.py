"""A timm subset: analysis succeeds, counts are exact, untraceable parts fall back to reported leaves."""

import numpy as np
import pytest
import torch

import graphprune
from helpers import group_with
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
def test_mobilevit_blocks_open_with_specialize_submodules(tmp_path):
    """Its three MobileVitBlocks branch on their input's size and stay leaves by default (above);
    traced along the example path, every channel is prunable and slims exactly."""
    model, x = timm.create_model("mobilevit_s", pretrained=False), torch.randn(1, 3, 256, 256)
    gg = check_model(model, x, "mobilevit_s", specialize_submodules=True)
    assert gg.fallbacks == [] and gg.prunable_mac_share() == 1.0 and gg.traced.specializations
    check_slim(model, gg, x, str(tmp_path / "slim.onnx"))


def test_a_module_the_rule_table_knows_stays_a_leaf_with_specialize_submodules():
    """timm's Conv2dSame computes its padding in Python: traced along the example path, its code
    would read its weight's shape and freeze its channels; as a leaf the conv rule prunes them."""
    from timm.layers import Conv2dSame

    model = torch.nn.Sequential(Conv2dSame(3, 8, 3, stride=2), torch.nn.ReLU(), Conv2dSame(8, 4, 3)).eval()
    gg = graphprune.analyze(model, torch.randn(1, 3, 9, 9), specialize_submodules=True)
    assert gg.fallbacks == [] and gg.traced.specializations == []
    assert [n.op for n in gg.gm.graph.nodes if n.target in ("0", "2")] == ["call_module"] * 2
    assert group_with(gg, "0").prunable and group_with(gg, "0").size == 8


@pytest.mark.slow
def test_iformer_s_slims_exactly_with_half_of_every_group_pruned(tmp_path):
    """Reported slimming 69% off with half of every exact group pruned at once (the leak oracle
    then pruned one group at a time); check_slim prunes every group in one plan."""
    model, x = timm.create_model("iformer_s", pretrained=False), torch.randn(1, 3, 224, 224)
    gg = check_model(model, x, "iformer_s")
    assert sum(g.size for g in gg.prunable_groups if not g.inexact) > 1000
    check_slim(model, gg, x, str(tmp_path / "slim.onnx"))


@pytest.mark.slow
@pytest.mark.parametrize("attention", ["head_dims", "heads"])
@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("name", ["vit_small_patch16_224", "deit_tiny_patch16_224"])
def test_vision_transformer_heads_and_head_dims_slim_exactly(name, fused, attention, tmp_path):
    """Every attention's heads (or head dims) and every MLP prunable; half of each pruned at once
    (the residual stream too: it is LayerNorm-normalized, so checked for cost only) slims to what
    the budget says and, without the stream, exactly; sdpa (fused) and q@kT/attn@v (not fused)."""
    from graphprune.tracing.flops import flop_counter

    from helpers import EXACT, random_plan, slim_at_budget, slim_error

    model = timm.create_model(name, pretrained=False, img_size=64).eval()
    for block in model.blocks:
        block.attn.fused_attn = fused
    x = torch.randn(1, 3, 64, 64)
    gg = graphprune.analyze(model, x, attention=attention)
    with flop_counter() as counter:
        model(x)
    assert gg.cost.macs() == counter.get_total_flops() // 2
    assert gg.cost.params() == sum(p.numel() for p in model.parameters())
    heads, dim = model.blocks[0].attn.num_heads, model.embed_dim
    attn = [group_with(gg, f"blocks.{i}.attn.qkv") for i in range(len(model.blocks))]
    assert all(g.prunable and g.size == (heads if attention == "heads" else dim // heads) for g in attn)
    assert all(g is group_with(gg, f"blocks.{i}.attn.proj", dim=1) for i, g in enumerate(attn))
    assert all(group_with(gg, f"blocks.{i}.mlp.fc1").prunable for i in range(len(model.blocks)))
    stream = group_with(gg, "blocks.0.norm1")
    assert stream.prunable and "normalizes across" in stream.inexact and len(gg.prunable_groups) == 25
    plan = random_plan(gg, np.random.default_rng(0), 0.5)
    slim = slim_at_budget(gg, plan, x)
    exact = graphprune.Plan({g: k for g, k in plan.keep.items() if g != stream.id}, plan.sizes)
    slim = graphprune.slim(gg, exact)
    report = graphprune.export_onnx(slim, str(tmp_path / "slim.onnx"), x)
    assert report.relative_diff <= 1e-4 and report.dynamic_batch_checked
    assert slim_error(model, gg, exact, (x,)) <= EXACT
