"""Tracing with fallbacks, shape propagation, and the errors users see."""

import io
import operator

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import graphprune
from graphprune.errors import GuardError
from graphprune.slimming.exactness import exactness_error
from graphprune.tracing.modes import run_in_mode
from graphprune.tracing.tracer import TensorSpec, guard, trace
from helpers import EXACT, group_with, groups_with, random_plan, slim_error


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


class RootLoopOverBatch(nn.Module):
    """``range()`` of a traced size: Python needs an int fx cannot give without ``int(...)``."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        y = self.a(x)
        return torch.stack([y[i] for i in range(x.size(0))])


def conv(i, o, k=3):
    return nn.Conv2d(i, o, k, padding=k // 2)


class ShapeBranch(nn.Module):
    """Branches on the batch size (guarded) and on a channel count (no input changes it)."""

    def __init__(self):
        super().__init__()
        self.stem, self.body, self.head = conv(3, 8), conv(8, 8), conv(8, 4)

    def forward(self, x):
        out = self.stem(x)
        if out.shape[0] > 10:
            out = out * 0.5
        if out.size(1) == 8:
            out = F.relu(out)
        return self.head(self.body(out) + out)


class DataBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = conv(3, 8), conv(8, 6), conv(6, 4)

    def forward(self, x):
        y = F.relu(self.a(x))
        y = self.b(y) if x.max() > 0 else self.b(y * 2)
        return self.c(F.relu(y))


class BoolArgument(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = conv(3, 8), conv(8, 8), conv(8, 4)

    def forward(self, x, residual: bool = True):
        y = F.relu(self.a(x))
        z = self.b(y)
        if residual:
            z = z + y
        return self.c(F.relu(z))


class SuperResolution(nn.Module):
    """Called as ``model(x, scale)``; the scale picks an upsampler and sizes the skip path."""

    def __init__(self):
        super().__init__()
        self.head, self.tail = conv(3, 8), conv(8, 3)
        self.up = nn.ModuleDict({
            "2": nn.Sequential(conv(8, 32), nn.PixelShuffle(2)),
            "4": nn.Sequential(conv(8, 32), nn.PixelShuffle(2), conv(8, 32), nn.PixelShuffle(2)),
        })

    def forward(self, x, scale: int):
        y = self.up[str(scale)](F.relu(self.head(x)))
        return self.tail(y) + F.interpolate(x, scale_factor=scale, mode="bilinear")


class HalfSplit(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c, self.d = conv(3, 8), conv(4, 6), conv(4, 6), conv(6, 3)

    def forward(self, x):
        y = F.relu(self.a(x))
        return self.d(F.relu(self.b(y[:, 0 : int(y.size(1) / 2)]) + self.c(y[:, int(y.size(1) / 2) :])))


class BranchAroundUntraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = WithUntraceable()

    def forward(self, x, flip: bool = False):
        if flip:
            x = x.flip(-1)
        return self.inner(x)


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
    assert gg.cost.params() == sum(p.numel() for p in model.parameters())


def test_user_leaf_modules_by_name_and_type():
    model = WithUntraceable().eval()
    for leaf in ("odd", DataDependent):
        gg = graphprune.analyze(model, torch.randn(1, 3, 10, 10), leaf_modules=[leaf])
        assert gg.fallbacks == []
        assert not group_with(gg, "a").prunable and "not in graphprune's rule table" in group_with(gg, "a").reason


def test_root_control_flow_is_traced_along_the_example_path():
    model, x = RootControlFlow().eval(), torch.rand(1, 3, 4, 4)
    gg = graphprune.analyze(model, x)
    (spec,) = gg.traced.specializations
    assert spec.conversion == "bool" and spec.value is True and spec.guarded and "if x.mean() > 0" in spec.location
    assert gg.cost.params() == sum(p.numel() for p in model.parameters())
    assert torch.equal(gg.gm(x), model(x))
    with pytest.raises(GuardError, match="if x.mean\\(\\) > 0"):
        gg.gm(-x)


def test_untraceable_top_level_code_raises_trace_error_with_location():
    with pytest.raises(graphprune.TraceError) as info:
        graphprune.analyze(RootLoopOverBatch(), torch.randn(2, 3, 4, 4))
    message = str(info.value)
    assert "RootLoopOverBatch" in message and "for i in range(x.size(0))" in message and "submodule" in message


class RootLoopOverChannels(nn.Module):
    """``range()`` of a channel count (torchvision's SSD loops over its classes this way)."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 5, 1), nn.Conv2d(5, 6, 1)

    def forward(self, x):
        y, s = self.b(self.a(x)), 0
        for _ in range(y.size(1)):
            s = s + 1
        return self.c(y) + s


def test_root_range_over_a_channel_count_is_unrolled_and_freezes_those_channels():
    """The graph holds the loop five times, which pruning ``b`` could not change: its guard stays, and reads them."""
    model, x = RootLoopOverChannels().eval(), torch.randn(2, 3, 4, 4)
    gg = graphprune.analyze(model, x)
    (spec,) = gg.traced.specializations
    assert spec.conversion == "range" and spec.value == 5 and spec.guarded and "range(y.size(1))" in spec.location
    assert group_with(gg, "a").prunable
    assert not group_with(gg, "b").prunable and "range(y.size(1))" in group_with(gg, "b").reason
    assert torch.equal(gg.gm(x[:1]), model(x[:1]))


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


def analyze_and_check_exactness(make, inputs: tuple, seeds: int = 3) -> graphprune.GroupGraph:
    """Analyze ``make()`` and check random plans slim exactly (fresh, equally seeded instances)."""
    torch.manual_seed(0)
    gg = graphprune.analyze(make().eval(), inputs)
    for seed in range(seeds):
        plan = random_plan(gg, np.random.default_rng(seed))
        torch.manual_seed(0)
        assert slim_error(make().eval(), gg, plan, inputs) <= EXACT
    return gg


def test_top_level_shape_branch_is_guarded_and_slims_exactly():
    x = torch.randn(2, 3, 8, 8)
    gg = analyze_and_check_exactness(ShapeBranch, (x,))
    batch, channels = gg.traced.specializations
    assert batch.guarded and batch.value is False and "if out.shape[0] > 10" in batch.location
    assert not channels.guarded and channels.value is True  # a channel count: no input changes it
    assert group_with(gg, "stem") is group_with(gg, "body") and group_with(gg, "stem").prunable
    slim = graphprune.slim(gg, random_plan(gg, np.random.default_rng(0), 0.5))
    assert slim(torch.randn(5, 3, 8, 8)).shape == (5, 4, 8, 8)
    buffer = io.BytesIO()
    torch.save(slim, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert torch.equal(loaded(x), slim(x))
    for m in (slim, loaded):
        with pytest.raises(GuardError, match="if out.shape\\[0\\] > 10"):
            m(torch.randn(12, 3, 8, 8))


def test_top_level_data_branch_is_guarded_and_slims_exactly():
    x = torch.randn(2, 3, 8, 8)
    gg = analyze_and_check_exactness(DataBranch, (x,))
    (spec,) = gg.traced.specializations
    assert spec.guarded and "if x.max() > 0" in spec.location
    assert group_with(gg, "a").prunable and group_with(gg, "b").prunable
    result = graphprune.apply(DataBranch().eval(), "l1", 0.5, x)
    with pytest.raises(GuardError, match="condition was True; this input gives False") as info:
        result.model(-x.abs())
    assert "submodule" in str(info.value)


def test_bool_argument_selects_the_traced_branch():
    x = torch.randn(2, 3, 8, 8)
    residual = analyze_and_check_exactness(BoolArgument, (x,))  # the default: True
    plain = analyze_and_check_exactness(BoolArgument, (x, False))
    assert group_with(residual, "a") is group_with(residual, "b")
    assert group_with(plain, "a") is not group_with(plain, "b")
    (spec,) = plain.traced.specializations
    assert spec.conversion == "value" and spec.value is False and "'residual'" in spec.location
    with pytest.raises(GuardError, match="'residual'"):
        plain.gm(x, True)


def test_int_argument_of_a_super_resolution_model():
    x = torch.randn(1, 3, 6, 6)
    gg = analyze_and_check_exactness(SuperResolution, (x, 2))
    output = next(n for n in gg.gm.graph.nodes if n.op == "output").args[0]
    assert gg.traced.values[output].shape == (1, 3, 12, 12)
    assert group_with(gg, "head").prunable and group_with(gg, "up.2.0").prunable
    assert not any(m.module.startswith("up.4") for g in gg.groups for m in g.members)  # not called for x2
    with pytest.raises(GuardError, match="'scale'"):
        gg.gm(x, 4)


def test_int_of_a_channel_count_becomes_a_literal_slice():
    gg = analyze_and_check_exactness(HalfSplit, (torch.randn(2, 3, 8, 8),))
    assert [(s.conversion, s.value, s.guarded) for s in gg.traced.specializations] == [("int", 4, False)] * 2
    halves = groups_with(gg, "a")
    assert [g.size for g in halves] == [4, 4] and all(g.prunable for g in halves)
    assert not any(n.target is guard for n in gg.gm.graph.nodes)


def test_submodules_still_become_leaves_on_the_example_path():
    gg = graphprune.analyze(BranchAroundUntraceable().eval(), torch.randn(1, 3, 10, 10))
    assert [f.module for f in gg.fallbacks] == ["inner.odd"] and "control flow" in gg.fallbacks[0].error
    assert group_with(gg, "inner.b").prunable and not group_with(gg, "inner.a").prunable


class GridEncoder(nn.Module):
    """Branches on its input's size, as timm's qwen3_vit encoder does (its position table as it
    is at its own grid, interpolated otherwise): plain tracing makes it an opaque leaf."""

    def __init__(self, grid: int = 4):
        super().__init__()
        self.grid = grid
        self.pos = nn.Parameter(torch.randn(8, grid, grid))
        self.fc1, self.fc2 = nn.Conv2d(8, 16, 1), nn.Conv2d(16, 8, 1)

    def forward(self, x):
        h, w = x.shape[-2:]
        pos = self.pos if h == self.grid and w == self.grid else F.interpolate(self.pos[None], size=(h, w))[0]
        return x + self.fc2(torch.relu(self.fc1(x + pos)))


class GridModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.encoder, self.head = nn.Conv2d(3, 8, 1), GridEncoder(), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.head(self.encoder(self.stem(x)))


def test_specialize_submodules_traces_a_branching_submodule_along_the_example_path():
    x, other_size = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 6, 6)
    torch.manual_seed(0)
    model = GridModel().eval()
    plain = graphprune.analyze(model, x)
    (fb,) = plain.fallbacks
    assert fb.module == "encoder" and fb.needs_value and "h == self.grid" in fb.location
    assert "analyze with specialize_submodules=True" in group_with(plain, "stem").reason
    assert not any(m.module.startswith("encoder.") for g in plain.groups for m in g.members)

    gg = graphprune.analyze(model, x, specialize_submodules=True)
    assert gg.fallbacks == []
    assert [(s.conversion, s.value, s.guarded) for s in gg.traced.specializations] == [("bool", True, True)] * 2
    hidden, stream = group_with(gg, "encoder.fc1"), group_with(gg, "stem")
    assert hidden.prunable and hidden.size == 16 and stream.prunable and stream is group_with(gg, "encoder", "pos")
    assert gg.cost.params() == sum(p.numel() for p in model.parameters())
    for seed in range(3):
        plan = random_plan(gg, np.random.default_rng(seed))
        torch.manual_seed(0)
        assert slim_error(GridModel().eval(), gg, plan, (x,)) <= EXACT
    slim = graphprune.slim(gg, random_plan(gg, np.random.default_rng(0), 0.5))
    with pytest.raises(GuardError, match="h == self.grid") as info:
        slim(other_size)
    assert "specialize_submodules=True" in str(info.value)
    assert graphprune.slim(plain, graphprune.Plan({}))(other_size).shape == (2, 4, 6, 6)  # the leaf runs its Python


class Patchify(nn.Module):
    def forward(self, x):
        return x, None  # no padding: gemma4_vit's patchifier returns its padding positions beside the patches


class PaddingEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(8, 8, 1)

    def forward(self, x, padding):
        if padding is not None and padding.any():
            x = x.masked_fill(padding, 0)
        return self.a(x)


class PaddedModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.patchify, self.encoder, self.head = nn.Conv2d(3, 8, 1), Patchify(), PaddingEncoder(), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        patches, padding = self.patchify(self.stem(x))
        return self.head(self.encoder(patches, padding))


def test_a_leaf_returning_none_gives_the_code_after_it_none():
    """The padding a leaf returns is None where it runs, not a traced value standing for it (for
    which ``padding is not None`` would hold and ``.any()`` fail): the encoder after it is traced,
    and a guard checks the None (torchvision's detectors: ``images, targets = self.transform(...)``)."""
    x, model = torch.randn(2, 3, 4, 4), PaddedModel().eval()
    gg = graphprune.analyze(model, x, leaf_modules=["patchify"], specialize_submodules=True)
    assert gg.fallbacks == []
    assert [(s.conversion, s.value, s.guarded) for s in gg.traced.specializations] == [("len", 2, True), ("value", None, True)]
    assert "the output of 'patchify'[1]" in gg.traced.specializations[1].location
    assert "test_trace.py" in gg.traced.specializations[1].location and "self.patchify(" in gg.traced.specializations[1].location
    assert group_with(gg, "encoder.a").prunable and group_with(gg, "encoder.a") is group_with(gg, "head", dim=1)
    assert torch.equal(graphprune.slim(gg, graphprune.Plan({}))(x), model(x))


class OptionalMask(nn.Module):
    """forward(x, mask=None): a proxy is never None, so fx alone would trace the masked branch."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x, mask=None):
        y = torch.relu(self.a(x))
        if mask is not None:
            y = y * mask
        return self.b(y)


def test_none_default_takes_the_example_branch_and_is_checked():
    x = torch.randn(2, 3, 8, 8)
    gg = analyze_and_check_exactness(OptionalMask, (x,))
    assert group_with(gg, "a").prunable
    assert not any(n.target is operator.mul for n in gg.gm.graph.nodes)
    with pytest.raises(AssertionError):
        gg.gm(x, torch.ones(1, 8, 1, 1))


class FunctionalDropout(nn.Module):
    """``F.dropout(x, p, self.training)``: fx used to bake the mode at trace time into the graph."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.b(F.dropout(self.a(x), 0.5, self.training))


class DropPath(nn.Module):
    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        return x * (torch.rand_like(x[:, :1, :1, :1]) > self.p) / (1 - self.p)


class DropPathResidual(nn.Module):
    """A submodule whose path depends on the mode (timm's DropPath)."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        self.a, self.expand, self.project, self.out = conv(3, 8, 1), conv(8, 16, 1), conv(16, 8, 1), conv(8, 4, 1)
        self.drop = DropPath(p)

    def forward(self, x):
        h = self.a(x)
        return self.out(h + self.drop(self.project(torch.relu(self.expand(h)))))


class TrainingOutputs(nn.Module):
    """The model's own forward returns auxiliary outputs in training mode (googlenet, inception_v3)."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.aux = conv(3, 8, 1), conv(8, 4, 1), conv(8, 2, 1)

    def forward(self, x):
        h = torch.relu(self.a(x))
        if self.training:
            return self.b(h), self.aux(h)
        return self.b(h)


class EvalOutputs(TrainingOutputs):
    """The model's own forward computes more in eval mode (torchvision's detectors post-process)."""

    def forward(self, x):
        h = torch.relu(self.a(x))
        if self.training:
            return self.b(h)
        return self.b(h).softmax(1)


class BatchNormAct(nn.BatchNorm2d):
    """timm's BatchNormAct2d: a BatchNorm subclass whose own forward branches on self.training."""

    def forward(self, x):
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
        bn_training = True if self.training else self.running_mean is None
        x = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, bn_training, self.momentum, self.eps)
        return torch.relu(x)


