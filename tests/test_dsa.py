"""DSA against its math (Eq. 2, 5, 6, 9) and end to end under a budget."""

import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision

import graphprune
from graphprune import models
from graphprune.passes.dsa import DSAPass, ExpectedKeep, inexactness, keep_probabilities, sample_masks
from helpers import EXACT, slim_error


@pytest.mark.parametrize("alpha", [0.1, 0.37, 0.5, 0.93])
@pytest.mark.parametrize("beta2", [0.05, 1.0, 20.0])
def test_bisection_meets_the_expectation_condition(alpha, beta2):
    log_b = torch.randn(64, dtype=torch.float64)
    p, _ = keep_probabilities(log_b, alpha, beta2)
    assert abs(float(p.mean()) - alpha) < 1e-6


def test_implicit_gradient_matches_finite_differences():
    torch.manual_seed(0)
    log_b = torch.randn(32, dtype=torch.float64)
    weights = torch.randn(32, dtype=torch.float64)  # L = weights . p
    alpha = torch.tensor(0.4, dtype=torch.float64, requires_grad=True)
    loss = (weights * ExpectedKeep.apply(alpha, log_b, 2.0)).sum()
    (grad,) = torch.autograd.grad(loss, alpha)
    eps = 1e-6
    plus = (weights * keep_probabilities(log_b, 0.4 + eps, 2.0)[0]).sum()
    minus = (weights * keep_probabilities(log_b, 0.4 - eps, 2.0)[0]).sum()
    assert float(grad) == pytest.approx(float((plus - minus) / (2 * eps)), rel=1e-5)
    # d log(beta1) / d alpha from Eq. 5, also by finite differences
    _, hi = keep_probabilities(log_b, 0.4 + eps, 2.0)
    _, lo = keep_probabilities(log_b, 0.4 - eps, 2.0)
    p, _ = keep_probabilities(log_b, 0.4, 2.0)
    implicit = -len(p) / (2.0 * float((p * (1 - p)).sum()))
    assert (hi - lo) / (2 * eps) == pytest.approx(implicit, rel=1e-5)


def test_masks_become_hard_as_beta2_grows():
    log_b = torch.randn(128, dtype=torch.float64)
    values = [inexactness(keep_probabilities(log_b, 0.5, beta2)[0]) for beta2 in (0.05, 1.0, 10.0, 100.0, 10000.0)]
    assert values == sorted(values, reverse=True) and values[-1] < 1.0
    p = torch.full((1000,), 0.3, requires_grad=True)
    m = sample_masks(p, torch.Generator().manual_seed(0))
    assert set(m.detach().unique().tolist()) <= {0.0, 1.0}
    m.sum().backward()
    assert torch.equal(p.grad, torch.ones(1000))  # straight through


def make_pass(model, x, budget, total_steps=100, **options):
    gg = graphprune.analyze(model, x)
    dsa = DSAPass(gg, graphprune.Budget(macs=budget), model, val_data=[(x, torch.zeros(len(x), dtype=torch.long))],
                  loss_fn=F.cross_entropy, **options)
    dsa.bind_schedule(total_steps)
    return dsa


