"""The widen pass: slimming the wide model back to ``origin`` is the original model, costs follow the budget."""

import numpy as np
import pytest
import torch
from graphprune.tracing.flops import flop_counter

import graphprune
import toy_models
from graphprune import models
from helpers import group_with
from test_slim import LiteralView

TOYS = sorted(set(toy_models.ALL))


def costs(model, x):
    with flop_counter() as counter:
        model(x)
    return counter.get_total_flops() // 2, sum(p.numel() for p in model.parameters())


def load_into_origin(gg, wide_gg, widened):
    """Copy the original's tensors into the wide model, each original channel onto its first copy."""
    wide_of = {orig: wide for wide, orig in widened.wide_groups(wide_gg).items()}
    index: dict[tuple[str, str, int], np.ndarray] = {}  # original index -> wide index, per member dim
    for g in gg.groups:
        if not g.members:
            continue
        wide = wide_gg.groups[wide_of[g.id]]
        back = np.full(wide.size, -1, dtype=np.int64)  # wide channel -> the original channel it is the first copy of
        back[widened.origin.get(g.id, np.arange(g.size))] = np.arange(g.size)
        for m in g.members:
            (wm,) = [w for w in wide.members if (w.module, w.param, w.dim) == (m.module, m.param, m.dim)]
            mine = back[wm.channels] >= 0
            wide_pos, wide_ch = wm.positions[mine], back[wm.channels[mine]]
            orig_sorted = m.positions[np.lexsort((m.positions, m.channels))]
            wide_sorted = wide_pos[np.lexsort((wide_pos, wide_ch))]
            assert len(orig_sorted) == len(wide_sorted)
            size = getattr(gg.gm.get_submodule(m.module), m.param).shape[m.dim]
            idx = index.setdefault((m.module, m.param, m.dim), np.full(size, -1, dtype=np.int64))
            idx[orig_sorted] = wide_sorted
    wide_state = widened.model.state_dict()
    with torch.no_grad():
        for name, t in gg.gm.state_dict().items():
            module, _, param = name.rpartition(".")
            dims = [index.get((module, param, d), np.arange(n)) for d, n in enumerate(t.shape)]
            assert all((d >= 0).all() for d in dims), name
            wide_state[name][tuple(torch.from_numpy(i) for i in np.ix_(*dims))] = t
        # slimming a LayerNorm from C to C' channels scales its weight by sqrt(C/C') (and eps by
        # C/C', which the widen pass inverts): the wide norm holds the original's under the inverse
        for name, m in widened.model.named_modules():
            if isinstance(m, torch.nn.LayerNorm) and m.weight is not None:
                m.weight.mul_((gg.gm.get_submodule(name).normalized_shape[-1] / m.normalized_shape[-1]) ** 0.5)


def round_trip(model, x, beta=2.0, attention="head_dims", **kwargs):
    """widen, copy the original into the first copies, slim to them: the original's shapes and outputs."""
    model.eval()
    gg = graphprune.analyze(model, x, attention=attention)
    widened = graphprune.widen(gg, beta, **kwargs)
    wide_gg = graphprune.analyze(widened.model, x, attention=attention)
    assert [(g.size, g.prunable) for g in wide_gg.groups] == [(g.size, g.prunable) for g in widened.analysis.groups]
    wide_of = widened.wide_groups(wide_gg)
    for wide, orig in wide_of.items():
        assert wide_gg.groups[wide].size == widened.sizes.get(orig, gg.groups[orig].size)
        assert wide_gg.groups[wide].prunable == gg.groups[orig].prunable
    assert (gg.cost.macs(widened.sizes), gg.cost.params(widened.sizes)) == (wide_gg.cost.macs(), wide_gg.cost.params())
    load_into_origin(gg, wide_gg, widened)
    plan = graphprune.Plan({w: widened.origin[o] for w, o in wide_of.items() if o in widened.origin})
    small = graphprune.slim(wide_gg, plan).eval()
    assert {n: p.shape for n, p in small.named_parameters()} == {n: p.shape for n, p in model.named_parameters()}
    with torch.no_grad():
        want, got = model(x), small(x)
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()
    return gg, widened, wide_gg


