"""One small model per channel rule: exact groups, sizes, member indices, and no leaks."""

import numpy as np
import pytest

import graphprune
import toy_models
from helpers import group_with, groups_with, leak_check, member, random_keep


def analyze(name, **options):
    model, x = toy_models.build(name)
    return model, x, graphprune.analyze(model, x, **options)


def test_residual_add_ties_both_producers():
    _, _, gg = analyze("residual")
    g = group_with(gg, "stem")
    assert g is group_with(gg, "conv2") is group_with(gg, "bn2", "running_var")
    assert g is group_with(gg, "head", dim=1) and g.size == 8 and g.prunable
    inner = group_with(gg, "conv1")
    assert inner is not g and inner.size == 6 and inner is group_with(gg, "conv2", dim=1)


def test_dense_concat_offsets():
    _, _, gg = analyze("dense_concat")
    a, b = group_with(gg, "a"), group_with(gg, "b")
    assert (a.size, b.size) == (8, 4)
    assert member(a, "c", dim=1).indices(range(8)) == list(range(8))
    assert member(b, "c", dim=1).indices([0, 2]) == [8, 10]


def test_split_then_cat_splits_the_producer_into_two_groups():
    _, _, gg = analyze("split_cat")
    first, second = groups_with(gg, "a")
    assert (first.size, second.size) == (3, 5)
    assert member(first, "a").indices(range(3)) == [0, 1, 2]
    assert member(second, "a").indices([0]) == [3]
    # cat([q, p]): the first split part lands after the second one
    assert member(first, "b", dim=1).indices([1]) == [6]
    assert member(second, "b", dim=1).indices([4]) == [4]


def test_depthwise_conv_is_channelwise():
    _, _, gg = analyze("depthwise")
    g = group_with(gg, "a")
    assert g is group_with(gg, "dw") is group_with(gg, "b", dim=1) and g.size == 16


def test_grouped_conv_prunes_whole_conv_groups():
    _, _, gg = analyze("grouped")
    g = group_with(gg, "a")
    assert g is group_with(gg, "g") and g.size == 4
    assert member(g, "a").indices([1]) == [4, 5, 6, 7]
    assert member(g, "g").indices([1]) == [2, 3]
    assert member(g, "b", dim=1).indices([3]) == [6, 7]


def test_pixel_shuffle_interleaves_r_squared_channels():
    _, _, gg = analyze("pixel_shuffle")
    g = group_with(gg, "a")
    assert g.size == 4 and g.prunable
    assert member(g, "a").indices([1]) == [4, 5, 6, 7]
    assert member(g, "b", dim=1).indices([1, 3]) == [1, 3]


def test_channel_shuffle_links_one_channel_per_shuffle_group():
    _, _, gg = analyze("channel_shuffle")
    g = group_with(gg, "a")
    assert g.size == 4
    assert member(g, "a").indices([1]) == [1, 5]
    assert member(g, "b", dim=1).indices([1]) == [2, 3]


@pytest.mark.parametrize("name, expected", [("flatten_linear", list(range(9, 18))), ("flatten_linear_cl", list(range(1, 36, 4)))])
def test_flatten_into_linear_maps_channel_blocks(name, expected):
    _, _, gg = analyze(name)
    g = group_with(gg, "a")
    assert g.size == 4 and member(g, "fc", dim=1).indices([1]) == expected


def test_squeeze_excite_gate_shares_the_gated_channels():
    _, _, gg = analyze("squeeze_excite")
    g = group_with(gg, "a")
    assert g is group_with(gg, "fc2") and g is group_with(gg, "fc1", dim=1) and g.size == 8
    assert group_with(gg, "fc1").size == 2


def test_groupnorm_prunes_whole_norm_groups():
    _, _, gg = analyze("group_norm")
    g = group_with(gg, "a")
    assert g is group_with(gg, "gn") and g.size == 4
    assert member(g, "gn").indices([3]) == [6, 7]


