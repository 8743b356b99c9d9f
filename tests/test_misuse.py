"""What a user gets wrong, and what graphprune answers: a graphprune error naming the fix, or an honest result.

Each case asserts the exact error class and that its message says what to do, or checks the result
for real (fine-tuned weights moved and the loss dropped; the report says what a plan came from).
The command line's cases assert exit status 2 and one line on stderr, no traceback.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import graphprune
import toy_models
from graphprune import Budget, BudgetError, GraphPruneError, NotReadyError, OptionError, PlanError
from graphprune import models
from graphprune.slimming.exactness import exactness_error
from graphprune.groups.graph import auto_round_to

X = torch.randn(2, 3, 32, 32)


def resnet20() -> nn.Module:
    torch.manual_seed(0)
    return models.get("resnet20")


def loader(batches: int = 4, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A fixed learnable task: the label is the sign of the input's mean, in 10 classes' first two."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(batches):
        x = torch.randn(8, 3, 32, 32, generator=g)
        out.append((x, (x.mean((1, 2, 3)) > 0).long()))
    return out


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "graphprune.cli", *args], capture_output=True, text=True)


def one_line_error(out: subprocess.CompletedProcess) -> str:
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stderr and out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith("error: ")
    return out.stderr


# ------------------------------------------------------------------ budgets
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), 0, 0.0, -0.5])
def test_a_budget_that_is_no_size_is_refused(value):
    with pytest.raises(BudgetError, match=r"finite number above 0.*ratio in \(0, 1\]"):
        graphprune.apply(resnet20(), "l1", value, X)


@pytest.mark.parametrize("value", [1.5, 50.0, 2e6])
def test_a_float_above_one_is_neither_ratio_nor_count(value):
    with pytest.raises(BudgetError, match=r"neither a ratio .* give .*%.*absolute count is an int"):
        Budget(macs=value)


@pytest.mark.parametrize("value", ["0.5", True, None])
def test_a_budget_is_a_number(value):
    with pytest.raises(BudgetError, match="a budget is a number|exactly one"):
        graphprune.apply(resnet20(), "l1", value, X)


def test_two_budgets_at_once_are_refused():
    with pytest.raises(BudgetError, match="exactly one of"):
        Budget(macs=0.5, params=0.5)


def test_an_unreachable_absolute_count_states_the_models_own_and_how_to_give_a_ratio():
    with pytest.raises(BudgetError) as info:
        graphprune.apply(resnet20(), "l1", 50, X)
    full = graphprune.analyze(resnet20(), X).cost.macs()
    assert f"of the model's {full:,}" in str(info.value) and "give a number in (0, 1]" in str(info.value)


def test_an_absolute_int_count_is_met():
    full = graphprune.analyze(resnet20(), X).cost.params()
    result = graphprune.apply(resnet20(), "l1", Budget(params=full // 2), X)
    assert full // 2 - 0.005 * full <= result.report.params_after <= full // 2


def test_a_budget_below_the_floors_names_the_floors():
    with pytest.raises(BudgetError, match="unreachable.*min_ratio"):
        graphprune.apply(resnet20(), "l1", 0.05, X, min_ratio=0.5)


# ------------------------------------------------------------------ options reach where they act
def test_analysis_options_pass_through_apply():
    model, x = toy_models.build("attention_separate")
    expected = graphprune.analyze(model, x, attention="heads")
    result = graphprune.apply(model, "l1", 0.7, x, attention="heads")
    assert [g.size for g in result.groups.groups] == [g.size for g in expected.groups] == [3, 16, 2, 5]
    assert [g.size for g in graphprune.analyze(model, x).groups] == [3, 16, 8, 8, 5]


def test_leaf_modules_pass_through_apply_and_freeze():
    result = graphprune.apply(resnet20(), "l1", 0.7, X, leaf_modules=["layers.0"])
    reasons = [g.reason for g in result.groups.groups if not g.prunable]
    assert any("layers.0" in r for r in reasons)


def test_analysis_options_beside_a_finished_analysis_are_refused():
    gg = graphprune.analyze(resnet20(), X)
    with pytest.raises(OptionError, match="leaf_modules would not act.*graphprune.analyze"):
        graphprune.apply(resnet20(), "l1", 0.5, X, analysis=gg, leaf_modules=["layers.0"])


def test_an_unknown_option_names_the_options_the_method_takes():
    with pytest.raises(OptionError, match=r"unknown options: attnetion; it takes .*min_ratio.*seed"):
        graphprune.apply(resnet20(), "random", 0.5, X, attnetion="heads")


def test_an_unknown_method_lists_the_methods():
    with pytest.raises(GraphPruneError, match="unknown pruning method 'l3'; available: dhp, dsa, flap, hessian, importance, .*l1, l2, lwdna, nap, random, taylor, uniform"):
        graphprune.apply(resnet20(), "l3", 0.5, X)


@pytest.mark.parametrize("options, match", [
    (dict(round_to=0), "round_to is a channel multiple"),
    (dict(round_to="eight"), "round_to is a channel multiple"),
    (dict(min_ratio=1.5), r"min_ratio is the smallest share .*in \[0, 1\]"),
    (dict(min_channels=-1), "min_channels is the fewest"),
    (dict(epochs=-1), "epochs is a number of passes"),
    (dict(epochs=1.5), "epochs is a number of passes"),
])
def test_bounds_out_of_range_are_refused(options, match):
    with pytest.raises(OptionError, match=match):
        graphprune.apply(resnet20(), "l1", 0.5, X, **options)


def test_something_else_than_a_module_is_refused():
    with pytest.raises(OptionError, match="prunes a torch.nn.Module, got function"):
        graphprune.apply(resnet20, "l1", 0.5, X)


def test_a_model_on_the_meta_device_says_to_materialize_it():
    with torch.device("meta"):
        model = models.get("resnet20")
    with pytest.raises(GraphPruneError, match=r"meta device.*to_empty.*load_state_dict"):
        graphprune.apply(model, "l1", 0.5, X)


# ------------------------------------------------------------------ methods that train, given no training
@pytest.mark.parametrize("method", ["dsa", "dhp"])
def test_a_training_method_without_data_says_what_to_pass(method):
    with pytest.raises(OptionError, match="decides by training: pass train_data=, loss_fn= and epochs="):
        graphprune.apply(resnet20(), method, 0.5, X)


@pytest.mark.parametrize("method, source", [("dsa", "BatchNorm scales"), ("dhp", "untrained hypernetworks generate")])
def test_finishing_before_the_search_is_refused_unless_forced(method, source):
    session = graphprune.prepare(resnet20(), method, 0.5, X, total_steps=100)
    assert not session.method.ready()
    with pytest.raises(NotReadyError, match=f"{source}.*force=True"):
        session.finish()
    forced = session.finish(force=True)
    assert any(n.startswith(f"forced before the method was ready: {method}") and source in n for n in forced.report.notes)


def test_nap_without_training_completes_and_says_how():
    result = graphprune.apply(resnet20(), "nap", 0.5, X)
    assert 0.495 <= result.report.macs_ratio <= 0.5
    assert any("without a training loop" in n and "from the example inputs" in n for n in result.report.notes)
    result = graphprune.apply(resnet20(), "nap", 0.5, X, train_data=loader(2), loss_fn=F.cross_entropy)
    assert any("without a training loop" in n and "from train_data batches" in n for n in result.report.notes)


def test_lwdnas_reinitialized_model_says_so():
    result = graphprune.apply(resnet20(), "lwdna", 1.0, X)
    assert any("re-initialized" in n and "train it from scratch" in n for n in result.report.notes)
    assert any("labels sampled from the model's own predictions" in n for n in result.report.notes)


# ------------------------------------------------------------------ data given to a data-free method
def test_train_data_and_epochs_fine_tune_the_slim_model():
    model = resnet20()
    plain = graphprune.apply(model, "l1", 0.5, X)
    tuned = graphprune.apply(model, "l1", 0.5, X, train_data=loader(), loss_fn=F.cross_entropy, epochs=3, lr=0.02)
    assert tuned.plan.keep == plain.plan.keep
    before = dict(plain.model.named_parameters())
    moved = [n for n, p in tuned.model.named_parameters() if not torch.equal(p, before[n])]
    assert len(moved) == len(before)
    (note,) = [n for n in tuned.report.notes if n.startswith("trained the slim model for 3 epochs")]
    first, last = (float(v.split(" ")[0]) for v in note.split("loss ")[1].split(" in the first, "))
    assert last < first


def test_train_data_without_epochs_is_refused_not_ignored():
    with pytest.raises(OptionError, match="would only fine-tune the slim model: pass epochs=N"):
        graphprune.apply(resnet20(), "l1", 0.5, X, train_data=loader(), loss_fn=F.cross_entropy)


def test_epochs_without_data_is_refused():
    with pytest.raises(OptionError, match="epochs=2 trains the slim model: pass train_data= and loss_fn= too"):
        graphprune.apply(resnet20(), "l1", 0.5, X, epochs=2)


# ------------------------------------------------------------------ plans and inputs
def test_a_plan_for_another_model_is_refused():
    plan = graphprune.apply(resnet20(), "l1", 0.5, X).plan
    with pytest.raises(PlanError, match="the plan is for another architecture"):
        graphprune.apply_plan(models.get("lenet5"), plan, torch.randn(2, 1, 28, 28))


@pytest.mark.parametrize("inputs, match", [
    (X.double(), r"'input_0' is torch.float64 but the model's weights are torch.float32: give example inputs of the weights' dtype \(x.to\(torch.float32\)\)"),
    (torch.randn(2, 1, 32, 32), "Check that example_inputs have the shapes and dtypes"),
    ((X, X), "2 example inputs given but the model takes 1"),
    (None, "must be a tensor, a tuple of inputs or a dict"),
])
def test_wrong_example_inputs_are_named(inputs, match):
    with pytest.raises(graphprune.ExampleInputError, match=match):
        graphprune.apply(resnet20(), "l1", 0.5, inputs)


def test_a_model_in_training_mode_gives_an_exact_slim_model_in_that_mode():
    model = resnet20().train()
    result = graphprune.apply(model, "l1", 0.5, X)
    assert result.model.training and model.training and 0.495 <= result.report.macs_ratio <= 0.5
    assert exactness_error(model, result.groups, result.plan, (X,), result.model) <= 1e-6


def test_frozen_parameters_stay_frozen_in_the_slim_model():
    model = resnet20()
    for p in model.stem.parameters():
        p.requires_grad_(False)
    slim = graphprune.apply(model, "l1", 0.5, X).model
    flags = {n: p.requires_grad for n, p in slim.named_parameters()}
    assert not any(v for n, v in flags.items() if n.startswith("stem.")) and all(v for n, v in flags.items() if not n.startswith("stem."))


# ------------------------------------------------------------------ the default rounding
def test_the_default_rounding_keeps_kernel_friendly_widths_and_the_budget():
    import torchvision

    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(1, 3, 64, 64)
    result = graphprune.apply(model, "l1", 0.5, x)
    assert 0.495 <= result.report.macs_ratio <= 0.5
    sizes = {g.id: g.size for g in result.groups.groups}
    for gid, kept in result.plan.keep.items():
        assert len(kept) % auto_round_to(sizes[gid]) == 0 or len(kept) == sizes[gid]
    assert [auto_round_to(n) for n in (8, 16, 32, 64, 512)] == [1, 2, 4, 8, 8]


# ------------------------------------------------------------------ the command line
def test_cli_reads_a_percentage():
    out = cli("prune", "graphprune.models:digits_cnn", "--budget", "50%")
    assert out.returncode == 0, out.stderr
    assert "macs budget 0.5000" in out.stdout


@pytest.mark.parametrize("args, match", [
    (("--budget", "nan"), "finite number above 0"),
    (("--budget", "1.5"), r"for 1.5% of the model give 0.015"),
    (("--budget", "fifty"), r"ratio \(0.5\), a percentage \(50%\) or an absolute count"),
    (("--budget", "0.5", "--method", "dhp"), r"command line has no training data.*graphprune.apply\(model, 'dhp'"),
    (("--budget", "0.5", "--method", "l3"), "invalid choice: 'l3'"),
    (("--budget", "0.5", "--round-to", "eight"), "--round-to takes a channel multiple"),
    (("--budget", "0.5", "--set", "seed"), "--set takes KEY=VALUE"),
    (("--budget", "0.5", "--set", "sead=1", "--method", "random"), "unknown options: sead"),
    (("--budget", "0.5", "--input-shape", "1,3,8,8"), "example_inputs"),
])
def test_cli_mistakes_end_in_one_line(args, match):
    import re

    assert re.search(match, one_line_error(cli("prune", "graphprune.models:digits_cnn", *args)))


@pytest.mark.parametrize("method, budget", [("l1", 0.5), ("uniform", 0.5), ("lwdna", 1.0)])
def test_methods_that_do_not_train_leave_the_model_as_it_was(method, budget):
    model = resnet20()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    graphprune.apply(model, method, budget, X)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
