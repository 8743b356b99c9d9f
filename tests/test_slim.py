"""The slim pass: exactness, exact budgets on the slim model, plans, and the things users do with it."""

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from graphprune.slimming.exactness import zero_pruned
from graphprune.tracing.flops import flop_counter

import graphprune
import toy_models
from helpers import EXACT, group_with, random_plan, slim_error


def exact_plan(gg, seed, ratio=None):
    """A random plan over the groups that normalize exactly (LayerNorm groups stay whole)."""
    plan = random_plan(gg, np.random.default_rng(seed), ratio)
    return graphprune.Plan({g: k for g, k in plan.keep.items() if not gg.groups[g].inexact}, plan.sizes)


def slim_costs(slim, x):
    with flop_counter() as counter:
        slim(x)
    return counter.get_total_flops() // 2, sum(p.numel() for p in slim.parameters())


@pytest.mark.parametrize("name", sorted(set(toy_models.ALL)))
def test_slim_is_exact_and_costs_what_the_budget_says(name):
    model, x = toy_models.build(name)
    gg = graphprune.analyze(model, x)
    for seed in range(3):
        plan = exact_plan(gg, seed)
        slim = graphprune.slim(gg, plan)
        assert slim_costs(slim, x) == (gg.cost.macs(plan.counts()), gg.cost.params(plan.counts()))
        model, x = toy_models.build(name)
        assert slim_error(model, gg, plan, (x,)) <= EXACT


def test_layernorm_groups_are_close_but_not_exact():
    model, x = toy_models.build("channels_last")
    gg = graphprune.analyze(model, x)
    stream = group_with(gg, "stem")
    plan = graphprune.Plan({stream.id: list(range(0, 8, 2))})
    error = slim_error(model, gg, plan, (x,))
    assert 0 < error < 1.0  # the normalization statistics change: documented, not exact


class NormedStream(torch.nn.Module):
    """A stream normalized across its channels by nn.LayerNorm or F.layer_norm."""

    def __init__(self, functional: bool):
        super().__init__()
        self.functional = functional
        self.a, self.norm, self.b = torch.nn.Linear(6, 8), torch.nn.LayerNorm(8, eps=1e-3), torch.nn.Linear(8, 3)

    def forward(self, x):
        h = self.a(x)
        if self.functional:
            return self.b(F.layer_norm(h, (8,), self.norm.weight, self.norm.bias, 1e-3))
        return self.b(self.norm(h))


def _norm_output(gm: torch.fx.GraphModule, x: torch.Tensor) -> torch.Tensor:
    """The value of the graph's layer norm node on ``x``."""
    values = {}

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n):
            values[n.name] = super().run_node(n)
            return values[n.name]

    Recorder(gm).run(x)
    (name,) = [n.name for n in gm.graph.nodes if n.target in ("norm", F.layer_norm)]
    return values[name]


