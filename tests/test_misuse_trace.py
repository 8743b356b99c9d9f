"""No silent or misleading result (issue #23): analysis leaves the model as it was, softmax without
``dim``, submodules called with a list they change, and messages that name the user's line."""

import inspect

import pytest
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

import graphprune
from graphprune.errors import ExampleInputError, TraceError
from graphprune.slimming.exactness import half_plan, randomize_small_tensors
from helpers import EXACT, group_with, slim_error


def line_of(function, text: str) -> int:
    """The line number of the first line of ``function``'s source holding ``text``."""
    lines, start = inspect.getsourcelines(function)
    return start + next(i for i, line in enumerate(lines) if text in line)


def here(function, text: str) -> str:
    """How messages name that line: ``.../test_misuse_trace.py:LINE``."""
    return f"test_misuse_trace.py:{line_of(function, text)}"


# ---------------------------------------------------------------------------------- the model's state

class Stateful(nn.Module):
    """Stores what its forward sees in itself: a cache keyed by a traced value (timm's
    EfficientFormer keys its attention-bias cache by ``str(x.device)``), a list, a counter, a new
    attribute and a buffer updated in place."""

    def __init__(self):
        super().__init__()
        self.conv, self.head = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)
        self.bias = nn.Parameter(torch.randn(8, 1, 1))
        self.register_buffer("steps", torch.zeros(()))
        self.cache, self.seen, self.calls = {}, [], 0

    def forward(self, x):
        key = str(x.device)
        if key not in self.cache:
            self.cache[key] = self.bias * 2
        self.seen.append(x.shape)
        self.calls += 1
        self.last = x
        self.steps.add_(1)
        return self.head(torch.relu(self.conv(x) + self.cache[key]))


def contents(value) -> list | None:
    """What a dict (keys and values), list or set holds; None for anything else."""
    if isinstance(value, dict):
        return [x for item in value.items() for x in item]
    return list(value) if isinstance(value, (list, set)) else None


def python_state(model: nn.Module) -> tuple[dict, list]:
    """Every module's attributes with what their containers hold, and the buffers' values."""
    attributes = {(name, k): (v, contents(v)) for name, m in model.named_modules() for k, v in vars(m).items()}
    return attributes, [(b, b.clone()) for b in model.buffers()]


def assert_same_state(model: nn.Module, before: tuple[dict, list]) -> None:
    """The same objects in every attribute and container (compared by identity), the same buffer values."""
    attributes, buffers = before
    now, _ = python_state(model)
    assert now.keys() == attributes.keys(), now.keys() ^ attributes.keys()
    for key, (value, held) in attributes.items():
        assert now[key][0] is value, key
        if held is not None:
            assert len(now[key][1]) == len(held) and all(a is b for a, b in zip(now[key][1], held)), key
    for b, value in buffers:
        assert torch.equal(b, value)


def test_analysis_leaves_what_forward_stores_as_it_was():
    model, x = Stateful().eval(), torch.randn(2, 3, 8, 8)
    before = python_state(model)
    first = graphprune.analyze(model, x)
    assert model.cache == {} and model.seen == [] and model.calls == 0 and not hasattr(model, "last")
    assert model.steps.item() == 0
    assert_same_state(model, before)
    second = graphprune.analyze(model, x)  # the first left no proxy for the second to read
    assert [(g.size, g.reason) for g in second.groups] == [(g.size, g.reason) for g in first.groups]
    assert group_with(second, "conv").prunable
    assert_same_state(model, before)


class FailsAfterStoring(Stateful):
    def forward(self, x):
        self.cache[str(x.device)] = x
        self.seen.append(x)
        self.calls += 1
        h = self.conv(x)
        for _ in range(h.size(0)):  # range() of the batch size: tracing fails (of a channel count it would not)
            pass
        return h


def test_a_failed_analysis_leaves_the_model_as_it_was():
    model = FailsAfterStoring().eval()
    before = python_state(model)
    with pytest.raises(TraceError):
        graphprune.analyze(model, torch.randn(2, 3, 8, 8))
    assert model.cache == {} and model.seen == [] and model.calls == 0
    assert_same_state(model, before)


_SCALE = torch.tensor(2.0)  # one tensor object in both modes: fx stores it on the model as a constant


class MakesConstants(nn.Module):
    """fx stores a tensor that forward creates or reads from a global on the model itself
    (``_tensor_constant0``). The forward branches on ``self.training``: the graph merges the two
    modes' traces, and both read the constant from the model when they are built."""

    def __init__(self):
        super().__init__()
        self.conv, self.head = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)
        self.register_buffer("steps", torch.zeros(()))

    def forward(self, x):
        y = self.conv(x) * _SCALE
        if self.training:
            self.steps.add_(1)
        return self.head(y)