def test_weight_steps_train_the_allocated_network_and_eq6_samples():
    """Hard weight masks: each group's round(alpha C) largest BN scales, the same on every draw; Eq. 6's
    validation passes still sample Bernoulli(p) masks. ``weight_masks="sampled"`` draws for the weight steps too."""
    model, x = models.get("resnet20"), torch.randn(2, 3, 32, 32)
    torch.manual_seed(0)
    for bn in model.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.weight.data.uniform_(0.1, 2.0)
    dsa = make_pass(model, x, 0.5)
    dsa.alpha = torch.linspace(0.2, 0.9, len(dsa.group_ids), dtype=torch.float64)
    dsa.beta2 = 1.0
    b = dsa.importance()
    dsa._stale = True
    first = {gid: m.clone() for gid, m in dsa.current_masks().items()}
    for alpha, gid in zip(dsa.alpha.tolist(), dsa.group_ids):
        k = round(alpha * len(b[gid]))
        assert int(first[gid].sum()) == k
        assert set(torch.nonzero(first[gid]).flatten().tolist()) == set(torch.topk(b[gid], k).indices.tolist())
    dsa._stale = True
    assert all(torch.equal(first[gid], m) for gid, m in dsa.current_masks().items())
    dsa.loss_gradient()
    assert any(not torch.equal(first[gid], m.detach()) for gid, m in dsa.masks.items())  # Eq. 6 drew its own
    sampled = make_pass(model, x, 0.5, weight_masks="sampled")
    sampled.alpha, sampled.beta2, sampled._stale = dsa.alpha.clone(), 1.0, True
    assert any(int(m.sum()) != int(first[gid].sum()) or not torch.equal(m, first[gid]) for gid, m in sampled.current_masks().items())
    with pytest.raises(graphprune.GraphPruneError, match="weight_masks is 'sampled' or 'hard'"):
        make_pass(model, x, 0.5, weight_masks="soft")


