"""Ops declared with graphprune.register_op: a layer whose forward is a torch.autograd.Function
(untraceable, as a compiled extension would be) and a function of the same kind."""

import numpy as np
import pytest
import torch
import torch.nn as nn

import graphprune
from graphprune.errors import OptionError
from graphprune.tracing.flops import flop_counter
from helpers import EXACT, random_plan, slim_error


class _ScaleShift(torch.autograd.Function):
    """x * scale + shift per channel of dim 1, with a hand-written backward (as an extension has)."""

    @staticmethod
    def forward(ctx, x, scale, shift):
        ctx.save_for_backward(x, scale)
        view = (1, -1) + (1,) * (x.dim() - 2)
        return x * scale.view(view) + shift.view(view)

    @staticmethod
    def backward(ctx, grad):
        x, scale = ctx.saved_tensors
        view, dims = (1, -1) + (1,) * (x.dim() - 2), [d for d in range(x.dim()) if d != 1]
        return grad * scale.view(view), (grad * x).sum(dims), grad.sum(dims)


class ScaleShift(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.num_features = channels
        self.scale = nn.Parameter(torch.rand(channels) + 0.5)
        self.shift = nn.Parameter(torch.randn(channels))

    def forward(self, x):
        if x.shape[1] != self.num_features:  # a size forward reads: it must follow the pruning
            raise ValueError(f"expected {self.num_features} channels, got {x.shape[1]}")
        return _ScaleShift.apply(x, self.scale, self.shift)


def scale_shift(x, scale, shift):
    return _ScaleShift.apply(x, scale, shift)


class FunctionalScaleShift(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.scale = nn.Parameter(torch.rand(channels) + 0.5)
        self.shift = nn.Parameter(torch.randn(channels))

    def forward(self, x):
        return scale_shift(x, self.scale, self.shift)


class Net(nn.Module):
    def __init__(self, norm=ScaleShift):
        super().__init__()
        self.conv1, self.norm1 = nn.Conv2d(3, 64, 3, padding=1), norm(64)
        self.conv2, self.norm2 = nn.Conv2d(64, 128, 3, padding=1), norm(128)
        self.conv3 = nn.Conv2d(128, 128, 3, padding=1)
        self.fc = nn.Linear(128, 10)

    def forward(self, x):
        x = torch.relu(self.norm1(self.conv1(x)))
        x = torch.relu(self.norm2(self.conv2(x)))
        x = x + torch.relu(self.conv3(x))
        return self.fc(x.mean((2, 3)))


@pytest.fixture
def declared():
    """The declarations a user writes (the test's ≤ 15 lines), undone afterwards."""
    graphprune.register_op(ScaleShift, flow="channelwise", params={"scale": 0, "shift": 0},
                           attributes={"num_features": "channels"},
                           onnx_form=lambda m, x: x * m.scale[:, None, None] + m.shift[:, None, None])
    graphprune.register_op(scale_shift, flow="channelwise", params={"scale": 0, "shift": 0},
                           onnx_form=lambda x, scale, shift: x * scale[:, None, None] + shift[:, None, None])
    yield
    graphprune.unregister_op(ScaleShift)
    graphprune.unregister_op(scale_shift)


X = torch.randn(2, 3, 8, 8)


def measured_macs(model: nn.Module, x: torch.Tensor) -> int:
    """The MACs FlopCounterMode counts: what the cost model's prediction must equal."""
    with torch.no_grad(), flop_counter() as counter:
        model(x)
    return counter.get_total_flops() // 2


def test_undeclared_the_layer_is_opaque_and_its_channels_frozen():
    torch.manual_seed(0)
    gg = graphprune.analyze(Net().eval(), X)
    frozen = [g for g in gg.groups if not g.prunable and g.size == 64]
    assert frozen and "norm1" in frozen[0].reason


@pytest.mark.parametrize("norm", [ScaleShift, FunctionalScaleShift])
def test_declared_op_prunes_exactly_meets_the_budget_and_exports(declared, norm, tmp_path):
    torch.manual_seed(0)
    model = Net(norm).eval()
    gg = graphprune.analyze(model, X)
    assert all(g.prunable for g in gg.groups if any(m.module.startswith("norm") for m in g.members))
    norm1 = next(g for g in gg.groups if any(m.module == "norm1" and m.param == "scale" for m in g.members))
    assert {(m.module, m.param, m.dim) for m in norm1.members} >= {("conv1", "weight", 0), ("norm1", "scale", 0),
                                                                  ("norm1", "shift", 0), ("conv2", "weight", 1)}
    for seed in range(3):
        assert slim_error(model, gg, random_plan(gg, np.random.default_rng(seed)), (X,)) < EXACT

    result = graphprune.apply(model, "l1", graphprune.Budget(macs=0.5), X)
    assert abs(result.report.macs_ratio - 0.5) <= 0.005
    assert measured_macs(result.model, X) == result.report.macs_after
    assert type(result.model) is Net  # the user's class, its declared attribute following the channels
    if norm is ScaleShift:
        assert result.model.norm1.num_features == result.model.norm1.scale.numel() < 64
    onnx = graphprune.export_onnx(result.model, str(tmp_path / "net.onnx"), X)
    assert onnx.relative_diff < 1e-4


def test_the_declared_onnx_form_is_checked_against_the_op(declared, tmp_path):
    graphprune.register_op(ScaleShift, flow="channelwise", params={"scale": 0, "shift": 0},
                           attributes={"num_features": "channels"}, onnx_form=lambda m, x: x * m.scale[:, None, None])
    with pytest.raises(graphprune.ExportError, match="runs the onnx_form declared with register_op for ScaleShift.*: check that it computes what the op computes"):
        graphprune.export_onnx(Net().eval(), str(tmp_path / "net.onnx"), X)


@pytest.mark.parametrize("kwargs, message", [
    (dict(flow="mixing"), "flow='mixing'; use one of channelwise, producer"),
    (dict(flow="producer", params={"weight": 0}), r"params\['weight'\] is 0; give a mapping like \{'out': 0, 'in': 1\}"),
    (dict(flow="channelwise", attributes={"n": "out"}), r"attributes\['n'\] = 'out'; a channelwise op's attributes follow 'channels'"),
])
def test_declaration_errors_say_what_to_pass(kwargs, message):
    with pytest.raises(OptionError, match=message):
        graphprune.register_op(ScaleShift, **kwargs)


class NormalizedProjection(nn.Module):
    """The custom layer of Torch-Pruning's customization test (its issue #21), rewritten: x divided by its
    L2 norm over the channels, a per-channel scale and bias, then a square linear. Torch-Pruning needs a
    pruner class with four methods for it; here it is one declaration."""

    def __init__(self, width: int):
        super().__init__()
        self.in_dim = width
        self.scale = nn.Parameter(torch.rand(width) + 0.5)
        self.bias = nn.Parameter(torch.randn(width))
        self.fc = nn.Linear(width, width)

    def forward(self, x):
        x = x / x.pow(2).sum(dim=1, keepdim=True).sqrt()
        return self.fc(x * self.scale + self.bias)


class FullyConnected(nn.Module):
    def __init__(self, inputs: int = 128, classes: int = 10, hidden: int = 256):
        super().__init__()
        self.fc1, self.custom, self.fc2 = nn.Linear(inputs, hidden), NormalizedProjection(hidden), nn.Linear(hidden, classes)

    def forward(self, x):
        return self.fc2(self.custom(torch.relu(self.fc1(x))))


def test_torch_prunings_customized_layer_in_one_declaration():
    graphprune.register_op(NormalizedProjection, flow="channelwise", channel_dim=-1,
                           params={"scale": 0, "bias": 0, "fc.weight": (0, 1), "fc.bias": 0},
                           attributes={"in_dim": "channels", "fc.in_features": "channels", "fc.out_features": "channels"})
    try:
        torch.manual_seed(0)
        model, x = FullyConnected().eval(), torch.randn(4, 128)
        gg = graphprune.analyze(model, x)
        hidden = next(g for g in gg.prunable_groups if g.size == 256)
        assert {(m.module, m.param) for m in hidden.members} == {
            ("fc1", "weight"), ("fc1", "bias"), ("custom", "scale"), ("custom", "bias"), ("custom.fc", "weight"),
            ("custom.fc", "bias"), ("fc2", "weight")}
        assert slim_error(model, gg, random_plan(gg, np.random.default_rng(0)), (x,)) < EXACT
        result = graphprune.apply(model, "l1", graphprune.Budget(macs=0.5), x)
        assert abs(result.report.macs_ratio - 0.5) <= 0.005
        assert measured_macs(result.model, x) == result.report.macs_after  # quadratic in the channels, as declared
        pruned = result.model
        assert pruned.fc1.out_features == pruned.custom.in_dim == pruned.custom.fc.in_features == pruned.fc2.in_features < 256
        assert pruned.custom.fc.weight.shape == (pruned.custom.in_dim, pruned.custom.in_dim)
    finally:
        graphprune.unregister_op(NormalizedProjection)


class Mirrored(nn.Module):
    """Channels reversed between two convs: by torch.fliplr, or by the tensor method."""

    def __init__(self, method: bool):
        super().__init__()
        self.method = method
        self.a, self.b, self.head = nn.Conv2d(3, 64, 3, padding=1), nn.Conv2d(64, 64, 3, padding=1), nn.Linear(64, 4)

    def forward(self, x):
        x = torch.relu(self.a(x))
        x = x.fliplr() if self.method else torch.fliplr(x)
        return self.head(torch.relu(self.b(x)).mean((2, 3)))


@pytest.mark.parametrize("op", [torch.fliplr, torch.Tensor.fliplr], ids=["function", "method"])
def test_an_op_that_moves_channels_joins_the_table_through_its_fields(op):
    """What the built-ins do in op_table.py, for an op the table lacks: the movement rule runs it on
    channel labels, so the conv before it prunes channel c where the conv after reads channel 63 - c."""
    from graphprune.analysis import rules
    torch.manual_seed(0)
    model = Mirrored(method=op is torch.Tensor.fliplr).eval()
    before = graphprune.analyze(model, X)
    assert not any(g.prunable for g in before.groups if any(m.module == "a" for m in g.members))
    graphprune.register_op(op, rule=rules.movement, cost="free")
    try:
        gg = graphprune.analyze(model, X)
        mirrored = next(g for g in gg.prunable_groups if any(m.module == "a" for m in g.members))
        assert {(m.module, m.param, m.dim) for m in mirrored.members} >= {("a", "weight", 0), ("b", "weight", 1)}
        plan = graphprune.Plan({mirrored.id: [0, 1, 2, 5]})
        assert slim_error(model, gg, plan, (X,)) < EXACT
        slim = graphprune.slim(gg, plan)  # a keeps 0, 1, 2, 5; fliplr reverses those four onto b's 63, 62, 61, 58
        assert torch.equal(slim.a.weight, model.a.weight[[0, 1, 2, 5]])
        assert torch.equal(slim.b.weight, model.b.weight[:, [58, 61, 62, 63]])
        result = graphprune.apply(model, "l1", graphprune.Budget(macs=0.5), X)
        assert type(result.model) is Mirrored and result.model.a.out_channels == result.model.b.in_channels < 64
    finally:
        graphprune.unregister_op(op)
    assert not any(g.prunable for g in graphprune.analyze(model, X).groups if any(m.module == "a" for m in g.members))


@pytest.mark.parametrize("target, kwargs, error", [
    (torch.fliplr, dict(rules="movement"), r"unknown field 'rules'; a declaration takes flow=.*the op table's fields are rule, cost"),
    (torch.fliplr, dict(cost="cheap"), r"cost='cheap'; use one of 'free', 'contraction'"),
    (torch.fliplr, dict(params={"x": 0}), r"params, attributes, channel_dim and onnx_form are part of a declaration: give flow= too"),
    (torch.fliplr, dict(), r"give flow= \(a declaration\) or the op table's fields"),
    (ScaleShift, dict(flow="channelwise", cost="free"), r"flow= declares the op, cost set the op table's fields directly"),
    (torch.Tensor.fliplr, dict(flow="channelwise"), r"a declaration is of one nn.Module subclass or one function"),
])
def test_register_op_errors_say_what_to_pass(target, kwargs, error):
    with pytest.raises(OptionError, match=error):
        graphprune.register_op(target, **kwargs)
    assert graphprune.ops.module_op(nn.Conv2d).rule is graphprune.analysis.rules.conv_module  # unchanged


def test_unregistering_what_was_never_registered_says_so():
    with pytest.raises(OptionError, match="fliplr is not in graphprune's op table: nothing to unregister"):
        graphprune.unregister_op(torch.fliplr)
