"""Shape recording with stand-ins (graphprune/tracing/flops.py) gives exactly what a real run under
FlopCounterMode gives: every node's spec and FLOPs, and the same errors."""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.fx as fx
import torch.nn as nn
import torchvision
from graphprune.tracing.flops import flop_counter

import graphprune
import graphprune.models as zoo
from graphprune.errors import ExampleInputError
from graphprune.ops import module_op

T = importlib.import_module("graphprune.tracing.tracer")


class _Reference(fx.Interpreter):
    """The recording before stand-ins: every node run for real under its own FlopCounterMode."""

    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm)
        self.values, self.flops = {}, {}

    def run_node(self, n: fx.Node):
        counter = flop_counter()
        with counter:
            out = super().run_node(n)
        out = T._detach(out)
        self.values[n], self.flops[n] = T.value_spec(out), int(counter.get_total_flops())
        return out


def _same_as_reference(model: nn.Module, x: torch.Tensor) -> None:
    traced = T.trace(model.eval(), x)
    ref = _Reference(traced.gm)
    traced.gm.eval()
    ref.run(*traced.placeholder_values)
    for n in traced.gm.graph.nodes:
        assert traced.flops[n] == ref.flops[n], n.name
        assert traced.values[n] == ref.values[n], n.name


class _ReadsValues(nn.Module):
    """A conv whose result is indexed with a mask computed from it: values matter downstream."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        y = self.bn(self.conv(x))
        flat = y.flatten(2).mean(-1)
        return self.fc(flat[flat.sum(1) > -1e9])


class _Shortcuts(nn.Module):
    """Every stand-in kind: meta convs (grouped, strided, dilated), pools, norms, activations, binary ops."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False)
        self.b = nn.Conv2d(16, 16, 3, padding=2, dilation=2, groups=4)
        self.c = nn.Conv1d(16, 8, 5, padding="same")
        self.bn, self.gn, self.ln = nn.BatchNorm2d(16), nn.GroupNorm(4, 16), nn.LayerNorm(8)
        self.pool = nn.MaxPool2d(3, 2, 1, ceil_mode=True)
        self.act = nn.Hardswish()
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        y = self.act(self.bn(self.a(x)))
        y = self.gn(self.b(y)) + y * 0.5
        y = self.pool(y).flatten(2)
        y = self.ln(self.c(y).transpose(1, 2))
        return self.fc(y).mean(1)


@pytest.mark.parametrize("make, shape", [
    (lambda: torchvision.models.resnet18(), (1, 3, 64, 64)),
    (lambda: torchvision.models.mobilenet_v3_small(), (1, 3, 64, 64)),
    (lambda: torchvision.models.convnext_tiny(), (1, 3, 64, 64)),
    (lambda: torchvision.models.VisionTransformer(32, 4, 2, 4, 64, 128), (1, 3, 32, 32)),
    (lambda: zoo.get("densenet40"), (1, 3, 32, 32)),
    (lambda: zoo.get("srresnet"), (1, 3, 12, 12)),
    (lambda: zoo.get("resnet20", shortcut="A"), (2, 3, 32, 32)),
    (_ReadsValues, (2, 3, 8, 8)),
    (_Shortcuts, (2, 3, 17, 17)),
])
def test_specs_and_flops_match_a_real_run(make, shape):
    torch.manual_seed(0)
    _same_as_reference(make(), torch.randn(*shape))


def _broken_conv_bias() -> nn.Module:
    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3))
    m[2].bias = nn.Parameter(torch.zeros(7))
    return m


def _broken_bn() -> nn.Module:
    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Conv2d(8, 8, 1))
    m[1].weight = nn.Parameter(torch.ones(6))
    return m


def _broken_groups() -> nn.Module:
    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 6, 1, groups=2))
    m[1].groups, m[1].weight = 4, nn.Parameter(torch.zeros(6, 2, 1, 1))  # 6 outputs do not split into 4 groups
    return m


def _kernel_too_large() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 11, dilation=2))  # 21 > 10 positions


@pytest.mark.parametrize("make", [_broken_conv_bias, _broken_bn, _broken_groups, _kernel_too_large])
def test_what_the_real_run_rejects_is_still_rejected(make):
    with pytest.raises(ExampleInputError):
        graphprune.analyze(make().eval(), torch.randn(1, 3, 12, 12))


