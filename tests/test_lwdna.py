"""LW-DNA (widen, reparameterize, one-shot shrinkage, floors) end to end under a budget."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision

import graphprune
from graphprune import models
from graphprune.cli import main as cli
from graphprune.passes.reparam import classifier_inputs
from helpers import EXACT, slim_error


def batches(shape, n=2, per_batch=4, classes=10):
    torch.manual_seed(0)
    return [(torch.randn(per_batch, *shape[1:]), torch.randint(0, classes, (per_batch,))) for _ in range(n)]


def lwdna(model, x, budget=1.0, **options):
    return graphprune.apply(model, "lwdna", budget, x, train_data=batches(x.shape), loss_fn=F.cross_entropy, **options)


def test_the_budget_is_met_relative_to_the_original_and_the_floors_hold():
    torch.manual_seed(0)
    model, x = models.get("resnet20"), torch.randn(2, 3, 32, 32)
    result = lwdna(model, x, 1.0)
    method = result.method
    assert result.report.macs_before == graphprune.analyze(models.get("resnet20"), x).cost.macs()  # the original's
    assert 0.995 <= result.report.macs_ratio <= 1.0
    counts = result.plan.counts()
    classifier = classifier_inputs(method.wide_gg, method.widened.model, method.latents.layers)
    assert len(classifier) == 1
    for gid in method.group_ids:
        original = method.gg.groups[method.origin[gid]].size
        assert method.floors[gid] == math.ceil((0.45 if gid in classifier else 0.4) * original)
        assert counts.get(gid, method.wide_gg.groups[gid].size) >= method.floors[gid]
    sizes = [p.shape for p in result.model.parameters()]
    assert sizes != [p.shape for p in model.parameters()]  # a differentiated configuration, not the original
    widths = method.width_percentages(result.plan)
    assert max(widths.values()) > 100 and min(widths.values()) >= 40 - 1e-9  # grows some layers, floors the rest


def test_relative_to_the_widened_model():
    torch.manual_seed(0)
    model, x = models.get("resnet20"), torch.randn(2, 3, 32, 32)
    result = lwdna(model, x, 0.5, relative_to="widened")
    wide = result.method.wide_gg.cost.macs()
    assert 0.495 * wide <= result.report.macs_after <= 0.5 * wide


def test_the_result_is_exact_on_the_widened_model_and_re_initialized(tmp_path):
    torch.manual_seed(0)
    model, x = models.get("resnet20"), torch.randn(2, 3, 32, 32)
    result = lwdna(model, x, 0.8)
    wide = result.method.widened.model.eval()
    assert slim_error(wide, result.groups, result.plan, (x,)) <= EXACT
    again = graphprune.slim(result.groups, result.plan)
    assert not torch.equal(next(again.parameters()), next(result.model.parameters()))  # fresh weights, not the hypernetworks'
    report = graphprune.export_onnx(result.model.eval(), str(tmp_path / "lwdna.onnx"), x)
    assert report.relative_diff < 1e-4
    result.method.report_png(str(tmp_path / "lwdna.png"))
    assert (tmp_path / "lwdna.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_gradient_criterion_ranks_by_latent_sensitivity():
    torch.manual_seed(0)
    model, x = models.get("resnet20"), torch.randn(2, 3, 32, 32)
    session = graphprune.prepare(model, "lwdna", 1.0, x, train_data=batches(x.shape), loss_fn=F.cross_entropy)
    method = session.method
    scores = method.score()
    latents = method.latents.bank.values
    assert latents.grad is not None
    for gid, s in scores.items():
        seg = slice(method.latents.offsets[gid], method.latents.offsets[gid] + method.wide_gg.groups[gid].size)
        assert np.allclose(s, latents.grad[seg].abs().double().numpy())
    kept = session.finish().plan
    for gid, keep in kept.keep.items():  # within a group, the kept channels are its highest scores
        dropped = np.delete(scores[gid], keep)
        assert len(dropped) == 0 or scores[gid][keep].min() >= dropped.max()


def test_magnitude_criterion_and_a_run_without_data():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    result = graphprune.apply(models.get("resnet20"), "lwdna", 1.0, x, criterion="magnitude",
                              train_data=batches(x.shape), loss_fn=F.cross_entropy)
    assert 0.995 <= result.report.macs_ratio <= 1.0
    result = graphprune.apply(models.get("resnet20"), "lwdna", 1.0, x)  # labels sampled from the model's predictions
    assert 0.995 <= result.report.macs_ratio <= 1.0


def test_bad_input_says_what_to_do():
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(graphprune.GraphPruneError, match="beta"):
        graphprune.prepare(models.get("resnet20"), "lwdna", 1.0, x, beta=0.5)
    with pytest.raises(graphprune.BudgetError, match="conv_floor"):
        graphprune.prepare(models.get("resnet20"), "lwdna", 0.05, x)
    with pytest.raises(graphprune.GraphPruneError, match="criterion"):
        graphprune.prepare(models.get("resnet20"), "lwdna", 1.0, x, criterion="random")


def test_apply_trains_the_lwdna_model_from_scratch():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    untrained = lwdna(models.get("resnet20"), x, 1.0).model  # re-initialized with the pass's seed
    trained = lwdna(models.get("resnet20"), x, 1.0, epochs=1).model
    pairs = list(zip(untrained.parameters(), trained.parameters()))
    assert all(a.shape == b.shape for a, b in pairs)
    again = lwdna(models.get("resnet20"), x, 1.0).model
    assert all(torch.equal(a, b) for a, b in zip(untrained.parameters(), again.parameters()))  # seeded: the untrained state
    assert not all(torch.equal(a, b) for a, b in pairs)  # the epoch trained it
    with pytest.raises(graphprune.GraphPruneError, match="train_data"):
        graphprune.apply(models.get("resnet20"), "lwdna", 1.0, x, epochs=1)


def test_the_cli_prunes_with_lwdna(tmp_path):
    assert cli(["prune", "graphprune.models:resnet20", "--method", "lwdna", "--budget", "1.0",
                "--onnx", str(tmp_path / "m.onnx")]) == 0


def zoo(name):
    if name in ("resnet56", "mobilenet_v2", "densenet40"):
        return models.get(name), torch.randn(2, *models.input_shape(name)[1:]), {}
    return torchvision.models.get_model(name, weights=None, num_classes=10), torch.randn(2, 3, 64, 64), {"embedding": 2}


@pytest.mark.parametrize("name", ["resnet56", pytest.param("densenet40", marks=pytest.mark.slow),
                                  pytest.param("mobilenet_v2", marks=pytest.mark.slow),
                                  pytest.param("resnet50", marks=pytest.mark.slow),
                                  pytest.param("regnet_y_400mf", marks=pytest.mark.slow)])
def test_lwdna_end_to_end_slims_exactly_and_exports(name, tmp_path):
    torch.manual_seed(0)
    model, x, options = zoo(name)
    result = lwdna(model, x, 1.0, **options)
    assert 0.995 <= result.report.macs_ratio <= 1.0
    assert slim_error(result.method.widened.model.eval(), result.groups, result.plan, (x,)) <= EXACT
    report = graphprune.export_onnx(result.model.eval(), str(tmp_path / f"{name}.onnx"), x)
    assert report.relative_diff < 1e-4