@pytest.mark.parametrize("functional", [False, True])
def test_layernorm_over_pruned_channels_stays_within_its_documented_bound(functional):
    """Per token, with r the pruned share, m the kept channels' mean, s = sqrt((1 - r) var + eps),
    u = m / s and a the slim norm's normalized value: |y_slim - y| <= |weight| (r|u| + r(1-r)u^2|a|/2)
    (graphprune/slimming/slim.py, ``_layer_norm_compensation``), so equal where the kept channels have zero
    mean; at the output the slim model is the zeroed original with its norm output replaced."""
    torch.manual_seed(0)
    kept, r = [0, 2, 3, 6], 0.5
    for centered in (False, True):
        model = NormedStream(functional).double()
        with torch.no_grad():
            model.norm.weight.uniform_(0.5, 2.0)
            model.norm.bias.uniform_(-1, 1)
            model.a.bias.uniform_(-2, 2)  # tokens with kept means far from zero and near it
            if centered:  # kept channels in pairs (h, -h): every token's kept mean is zero
                model.a.weight[[2, 6]], model.a.bias[[2, 6]] = -model.a.weight[[0, 3]], -model.a.bias[[0, 3]]
        x = torch.randn(64, 6, dtype=torch.float64)
        gg = graphprune.analyze(model, x)
        stream = group_with(gg, "a")
        assert stream.prunable and "normalizes across these channels" in stream.inexact
        plan = graphprune.Plan({stream.id: kept})
        small = graphprune.slim(gg, plan)
        zero_pruned(model, gg, plan)
        with torch.no_grad():
            want, got = _norm_output(gg.gm, x)[:, kept], _norm_output(small, x)
            h = model.a(x)[:, kept]
            m = h.mean(-1, keepdim=True)
            scale = ((1 - r) * h.var(-1, unbiased=False, keepdim=True) + 1e-3).sqrt()
            u, a = m / scale, (h - m) / scale
            bound = model.norm.weight[kept].abs() * (r * u.abs() + r * (1 - r) * u**2 * a.abs() / 2)
            error = (got - want).abs()
            if centered:
                assert error.max() <= 1e-12
            else:
                assert (error <= bound + 1e-12).all() and error.max() > 0.1 * bound.max()  # holds, not vacuous
            stream_value = torch.zeros(64, 8, dtype=torch.float64).index_copy(1, torch.tensor(kept), got)
            assert torch.allclose(small(x), model.b(stream_value), atol=1e-12)


class LiteralView(torch.nn.Module):
    """A literal channel count in a view: only the view rewrite keeps it right."""

    def __init__(self):
        super().__init__()
        self.conv, self.head = torch.nn.Conv2d(3, 6, 1), torch.nn.Conv1d(6, 2, 1)

    def forward(self, x):
        return self.head(self.conv(x).view(x.shape[0], 6, -1))


def test_a_constant_the_slim_pass_misses_is_a_slim_error_naming_node_and_group(monkeypatch):
    """Without the view rewrite, a literal channel count in a view is stale: the failure is reported
    by the slim pass with the node and the pruned group, not as an example-input error."""
    from graphprune import ops

    model, x = LiteralView(), torch.randn(1, 3, 4, 4)
    gg = graphprune.analyze(model, x)
    g = group_with(gg, "conv")
    monkeypatch.setattr(ops.method_op("view"), "rewrite", None)
    with pytest.raises(graphprune.SlimError, match=rf"(?s)node 'view'.*group.*{g.id} \(keeps 2 of {g.size}\)") as info:
        graphprune.slim(gg, graphprune.Plan({g.id: [0, 1]}))
    assert not isinstance(info.value, graphprune.ExampleInputError) and "While executing" not in str(info.value)