def test_budget_gradient_matches_autograd_through_sympy():
    model, x = models.get("resnet20"), torch.randn(2, 3, 32, 32)
    dsa = make_pass(model, x, 0.5)
    alphas = torch.rand(len(dsa.group_ids), dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(dsa.cost(alphas), alphas)
    b = dsa.gg.cost
    expr = 100 * b.expr("macs") / b.exact("macs")
    values = dict(zip(b.symbols, [1.0] * len(b.symbols)))
    for i, gid in enumerate(dsa.group_ids):
        values[b.symbols[int(dsa._budget_index[i])]] = float(alphas[i].detach())
    for i in range(0, len(dsa.group_ids), 3):
        symbol = b.symbols[int(dsa._budget_index[i])]
        assert float(grad[i]) == pytest.approx(float(expr.diff(symbol).subs(values)), rel=1e-9)


def test_z_step_is_the_projection_onto_the_budget_set():
    """On the boundary, and z - v normal to the budget surface where z is inside the box (KKT of the closest point)."""
    torch.manual_seed(0)
    model, x = models.get("resnet20"), torch.randn(2, 3, 32, 32)
    dsa = make_pass(model, x, 0.4)
    v = torch.rand(len(dsa.group_ids), dtype=torch.float64) * 0.6 + 0.5
    z = dsa.project(v, 40.0)
    assert float(dsa.cost(z)) == pytest.approx(40.0, abs=1e-6)
    point = z.clone().requires_grad_(True)
    (normal,) = torch.autograd.grad(dsa.cost(point), point)
    free = (z > dsa.floor) & (z < 1)
    assert free.sum() >= len(z) // 2
    assert float(torch.nn.functional.cosine_similarity((v - z)[free], normal[free], dim=0)) > 0.9999
    assert bool((v[z == 1] >= 1).all())  # clipped at the top only where v was above it
    inside = torch.full_like(v, 0.1)
    assert torch.equal(dsa.project(inside, 40.0), inside)  # already feasible: unchanged


def test_the_loss_moves_groups_by_its_relative_sensitivities():
    """alpha = z - (u2 + eta g) / rho2 with g divided by one scalar: relative sizes survive."""
    torch.manual_seed(0)
    model, x = models.get("resnet20"), torch.randn(8, 3, 32, 32)
    dsa = make_pass(model, x, 0.5, momentum=0.0)
    dsa.attach()
    grad = torch.linspace(0.5, 2, len(dsa.group_ids), dtype=torch.float64) * 1e-3
    dsa.loss_gradient = lambda: grad
    z_before = dsa.z.clone()
    dsa.allocation_step(0.0)
    moved = z_before - dsa.alpha
    eta = dsa.travel / dsa.planned_allocations()
    assert torch.allclose(moved, eta * grad / grad.abs().max())
    dsa.detach()


def test_allocation_without_validation_data_says_what_to_pass():
    model, x = models.get("resnet20"), torch.randn(2, 3, 32, 32)
    dsa = DSAPass(graphprune.analyze(model, x), graphprune.Budget(macs=0.5), model)
    with pytest.raises(graphprune.GraphPruneError, match="val_data="):
        dsa.loss_gradient()


def test_a_session_without_a_schedule_says_to_pass_total_steps():
    model, x = models.get("resnet20"), torch.randn(2, 3, 32, 32)
    session = graphprune.prepare(model, "dsa", 0.5, x, val_data=[(x, torch.zeros(2, dtype=torch.long))], loss_fn=F.cross_entropy)
    with pytest.raises(graphprune.GraphPruneError, match="total_steps="):
        session.after_step(0)
    with pytest.raises(graphprune.NotReadyError, match="untrained|has not trained.*force=True"):
        session.finish()
    forced = session.finish(force=True)
    assert any(n.startswith("forced before the method was ready: dsa") for n in forced.report.notes)


def test_bn_scales_get_no_weight_decay_while_they_are_the_importance():
    model, x = models.get("resnet20"), torch.randn(2, 3, 32, 32)
    dsa = make_pass(model, x, 0.5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=5e-4)
    dsa.bind_optimizer(optimizer)
    scales = {id(bn.weight) for _, _, bn in dsa._bn_scales()}
    decay = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    assert len(decay) == len(list(model.parameters())) and scales
    assert all(decay[i] == 0.0 for i in scales)
    assert all(d == 5e-4 for i, d in decay.items() if i not in scales)


def test_without_batchnorm_the_importance_is_the_producers_weights_as_trained():
    """digits_cnn has no BatchNorm: b_i falls back to l1 of the weights, read past DSA's own masks
    (through them, the masks would ask the importance again without end)."""
    model, x = models.get("digits_cnn"), torch.randn(4, *models.input_shape("digits_cnn")[1:])
    data = [(torch.randn(8, *x.shape[1:]), torch.randint(0, 10, (8,))) for _ in range(3)]
    result = graphprune.apply(model, "dsa", 0.5, x, train_data=data, val_data=data, loss_fn=F.cross_entropy, epochs=1)
    assert abs(result.report.achieved - 0.5) <= 0.005


LONG = pytest.mark.slow  # hundreds of allocation steps (one per 20 weight steps at most)


@pytest.mark.parametrize("epochs, steps_per_epoch", [(8, 10), (30, 10), (160, 10), (8, 400),
                                                     pytest.param(30, 400, marks=LONG), pytest.param(160, 400, marks=LONG)])
def test_search_ends_in_its_window_meets_the_budget_with_hard_masks(epochs, steps_per_epoch):
    """The session's hooks as a training loop calls them (weights not trained: only the schedule matters)."""
    torch.manual_seed(0)
    model, x = models.get("resnet20"), torch.randn(8, 3, 8, 8)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.2, 1.5)  # a trained network's spread of importances
    val = [(torch.randn(8, 3, 8, 8), torch.randint(0, 10, (8,))) for _ in range(3)]
    total = epochs * steps_per_epoch
    session = graphprune.prepare(model, "dsa", 0.25, x[:2], val_data=val, loss_fn=F.cross_entropy, total_steps=total)
    dsa = session.method
    ready_at = None
    for step in range(total):
        session.after_step(step)
        if dsa.ready():
            ready_at = step
            break
    assert ready_at == dsa.schedule.end_step - 1 and dsa.schedule.end_step == round(0.5 * total)
    assert dsa.schedule.start_step == round(0.07 * total)
    assert abs(dsa.trajectory[-1] - 25.0) < 3.0  # the search's own keep ratios near the budget
    p = torch.cat(list(dsa.keep_probabilities().values()))
    assert float(((p < 0.01) | (p > 0.99)).float().mean()) >= 0.95
    result = session.finish()
    assert 0.245 <= result.report.macs_ratio <= 0.25


