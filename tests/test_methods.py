"""The data-free baselines meet budgets exactly where the issue says, and the method registry."""

import sys
import textwrap

import numpy as np
import pytest
import torch
import torchvision

import graphprune
from graphprune import passes


@pytest.mark.parametrize("name", ["resnet50", "mobilenet_v2", "densenet121", "efficientnet_b0"])
@pytest.mark.parametrize("method", ["l1", "uniform"])
def test_budgets_are_met_within_half_a_point(name, method):
    model, x = torchvision.models.get_model(name, weights=None).eval(), torch.randn(1, 3, 64, 64)
    gg = graphprune.analyze(model, x)
    for target in (0.3, 0.5, 0.7):
        result = graphprune.apply(model, method, target, x, analysis=gg)
        assert target - 0.005 <= result.report.macs_ratio <= target, (target, result.report.macs_ratio)


def test_l1_keeps_the_largest_channels():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1)).eval()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([1.0, 5.0, 0.1, 3.0]).view(4, 1, 1, 1).expand(4, 3, 1, 1))
        model[0].bias.zero_()
        model[2].weight.fill_(1.0)
    result = graphprune.apply(model, "l1", 0.5, torch.randn(1, 3, 4, 4))
    assert list(result.plan.keep.values()) == [[1, 3]]


def test_registry_lists_builtins_and_rejects_unknown():
    assert {"l1", "l2", "random", "uniform"} <= set(passes.names())
    with pytest.raises(graphprune.GraphPruneError, match="unknown pruning method 'nope'"):
        passes.get("nope")


def test_third_party_method_through_an_entry_point(tmp_path, monkeypatch):
    (tmp_path / "myprune.py").write_text(textwrap.dedent('''
        from graphprune.passes import MethodPass
        from graphprune.groups.plan import Plan

        class KeepFirst(MethodPass):
            name = "keep_first"

            def plan(self):
                return Plan({g.id: [0] for g in self.gg.prunable_groups})
    '''))
    dist = tmp_path / "myprune-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: myprune\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[graphprune.methods]\nkeep_first = myprune:KeepFirst\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "myprune", raising=False)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.Conv2d(4, 2, 1)).eval()
    result = graphprune.apply(model, "keep_first", 0.9, torch.randn(1, 3, 4, 4))
    assert result.model.get_submodule("0").out_channels == 1


def test_ceilings_cap_what_the_give_back_returns():
    """NAP's final cut: channels zeroed for good (score -inf, group capped at its live count) never come
    back, even where the budget would pay for them: here it pays for more than every live channel."""
    from graphprune.budget.allocate import allocate_by_score

    model = torchvision.models.resnet18(weights=None).eval()
    gg = graphprune.analyze(model, torch.randn(1, 3, 64, 64))
    rng = np.random.default_rng(0)
    scores = {g.id: rng.random(g.size) for g in gg.prunable_groups}
    dead = {gid: np.flatnonzero(rng.random(len(s)) < 0.3) for gid, s in scores.items()}
    for gid, s in scores.items():
        s[dead[gid]] = -np.inf
    live = {gid: sorted(set(range(len(s))) - set(dead[gid].tolist())) for gid, s in scores.items()}
    budget = graphprune.Budget(macs=0.6)
    assert gg.cost.macs({gid: len(k) for gid, k in live.items()}) < 0.6 * gg.cost.macs()
    uncapped = allocate_by_score(gg, scores, budget)
    assert any(set(uncapped.keep[gid]) & set(dead[gid].tolist()) for gid in scores)  # without the cap, dead ones return
    capped = allocate_by_score(gg, scores, budget, ceilings={gid: len(k) for gid, k in live.items()})
    assert {gid: list(capped.keep[gid]) for gid in scores} == live