def test_channels_last_block_with_layernorm_and_layer_scale():
    _, _, gg = analyze("channels_last")
    stream = group_with(gg, "stem")
    assert stream is group_with(gg, "dw") is group_with(gg, "fc2") is group_with(gg, "", "gamma")
    assert stream is group_with(gg, "norm") and stream is group_with(gg, "fc1", dim=1)
    assert stream.prunable and stream.inexact and "normalizes across" in stream.inexact
    hidden = group_with(gg, "fc1")
    assert hidden.size == 32 and hidden.prunable and hidden.inexact is None


def test_unknown_op_freezes_what_it_touches_and_nothing_else():
    _, _, gg = analyze("unknown_op")
    frozen = group_with(gg, "a")
    assert not frozen.prunable and "cumsum" in frozen.reason
    assert not group_with(gg, "b", dim=1).prunable
    assert group_with(gg, "b").prunable


def test_shared_module_links_both_calls():
    model, _, gg = analyze("shared_conv")
    g = group_with(gg, "shared")
    assert g is group_with(gg, "a") and g is group_with(gg, "shared", dim=1)
    assert gg.cost.params() == sum(p.numel() for p in model.parameters())


def test_channel_count_in_arithmetic_freezes_but_in_reshape_does_not():
    _, _, gg = analyze("shape_use")
    assert not group_with(gg, "a").prunable and "channel count" in group_with(gg, "a").reason
    assert group_with(gg, "b").prunable


def slims_exactly(name, tmp_path, seeds=3, **options):
    """Half of every prunable group pruned at once (inexact ones too): the slim model costs what the
    budget says (MACs as FlopCounterMode counts them, parameters), matches the zeroed original,
    exports to ONNX; the exact groups pruned together leak nothing."""
    from helpers import EXACT, random_plan, slim_at_budget, slim_error

    for seed in range(seeds):
        model, x, gg = analyze(name, **options)
        plan = random_plan(gg, np.random.default_rng(seed), 0.5)
        slim = slim_at_budget(gg, plan, x)
        report = graphprune.export_onnx(slim, str(tmp_path / f"{name}.onnx"), x)
        assert report.relative_diff <= 1e-4
        assert slim_error(model, gg, plan, (x,)) <= EXACT
        model, x, gg = analyze(name, **options)
        keep = random_keep(gg, np.random.default_rng(seed))
        assert keep and leak_check(model, gg, keep, (x,), seed) == 0.0
    return gg


def test_channel_count_sizing_another_tensor_is_written_as_a_literal(tmp_path):
    """timm-style attention: C read from the residual stream sizes qkv's head reshape (C // heads)
    and the merged heads (reshape(B, N, C)). Those sizes depend on channel counts only: the slim
    pass writes them as the plan's counts, so the stream and the head dims are both prunable."""
    gg = slims_exactly("attention_reshape", tmp_path)
    stream, dims = group_with(gg, "embed"), group_with(gg, "qkv")
    assert stream.prunable and stream.size == 16 and stream is group_with(gg, "qkv", dim=1) and not stream.inexact
    # one head dim = its q, k and v channels in every head (a packed qkv splits them in one reshape)
    assert dims.prunable and dims.size == 4 and dims is group_with(gg, "proj", dim=1) and "contracts" in dims.inexact
    assert member(dims, "qkv").indices([1]) == [1 + 4 * i for i in range(12)]
    assert group_with(gg, "fc1").prunable


def test_channel_count_in_a_scale_freezes_the_channels_read():
    """head_dim = C // heads also gives the attention scale: pruning the stream would change it,
    so the stream is frozen with the reason; the reshape it sizes is still written as a literal."""
    model, x, gg = analyze("attention_scale_from_shape")
    stream = group_with(gg, "embed")
    assert not stream.prunable and "uses a value computed from the channel count" in stream.reason
    assert group_with(gg, "qkv").prunable
    from helpers import EXACT, random_plan, slim_error
    assert slim_error(model, gg, random_plan(gg, np.random.default_rng(0), 0.5), (x,)) <= EXACT


def test_separate_qkv_prunes_qk_dims_apart_from_v_dims(tmp_path):
    gg = slims_exactly("attention_separate", tmp_path)
    qk, v = group_with(gg, "q"), group_with(gg, "v")
    assert qk is group_with(gg, "k") and qk.size == 8 and qk.inexact  # 2 heads of 8, in lockstep
    assert v is group_with(gg, "proj", dim=1) and v.size == 8 and not v.inexact and v is not qk
    assert group_with(gg, "embed") is group_with(gg, "q", dim=1) and group_with(gg, "embed").size == 16
    assert len(gg.prunable_groups) == 3


