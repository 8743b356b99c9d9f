"""Latency budgets on a deterministic fake timer: the fitted model reproduces a latency that is an
exact bilinear function of channel counts, measurements are cached by their key, the remainder is
what the ops leave out, and every allocating method meets a latency budget as it meets a MACs one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import graphprune
from graphprune import Budget, Runtime
from graphprune.export.latency import MeasurementCache, measure, op_cases, profile

REMAINDER = 1e-5  # seconds the whole model costs besides its ops


def op_seconds(m: nn.Module) -> float:
    """Bilinear in the op's channel counts: fixed, per input and per output channel, per weight row element."""
    out, per_group = m.weight.shape[:2]
    inputs = per_group * getattr(m, "groups", 1)
    return 1e-6 + 3e-8 * inputs + 5e-8 * out + 2e-8 * out * per_group


class FakeTimer:
    """Seconds as a known function of the modules' channel counts; counts what it is asked."""

    def __init__(self):
        self.asked = 0

    def __call__(self, modules, inputs, runtime, repeats):
        self.asked += len(modules)
        return [self.seconds(m) for m in modules]

    @classmethod
    def seconds(cls, module: nn.Module) -> float:
        ops = [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        return sum(cls.op(m) for m in ops) + (REMAINDER if len(ops) > 1 else 0.0)  # one op alone: no remainder

    op = staticmethod(op_seconds)


class SteppedTimer(FakeTimer):
    """As a kernel off its blocked layout: three times slower where a count is not a multiple of 4."""

    @staticmethod
    def op(m: nn.Module) -> float:
        counts = (m.weight.shape[0], m.weight.shape[1] * getattr(m, "groups", 1))
        return op_seconds(m) * (3 if any(c % 4 for c in counts) else 1)


class SmallCNN(nn.Module):
    """Residual, depthwise, concat and a linear head: every way a conv's counts follow the groups."""

    def __init__(self):
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32)
        self.c1, self.dw, self.c2 = nn.Conv2d(32, 48, 1), nn.Conv2d(48, 48, 3, padding=1, groups=48), nn.Conv2d(48, 32, 1)
        self.branch, self.mix = nn.Conv2d(32, 16, 3, padding=1), nn.Conv2d(48, 64, 1)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        x = x + self.c2(F.relu(self.dw(F.relu(self.c1(x)))))
        x = F.relu(self.mix(torch.cat([x, F.relu(self.branch(x))], dim=1)))
        return self.fc(x.mean((2, 3)))


@pytest.fixture
def small():
    torch.manual_seed(0)
    return SmallCNN().eval(), torch.randn(2, 3, 16, 16)


def fake_budget(tmp_path, ratio=0.5, timer=None, **options) -> Budget:
    return Budget(latency=ratio, runtime=Runtime(timer=timer or FakeTimer(), cache=str(tmp_path), **options))


def random_counts(gg, rng) -> dict[int, int]:
    return {g.id: int(rng.integers(1, g.size + 1)) for g in gg.prunable_groups}


def test_the_fit_reproduces_a_bilinear_latency_and_the_remainder(small, tmp_path):
    model, x = small
    gg = graphprune.analyze(model, x)
    latency = profile(gg, x, fake_budget(tmp_path).runtime)
    assert latency.scale == pytest.approx(1) and latency.remainder_seconds == pytest.approx(REMAINDER, rel=1e-6)
    assert gg.cost.exact("latency") == pytest.approx(1e9 * FakeTimer.seconds(model), abs=10)
    rng = np.random.default_rng(0)
    for _ in range(5):  # held-out plans: any counts, not the grid's
        counts = random_counts(gg, rng)
        plan = graphprune.Plan.from_indices(gg, {gid: list(range(n)) for gid, n in counts.items()})
        assert gg.cost.exact("latency", counts) == pytest.approx(1e9 * FakeTimer.seconds(graphprune.slim(gg, plan)), abs=10)
    # quadratic like MACs: every method's allocation machinery reads it
    fa, fb, c = gg.cost.quadratic("latency")
    r = gg.cost.ratios(counts)
    assert r @ fa @ r + fb @ r + c == pytest.approx(float(gg.cost.evaluate("latency", r)), rel=1e-9)