class TupleSizedView(torch.nn.Module):
    """GPT-2's output view: one computed tuple, ``(-1,) + ids.shape[1:] + (h.size(-1),)``; with
    ``misplaced`` the channel count lands in a dim that is not the channel dim."""

    def __init__(self, misplaced: bool = False):
        super().__init__()
        self.misplaced = misplaced
        self.a, self.b = torch.nn.Linear(4, 8), torch.nn.Linear(8, 3)

    def forward(self, x):
        h = self.a(x.flatten(0, 1))
        if self.misplaced:
            return self.b(h.view(x.shape[:2] + (h.size(-1) // 8, h.size(-1))))
        return self.b(h.view((-1,) + x.shape[1:2] + (h.size(-1),)))


def test_a_view_sized_by_one_computed_tuple_slims_where_the_count_is_at_the_channel_dim():
    x = torch.randn(2, 5, 4)
    model = TupleSizedView()
    gg = graphprune.analyze(model, x)
    hidden = group_with(gg, "a")
    assert hidden.prunable, hidden.reason
    plan = graphprune.Plan({hidden.id: [1, 2, 6]})
    assert graphprune.slim(gg, plan)(x).shape == (2, 5, 3)
    assert slim_error(model, gg, plan, (x,)) <= EXACT
    gg = graphprune.analyze(TupleSizedView(misplaced=True), x)
    hidden = group_with(gg, "a")
    assert not hidden.prunable and "changes a dim other than its channel dim (with 1 of 8 left)" in hidden.reason


def test_tensors_cached_with_autograd_history_do_not_stop_slimming():
    """Modules that cache a tensor computed from parameters (efficientvit's attention biases) hold a
    non-leaf tensor after analysis ran them; the slim pass copies it detached."""

    class Cached(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.table, self.cache = torch.nn.Parameter(torch.randn(4)), {}

        def forward(self, x):
            if "bias" not in self.cache:
                self.cache["bias"] = self.table.view(1, -1, 1, 1) * 2
            return x + self.cache["bias"]

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), Cached(), torch.nn.Conv2d(4, 6, 1), torch.nn.Conv2d(6, 2, 1))
    x = torch.randn(1, 3, 4, 4)
    gg = graphprune.analyze(model, x, leaf_modules=["1"])
    inner = group_with(gg, "2")
    plan = graphprune.Plan({inner.id: [0, 2, 4]})
    assert model[1].cache == {}  # analysis leaves the model as it was; the user's own call fills the cache
    model(x)
    assert model[1].cache["bias"].grad_fn is not None
    assert slim_error(model, gg, plan, (x,)) <= EXACT


def test_model_copy_is_what_copy_deepcopy_makes():
    """The slim pass copies modules without copy's generic path; the copy must be the same: same
    classes and attributes, shared objects shared once, tensors equal in new memory."""
    import copy

    from graphprune.slimming.slim import _deepcopy

    shared = torch.nn.Conv2d(4, 4, 3, padding=1)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), shared, torch.nn.Sequential(shared, torch.nn.ReLU()),
        torch.nn.TransformerEncoderLayer(4, 2, 8, batch_first=True),
    )
    model[0].register_forward_hook(lambda *_: None)
    model[1].extra = {"ids": [1, 2], "pair": (3, "a"), "names": {"x"}}
    ours, reference = _deepcopy(model), copy.deepcopy(model)
    for (name, a), (_, b) in zip(ours.named_modules(remove_duplicate=False), reference.named_modules(remove_duplicate=False)):
        assert type(a) is type(b) and a.__dict__.keys() == b.__dict__.keys(), name
        for key, value in vars(b).items():
            if key not in ("_parameters", "_buffers", "_modules", "_forward_hooks"):
                assert getattr(a, key) == value, (name, key)
    assert ours[2] is ours[3][0] and ours[2] is not model[2] and len(ours[0]._forward_hooks) == 1
    assert ours[1].extra == model[1].extra and ours[1].extra["ids"] is not model[1].extra["ids"]
    for (name, a), (_, b) in zip(ours.state_dict().items(), model.state_dict().items()):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr(), name


