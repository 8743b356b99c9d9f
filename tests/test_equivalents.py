"""Library code traced through its plain-op forms: nn.MultiheadAttention and torchvision's swin."""

import numpy as np
import pytest
import torch
import torch.nn as nn
from graphprune.tracing.flops import flop_counter

import graphprune
from graphprune.tracing import equivalents
from helpers import EXACT, group_with, leak_check, member, random_keep, random_plan, slim_at_budget, slim_error
from zoo import check_model, check_slim


class Attention(nn.Module):
    """A projection, an nn.MultiheadAttention called as ``mode`` says, a residual and a head."""

    def __init__(self, mode: str, batch_first: bool, need_weights: bool, **options):
        super().__init__()
        self.mode, self.batch_first, self.need_weights = mode, batch_first, need_weights
        self.pre, self.other = nn.Linear(8, 16), nn.Linear(8, 16)
        self.att = nn.MultiheadAttention(16, 4, batch_first=batch_first, **options)
        self.post = nn.Linear(16, 5)

    def forward(self, x, key_padding_mask=None, attn_mask=None):
        h, o = self.pre(x), self.other(x)
        query, key, value = {"self": (h, h, h), "kv": (h, o, o), "cross": (h, o, torch.relu(o))}[self.mode]
        a, w = self.att(query, key, value, need_weights=self.need_weights, key_padding_mask=key_padding_mask,
                        attn_mask=attn_mask, average_attn_weights=False)
        return (self.post(a + h), w) if self.need_weights else self.post(a + h)


def build(mode="self", batch_first=True, need_weights=False, seed=0, **options):
    torch.manual_seed(seed)
    model = Attention(mode, batch_first, need_weights, **options).eval()
    with torch.no_grad():
        model.att.in_proj_bias.normal_()  # zero at init: would hide a pruned channel's bias
    x = torch.randn(2, 7, 8) if batch_first else torch.randn(7, 2, 8)
    return model, x