@pytest.mark.parametrize("name", ["attention_reshape", "attention_separate", "attention_sdpa", "attention_einsum"])
def test_whole_heads_widen_and_slim_back(name):
    """attention="heads": the wide model has twice the heads (the head count in its reshapes
    follows), each of the original width."""
    model, x = toy_models.build(name)
    gg, widened, _ = round_trip(model, x, attention="heads")
    heads = group_with(gg, "q" if name == "attention_separate" else "qkv")
    assert widened.sizes[heads.id] == 2 * heads.size and not widened.not_widened


@pytest.mark.parametrize("name", TOYS)
@pytest.mark.parametrize("beta", [2.0, 1.5])
def test_slimming_the_wide_model_to_origin_gives_back_the_original(name, beta):
    model, x = toy_models.build(name)
    _, widened, _ = round_trip(model, x, beta, seed=0)
    assert not widened.not_widened


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_resnet20_round_trip(shortcut):
    """Option A pads the shortcut's channels with literal amounts: the pads follow the wider stages."""
    round_trip(models.get("resnet20", shortcut=shortcut), torch.randn(2, 3, 8, 8))


def test_mobilenet_round_trip():
    round_trip(models.get("mobilenet_v2"), torch.randn(2, 3, 8, 8), 1.5)


def test_groups_a_channel_shuffle_regroups_keep_their_size_with_a_warning():
    """ShuffleNet splits shuffled channels in halves: which channels share a group depends on the
    width, so a few groups cannot be widened and keep their size; the rest round-trips."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.shufflenet_v2_x0_5(weights=None)
    with pytest.warns(UserWarning, match="prunable groups keep their size"):
        gg, widened, _ = round_trip(model, torch.randn(1, 3, 64, 64))
    assert widened.not_widened and all("channel shuffle" in r for r in widened.not_widened.values())
    assert all(widened.sizes[g] == gg.groups[g].size for g in widened.not_widened)
    assert sum(widened.sizes.values()) > 1.9 * sum(gg.groups[g].size for g in widened.sizes)


def test_a_group_held_as_a_single_channel_keeps_its_size():
    """DnCNN subtracts its one-channel output from the input: a single channel broadcasts, so the
    analysis never linked it to the input's, and copies of it would broadcast the subtraction."""
    torch.manual_seed(0)
    model = models.get("dncnn", depth=4, channels=8)
    with pytest.warns(UserWarning, match="keep their size"):
        gg, widened, _ = round_trip(model, torch.randn(2, 1, 16, 16))
    (last,) = widened.not_widened
    assert "only channel" in widened.not_widened[last] and gg.groups[last].size == widened.sizes[last] == 1
    conv = widened.model.get_submodule(gg.groups[last].members[0].module)
    assert (conv.in_channels, conv.out_channels) == (16, 1)


@pytest.mark.parametrize("name", ["residual", "dense_concat", "grouped", "flatten_linear_cl", "channels_last", "computed_shapes"])
@pytest.mark.parametrize("beta", [2.0, 1.5])
def test_the_wide_model_costs_what_the_budget_predicts(name, beta):
    model, x = toy_models.build(name)
    gg = graphprune.analyze(model, x)
    widened = graphprune.widen(gg, beta)
    wide_gg = graphprune.analyze(widened.model, x)
    predicted = (gg.cost.macs(widened.sizes), gg.cost.params(widened.sizes))
    assert predicted == (wide_gg.cost.macs(), wide_gg.cost.params()) == costs(widened.model, x)
    assert predicted[0] > gg.cost.macs()


def test_sizes_rounding_and_frozen_groups():
    model, x = toy_models.build("residual")
    gg = graphprune.analyze(model, x)
    stream, inner, head = group_with(gg, "stem"), group_with(gg, "conv1"), group_with(gg, "head")
    assert (stream.size, inner.size, head.prunable) == (8, 6, False)
    assert graphprune.widen(gg, 1.5).sizes == {stream.id: 12, inner.id: 9}
    widened = graphprune.widen(gg, 1.5, round_to=8)
    assert widened.sizes == {stream.id: 16, inner.id: 9}  # 12 -> 16; 6 is no multiple of 8: round(9)
    assert (widened.model.stem.out_channels, widened.model.conv1.out_channels, widened.model.head.out_channels) == (16, 9, 5)
    assert widened.model.bn1.num_features == 9 and widened.model.conv2.in_channels == 9
    assert widened.origin[inner.id].tolist() == [0, 1, 3, 4, 6, 7]  # every other channel has two copies
    model, x = toy_models.build("unknown_op")
    gg = graphprune.analyze(model, x)
    widened = graphprune.widen(gg, 2.0)
    frozen = group_with(gg, "a")
    assert not frozen.prunable and widened.model.a.out_channels == frozen.size == 8
    assert widened.model.b.out_channels == 12


