"""Data-aware criteria against brute force on small models: what each score claims to measure."""

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import graphprune
from graphprune.errors import OptionError


def mlp(width=16):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, width), nn.ReLU(), nn.Linear(width, 12), nn.Tanh(), nn.Linear(12, 3)).double().eval()


def batches(n=3):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(5, 8, generator=g, dtype=torch.float64), torch.randint(0, 3, (5,), generator=g)) for _ in range(n)]


def mean_loss(model, data):
    with torch.no_grad():
        return sum(F.cross_entropy(model(x), y) for x, y in data) / len(data)


def scaled_channel(model, group, channel, factor):
    """A copy of ``model`` whose weights of ``channel`` (in every member of ``group``) are multiplied by ``factor``."""
    scaled = copy.deepcopy(model)
    for m in group.members:
        t = getattr(scaled.get_submodule(m.module), m.param)
        index = torch.as_tensor(m.positions[m.channels == channel])
        with torch.no_grad():
            t.index_copy_(m.dim, index, t.index_select(m.dim, index) * factor)
    return scaled


def test_taylor_is_the_first_order_loss_change_of_zeroing_each_channel_squared_per_batch():
    model, data = mlp(), batches()
    session = graphprune.prepare(model, "taylor", 0.5, data[0][0], calib_data=data, loss_fn=F.cross_entropy)
    scores = session.method.scores()
    eps = 1e-6
    checked = 0
    for g in session.gg.prunable_groups:
        for c in range(g.size):
            # d/dt L_b(w - t * w_c) at t = 0 on each batch b, by central differences: the first-order change of zeroing channel c
            lower, higher = scaled_channel(model, g, c, 1 - eps), scaled_channel(model, g, c, 1 + eps)
            slopes = [float(mean_loss(lower, [b]) - mean_loss(higher, [b])) / (2 * eps) for b in data]
            assert scores[g.id][c] == pytest.approx(sum(s * s for s in slopes) / len(data), rel=1e-5, abs=1e-12)
            checked += 1
    assert checked == 28  # the two hidden layers' channels


def test_taylor_prunes_to_the_budget_and_leaves_the_model_and_its_gradients_as_they_were():
    model, data = mlp(width=512), batches()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model[0].weight.grad = torch.ones_like(model[0].weight)
    result = graphprune.apply(model, "taylor", graphprune.Budget(params=0.6), data[0][0], calib_data=data, loss_fn=F.cross_entropy,
                              round_to=1)
    assert abs(result.report.params_ratio - 0.6) <= 0.005
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(model[0].weight.grad, torch.ones_like(model[0].weight)) and model[2].weight.grad is None
    assert not model.training


def test_taylor_without_calibration_data_says_what_to_pass():
    with pytest.raises(OptionError, match=r"taylor ranks channels by the loss on calibration data: pass calib_data="):
        graphprune.apply(mlp(), "taylor", 0.5, batches()[0][0])


def test_your_own_importance_is_allocated_like_the_built_in_criteria():
    """A function reproducing l1 gives l1's plan; one reproducing taylor on one batch (``grad`` is the
    mean gradient, here of that batch) gives taylor's."""
    model, data = mlp(width=64), batches()

    def l1(group, members):
        return sum(m.per_channel(m.tensor.abs()) for m in members)

    def taylor(group, members):
        return sum(m.per_channel(m.tensor * m.grad) for m in members) ** 2

    x = data[0][0]
    for fn, method, extra in ((l1, "l1", {}), (taylor, "taylor", dict(calib_data=data[:1], loss_fn=F.cross_entropy))):
        own = graphprune.apply(model, "importance", 0.6, x, importance=fn, round_to=1, **extra)
        built_in = graphprune.apply(model, method, 0.6, x, round_to=1, **extra)
        assert own.plan.keep == built_in.plan.keep and own.plan.keep


@pytest.mark.parametrize("importance, message", [
    (None, r"method 'importance' scores channels with your function: pass importance=fn"),
    (lambda group, members: [1.0, 2.0], r"importance returned 2 scores for group \d+ of \d+ channels: it must return one score per channel"),
    (lambda group, members: [float("nan")] * group.size, "importance returned scores that are not finite"),
])
def test_your_own_importance_that_cannot_rank_is_refused(importance, message):
    with pytest.raises((OptionError, graphprune.GraphPruneError), match=message):
        graphprune.apply(mlp(), "importance", 0.5, batches()[0][0], importance=importance)


def test_hessian_is_obd_with_the_per_sample_fisher():
    """1/2 * sum over the channel's weights in every member of E[(dl/dw)^2] * w^2, each sample's gradient on its own."""
    model, data = mlp(), batches(2)
    session = graphprune.prepare(model, "hessian", 0.5, data[0][0], calib_data=data, loss_fn=F.cross_entropy)
    scores = session.method.scores()
    fisher = {name: torch.zeros_like(p) for name, p in model.named_parameters()}
    samples = [(x[i : i + 1], y[i : i + 1]) for x, y in data for i in range(len(x))]
    for x, y in samples:
        grads = torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))
        for (name, _), g in zip(model.named_parameters(), grads):
            fisher[name] += g ** 2 / len(samples)
    for g in session.gg.prunable_groups:
        expected = torch.zeros(g.size, dtype=torch.float64)
        for m in g.members:
            w, f = getattr(model.get_submodule(m.module), m.param), fisher[f"{m.module}.{m.param}"]
            per_element = 0.5 * f * w.detach() ** 2
            per_index = per_element.sum(1 - m.dim) if w.dim() == 2 else per_element  # weights (out, in), biases
            expected.index_add_(0, torch.as_tensor(m.channels), per_index[torch.as_tensor(m.positions)])
        assert scores[g.id] == pytest.approx(expected.numpy(), rel=1e-5)


def test_hessian_scores_a_budget_on_dict_batches():
    model = mlp(width=256)
    data = [{"input": x} for x, _ in batches(2)]
    result = graphprune.apply(model, "hessian", graphprune.Budget(params=0.6), data[0]["input"], calib_data=data,
                              loss_fn=lambda out, batch: out.logsumexp(1).mean(), samples=6, round_to=1)
    assert abs(result.report.params_ratio - 0.6) <= 0.005


def test_your_own_importance_reads_activations_and_reproduces_flap():
    """``activation`` holds the statistics of a reading layer's inputs, shaped to broadcast against its weight:
    flap's criterion written as a function gives flap's plan; reading no gradient, it needs no loss."""
    model = mlp(width=64)
    data = [x for x, _ in batches()]  # inputs only: no target, no loss_fn

    def flap(group, members):
        return sum(m.per_channel(m.tensor ** 2 * m.activation.var) for m in members if m.activation is not None)

    def shapes(group, members):
        seen.extend((m.role, tuple(m.tensor.shape), m.activation and tuple(m.activation.var.shape)) for m in members)
        return [1.0] * group.size

    own = graphprune.apply(model, "importance", 0.6, data[0], importance=flap, calib_data=data, round_to=1)
    built_in = graphprune.apply(model, "flap", 0.6, data[0], calib_data=data, round_to=1, compensate=False)
    assert own.plan.keep == built_in.plan.keep and own.plan.keep
    seen = []
    graphprune.apply(model, "importance", 0.6, data[0], importance=shapes, calib_data=data, round_to=1)
    assert ("in", (12, 64), (1, 64)) in seen and ("out", (64, 8), None) in seen and ("in", (3, 12), (1, 12)) in seen
    seen = []
    graphprune.apply(model, "importance", 0.6, data[0], importance=shapes, round_to=1)
    assert seen and all(activation is None for _, _, activation in seen)