class ConvBatchNormAct(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.bn, self.b = nn.Conv2d(3, 8, 1), BatchNormAct(8), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.b(self.bn(self.a(x)))


class EvalReadsDevice(nn.Module):
    """Reads the input's device in eval mode only, as timm's EfficientViT (MSRA) attention does
    to key its bias cache: a call of ``getattr`` that one mode's path makes."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        if not self.training:
            _ = str(x.device)  # the key of its cache
        return self.b(torch.relu(self.a(x)))


def test_a_function_one_mode_calls_runs_in_that_mode_in_the_slim_models_code():
    x = torch.randn(2, 3, 6, 6)
    torch.manual_seed(0)
    model = EvalReadsDevice().eval()
    gg = graphprune.analyze(model, x)
    assert gg.fallbacks == [] and group_with(gg, "a").prunable
    (only_in_eval,) = [n for n in gg.gm.graph.nodes if n.target is run_in_mode]
    assert only_in_eval.args[1:4] == (False, None, "getattr")  # the function by name: generated code holds it
    plan = random_plan(gg, np.random.default_rng(0), 0.5)
    slim = graphprune.slim(gg, plan)
    assert "'getattr'" in slim.code
    torch.manual_seed(0)
    assert slim_error(EvalReadsDevice().eval(), gg, plan, (x,)) <= EXACT
    assert slim.train()(x).shape == slim.eval()(x).shape == (2, 4, 6, 6)


@pytest.mark.parametrize("analyzed_in_training", [True, False])
def test_a_submodule_branching_on_the_mode_only_for_side_effects_is_traced_in_both_modes(analyzed_in_training):
    """Its two paths differ in a constant (batch_norm's training) and a side effect
    (num_batches_tracked): one graph does both, so the channels stay prunable."""
    x = torch.randn(4, 3, 6, 6)
    torch.manual_seed(0)
    model = ConvBatchNormAct().train(analyzed_in_training)
    gg = graphprune.analyze(model, x)
    assert gg.traced.fallbacks == [] and gg.traced.specializations == []
    assert group_with(gg, "a") is group_with(gg, "bn") and group_with(gg, "a").prunable
    keep = [0, 2, 3, 7]
    plan = graphprune.Plan({group_with(gg, "a").id: keep}, {group_with(gg, "a").id: 8})
    slim = graphprune.slim(gg, plan)
    with torch.no_grad():
        model.b.weight[:, [i for i in range(8) if i not in keep]] = 0
    for training in (True, False):
        model.train(training), slim.train(training)
        tracked = int(slim.bn.num_batches_tracked)
        assert torch.allclose(slim(x), model(x), atol=1e-5)  # batch statistics in training, running ones in eval
        assert int(slim.bn.num_batches_tracked) == tracked + training
    assert torch.allclose(slim.bn.running_mean, model.bn.running_mean[keep])


def test_a_mode_passed_to_an_op_follows_the_model_mode_after_slimming():
    x = torch.randn(2, 3, 6, 6)
    torch.manual_seed(0)
    model = FunctionalDropout().train()  # a fresh model is in training mode
    result = graphprune.apply(model, "l1", 0.5, x)
    model.eval(), result.model.eval()
    assert torch.equal(result.model(x), result.model(x))  # no dropout in eval mode (it was baked in before)
    assert slim_error(model, graphprune.analyze(model.train(), x), result.plan, (x,)) <= EXACT
    result.model.train()
    torch.manual_seed(1)
    first = result.model(x)
    torch.manual_seed(2)
    assert not torch.equal(first, result.model(x))  # and dropout in training mode


def test_a_submodule_whose_path_depends_on_the_mode_becomes_a_leaf():
    x = torch.randn(2, 3, 6, 6)
    for mode in (True, False):
        torch.manual_seed(0)
        gg = graphprune.analyze(DropPathResidual().train(mode), x)
        (fallback,) = gg.traced.fallbacks
        assert fallback.module == "drop" and "training mode" in fallback.error
        assert "if not self.training" in fallback.location
        assert group_with(gg, "expand").prunable and not group_with(gg, "a").prunable
    analyze_and_check_exactness(DropPathResidual, (x,))
    result = graphprune.apply(DropPathResidual().train(), "l1", 0.5, x)
    result.model.train()
    assert (result.model.drop(torch.ones(64, 8, 1, 1)) == 0).any()  # still drops paths when training


def test_a_path_that_does_not_change_with_the_mode_needs_no_leaf():
    x = torch.randn(2, 3, 6, 6)
    gg = graphprune.analyze(DropPathResidual(p=0.0).train(), x)
    assert gg.traced.fallbacks == [] and group_with(gg, "a").prunable


def test_a_top_level_forward_with_training_only_outputs_prunes_what_they_read_and_trains_as_its_own_class():
    """The auxiliary head runs in both modes in the graph, so that its input channels follow the
    plan, and costs nothing: eval mode, which the budget is about, never runs it."""
    x = torch.randn(2, 3, 6, 6)
    gg = analyze_and_check_exactness(TrainingOutputs, (x,))
    assert gg.traced.specializations == [] and gg.traced.fallbacks == []
    assert group_with(gg, "a").prunable and any(m.module == "aux" and m.dim == 1 for m in group_with(gg, "a").members)
    assert gg.cost.macs() == 2 * 36 * (3 * 8 + 8 * 4)  # a and b: not aux
    torch.manual_seed(0)
    result = graphprune.apply(TrainingOutputs().train(), "l1", 0.5, x)
    assert type(result.model) is TrainingOutputs and result.model.aux.in_channels == result.model.b.in_channels < 8
    for training in (False, True):
        torch.manual_seed(0)
        assert exactness_error(TrainingOutputs(), gg, result.plan, (x,), result.model, training=training) <= EXACT
    graph = graphprune.apply_plan(TrainingOutputs(), result.plan, x, output="graph")
    assert [o.shape for o in graph.train()(x)] == [(2, 4, 6, 6), (2, 2, 6, 6)] and graph.eval()(x).shape == (2, 4, 6, 6)


class PooledTrainingOutputs(TrainingOutputs):
    """An auxiliary head that needs inputs of 5x5 and more (inception_v3's needs 299x299 images)."""

    def forward(self, x):
        h = torch.relu(self.a(x))
        if self.training:
            return self.b(h), self.aux(F.avg_pool2d(h, 5))
        return self.b(h)


def test_inputs_too_small_for_the_training_only_outputs_keep_the_eval_path_behind_a_guard():
    """Run in both modes, the head would fail on the example: the graph holds the eval path, and
    the model's class, whose training path nothing checked, is refused."""
    small = graphprune.analyze(PooledTrainingOutputs().train(), torch.randn(2, 3, 4, 4))
    (spec,) = small.traced.specializations
    assert (spec.conversion, spec.value) == ("mode", False) and "if self.training" in spec.location
    assert "training-only outputs fail at the example inputs' sizes" in spec.location and "larger example inputs" in spec.location
    assert not any(m.module == "aux" for g in small.groups for m in g.members)
    with pytest.raises(graphprune.ModelRebuildError, match="forward branches at .*mode False"):
        graphprune.apply(PooledTrainingOutputs().train(), "l1", 0.5, torch.randn(2, 3, 4, 4), output="module")
    large = graphprune.analyze(PooledTrainingOutputs().train(), torch.randn(2, 3, 6, 6))
    assert large.traced.specializations == [] and any(m.module == "aux" for m in group_with(large, "a").members)


def test_a_top_level_forward_computing_more_in_eval_mode_keeps_its_eval_path_behind_a_guard():
    x = torch.randn(2, 3, 6, 6)
    torch.manual_seed(0)
    gg = graphprune.analyze(EvalOutputs().train(), x)
    (spec,) = gg.traced.specializations
    assert (spec.conversion, spec.value) == ("mode", False) and "if self.training" in spec.location
    analyze_and_check_exactness(EvalOutputs, (x,))
    result = graphprune.apply(EvalOutputs().train(), "l1", 0.5, x, output="graph")
    assert torch.allclose(result.model.eval()(x).sum(1), torch.ones(2, 6, 6))
    with pytest.raises(GuardError, match="takes another path in training mode"):
        result.model.train()(x)


def first_columns(h, x):
    """How many columns it averages, the input's values decide (Mask R-CNN pastes each mask at its box's size)."""
    n = int((x[0, 0, 0] > 0).sum()) + 1
    return h[..., :n].mean(-1)


class DataSizedByAFunction(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = conv(3, 8, 1), conv(8, 4, 1)

    def forward(self, x):
        return first_columns(self.b(torch.relu(self.a(x))), x)


def test_a_function_turning_tensor_values_into_numbers_runs_as_one_opaque_call():
    """Traced, the graph would hold the example's count under a guard that most inputs fail."""
    x = torch.randn(2, 3, 6, 6)
    x[0, 0, 0] = torch.arange(6) - 2.5  # three positive values: four columns
    gg = analyze_and_check_exactness(DataSizedByAFunction, (x,))
    (fallback,) = gg.fallbacks
    assert fallback.module == "test_trace.first_columns" and "n = int((x[0, 0, 0] > 0).sum()) + 1" in fallback.location
    assert not any(s.guarded for s in gg.traced.specializations)
    assert group_with(gg, "a").prunable and not group_with(gg, "b").prunable  # what the call reads is frozen
    other = x.clone()
    other[0, 0, 0] = torch.arange(6) - 4.5  # one positive value: two columns
    torch.manual_seed(0)
    assert torch.allclose(gg.gm(other), DataSizedByAFunction()(other))


class _Attrs(nn.Module):
    """Nested submodules, a submodule called whole and read from, a buffer, a plain tensor attribute."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Sequential(nn.BatchNorm2d(4), nn.ReLU()))
        self.head = nn.Linear(4, 2)
        self.register_buffer("scale", torch.ones(4), persistent=False)
        self.offset = torch.zeros(2)

    def forward(self, x):
        y = self.body(x).mean((2, 3)) * self.scale
        return self.head(y) + self.head.bias * 0 + self.offset


def test_analysis_graph_module_is_the_graph_module_fx_builds():
    from graphprune.tracing.tracer import AnalysisGraphModule, analysis_graph_module

    model = _Attrs().eval()
    graph = torch.fx.Tracer().trace(model)
    ours, theirs = analysis_graph_module(model, graph, "Attrs"), AnalysisGraphModule(model, graph, "Attrs")

    def tree(gm):
        return ([(k, type(m).__name__) for k, m in gm.named_modules()], [(k, id(t)) for k, t in gm.named_parameters()],
                [(k, id(t)) for k, t in gm.named_buffers()], list(gm.state_dict()), gm.offset is model.offset)

    assert tree(ours) == tree(theirs) and ours.graph is graph and ours._tracer_cls is theirs._tracer_cls
    x = torch.randn(2, 3, 5, 5)
    assert torch.equal(ours(x), model(x))


def test_nodes_made_in_a_library_beside_torch_name_its_line():
    """torchvision's directory starts with torch's: its lines are the user's code, not torch's."""
    import torchvision

    from graphprune.common.locations import FRAME, describe_node

    gg = graphprune.analyze(torchvision.models.resnet18(weights=None).eval(), torch.randn(1, 3, 32, 32))
    add = next(n for n in gg.gm.graph.nodes if n.op == "call_function" and n.target in (operator.add, operator.iadd, torch.add))
    filename, lineno = add.meta[FRAME]
    assert filename.endswith("torchvision/models/resnet.py")
    assert describe_node(add).endswith(f'resnet.py:{lineno} "out += identity" in module \'layer1.0\' (fx node \'{add.name}\')')


# ---------------------------------------------------------------- detection models' Python (issue #27)

class ChunkBlock(nn.Module):
    """YOLO's C2f: a chunk made a list, extended by a generator over its modules."""

    def __init__(self, c=8, n=2):
        super().__init__()
        self.cv1, self.cv2 = conv(c, 2 * c, 1), conv((2 + n) * c, c, 1)
        self.m = nn.ModuleList(conv(c, c) for _ in range(n))

    def forward(self, x):
        y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class GridHead(nn.Module):
    """YOLO's Detect: called with a list of feature maps, returns their outputs in training mode and
    decodes them in eval mode, with a grid it caches by the shape it was made for."""

    shape = None

    def __init__(self):
        super().__init__()
        self.box = nn.ModuleList(conv(8, 4, 1) for _ in range(2))

    def forward(self, xs):
        out = [b(x) for b, x in zip(self.box, xs)]
        if self.training:
            return out
        shape = out[0].shape
        if self.shape != shape:
            self.grid = torch.cat([torch.arange(o.shape[-2] * o.shape[-1], dtype=o.dtype) for o in out])
            self.shape = shape
        return torch.cat([o.flatten(2) for o in out], 2) + self.grid


class Detector(nn.Module):
    """Ultralytics' models: ``forward(self, x, *args, **kwargs)`` passes its arguments on."""

    def __init__(self):
        super().__init__()
        self.stem, self.block, self.down, self.head = conv(3, 8), ChunkBlock(), conv(8, 8), GridHead()
        self.down.stride = (2, 2)

    def forward(self, x, *args, **kwargs):
        return self.predict(x, *args, **kwargs)

    def predict(self, x, profile=False):
        p3 = self.block(self.stem(x))
        return self.head([p3, self.down(p3)])


def test_a_yolo_like_detector_is_one_graph_in_both_modes():
    """No leaf, no guard: *args forwarded, a chunk iterated, a head whose path differs by mode only in
    what the model returns (each mode's ops run in that mode), a cache compared with a shape."""
    x = torch.randn(2, 3, 8, 8)
    gg = analyze_and_check_exactness(Detector, (x,))
    assert gg.fallbacks == [] and gg.traced.specializations == []
    halves = groups_with(gg, "block.cv1")
    assert len(halves) == 2 and all(g.prunable and g.size == 8 for g in halves)
    assert group_with(gg, "block.m.1").prunable and group_with(gg, "stem").prunable
    assert not group_with(gg, "head.box.0").prunable  # the model's output, in either mode
    torch.manual_seed(0)
    model = Detector()
    with torch.no_grad():
        assert torch.equal(gg.gm.eval()(x), model.eval()(x))
        assert all(torch.equal(a, b) for a, b in zip(gg.gm.train()(x), model.train()(x)))
    result = graphprune.apply(Detector().eval(), "l1", 0.5, x)
    assert type(result.model) is Detector and result.report.macs_after <= 0.505 * result.report.macs_before


class PerImage(nn.Module):
    """torchvision's detectors: a list of images of different sizes."""

    def __init__(self):
        super().__init__()
        self.a, self.b = conv(3, 8, 1), conv(8, 4, 1)

    def forward(self, images):
        return [self.b(self.a(img[None])) for img in images]


def test_a_forward_taking_a_list_of_images_is_traced_for_that_many():
    images = [torch.randn(3, 8, 8), torch.randn(3, 6, 6)]
    gg = analyze_and_check_exactness(PerImage, (images,))
    assert [(s.conversion, s.value, s.guarded) for s in gg.traced.specializations] == [("len", 2, True)]
    assert group_with(gg, "a").prunable
    with pytest.raises(GuardError, match="length"):
        gg.gm(images[:1])


class AssertsTensor(nn.Module):
    """torchvision's box coder asserts ``isinstance(rel_codes, torch.Tensor)``; the branch on a value
    makes the forward traced along the example's path."""

    def __init__(self):
        super().__init__()
        self.a, self.b = conv(3, 8), conv(8, 4)

    def forward(self, x):
        h = self.a(x)
        torch._assert(isinstance(h, torch.Tensor), "h must be a tensor")
        if x.mean() > -100:
            h = h.relu()
        return self.b(h)


def test_isinstance_in_the_models_code_sees_the_example_values_type():
    gg = analyze_and_check_exactness(AssertsTensor, (torch.randn(2, 3, 8, 8),))
    assert gg.fallbacks == [] and group_with(gg, "a").prunable


class ChunkSplitBlock(nn.Module):
    """YOLO's C2f: a chunk made a list, extended by a generator over its modules; a split unpacked."""

    def __init__(self, c=8, n=2):
        super().__init__()
        self.cv1, self.cv2 = conv(c, 2 * c, 1), conv((2 + n) * c + c, c, 1)
        self.m = nn.ModuleList(conv(c, c) for _ in range(n))

    def forward(self, x):
        y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        a, b = x.split([3, 5], 1)
        return self.cv2(torch.cat(y + [a, b], 1))


@pytest.mark.parametrize("specialize", [False, True])
def test_iterating_a_chunk_or_split_takes_its_count_from_its_arguments(specialize):
    """No guard and no fallback: the count is in the arguments, the same for every input."""
    model, x = ChunkSplitBlock().eval(), torch.randn(2, 8, 5, 5)
    gg = graphprune.analyze(model, x, specialize_submodules=specialize)
    assert gg.fallbacks == [] and gg.traced.specializations == []
    halves = groups_with(gg, "cv1")
    assert len(halves) == 2 and all(g.prunable for g in halves) and group_with(gg, "m.0").prunable
    plan = random_plan(gg, np.random.default_rng(0), 0.5)
    assert slim_error(model, gg, plan, (x,)) <= EXACT and slim_error(model, gg, plan, (x[:1],)) <= EXACT