def test_user_model_is_untouched_and_slim_model_trains_and_saves():
    model, x = toy_models.build("residual")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = graphprune.apply(model, "l1", 0.5, x)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    slim = result.model.train()
    opt = torch.optim.SGD(slim.parameters(), lr=0.1)
    slim(x).square().mean().backward()
    opt.step()
    slim.eval()
    buffer = io.BytesIO()
    torch.save(slim, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert torch.equal(loaded(x), slim(x))


def test_module_attributes_follow_the_channels():
    model, x = toy_models.build("grouped")
    gg = graphprune.analyze(model, x)
    g = group_with(gg, "g")
    slim = graphprune.slim(gg, graphprune.Plan({g.id: [0, 3]}))
    assert (slim.g.groups, slim.g.in_channels, slim.g.out_channels) == (2, 8, 4)
    assert slim.a.out_channels == 8 and slim.b.in_channels == 4
    model, x = toy_models.build("group_norm")
    gg = graphprune.analyze(model, x)
    slim = graphprune.slim(gg, graphprune.Plan({group_with(gg, "gn").id: [1, 2, 3]}))
    assert (slim.gn.num_groups, slim.gn.num_channels) == (3, 6)


def test_split_constants_are_rewritten():
    model, x = toy_models.build("split_cat")
    gg = graphprune.analyze(model, x)
    first, second = (g.id for g in gg.prunable_groups[:2])
    slim = graphprune.slim(gg, graphprune.Plan({first: [1], second: [0, 4]}))
    split = next(n for n in slim.graph.nodes if n.target == "split")
    assert split.args[1] == [1, 2]


def test_strided_channel_slice_is_refused_not_miscompiled():
    class Strided(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Conv2d(3, 8, 1), torch.nn.Conv2d(4, 2, 1)

        def forward(self, x):
            return self.b(self.a(x)[:, ::2])

    model, x = Strided().eval(), torch.randn(1, 3, 4, 4)
    gg = graphprune.analyze(model, x)
    even = next(g for g in gg.prunable_groups if any(m.module == "b" for m in g.members))
    with pytest.raises(graphprune.SlimError, match="step 2"):
        graphprune.slim(gg, graphprune.Plan({even.id: [0, 1]}))


def test_plan_json_round_trip_and_reapply_to_a_fresh_instance():
    model, x = toy_models.build("dense_concat")
    result = graphprune.apply(model, "l2", 0.4, x)
    plan = graphprune.Plan.from_json(result.plan.to_json())
    assert plan == result.plan
    fresh, _ = toy_models.build("dense_concat")
    slim = graphprune.apply_plan(fresh, plan, x)
    assert [p.shape for p in slim.parameters()] == [p.shape for p in result.model.parameters()]
    other, y = toy_models.build("residual")
    with pytest.raises(graphprune.PlanError):
        graphprune.apply_plan(other, plan, y)


def test_plan_validation():
    model, x = toy_models.build("residual")
    gg = graphprune.analyze(model, x)
    g = group_with(gg, "conv1")
    frozen = group_with(gg, "head")
    for bad, match in [({g.id: []}, "no channel"), ({g.id: [0, 99]}, "distinct and in"), ({frozen.id: [0]}, "frozen"), ({99: [0]}, "same architecture")]:
        with pytest.raises(graphprune.PlanError, match=match):
            graphprune.slim(gg, graphprune.Plan(bad))


def test_round_to_and_floors_are_respected():
    model, x = toy_models.build("residual")
    gg = graphprune.analyze(model, x)
    result = graphprune.apply(model, "l1", 0.5, x, round_to=4, min_channels=2)
    for gid, kept in result.plan.keep.items():
        size = gg.groups[gid].size
        assert len(kept) >= 2 and (len(kept) % 4 == 0 or len(kept) == size)
    with pytest.raises(graphprune.BudgetError, match="unreachable.*keeps 0\\.") as info:
        graphprune.apply(model, "l1", 0.01, x, min_ratio=0.5)
    assert "min_channels/min_ratio/round_to" in str(info.value)


def test_params_budget_and_absolute_budget():
    import torchvision

    model, x = torchvision.models.resnet18(weights=None).eval(), torch.randn(1, 3, 32, 32)
    result = graphprune.apply(model, "l1", graphprune.Budget(params=0.5), x)
    assert 0.495 <= result.report.params_ratio <= 0.5
    assert sum(p.numel() for p in result.model.parameters()) == result.report.params_after
    full = result.report.macs_before
    absolute = graphprune.apply(model, "uniform", full // 2, x)
    assert absolute.report.macs_after <= full // 2
    with pytest.raises(graphprune.BudgetError):
        graphprune.Budget(macs=0.5, params=0.5)


def test_random_method_is_seeded():
    model, x = toy_models.build("dense_concat")
    a = graphprune.apply(model, "random", 0.5, x, seed=1).plan
    b = graphprune.apply(model, "random", 0.5, x, seed=1).plan
    c = graphprune.apply(model, "random", 0.5, x, seed=2).plan
    assert a == b and a != c
    with pytest.raises(TypeError, match="unknown options"):
        graphprune.apply(model, "l1", 0.5, x, seed=1)