@pytest.mark.parametrize("name", ["resnet56", pytest.param("mobilenet_v2", marks=pytest.mark.slow), pytest.param("resnet50", marks=pytest.mark.slow)])
def test_dsa_reaches_the_budget_and_slims_exactly(name, tmp_path):
    torch.manual_seed(0)
    if name == "resnet56":
        model = models.get("resnet56")
    else:
        model = torchvision.models.get_model(name, weights=None, num_classes=10)
    x = torch.randn(32, 3, 32, 32)
    y = torch.randint(0, 10, (32,))
    train = [(x[i : i + 8], y[i : i + 8]) for i in range(0, 32, 8)]
    val = [(torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,)))]
    result = graphprune.apply(model, "dsa", 0.5, x[:2], train_data=train, loss_fn=F.cross_entropy, epochs=10, val_data=val)
    assert 0.495 <= result.report.macs_ratio <= 0.5
    model.eval()
    assert slim_error(model, result.groups, result.plan, (x[:2],)) <= EXACT
    report = graphprune.export_onnx(result.model.eval(), str(tmp_path / "dsa.onnx"), x[:2])
    assert report.relative_diff < 1e-4
    sensitivity = result.method.sensitivity()
    assert bool(torch.isfinite(sensitivity).all()) and float(sensitivity.abs().max()) == pytest.approx(1.0)
    result.method.report_png(str(tmp_path / "dsa.png"))
    assert (tmp_path / "dsa.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_dsa_runs_on_cuda_with_cpu_batches():
    """fit moves the model to CUDA after attach; allocation batches and masks must follow it."""
    torch.manual_seed(0)
    model, x = models.get("resnet20"), torch.randn(16, 3, 32, 32)
    y = torch.randint(0, 10, (16,))
    batches = [(x[i : i + 8], y[i : i + 8]) for i in range(0, 16, 8)]
    result = graphprune.apply(model, "dsa", 0.5, x[:2], train_data=batches, loss_fn=F.cross_entropy, epochs=6, val_data=batches)
    assert 0.495 <= result.report.macs_ratio <= 0.5


def bn_spread(model):
    """BatchNorm scales spread as a trained network's are, so that the default importance ranks too."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.2, 1.5)
    return model


def labelled_batches(n=2, size=16):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 3, size, size, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(n)]


@pytest.mark.parametrize("criterion, options", [("taylor", dict(batches=2)), ("hessian", dict(samples=16))])
def test_a_data_aware_importance_ranks_the_masks_and_the_plan(criterion, options):
    """importance="taylor" (or "hessian"): b_i is that method's own score on ``importance_batches``
    validation batches (hessian: every sample of them), and at the keep ratios DSA allocated each group
    keeps exactly the channels it ranks highest (the BN-scale default keeps others); the hard masks of
    the weight steps are the same channels."""
    torch.manual_seed(0)
    model, x, val = bn_spread(models.get("resnet20")), torch.randn(2, 3, 16, 16), labelled_batches()
    reference = graphprune.prepare(model, criterion, 0.5, x, calib_data=val, loss_fn=F.cross_entropy, **options).method.scores()
    passes = {name: DSAPass(graphprune.analyze(model, x), graphprune.Budget(macs=0.5), model, val_data=val,
                            loss_fn=F.cross_entropy, importance=name) for name in (criterion, "bn_scale")}
    for dsa in passes.values():
        dsa.alpha = torch.linspace(0.3, 0.9, len(dsa.alpha), dtype=torch.float64)
    dsa = passes[criterion]
    b = dsa.importance()
    assert all(torch.equal(b[gid], torch.from_numpy(reference[gid]).clamp_min(1e-12)) for gid in dsa.group_ids)
    plan = dsa.plan()
    for gid in dsa.group_ids:
        kept = len(plan.keep[gid])
        assert set(plan.keep[gid]) == set(torch.from_numpy(reference[gid]).topk(kept).indices.tolist())
    assert plan.keep != passes["bn_scale"].plan().keep
    dsa._stale = True
    for gid, mask in dsa.current_masks().items():
        assert set(torch.nonzero(mask).flatten().tolist()) == set(b[gid].topk(int(mask.sum())).indices.tolist())


def test_a_data_aware_importance_is_measured_through_the_masks_the_network_trains_with():
    """Measured again on the masked network: a kept channel's score is taylor's on the network whose dropped
    channels are zero where they are read (momentum=0: the new measurement alone); a dropped channel, which
    the criterion would read as 0, keeps its last measurement."""
    torch.manual_seed(0)
    model, x, val = bn_spread(models.get("resnet20")), torch.randn(2, 3, 16, 16), labelled_batches()
    dsa = DSAPass(graphprune.analyze(model, x), graphprune.Budget(macs=0.5), model, val_data=val, loss_fn=F.cross_entropy,
                  importance="taylor", momentum=0.0)
    dsa.attach()
    dsa.importance()  # the first measurement: on the whole network (no masks yet)
    first = {gid: t.clone() for gid, t in dsa._measured.items()}
    dsa.alpha = torch.full_like(dsa.alpha, 0.5)
    dsa._stale = True
    masks = {gid: m.clone() for gid, m in dsa.current_masks().items()}
    dsa.measure_importance()
    dsa.detach()
    as_trained = copy.deepcopy(model)
    for gid, mask in masks.items():
        for m in dsa.gg.groups[gid].members:
            if m.role == "in":
                dropped = torch.from_numpy(m.positions[(mask[m.channels] == 0).numpy()])
                getattr(as_trained.get_submodule(m.module), m.param).data.index_fill_(m.dim, dropped, 0.0)
    reference = graphprune.prepare(as_trained, "taylor", 0.5, x, calib_data=val, loss_fn=F.cross_entropy, batches=2).method.scores()
    for gid, mask in masks.items():
        kept, now = mask.bool(), dsa._measured[gid]
        assert now[kept].numpy() == pytest.approx(reference[gid][kept.numpy()], rel=1e-5)
        assert torch.equal(now[~kept], first[gid][~kept]) and bool((~kept).any())
        assert not torch.equal(now[kept], first[gid][kept])


def test_dsa_with_your_importance_prunes_to_the_budget_and_keeps_weight_decay_on_bn_scales():
    torch.manual_seed(0)
    model, x = bn_spread(models.get("resnet20", width=0.5)), torch.randn(2, 3, 16, 16)
    train = labelled_batches(4)

    def taylor(group, members):  # one batch's taylor, as method "importance" takes it
        return sum(m.per_channel(m.tensor * m.grad) for m in members) ** 2

    result = graphprune.apply(model, "dsa", 0.5, x, train_data=train, val_data=train[:2], loss_fn=F.cross_entropy, epochs=2,
                              importance=taylor, importance_batches=1)
    assert 0.495 <= result.report.macs_ratio <= 0.5
    dsa = result.method
    assert dsa._measured and set(dsa._measured) == set(dsa.group_ids)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=5e-4)
    dsa.bind_optimizer(optimizer)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [5e-4]  # BN scales are not the importance here


@pytest.mark.parametrize("options, message", [
    (dict(importance="tayler"), r"dsa: importance is 'bn_scale' \(the default\), 'taylor' or 'hessian', or your function "
                                r"fn\(group, members\).*got 'tayler'"),
    (dict(importance="taylor", importance_batches=0), r"dsa: importance_batches is how many validation batches .* got 0"),
])
def test_dsa_importance_that_cannot_rank_says_what_to_pass(options, message):
    model, x = models.get("resnet20"), torch.randn(2, 3, 16, 16)
    with pytest.raises(graphprune.OptionError, match=message):
        DSAPass(graphprune.analyze(model, x), graphprune.Budget(macs=0.5), model, **options)


def test_dsa_refuses_negative_importance_since_it_ranks_by_its_logarithm():
    model, x = models.get("resnet20"), torch.randn(2, 3, 16, 16)
    dsa = DSAPass(graphprune.analyze(model, x), graphprune.Budget(macs=0.5), model, val_data=labelled_batches(),
                  loss_fn=F.cross_entropy, importance=lambda group, members: -torch.arange(group.size, dtype=torch.float64))
    with pytest.raises(graphprune.GraphPruneError, match=r"logarithm of their importance.*negative scores.*abs\(\) or a square"):
        dsa.importance()