def test_sdpa_default_scale_is_passed_explicitly_by_the_slim_pass(tmp_path):
    """F.scaled_dot_product_attention's default scale comes from q.size(-1): the slim call passes
    the original 1/sqrt(head_dim), so pruned head dims do not change it."""
    gg = slims_exactly("attention_sdpa", tmp_path)
    assert group_with(gg, "qkv").prunable and group_with(gg, "qkv").size == 4
    plan = graphprune.Plan({group_with(gg, "qkv").id: [0, 3]}, {group_with(gg, "qkv").id: 4})
    (call,) = [n for n in graphprune.slim(gg, plan).graph.nodes if "scaled_dot_product" in str(n.target)]
    assert call.kwargs["scale"] == 0.5


@pytest.mark.parametrize("name", ["attention_reshape", "attention_separate", "attention_sdpa"])
def test_whole_heads_are_one_exact_group(name, tmp_path):
    """attention="heads": a head is its q, k and v channels and the projection's input columns for
    it; the head count in reshapes follows the kept heads, the head dim keeps its size."""
    gg = slims_exactly(name, tmp_path, attention="heads")
    q = "q" if name == "attention_separate" else "qkv"
    heads = group_with(gg, q)
    assert heads is group_with(gg, "proj", dim=1) and heads.prunable and not heads.inexact
    hd = 8 if name == "attention_separate" else 4
    assert heads.size == 16 // hd and heads.members and len(gg.prunable_groups) == (2 if name == "attention_separate" else 3)
    if name == "attention_separate":
        assert heads is group_with(gg, "k") is group_with(gg, "v") and member(heads, "k").indices([1]) == list(range(8, 16))
    else:  # head 1: rows 4..7 of q, k and v
        assert member(heads, "qkv").indices([1]) == [4, 5, 6, 7, 20, 21, 22, 23, 36, 37, 38, 39]
    assert member(heads, "proj", dim=1).indices([1]) == list(range(hd, 2 * hd))


@pytest.mark.parametrize("attention", ["head_dims", "heads"])
def test_einsum_attention(attention, tmp_path):
    """'bhnd,bhmd->bhnm' contracts the head dims (or carries the heads), 'bhnm,bhmd->bhnd' keeps v's,
    'bnc,cd->bnd' with a weight parameter is a linear layer: its rows consume, its columns produce."""
    gg = slims_exactly("attention_einsum", tmp_path, attention=attention)
    attn, stream = group_with(gg, "qkv"), group_with(gg, "embed")
    assert attn is group_with(gg, "", "proj", dim=0) and attn.size == 4  # 4 heads of 4 dims
    assert bool(attn.inexact) == (attention == "head_dims")
    assert stream is group_with(gg, "", "proj", dim=1) is group_with(gg, "head", dim=1) and stream.size == 16
    assert {m.role for m in attn.members if m.param == "proj"} == {"in"}
    assert len(gg.prunable_groups) == 2


@pytest.mark.parametrize("equation, why", [
    ("...c,...c->...", "needs explicit"),  # ellipsis
    ("bnc,bnc", "needs explicit"),  # implicit output
    ("bnc->bn", "sums over these channels"),
])
def test_einsum_it_cannot_follow_freezes(equation, why):
    import torch
    import torch.nn as nn

    class Sum(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 8), nn.Linear(8, 5)

        def forward(self, x):
            y = self.a(x)
            operands = (y,) if equation.count(",") == 0 else (y, y)
            return self.b(y) + torch.einsum(equation, *operands).sum()

    gg = graphprune.analyze(Sum(), torch.randn(2, 4, 3))
    g = group_with(gg, "a")
    assert not g.prunable and why in g.reason and "einsum" in g.reason