class InGraphTimer(FakeTimer):
    """Ops inside the model cost twice what they cost alone (as fused or relaid-out ops differ)."""

    @classmethod
    def seconds(cls, module: nn.Module) -> float:
        ops = [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        return sum(op_seconds(m) for m in ops) * (2 if len(ops) > 1 else 1) + (REMAINDER if len(ops) > 1 else 0.0)


def test_the_ops_are_scaled_to_the_model_measured_at_half_width(small, tmp_path):
    model, x = small
    gg = graphprune.analyze(model, x)
    alone = profile(gg, x, fake_budget(tmp_path, timer=InGraphTimer()).runtime, calibrate=False)
    assert alone.scale == 1 and alone.remainder_seconds > REMAINDER
    latency = profile(gg, x, fake_budget(tmp_path, timer=InGraphTimer()).runtime)
    assert latency.scale == pytest.approx(2) and latency.remainder_seconds == pytest.approx(REMAINDER, rel=1e-6)
    rng = np.random.default_rng(1)
    for _ in range(3):
        counts = random_counts(gg, rng)
        plan = graphprune.Plan.from_indices(gg, {gid: list(range(n)) for gid, n in counts.items()})
        assert gg.cost.exact("latency", counts) == pytest.approx(1e9 * InGraphTimer.seconds(graphprune.slim(gg, plan)), abs=10)


def test_attention_heads_are_one_variable_and_token_linears_fit(tmp_path):
    """q, k and v's head dims are one group: attention scales with one share, not three at odds."""
    from toy_models import AttentionSDPA

    torch.manual_seed(0)
    model, x = AttentionSDPA().eval(), torch.randn(2, 3, 8, 8)
    gg = graphprune.analyze(model, x)
    (attention,) = [c for c in op_cases(gg) if "attention" in str(c.node.target)]
    assert len(attention.variables) == 1 and attention.resizable
    profile(gg, x, fake_budget(tmp_path).runtime)
    counts = random_counts(gg, np.random.default_rng(2))
    plan = graphprune.Plan.from_indices(gg, {gid: list(range(n)) for gid, n in counts.items()})
    assert gg.cost.exact("latency", counts) == pytest.approx(1e9 * FakeTimer.seconds(graphprune.slim(gg, plan)), abs=10)


def test_one_configuration_is_measured_once(tmp_path):
    """Four identical blocks: one measurement per grid point of each distinct layer configuration."""
    blocks = [nn.Sequential(nn.Conv2d(16, 24, 1), nn.ReLU(), nn.Conv2d(24, 16, 1)) for _ in range(4)]
    model, x = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), *blocks).eval(), torch.randn(1, 3, 8, 8)
    gg = graphprune.analyze(model, x)
    timer = FakeTimer()
    latency = profile(gg, x, fake_budget(tmp_path, timer=timer).runtime)
    cases = op_cases(gg)
    assert len(cases) == 9 and latency.configurations == len({c.key for c in cases}) < 9
    points = sum(len({*c.grid, *c.probes.values()}) for c in {c.key: c for c in cases}.values())
    assert timer.asked == points + 2  # + the whole model, unpruned and at half width


def test_measurements_are_cached_by_their_key(small, tmp_path):
    model, x = small
    gg = graphprune.analyze(model, x)
    first, again, threads = FakeTimer(), FakeTimer(), FakeTimer()
    profile(gg, x, fake_budget(tmp_path, timer=first).runtime)
    assert first.asked > 0
    model_again = profile(gg, x, fake_budget(tmp_path, timer=again).runtime)
    assert again.asked == 0 and model_again.measured == 0  # every op and the model: from the cache
    profile(gg, x, fake_budget(tmp_path, timer=threads, threads=2).runtime)
    assert threads.asked == first.asked  # another thread count is another environment
    assert len(list(tmp_path.glob("*.json"))) == 2
    uncached = FakeTimer()
    profile(gg, x, Runtime(timer=uncached, cache=False))
    assert uncached.asked == first.asked


