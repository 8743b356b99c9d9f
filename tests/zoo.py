"""What the zoo tests check for one model: exact counts, coverage, frozen reasons, no leaks."""

from __future__ import annotations

import numpy as np
import torch
from graphprune.slimming.exactness import exactness_error
from graphprune.tracing.flops import flop_counter
from graphprune.tracing.modes import TRAINING_ONLY
from graphprune.rebuild.user_class import class_fit, user_class_model

import graphprune
from helpers import leak_check, random_keep

#: torchvision families whose every channel space except image input and logits must be prunable
CNN_FAMILIES = (
    "resnet", "resnext", "wide_resnet", "mobilenet", "efficientnet", "mnasnet", "densenet", "regnet",
    "vgg", "squeezenet", "googlenet", "inception_v3", "shufflenet_v2", "alexnet",
)

#: too large to build on a 24 GiB machine next to its analysis
TOO_LARGE = {"vit_h_14": "632M parameters at 518x518", "regnet_y_128gf": "645M parameters"}


def input_for(name: str, reduced: bool) -> tuple[dict, torch.Tensor]:
    """Model kwargs and an example input: small inputs where the architecture allows them."""
    if name.startswith("vit"):
        return ({"image_size": 64}, torch.randn(1, 3, 64, 64)) if reduced else ({}, torch.randn(1, 3, 224, 224))
    if name.startswith("inception"):  # its auxiliary head, which trains with it, needs 299x299
        return {}, torch.randn(1, 3, 299, 299)
    if name.startswith(("swin", "maxvit")):
        return {}, torch.randn(1, 3, 224, 224)
    return {}, torch.randn(1, 3, 64, 64) if reduced else torch.randn(1, 3, 224, 224)


def check_model(model: torch.nn.Module, x: torch.Tensor, name: str, leak_seeds: int = 1, **analyze_options) -> graphprune.GroupGraph:
    model.eval()
    with torch.no_grad():  # a zero-initialized head (torchvision's ViT) zeroes every output: no check could fail
        for p in model.parameters():
            if p.dim() > 1 and not p.any():
                p.normal_(0, 0.02)
    gg = graphprune.analyze(model, x, **analyze_options)
    with flop_counter() as counter:
        model(x)
    assert gg.cost.params() == sum(p.numel() for p in model.parameters())
    assert gg.cost.macs() == counter.get_total_flops() // 2
    assert gg.prunable_groups, f"{name}: no prunable group"
    for g in gg.groups:
        assert g.prunable or g.reason, f"{name}: group {g.id} frozen without a reason"
    if name.startswith(CNN_FAMILIES):
        frozen = {g.reason for g in gg.groups if not g.prunable}
        assert all("model input" in r or r == "model output" for r in frozen), f"{name}: {frozen}"
        assert gg.prunable_mac_share() == 1.0
    tensors = [*model.parameters(), *model.buffers()]
    saved = [t.detach().clone() for t in tensors]
    for seed in range(leak_seeds):
        assert leak_check(model, gg, random_keep(gg, np.random.default_rng(seed)), (x,), seed) == 0.0
    with torch.no_grad():  # the leak check zeroed and garbled channels: later checks get the model back
        for t, value in zip(tensors, saved):
            t.copy_(value)
    return gg


def check_slim(model: torch.nn.Module, gg: graphprune.GroupGraph, x: torch.Tensor, onnx_path: str, seed: int = 0) -> None:
    """Random 50% plan: the slim model costs what the budget says, is exact, and exports to ONNX."""
    from helpers import EXACT, random_plan, slim_at_budget, slim_error

    plan = random_plan(gg, np.random.default_rng(seed), 0.5)
    plan = graphprune.Plan({g: k for g, k in plan.keep.items() if not gg.groups[g].inexact}, plan.sizes)
    slim = slim_at_budget(gg, plan, x)
    report = graphprune.export_onnx(slim, onnx_path, x)
    assert report.relative_diff <= 1e-4 and report.dynamic_batch_checked
    # the model of the user's class, pruned in every group its code can carry (see bench/results/own_class.md)
    carried = class_fit(gg).carried(plan, gg)
    own, _, _ = user_class_model(gg, carried)
    assert type(own) is type(model)
    for inputs in ((x,), (other_batch(x),)):  # exact at the example's batch and another (zeroing a subset of plan's channels)
        assert exactness_error(model, gg, carried, inputs, own) <= EXACT
    assert slim_error(model, gg, plan, (x,)) <= EXACT
    if any(n.meta.get(TRAINING_ONLY) for n in gg.gm.graph.nodes):  # auxiliary heads: the class trains with them
        x2 = torch.cat([x, x.flip(-1)])  # BatchNorm on batch statistics needs two values a channel (1x1 maps)
        assert exactness_error(model, gg, carried, (x2,), own, training=True) <= EXACT  # last: BatchNorm's statistics move


def other_batch(x: torch.Tensor) -> torch.Tensor:
    """``x`` at another batch size: its first row alone, or its rows twice."""
    return x[:1] if x.shape[0] > 1 else torch.cat([x, x])