@pytest.mark.parametrize("beta", [0.5, 0.999, float("nan"), float("inf"), "2"])
def test_bad_factors_are_refused_with_what_to_pass(beta):
    model, x = toy_models.build("residual")
    gg = graphprune.analyze(model, x)
    with pytest.raises(graphprune.GraphPruneError, match="beta must be a finite number >= 1"):
        graphprune.widen(gg, beta)
    with pytest.raises(graphprune.WidenError, match="round_to must be a positive integer"):
        graphprune.widen(gg, 2.0, round_to=0)


def test_the_wide_model_is_freshly_initialized_and_seeded():
    class LayerScaled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.bn, self.b = torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Conv2d(8, 4, 1)
            self.gamma = torch.nn.Parameter(torch.full((8, 1, 1), 1e-2))
            self.shift = torch.nn.Parameter(torch.randn(8, 1, 1) * 0.5 + 3)

        def forward(self, x):
            return self.b(self.bn(self.a(x)) * self.gamma + self.shift)

    torch.manual_seed(0)
    model, x = LayerScaled(), torch.randn(2, 3, 8, 8)
    model.train()(x)  # running statistics away from their initial values
    gg = graphprune.analyze(model.eval(), x)
    one, two, other = (graphprune.widen(gg, 2.0, seed=s) for s in (1, 1, 2))
    assert all(torch.equal(a, b) for a, b in zip(one.model.state_dict().values(), two.model.state_dict().values()))
    assert not torch.equal(one.model.a.weight, other.model.a.weight)
    wide = one.model
    assert wide.a.weight.shape == (16, 3, 3, 3) and not torch.equal(wide.a.weight[0], wide.a.weight[1])
    assert torch.equal(wide.bn.running_mean, torch.zeros(16)) and torch.equal(wide.bn.running_var, torch.ones(16))
    assert torch.equal(wide.gamma, torch.full((16, 1, 1), 1e-2))  # a constant stays that constant
    assert wide.shift.shape == (16, 1, 1) and not torch.equal(wide.shift[0::2], wide.shift[1::2])
    assert abs(float(wide.shift.detach().mean()) - 3) < 1.0
    assert torch.equal(model.gamma, torch.full((8, 1, 1), 1e-2)) and model.a.weight.shape[0] == 8  # untouched


def test_a_constant_the_pass_misses_is_a_widen_error_naming_node_and_group(monkeypatch):
    from graphprune import ops

    gg = graphprune.analyze(LiteralView(), torch.randn(1, 3, 4, 4))
    g = group_with(gg, "conv")
    monkeypatch.setattr(ops.method_op("view"), "rewrite", None)
    with pytest.raises(graphprune.WidenError, match=rf"(?s)node 'view'.*widened here: groups {g.id} \(6 -> 12 channels\)"):
        graphprune.widen(gg, 2.0)


def test_a_strided_channel_slice_cannot_be_widened_and_is_left_alone_where_no_group_changes():
    class Strided(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Conv2d(3, 8, 1), torch.nn.Conv2d(4, 2, 1)
            self.d, self.e = torch.nn.Conv2d(3, 6, 1), torch.nn.Conv2d(6, 2, 1)

        def forward(self, x):
            return self.b(self.a(x)[:, ::2]) + self.e(torch.relu(self.d(x)))

    model, x = Strided().eval(), torch.randn(1, 3, 4, 4)
    gg = graphprune.analyze(model, x)
    with pytest.raises(graphprune.WidenError, match="step 2"):
        graphprune.widen(gg, 2.0)
    small = graphprune.slim(gg, graphprune.Plan({group_with(gg, "d").id: [0, 2]}))
    assert small.d.out_channels == 2 and small.a.out_channels == 8


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet50", "mobilenet_v2", "regnet_y_400mf"])
def test_torchvision_widen_round_trip(name):
    import torchvision

    torch.manual_seed(0)
    round_trip(torchvision.models.get_model(name, weights=None), torch.randn(1, 3, 64, 64), 2.0)
