"""The cost model against physically smaller models built by hand, and its symbolic views."""

import numpy as np
import pytest
import sympy
import torch
import torch.nn as nn
import torch.nn.functional as F
from graphprune.tracing.flops import flop_counter

import graphprune
from helpers import group_with


class Widths(nn.Module):
    """Residual, concat, depthwise, grouped conv, SE gate and flatten->linear, all width-parameterized."""

    def __init__(self, w1=16, w2=12, w3=8, conv_groups=4, per_group=4, hidden=20):
        super().__init__()
        w4 = conv_groups * per_group
        self.stem, self.bn = nn.Conv2d(3, w1, 3, padding=1), nn.BatchNorm2d(w1)
        self.c1, self.c2 = nn.Conv2d(w1, w2, 3, padding=1), nn.Conv2d(w2, w1, 3, padding=1)
        self.branch = nn.Conv2d(w1, w3, 1)
        self.d = nn.Conv2d(w1 + w3, w4, 1)
        self.dw = nn.Conv2d(w4, w4, 3, padding=1, groups=w4)
        self.g = nn.Conv2d(w4, w4, 3, padding=1, groups=conv_groups)
        self.se1, self.se2 = nn.Conv2d(w4, 3, 1), nn.Conv2d(3, w4, 1)
        self.fc1, self.fc2 = nn.Linear(w4 * 4, hidden), nn.Linear(hidden, 10)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        x = x + self.c2(F.relu(self.c1(x)))
        y = F.relu(self.d(torch.cat([x, self.branch(x)], dim=1)))
        y = self.g(F.relu(self.dw(y)))
        y = y * torch.sigmoid(self.se2(F.relu(self.se1(y.mean((2, 3), keepdim=True)))))
        y = F.adaptive_avg_pool2d(y, 2).flatten(1)
        return self.fc2(F.relu(self.fc1(y)))


def macs_and_params(model, x):
    with flop_counter() as counter:
        model(x)
    return counter.get_total_flops() // 2, sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def analyzed():
    model, x = Widths().eval(), torch.randn(2, 3, 8, 8)
    return model, x, graphprune.analyze(model, x)


def test_full_model_counts_are_exact(analyzed):
    model, x, gg = analyzed
    assert (gg.cost.macs(), gg.cost.params()) == macs_and_params(model, x)


def test_groups_of_the_width_model(analyzed):
    _, _, gg = analyzed
    sizes = {name: group_with(gg, name).size for name in ("stem", "c1", "branch", "d", "se1", "fc1")}
    assert sizes == {"stem": 16, "c1": 12, "branch": 8, "d": 4, "se1": 3, "fc1": 20}
    assert group_with(gg, "d") is group_with(gg, "g") is group_with(gg, "se2")


@pytest.mark.parametrize("seed", range(6))
def test_budget_matches_a_hand_built_smaller_model(analyzed, seed):
    _, x, gg = analyzed
    rng = np.random.default_rng(seed)
    k = {name: int(rng.integers(1, group_with(gg, name).size + 1)) for name in ("stem", "c1", "branch", "d", "se1", "fc1")}
    keep = {group_with(gg, name).id: n for name, n in k.items()}
    small = Widths(w1=k["stem"], w2=k["c1"], w3=k["branch"], conv_groups=k["d"], hidden=k["fc1"]).eval()
    small.se1 = nn.Conv2d(small.se1.in_channels, k["se1"], 1)
    small.se2 = nn.Conv2d(k["se1"], small.se2.out_channels, 1)
    assert (gg.cost.macs(keep), gg.cost.params(keep)) == macs_and_params(small, x)


def test_quadratic_form_sympy_and_evaluators_agree(analyzed):
    _, _, gg = analyzed
    b = gg.cost
    rng = np.random.default_rng(0)
    a = rng.uniform(0.1, 1.0, len(b.groups))
    for metric in ("macs", "params"):
        fa, fb, c = b.quadratic(metric)
        assert np.allclose(fa, fa.T)
        value = a @ fa @ a + fb @ a + c
        symbolic = float(b.expr(metric).subs(dict(zip(b.symbols, a))))
        assert value == pytest.approx(symbolic, rel=1e-12)
        assert b.evaluate(metric, a) == pytest.approx(value, rel=1e-12)
        batch = b.evaluate(metric, np.stack([a, np.ones_like(a)]))
        assert batch[1] == pytest.approx(b.exact(metric), rel=1e-12)
        t = torch.tensor(a, requires_grad=True)
        out = b.torch(metric, t)
        out.backward()
        assert out.detach().item() == pytest.approx(value, rel=1e-12)
        assert np.allclose(t.grad.numpy(), 2 * fa @ a + fb)


def test_expr_is_polynomial_in_group_symbols(analyzed):
    _, _, gg = analyzed
    expr = gg.cost.expr("macs")
    poly = sympy.Poly(expr, *gg.cost.symbols)
    assert poly.total_degree() == 2
    assert {str(s) for s in expr.free_symbols} <= {f"a_{g.id}" for g in gg.prunable_groups}


def test_unknown_group_and_metric_raise(analyzed):
    _, _, gg = analyzed
    frozen = next(g for g in gg.groups if not g.prunable)
    with pytest.raises(graphprune.BudgetError, match="not prunable groups"):
        gg.cost.macs({frozen.id: 1})
    with pytest.raises(graphprune.BudgetError, match="unknown metric"):
        gg.cost.expr("latency")


def test_prunable_share_counts_what_scales(analyzed):
    _, _, gg = analyzed
    assert gg.prunable_mac_share() == 1.0
    assert gg.cost.prunable_share("params") < 1.0  # the logits' bias is fixed