def test_constants_fx_makes_stay_off_the_model():
    model, x = MakesConstants().eval(), torch.randn(2, 3, 4, 4)
    before = python_state(model)
    gg = graphprune.analyze(model, x)
    assert not gg.traced.specializations  # merged: no mode guard
    assert_same_state(model, before)
    assert not [k for k in vars(model) if k.startswith("_tensor_constant")]
    with torch.no_grad():
        assert torch.equal(gg.gm(x), model(x))
    assert group_with(gg, "conv").prunable


def proxies_in(model: nn.Module) -> list[str]:
    """Where a module's attributes hold an fx proxy, or a key that is a proxy's text."""
    found = []

    def visit(where: str, value) -> None:
        if isinstance(value, fx.Proxy) or (isinstance(value, str) and value.startswith("Proxy(")):
            found.append(where)
        elif isinstance(value, dict):
            for k, v in value.items():
                visit(f"{where}[{k!r}]", k)
                visit(f"{where}[{k!r}]", v)
        elif isinstance(value, (list, tuple, set)):
            for v in value:
                visit(where, v)

    for name, m in model.named_modules():
        for k, v in vars(m).items():
            visit(f"{name}.{k}", v)
    return found


def test_timm_efficientformer_analyzes_the_same_twice():
    """Its eval-mode forward caches attention biases by ``str(x.device)``: the first analysis left a
    proxy under 'Proxy(getattr_2)', and the second found 22 groups instead of 24."""
    timm = pytest.importorskip("timm")
    model, x = timm.create_model("efficientformer_l1", pretrained=False).eval(), torch.randn(1, 3, 224, 224)
    first = graphprune.analyze(model, x)
    assert not proxies_in(model)
    assert all(not m.attention_bias_cache for m in model.modules() if hasattr(m, "attention_bias_cache"))
    second = graphprune.analyze(model, x)
    assert len(first.groups) == len(second.groups) == 24
    assert [(g.size, g.prunable) for g in first.groups] == [(g.size, g.prunable) for g in second.groups]
    assert not proxies_in(model)


# ------------------------------------------------------------------------------- softmax without dim

class Classifier(nn.Module):
    def __init__(self, act: nn.Module | None = None, function=None):
        super().__init__()
        self.a, self.b = nn.Linear(6, 8), nn.Linear(8, 5)
        self.act, self.function = act, function

    def forward(self, x):
        y = self.b(torch.relu(self.a(x)))
        return self.act(y) if self.act is not None else self.function(y)


@pytest.mark.filterwarnings("ignore:Implicit dimension choice")
@pytest.mark.parametrize(("make", "shape", "mixes_channels"), [
    (lambda: Classifier(nn.LogSoftmax()), (2, 6), True),  # NNI's op-zoo model
    (lambda: Classifier(nn.Softmax()), (2, 6), True),
    (lambda: Classifier(nn.Softmin()), (2, 6), True),
    (lambda: Classifier(nn.LogSoftmax()), (2, 3, 6), False),  # 3-d: torch normalizes over dim 0
    (lambda: Classifier(function=F.log_softmax), (2, 6), True),
    (lambda: Classifier(function=F.softmax), (2, 3, 6), False),
], ids=["LogSoftmax", "Softmax", "Softmin", "LogSoftmax-3d", "F.log_softmax", "F.softmax-3d"])
def test_softmax_without_dim_normalizes_where_torch_does(make, shape, mixes_channels):
    model, x = make().eval(), torch.randn(*shape)
    randomize_small_tensors(model)
    gg = graphprune.analyze(model, x)
    assert group_with(gg, "a").prunable
    out = group_with(gg, "b")
    if mixes_channels:
        assert "combines values across the channels" in out.reason
    else:
        assert out.reason == "model output"
    assert slim_error(model, gg, half_plan(gg), (x,)) <= EXACT


# ------------------------------------------------------------------- a submodule called with a list

def cbs(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1), nn.BatchNorm2d(c_out), nn.SiLU())


class Detect(nn.Module):
    """Ultralytics YOLO's detection head: writes each level's output into the list it is given.
    ``training_path``: in training mode it returns that list (as Ultralytics' does)."""

    def __init__(self, channels=(8, 16, 32), classes=4, box=4, training_path=False):
        super().__init__()
        self.nl, self.no, self.training_path = len(channels), classes + box, training_path
        self.cv2 = nn.ModuleList(nn.Sequential(cbs(c, 8), nn.Conv2d(8, box, 1)) for c in channels)
        self.cv3 = nn.ModuleList(nn.Sequential(cbs(c, 8), nn.Conv2d(8, classes, 1)) for c in channels)

    def forward(self, x):
        for i in range(self.nl):
            x[i] = torch.cat((self.cv2[i](x[i]), self.cv3[i](x[i])), 1)
        if self.training_path and self.training:
            return x
        shape = x[0].shape
        return torch.cat([xi.view(shape[0], self.no, -1) for xi in x], 2)


class Yolo(nn.Module):
    def __init__(self, training_path=False):
        super().__init__()
        self.p3, self.p4, self.p5 = cbs(3, 8, 2), cbs(8, 16, 2), cbs(16, 32, 2)
        self.detect = Detect(training_path=training_path)

    def forward(self, x):
        p3 = self.p3(x)
        p4 = self.p4(p3)
        return self.detect([p3, p4, self.p5(p4)])