def test_values_read_after_a_stand_in_rerun_for_real():
    gg = graphprune.analyze(_ReadsValues().eval(), torch.randn(2, 3, 8, 8))
    assert gg.cost.macs() > 0


def test_model_state_is_untouched():
    model = _Shortcuts().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    graphprune.analyze(model, torch.randn(2, 3, 17, 17))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) and after[k].device.type == "cpu" for k in before)
    assert not model.training


F = importlib.import_module("graphprune.tracing.flops")


def _real_output(m: nn.Module, x: torch.Tensor, flops: bool):
    counter = flop_counter()
    with counter:
        out = m(x)
    return tuple(out.shape), out.dtype, tuple(out.stride()), int(counter.get_total_flops()) if flops else 0


ADAPTIVE_POOLS = [nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
                  nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d]


@pytest.mark.parametrize("cls", ADAPTIVE_POOLS)
def test_adaptive_pool_formula_is_the_real_output(cls):
    """Where the formula answers, it is what the CPU kernel gives; where the kernel fails, it does not answer."""
    dims, answered = module_op(cls).spatial_dims, 0
    assert module_op(cls).formula == "adaptive_pool" and dims == int(cls.__name__[-2])
    for shape in [(1, 8, 7, 9, 5)[: dims + 2], (8, 7, 9, 5)[: dims + 1], (2, 3, 1, 1, 1)[: dims + 2], (1, 8, 7, 9, 5, 3)[: dims + 3]]:
        for size in [1, 3, 0, (None,) * dims, tuple([2, None, 1][:dims])]:
            m, x = cls(size), torch.randn(shape)
            found = F._adaptive_pool_by_formula(m, (x,), {})
            try:
                real = _real_output(m, x, flops=False)
            except (RuntimeError, TypeError, ValueError):
                real = None
            assert found is None or found == real, (shape, size)
            answered += found is not None
    assert answered >= 6


@pytest.mark.parametrize("cls, shape", [(nn.Conv1d, (2, 8, 13)), (nn.Conv2d, (1, 8, 13, 11)), (nn.Conv3d, (1, 8, 5, 7, 6))])
def test_conv_formula_is_the_real_output(cls, shape):
    """Where the formula answers, it is the CPU kernel's output and FlopCounterMode's count; where the kernel fails, it does not answer."""
    gm = fx.symbolic_trace(nn.Identity())
    runs = F.ShapeOnlyRuns(gm, F.NodeFlops(gm))
    answered = 0
    for kernel, stride, padding, dilation, groups in [(3, 1, 1, 1, 1), (3, 2, 0, 1, 4), (2, 3, 2, 2, 2), (5, 1, 0, 3, 8), (1, 1, 0, 1, 1), (9, 1, 0, 2, 1)]:
        m, x = cls(8, 16, kernel, stride, padding, dilation, groups), torch.randn(shape)
        found = runs._conv_by_formula(m, (x,), {}, count=True)
        try:
            real = _real_output(m, x, flops=True)
        except RuntimeError:  # the kernel does not fit the padded input
            real = None
        assert found == real, (kernel, stride, padding, dilation, groups)
        answered += found is not None
    assert answered >= 4


def test_linear_formula_is_the_real_output():
    """Where the formula answers, it is the CPU kernel's output and FlopCounterMode's count."""
    gm = fx.symbolic_trace(nn.Identity())
    runs = F.ShapeOnlyRuns(gm, F.NodeFlops(gm))
    answered = 0
    for shape, bias in [((4, 12), True), ((4, 12), False), ((2, 5, 12), True), ((2, 3, 5, 12), True), ((2, 3, 5, 12), False), ((12,), True), ((4, 11), True)]:
        m, x = nn.Linear(12, 7, bias=bias), torch.randn(shape)
        found = runs._linear_by_formula(m, (x,), {}, count=True)
        try:
            real = _real_output(m, x, flops=True)
        except RuntimeError:  # the input's last dim is not in_features
            real = None
        assert found is None or found == real, (shape, bias)
        answered += found is not None
    assert answered == 5