def test_the_cache_key_names_what_a_measurement_depends_on(tmp_path):
    environment = MeasurementCache(Runtime(threads=2, batch=8, cache=str(tmp_path))).environment
    assert {"runtime", "threads", "batch", "device", "versions"} <= set(environment)
    assert environment["threads"] == 2 and environment["batch"] == 8 and "onnxruntime" in environment["versions"]


@pytest.mark.parametrize("method", ["l1", "l2", "uniform", "random"])
def test_apply_meets_a_latency_budget_within_half_a_point(small, tmp_path, method):
    model, x = small
    result = graphprune.apply(model, method, fake_budget(tmp_path), x)
    report = result.report
    assert report.metric == "latency" and 0.495 <= report.achieved <= 0.5
    # the pruned model, measured (by the fake) beside the unpruned one, is what the model predicted
    assert report.latency.measured_ratio == pytest.approx(report.latency.predicted_ratio, abs=1e-6)
    assert report.latency.measured_after_ms == pytest.approx(1e3 * FakeTimer.seconds(result.model), rel=1e-9)
    assert report.latency.predicted_before_ms == pytest.approx(1e3 * FakeTimer.seconds(model), rel=1e-6)


def test_channels_are_rounded_to_the_width_measured_fast(small, tmp_path):
    """Counts off multiples of 4 run slowly: the probes find the width, the allocation keeps it, and
    the pruned model then runs as fast as predicted."""
    model, x = small
    session = graphprune.prepare(model, "l1", fake_budget(tmp_path, timer=SteppedTimer()), x)
    assert session.latency.width == 4 and session.latency.slowdown[2] > 2 and session.latency.slowdown[4] == pytest.approx(1)
    result = session.finish()
    assert all(n % 4 == 0 for n in result.plan.counts().values())
    report = result.report.latency  # multiples of 4 land under the target: re-planned to within the tolerance
    assert abs(report.measured_ratio - 0.5) <= 0.01 and report.measured_ratio == pytest.approx(report.predicted_ratio, abs=1e-6)