@pytest.mark.parametrize("specialize", [False, True])
def test_a_head_that_writes_into_its_input_list_is_traced(specialize):
    model, x = Yolo().eval(), torch.randn(2, 3, 32, 32)
    randomize_small_tensors(model)
    gg = graphprune.analyze(model, x, specialize_submodules=specialize)
    assert not gg.fallbacks
    for level in ("p3.0", "p4.0", "p5.0", "detect.cv2.0.0.0", "detect.cv3.2.0.0"):
        assert group_with(gg, level).prunable, level
    assert group_with(gg, "detect.cv2.1.1").reason == "model output"
    assert slim_error(model, gg, half_plan(gg), (x,)) <= EXACT


@pytest.mark.parametrize("specialize", [False, True])
def test_a_head_that_returns_its_input_list_in_training_is_traced(specialize):
    """Its path differs by mode only in what the model's output reads: the graph computes each
    mode's ops in that mode and returns that mode's output (this head ran as an opaque leaf)."""
    model, x = Yolo(training_path=True).eval(), torch.randn(2, 3, 32, 32)
    gg = graphprune.analyze(model, x, specialize_submodules=specialize)
    assert not gg.fallbacks
    for level in ("p3.0", "p4.0", "p5.0", "detect.cv2.0.0.0", "detect.cv3.2.0.0"):
        assert group_with(gg, level).prunable, level
    assert "runs in eval mode only" in group_with(gg, "detect.cv2.1.1").reason  # and in training, a model output
    with torch.no_grad():
        assert torch.equal(gg.gm(x), model(x))
        for got, want in zip(gg.gm.train()(x), model.train()(x)):  # the list the head wrote into
            assert torch.equal(got, want)


def test_a_model_whose_leaf_changes_its_input_list_slims():
    model, x = Yolo(training_path=True).eval(), torch.randn(2, 3, 32, 32)
    gg = graphprune.analyze(model, x)
    assert slim_error(model, gg, half_plan(gg), (x,)) <= EXACT


# ------------------------------------------------------------------------------- the user's lines

class Body(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 1)

    def forward(self, x):
        return self.conv(x).cumsum(1)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.body, self.head = nn.Conv2d(3, 8, 1), Body(), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.head(self.body(self.stem(x)))


def test_a_frozen_reason_names_the_users_line_and_module():
    gg = graphprune.analyze(Net().eval(), torch.randn(1, 3, 4, 4))
    frozen = group_with(gg, "body.conv")
    assert not frozen.prunable
    assert frozen.reason.startswith(".cumsum() at ")
    assert here(Body.forward, "cumsum(1)") in frozen.reason and "in module 'body'" in frozen.reason
    assert group_with(gg, "stem").prunable


class ScalesByWidth(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.a(x)
        width = y.shape[1]
        return self.b(y * width)


def test_a_reason_names_the_line_of_every_op_it_refers_to():
    gg = graphprune.analyze(ScalesByWidth().eval(), torch.randn(1, 3, 4, 4))
    reason = group_with(gg, "a").reason
    assert "uses a value computed from the channel count read by" in reason
    assert here(ScalesByWidth.forward, "y * width") in reason and here(ScalesByWidth.forward, "y.shape[1]") in reason


class Project(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(6, 4))

    def forward(self, x):
        return torch.relu(x) @ self.w


def test_an_example_input_error_names_the_users_line():
    with pytest.raises(ExampleInputError) as info:
        graphprune.analyze(Project(), torch.randn(2, 5))
    message = str(info.value)
    assert here(Project.forward, "@ self.w") in message and "example_inputs" in message


class AssignsItems(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.head = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        h = self.conv(x)
        idx = h.size(1) // 2
        h[:, idx] = 0
        return self.head(h)


def test_item_assignment_into_a_traced_tensor_freezes_its_channels():
    model, x = AssignsItems().eval(), torch.randn(1, 3, 4, 4)
    gg = graphprune.analyze(model, x)
    frozen = group_with(gg, "conv")
    assert not frozen.prunable and frozen is group_with(gg, "head", dim=1)
    assert here(AssignsItems.forward, "h[:, idx] = 0") in frozen.reason and "in place" in frozen.reason
    assert torch.equal(gg.gm(x), model(x))


class WrapsAssignment(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner, self.head = AssignsItems(), nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.head(self.inner(x))


@pytest.mark.parametrize("specialize", [False, True])
def test_a_submodule_assigning_items_is_traced(specialize):
    gg = graphprune.analyze(WrapsAssignment().eval(), torch.randn(1, 3, 4, 4), specialize_submodules=specialize)
    assert not gg.fallbacks and group_with(gg, "head", dim=1).prunable
    reason = group_with(gg, "inner.conv").reason
    assert here(AssignsItems.forward, "h[:, idx] = 0") in reason and "specialize_submodules" not in reason