def test_whole_heads_slice_a_per_head_attention_bias(tmp_path):
    """A (heads, N, N) bias passed as sdpa's additive mask is a member of the heads group."""
    from helpers import EXACT, random_plan, slim_at_budget, slim_error

    model, x, gg = analyze("attention_sdpa_bias", attention="heads")
    heads = group_with(gg, "qkv")
    assert heads is group_with(gg, "", "bias") and heads.size == 4 and not heads.inexact
    assert member(heads, "", "bias").indices([2]) == [2]
    plan = random_plan(gg, np.random.default_rng(0), 0.5)
    slim = slim_at_budget(gg, plan, x)
    assert graphprune.export_onnx(slim, str(tmp_path / "m.onnx"), x).relative_diff <= 1e-4
    assert slim_error(model, gg, plan, (x,)) <= EXACT
    model, x, gg = analyze("attention_sdpa_bias", attention="heads")
    assert leak_check(model, gg, random_keep(gg, np.random.default_rng(0)), (x,)) == 0.0


@pytest.mark.parametrize("share", ["repeat_interleave", "repeat_kv", "enable_gqa"])
def test_grouped_query_attention_prunes_a_kv_head_with_its_query_heads(share, tmp_path):
    """4 query heads share 2 key/value heads: a channel of the heads group is one kv head (its k and
    v rows) and the 2 query heads reading it (their q rows, the projection's columns), however the kv
    heads are repeated; the slim model keeps 2 query heads per kv head."""
    gg = slims_exactly(f"attention_gqa_{share}", tmp_path, attention="heads")
    heads = group_with(gg, "q")
    assert heads is group_with(gg, "k") is group_with(gg, "v") is group_with(gg, "proj", dim=1)
    assert heads.prunable and not heads.inexact and heads.size == 2 and len(gg.prunable_groups) == 2
    assert member(heads, "q").indices([1]) == member(heads, "proj", dim=1).indices([1]) == list(range(8, 16))
    assert member(heads, "k").indices([1]) == member(heads, "v").indices([1]) == [4, 5, 6, 7]


def test_attention_mode_is_checked():
    model, x = toy_models.build("attention_reshape")
    with pytest.raises(ValueError, match="head_dims"):
        graphprune.analyze(model, x, attention="head")


def test_sdpa_costs_what_its_matmul_spelling_costs_on_every_kernel():
    """FlopCounterMode counts CPU's fused attention kernel as 0 but its math fallback (picked when q
    and v head dims differ, or a mask requires grad) in full: the budget and flop_counter count
    both as the two matmuls, so a plan cannot change the cost by changing the kernel."""
    import torch
    import torch.nn.functional as F
    from graphprune.tracing.flops import flop_counter

    q, v = torch.randn(2, 4, 16, 8), torch.randn(2, 4, 16, 5)
    with flop_counter() as fused:
        F.scaled_dot_product_attention(q, q, q)
    with flop_counter() as math_kernel:
        F.scaled_dot_product_attention(q, q, v)
    assert fused.get_total_flops() // 2 == 2 * 4 * 16 * 16 * (8 + 8)
    assert math_kernel.get_total_flops() // 2 == 2 * 4 * 16 * 16 * (8 + 5)
    x = torch.randn(2, 3, 8, 8)
    sdpa, matmuls = (graphprune.analyze(toy_models.build(name)[0], x) for name in ("attention_sdpa", "attention_reshape"))
    assert sdpa.cost.macs() == matmuls.cost.macs()


