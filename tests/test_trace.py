"""Tracing with fallbacks, shape propagation, and the errors users see."""

import pytest
import torch
import torch.nn as nn

import graphprune
from graphprune.trace import TensorSpec, trace
from helpers import group_with


class DataDependent(nn.Module):
    """Branches on tensor values: cannot be traced symbolically."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 1)

    def forward(self, x):
        if x.sum() > 0:
            return self.conv(x)
        return x


class WithUntraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.odd, self.b, self.c = nn.Conv2d(3, 8, 3), DataDependent(), nn.Conv2d(8, 6, 3), nn.Conv2d(6, 4, 1)

    def forward(self, x):
        return self.c(torch.relu(self.b(self.odd(self.a(x)))))


class RootControlFlow(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        if x.mean() > 0:
            x = x * 2
        return self.a(x)


class TwoInTwoOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = nn.Conv2d(3, 8, 1), nn.Conv2d(5, 8, 1), nn.Conv2d(8, 4, 1)

    def forward(self, image, extra, scale: float = 1.0):
        y = self.head(torch.relu(self.a(image) + self.b(extra)) * scale)
        return {"logits": y.mean((2, 3)), "features": (y, y.flatten(1))}


def test_untraceable_submodule_becomes_a_recorded_leaf():
    model = WithUntraceable().eval()
    gg = graphprune.analyze(model, torch.randn(1, 3, 10, 10))
    (fb,) = gg.fallbacks
    assert fb.module == "odd" and "control flow" in fb.error and "test_trace.py" in fb.location
    assert "if x.sum() > 0" in fb.location
    frozen = group_with(gg, "a")
    assert not frozen.prunable and "'odd' (DataDependent) could not be traced" in frozen.reason
    assert group_with(gg, "b").prunable
    assert gg.budget.params() == sum(p.numel() for p in model.parameters())


def test_user_leaf_modules_by_name_and_type():
    model = WithUntraceable().eval()
    for leaf in ("odd", DataDependent):
        gg = graphprune.analyze(model, torch.randn(1, 3, 10, 10), leaf_modules=[leaf])
        assert gg.fallbacks == []
        assert not group_with(gg, "a").prunable and "not in graphprune's rule table" in group_with(gg, "a").reason


def test_root_control_flow_raises_trace_error_with_location():
    with pytest.raises(graphprune.TraceError) as info:
        graphprune.analyze(RootControlFlow(), torch.randn(1, 3, 4, 4))
    message = str(info.value)
    assert "RootControlFlow" in message and "if x.mean() > 0" in message and "concrete_args" in message


def test_wrong_input_shape_raises_a_clear_error():
    with pytest.raises(graphprune.ExampleInputError) as info:
        graphprune.analyze(WithUntraceable(), torch.randn(1, 5, 10, 10))
    message = str(info.value)
    assert "'a'" in message and "Tensor[1, 5, 10, 10]" in message and "example_inputs" in message


def test_multiple_inputs_kwargs_and_nested_outputs():
    model = TwoInTwoOut().eval()
    gg = graphprune.analyze(model, {"image": torch.randn(2, 3, 4, 4), "extra": torch.randn(2, 5, 4, 4)}, concrete_args={"scale": 2.0})
    shared = group_with(gg, "a")
    assert shared is group_with(gg, "b") and shared.prunable and shared.size == 8
    assert not group_with(gg, "b", dim=1).prunable and "model input 'extra'" in group_with(gg, "b", dim=1).reason
    assert group_with(gg, "head").reason == "model output"
    output = next(n for n in gg.gm.graph.nodes if n.op == "output")
    values = gg.traced.values
    flat = [n for n in gg.gm.graph.nodes if n.op == "call_method" and n.target == "flatten"][0]
    assert values[flat] == TensorSpec((2, 64), torch.float32)
    assert output.args[0]["logits"] is not None


def test_trace_records_flops_per_node_and_leaves_modes_untouched():
    model = WithUntraceable().train()
    traced = trace(model, torch.randn(1, 3, 10, 10))
    assert model.training and all(m.training for m in model.modules())
    conv_a = next(n for n in traced.gm.graph.nodes if n.target == "a")
    assert traced.flops[conv_a] == 2 * 8 * 8 * 8 * 3 * 9


def test_bad_example_inputs_type():
    with pytest.raises(graphprune.ExampleInputError):
        graphprune.analyze(WithUntraceable(), "not a tensor")