class DepthwiseInGraph(FakeTimer):
    """Inside the model a depthwise conv costs 100x what it costs alone (memory-bound, unfused): the
    fit, scaled at the uniform half-width plan, errs on plans unlike it."""

    @classmethod
    def seconds(cls, module: nn.Module) -> float:
        ops = [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        if len(ops) == 1:
            return op_seconds(ops[0])
        return sum(op_seconds(m) * (100 if m.groups > 1 else 1) for m in ops if isinstance(m, nn.Conv2d)) + sum(
            op_seconds(m) for m in ops if isinstance(m, nn.Linear)) + REMAINDER


def test_a_plan_measured_off_the_target_is_allocated_again_to_a_corrected_target(small, tmp_path):
    model, x = small
    once = graphprune.apply(model, "uniform", fake_budget(tmp_path, timer=DepthwiseInGraph(), replans=0), x).report
    assert abs(once.latency.measured_ratio - 0.5) > 0.01  # the fit alone misses by more than the tolerance
    assert not [n for n in once.notes if n.startswith("latency: the pruned model measured")]  # no re-plan
    result = graphprune.apply(model, "uniform", fake_budget(tmp_path, timer=DepthwiseInGraph()), x)
    report = result.report.latency
    assert abs(report.measured_ratio - 0.5) <= 0.01
    assert len(report.attempts) >= 2 and report.attempts[0] == (0.5, pytest.approx(once.latency.measured_ratio))
    assert report.attempts[-1][1] == pytest.approx(report.measured_ratio)
    assert report.measured_after_ms == pytest.approx(1e3 * DepthwiseInGraph.seconds(result.model), rel=1e-9)
    (note,) = [n for n in result.report.notes if n.startswith("latency: the pruned model measured")]
    assert f"{once.latency.measured_ratio:.3f}" in note and f"the plan measured at {report.measured_ratio:.3f} is kept" in note


@pytest.mark.parametrize("method", ["dsa", "dhp", "nap"])
def test_methods_that_work_channel_by_channel_keep_the_measured_width(small, tmp_path, method):
    model, x = small
    session = graphprune.prepare(model, method, fake_budget(tmp_path, timer=SteppedTimer()), x, total_steps=10)
    assert session.latency.width == 4 and {g.round_to for g in session.gg.prunable_groups} == {4}
    session.method.detach()
    given = graphprune.prepare(model, method, fake_budget(tmp_path, timer=SteppedTimer()), x, total_steps=10, round_to=2)
    assert {g.round_to for g in given.gg.prunable_groups} == {2}
    given.method.detach()


def test_an_absolute_latency_in_milliseconds(small, tmp_path):
    model, x = small
    full_ms = 1e3 * FakeTimer.seconds(model)
    budget = Budget(latency_ms=0.6 * full_ms, runtime=Runtime(timer=FakeTimer(), cache=str(tmp_path)))
    report = graphprune.apply(model, "l1", budget, x).report
    assert 0.6 * full_ms - 0.005 * full_ms <= report.latency.predicted_after_ms <= 0.6 * full_ms
    assert budget.describe().startswith(f"{0.6 * full_ms:g} ms on onnxruntime")


def test_methods_that_train_read_the_latency_metric(small, tmp_path):
    """DSA and DHP take their cost from the cost model: the latency metric, unchanged."""
    model, x = small
    for method in ("dsa", "dhp"):
        session = graphprune.prepare(model, method, fake_budget(tmp_path), x, total_steps=10)
        assert session.method._full == session.gg.cost.exact("latency")
        session.method.detach()


def test_a_method_on_another_graph_refuses_a_latency_budget(small, tmp_path):
    model, x = small
    with pytest.raises(graphprune.BudgetError, match="'lwdna' plans on another graph"):
        graphprune.prepare(model, "lwdna", fake_budget(tmp_path), x)


def test_an_unknown_runtime_names_the_ones_there_are():
    with pytest.raises(graphprune.OptionError, match="unknown runtime 'tensorrt'.*'onnxruntime'.*'torch.compile'"):
        Budget(latency=0.5, runtime="tensorrt")


@pytest.mark.parametrize("options, message", [(dict(tolerance=0), "tolerance is a ratio of the unpruned latency in \\(0, 1\\)"),
                                              (dict(tolerance=True), "tolerance is a ratio"),
                                              (dict(replans=-1), "replans is an int >= 0")])
def test_re_planning_options_are_checked(options, message):
    with pytest.raises(graphprune.OptionError, match=message):
        Runtime(**options)


def test_latency_budgets_are_ratios_or_milliseconds():
    with pytest.raises(graphprune.BudgetError, match="latency_ms=12"):
        Budget(latency=12)
    with pytest.raises(graphprune.BudgetError, match="runtime= is where latency is measured"):
        Budget(macs=0.5, runtime="torch")
    assert Budget(latency=0.5).runtime == Runtime("onnxruntime", threads=1)
    assert Budget(latency=0.5, runtime="torch").runtime.name == "torch"


def test_a_target_below_the_floors_is_a_budget_error(small, tmp_path):
    model, x = small
    with pytest.raises(graphprune.BudgetError, match="is unreachable.*of its latency"):
        graphprune.apply(model, "l1", fake_budget(tmp_path, 0.05), x, min_ratio=0.5)


def test_the_cuda_provider_is_refused_where_it_is_absent(small, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    model, x = small
    budget = Budget(latency=0.5, runtime=Runtime("onnxruntime-cuda", timer=FakeTimer(), cache=str(tmp_path)))
    with pytest.raises(graphprune.BudgetError, match="needs onnxruntime's CUDA provider.*runtime='onnxruntime'"):
        graphprune.apply(model, "l1", budget, x)


@pytest.mark.parametrize("runtime", ["onnxruntime", "torch"])
def test_the_real_timer_times_interleaved_medians(runtime):
    """Not a speed test: the runtimes run the modules and return one positive median each."""
    small_op, big_op = nn.Conv2d(8, 8, 1), nn.Conv2d(8, 64, 3, padding=1)
    x = torch.randn(1, 8, 32, 32)
    seconds = measure([small_op, big_op], [x, x], Runtime(runtime), repeats=3)
    assert len(seconds) == 2 and all(s > 0 for s in seconds)