def test_attention_matmuls_are_quadratic_in_tokens_and_linear_in_head_dims():
    """q@kT and attn@v: B*heads*N*N*head_dim MACs each, in the budget as FlopCounterMode counts them."""
    import torch
    from graphprune.tracing.flops import flop_counter

    for side in (4, 8):
        model, x = toy_models.build("attention_separate")
        x = torch.randn(2, 3, side, side)
        gg = graphprune.analyze(model, x)
        n = (side // 2) ** 2
        attention = [t for t in gg.mac_terms if "matmul" in t.node.name]
        assert [t.macs for t in attention] == [2 * 2 * n * n * 8] * 2
        assert [gg.groups_of(t.factors[0].labels)[0] for t in attention] == [group_with(gg, "q").id, group_with(gg, "v").id]
        qk, v = group_with(gg, "q"), group_with(gg, "v")
        keep = {qk.id: 3, v.id: 5}
        plan = graphprune.Plan({g: list(range(k)) for g, k in keep.items()}, {qk.id: 8, v.id: 8})
        slim = graphprune.slim(gg, plan)
        with flop_counter() as counter:
            slim(x)
        assert counter.get_total_flops() // 2 == gg.cost.macs(keep)


def test_computed_sizes_of_the_same_channels_stay_prunable():
    """Window partition/reverse and a head split sized from the tensor's own channel count, split
    sizes and slice bounds computed from channel counts: proven consistent, so prunable."""
    _, _, gg = analyze("computed_shapes")
    assert all(group_with(gg, name).prunable for name in ("a", "b", "c"))
    assert (group_with(gg, "a").size, group_with(gg, "b").size) == (8, 4)  # b's 8 outputs: 2 heads of 4
    assert not group_with(gg, "f").prunable  # its channels are summed


def test_view_as_ties_the_channel_counts_of_both_tensors():
    """v(x).view_as(x) takes x's channel count: v's channels and x's must keep equal counts."""
    import torch
    import torch.nn as nn

    class ViewAs(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.v, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 5, 1)

        def forward(self, x):
            x = self.a(x)
            return self.b(self.v(x).flatten(2).softmax(-1).view_as(x))

    model, x = ViewAs(), torch.randn(2, 3, 4, 4)
    gg = graphprune.analyze(model, x)
    assert group_with(gg, "v") is group_with(gg, "a") and group_with(gg, "a").prunable
    assert leak_check(model, gg, random_keep(gg, np.random.default_rng(0)), (x,)) == 0.0


def test_head_split_that_prunes_whole_heads_slims_exactly():
    """y.view(B, heads, C // heads, N) with more heads than head channels: the channels are the
    heads. The head count (a literal) follows the kept heads; C // heads, computed from channel
    counts only, keeps its original value as a literal (that dim has no channels)."""
    import torch
    import torch.nn as nn

    class ManyHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 5, 1)

        def forward(self, x):
            y = self.a(x)
            B, C, H, W = y.shape
            return self.b(y.view(B, 4, C // 4, H * W).softmax(-1).view(B, C, H, W))

    model, x = ManyHeads().eval(), torch.randn(1, 3, 4, 4)
    gg = graphprune.analyze(model, x)
    g = group_with(gg, "a")
    assert g.prunable and g.size == 4 and member(g, "a").indices([1]) == [2, 3]
    from helpers import EXACT, slim_error
    plan = graphprune.Plan({g.id: [0, 3]}, {g.id: 4})
    assert graphprune.slim(gg, plan)(x).shape == (1, 5, 4, 4) and slim_error(model, gg, plan, (x,)) <= EXACT


def test_reductions_over_channels_freeze():
    _, _, gg = analyze("reductions")
    assert "combines values across the channels" in group_with(gg, "a").reason
    assert "combines values across the channels" in group_with(gg, "b").reason


def test_input_and_output_channels_are_frozen():
    _, _, gg = analyze("residual")
    assert "model input" in group_with(gg, "stem", dim=1).reason
    assert group_with(gg, "head").reason == "model output"


@pytest.mark.parametrize("name", sorted(toy_models.ALL))
def test_pruned_channels_never_leak_into_the_output(name):
    model, x, gg = analyze(name)
    for seed in range(3):
        keep = random_keep(gg, np.random.default_rng(seed))
        assert leak_check(model, gg, keep, (x,), seed) == 0.0


def test_leak_oracle_detects_a_wrong_group():
    """The oracle itself: claiming a concat part belongs to the wrong producer must leak."""
    model, x, gg = analyze("dense_concat")
    b = group_with(gg, "b")
    wrong = member(b, "c", dim=1)
    wrong.positions = wrong.positions - 4  # point at channels of 'a' instead
    assert leak_check(model, gg, {b.id: [0]}, (x,)) > 0


def test_member_indices_accept_any_iterable_and_keep_order():
    _, _, gg = analyze("dense_concat")
    m = member(group_with(gg, "b"), "c", dim=1)
    assert m.indices({3, 1}) == [9, 11] and m.indices(np.array([2])) == [10] and m.indices([]) == []