def attention_nodes(gg):
    return [n for n in gg.gm.graph.nodes if n.op == "call_module" and isinstance(gg.gm.get_submodule(n.target), nn.MultiheadAttention)]


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("need_weights", [True, False])
@pytest.mark.parametrize("mode", ["self", "kv", "cross"])
def test_multihead_attention_form_computes_what_the_module_computes(batch_first, need_weights, mode):
    model, x = build(mode, batch_first, need_weights)
    gg = graphprune.analyze(model, x)
    assert not attention_nodes(gg) and not gg.traced.fallbacks
    torch.testing.assert_close(gg.gm(x), model(x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("need_weights", [True, False])
def test_multihead_attention_form_with_masks_and_separate_projections(need_weights):
    model, x = build("cross", True, need_weights, kdim=12, vdim=12)
    model.other = nn.Linear(8, 12)
    padding = torch.zeros(2, 7, dtype=torch.bool)
    padding[0, 5:] = True
    for attn_mask in (torch.randn(7, 7), torch.randn(2 * 4, 7, 7), torch.ones(7, 7, dtype=torch.bool).triu(1)):
        inputs = (x, padding, attn_mask)
        gg = graphprune.analyze(model, inputs)
        assert not attention_nodes(gg)
        torch.testing.assert_close(gg.gm(*inputs), model(*inputs), rtol=0, atol=1e-6)


def test_multihead_attention_dropout_is_the_modules_in_eval_mode():
    model, x = build(dropout=0.3)
    gg = graphprune.analyze(model, x)
    assert not attention_nodes(gg)
    torch.testing.assert_close(gg.gm(x), model(x), rtol=0, atol=1e-6)


def test_unsupported_multihead_attention_stays_a_leaf_with_the_option_named():
    model, x = build(add_bias_kv=True)
    gg = graphprune.analyze(model, x)
    assert len(attention_nodes(gg)) == 1
    reasons = {g.reason for g in gg.groups if not g.prunable}
    assert any("add_bias_kv=True" in r for r in reasons)
    torch.testing.assert_close(gg.gm(x), model(x), rtol=0, atol=0)


def test_unbatched_multihead_attention_stays_a_leaf():
    model, x = build()
    gg = graphprune.analyze(model, x[0])
    assert len(attention_nodes(gg)) == 1
    assert any("batched 3-D inputs" in f.error for f in gg.traced.fallbacks)


@pytest.mark.parametrize("mode", ["self", "kv", "cross"])
def test_slim_multihead_attention_is_exact(mode):
    """Hidden stream, per-head dims (in lockstep across heads) and packed q/k/v rows all slim exactly."""
    model, x = build(mode, need_weights=True)
    gg = graphprune.analyze(model, x)
    hidden = group_with(gg, "att.out_proj")
    assert hidden.prunable and hidden is group_with(gg, "att", "in_proj_weight", dim=1)
    values = group_with(gg, "att.out_proj", dim=1)
    assert values.prunable and values.size == 4  # one per head dim, every head in lockstep
    assert gg.prunable_mac_share() == 1.0
    for seed in range(3):
        rng = np.random.default_rng(seed)
        assert leak_check(model, gg, random_keep(gg, rng), (x,), seed) == 0.0
        plan = random_plan(gg, rng)
        slim = slim_at_budget(gg, plan, x)
        assert not any(isinstance(m, nn.MultiheadAttention) for m in slim.modules())
        assert slim_error(model, gg, plan, (x,)) <= EXACT


def small_swin(**kwargs):
    from torchvision.models.swin_transformer import SwinTransformer

    torch.manual_seed(0)
    return SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=[4, 4],
                           stochastic_depth_prob=0.0, num_classes=10, **kwargs).eval()


@pytest.mark.parametrize("size", [32, 40])  # 40: windows padded, and the last stage is one window (no shift)
def test_small_swin_traces_through_window_attention_and_patch_merging(size, tmp_path):
    from graphprune.slimming.exactness import randomize_small_tensors

    model, x = small_swin(), torch.randn(1, 3, size, size)
    randomize_small_tensors(model)
    gg = check_model(model, x, "small_swin", leak_seeds=3)
    wrapped = {"shifted_window_attention", "_patch_merging_pad", "_get_relative_position_bias"}
    assert not [n for n in gg.gm.graph.nodes if n.op == "call_function" and getattr(n.target, "__name__", "") in wrapped]
    torch.testing.assert_close(gg.gm(x), model(x), rtol=0, atol=1e-5)
    assert gg.prunable_mac_share() == 1.0
    merge = group_with(gg, "features.2.reduction")
    assert merge.prunable and merge is group_with(gg, "features.3.0.attn.qkv", dim=1)
    assert group_with(gg, "features.1.0.attn.qkv", dim=1).prunable  # the stream patch merging reads
    keep = {}
    for seed in range(4):  # many groups at once, every prunable group pruned
        keep.update(random_keep(gg, np.random.default_rng(seed)))
    assert leak_check(model, gg, keep, (x,)) == 0.0
    check_slim(model, gg, x, str(tmp_path / "swin.onnx"))


def test_small_swin_heads_slice_the_relative_position_bias_table(tmp_path):
    """attention="heads": the bias ``table[index].view(N, N, -1).permute(2, 0, 1)`` is indexed by
    heads along the table's columns (the index buffer selects rows only), so the table is a member of
    its block's heads group and every swin head is prunable: slim exact, budget exact, ONNX verified."""
    from graphprune.slimming.exactness import randomize_small_tensors

    model, x = small_swin(), torch.randn(1, 3, 32, 32)
    randomize_small_tensors(model)
    gg = graphprune.analyze(model, x, attention="heads")
    with flop_counter() as counter:
        model(x)
    assert gg.cost.macs() == counter.get_total_flops() // 2
    assert gg.cost.params() == sum(p.numel() for p in model.parameters())
    for block, heads in (("features.1.0", 2), ("features.1.1", 2), ("features.3.0", 4), ("features.3.1", 4)):
        g = group_with(gg, f"{block}.attn.qkv")
        assert g.prunable and not g.inexact and g.size == heads
        table = member(g, f"{block}.attn", "relative_position_bias_table", dim=1)
        assert table.role == "channelwise" and table.indices([1]) == [1]
    assert gg.prunable_mac_share() == 1.0
    check_slim(model, gg, x, str(tmp_path / "swin.onnx"))
    keep = random_keep(gg, np.random.default_rng(0))
    assert leak_check(model, gg, keep, (x,)) == 0.0


def test_swin_v2_window_attention_stays_wrapped():
    model = small_swin()
    assert equivalents.module_form(model.features[1][0].attn) is not None
    from torchvision.models.swin_transformer import ShiftedWindowAttentionV2

    assert equivalents.module_form(ShiftedWindowAttentionV2(16, [4, 4], [2, 2], 2)) is None
