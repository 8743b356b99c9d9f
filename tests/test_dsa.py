"""DSA against its math (Eq. 2, 5, 6, 9) and end to end under a budget."""

import pytest
import torch
import torch.nn.functional as F
import torchvision

import graphprune
from graphprune import models
from graphprune.passes.dsa import DSAPass, ExpectedKeep, inexactness, keep_probabilities, sample_masks
from helpers import slim_error


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


def make_pass(model, x, budget):
    gg = graphprune.analyze(model, x)
    return DSAPass(gg, graphprune.Budget(macs=budget), model, val_data=[(x, torch.zeros(len(x), dtype=torch.long))], loss_fn=F.cross_entropy)


def test_budget_gradient_matches_autograd_through_sympy():
    model, x = models.get("resnet20"), torch.randn(2, 3, 32, 32)
    dsa = make_pass(model, x, 0.5)
    alphas = torch.rand(len(dsa.group_ids), dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(dsa.cost(alphas), alphas)
    b = dsa.gg.budget
    expr = 100 * b.expr("macs") / b.exact("macs")
    values = dict(zip(b.symbols, [1.0] * len(b.symbols)))
    for i, gid in enumerate(dsa.group_ids):
        values[b.symbols[dsa._budget_index[i]]] = float(alphas[i].detach())
    for i in range(0, len(dsa.group_ids), 3):
        symbol = b.symbols[dsa._budget_index[i]]
        assert float(grad[i]) == pytest.approx(float(expr.diff(symbol).subs(values)), rel=1e-9)


def test_z_step_lands_within_the_budget():
    model, x = models.get("resnet20"), torch.randn(2, 3, 32, 32)
    dsa = make_pass(model, x, 0.4)
    dsa.inner_steps = 2000
    dsa.z_step()
    assert float(dsa.cost(torch.sigmoid(dsa.z))) <= dsa._target + 0.1


def test_theta_step_only_shrinks_and_is_scale_free():
    """Projected gradient, Adam: on the first step every group moves by 0 or exactly theta_lr."""
    torch.manual_seed(0)
    model, x = models.get("resnet20"), torch.randn(8, 3, 32, 32)
    dsa = make_pass(model, x, 0.5)
    dsa.attach()
    before = dsa.theta.clone()
    dsa.allocation_step()
    moved = before - dsa.theta
    assert bool(((moved.abs() < 1e-9) | ((moved - dsa.theta_lr).abs() < 1e-4)).all())
    assert float(moved.max()) == pytest.approx(dsa.theta_lr)  # the budget pressure moves some group
    dsa.detach()


def test_allocation_without_validation_data_says_what_to_pass():
    model, x = models.get("resnet20"), torch.randn(2, 3, 32, 32)
    dsa = DSAPass(graphprune.analyze(model, x), graphprune.Budget(macs=0.5), model)
    with pytest.raises(graphprune.GraphPruneError, match="val_data="):
        dsa.allocation_step()


def test_beta2_grows_once_per_epoch_seen_after_warmup():
    dsa = make_pass(models.get("resnet20"), torch.randn(2, 3, 32, 32), 0.5)
    dsa.warmup_epochs = 1
    for _ in range(3):
        dsa.end_epoch(0)  # apply() runs fit one epoch at a time: its epoch index is always 0
    assert dsa.epoch == 3 and dsa.beta2 == pytest.approx(0.05 * 1.1**2)


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
    result = graphprune.apply(model, "dsa", 0.5, x[:2], train_data=train, loss_fn=F.cross_entropy, epochs=40,
                              val_data=val, steps_between=1)
    assert 0.495 <= result.report.macs_ratio <= 0.5
    model.eval()
    assert slim_error(model, result.groups, result.plan, (x[:2],)) <= 1e-5
    report = graphprune.export_onnx(result.model.eval(), str(tmp_path / "dsa.onnx"), x[:2])
    assert report.relative_diff < 1e-4
    sensitivity = result.method.sensitivity()
    assert bool(torch.isfinite(sensitivity).all()) and float(sensitivity.abs().max()) == pytest.approx(1.0)
    result.method.report_png(str(tmp_path / "dsa.png"))
    assert (tmp_path / "dsa.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
