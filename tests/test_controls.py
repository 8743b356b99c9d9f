"""Per-layer control (graphprune/groups/controls.py): ignored layers, fixed ratios, per-layer floors and
steps act on whole groups, meet the budget on the rest, and say what they did."""

import pytest
import torch

import graphprune
from graphprune import models
from graphprune.errors import OptionError

X = torch.randn(2, 3, 32, 32)
STREAM = "layers.1.conv2.0"  # in stage 1's residual stream (group 1): its output channels are the stage's


def resnet20():
    torch.manual_seed(0)
    return models.get("resnet20").eval()


def group_of(gg, module, role="out"):
    return next(g for g in gg.groups if any(m.module == module and m.role == role for m in g.members))


def test_an_ignored_layer_inside_a_residual_stage_keeps_the_stage_whole_and_says_so():
    model = resnet20()
    result = graphprune.apply(model, "l1", graphprune.Budget(macs=0.5), X, ignored_layers=[STREAM])
    stream = group_of(result.groups, STREAM)
    assert not stream.prunable and "ignored_layers: 'layers.1.conv2.0' uses this group" in stream.reason
    assert any(n.startswith(f"group {stream.id} kept whole: ignored_layers") for n in result.report.notes)
    conv = result.model.get_submodule(STREAM)
    assert (conv.in_channels, conv.out_channels) == (16, 16)  # it reads and writes whole groups: as it was
    assert result.model.layers[0].conv2[0].out_channels == 16  # another member of the stream
    assert abs(result.report.macs_ratio - 0.5) <= 0.005


def test_a_ratio_for_one_member_fixes_its_whole_group_and_the_rest_meets_the_budget():
    model = resnet20()
    result = graphprune.apply(model, "l2", graphprune.Budget(macs=0.6), X, ratios={STREAM: 0.5}, round_to=1)
    stream = group_of(result.groups, STREAM)
    assert len(result.plan.keep[stream.id]) == 8
    assert result.model.layers[0].conv2[0].out_channels == result.model.get_submodule(STREAM).out_channels == 8
    assert abs(result.report.macs_ratio - 0.6) <= 0.005
    assert f"group {stream.id} keeps 0.5 of its 16 channels (ratios=)" in result.report.notes


@pytest.mark.parametrize("method", ["l1", "uniform", "random", "nap"])
def test_floors_steps_and_ratios_per_layer_hold_for_every_method_that_allocates(method):
    model = resnet20()
    result = graphprune.apply(model, method, graphprune.Budget(macs=0.5), X, round_to={"layers.6": 16, "layers.7": 16},
                              min_ratio={"layers.3": 0.75}, ratios={"layers.8.conv1": 0.25})
    gg, keep = result.groups, result.plan.keep
    kept = {g.id: len(keep.get(g.id, range(g.size))) for g in gg.groups}
    for name in ("layers.6.conv1.0", "layers.7.conv1.0"):
        assert kept[group_of(gg, name).id] % 16 == 0
    for name in ("layers.3.conv1.0", "layers.3.conv2.0"):
        assert kept[group_of(gg, name).id] >= 24
    assert kept[group_of(gg, "layers.8.conv1.0").id] == 16
    assert abs(result.report.macs_ratio - 0.5) <= 0.005


def test_an_analysis_reused_for_another_call_is_left_as_it_was():
    model = resnet20()
    gg = graphprune.analyze(model, X)
    graphprune.apply(model, "l1", 0.5, X, analysis=gg, ignored_layers=[STREAM])
    assert group_of(gg, STREAM).prunable


@pytest.mark.parametrize("options, message", [
    (dict(ratios={"layers.1.conv2.0": 0.5, "layers.0.conv2.0": 0.25}),
     r"ratios: 'layers.1.conv2.0' and 'layers.0.conv2.0' reach the same group \d+ \(16 channels: .*\) with different values"),
    (dict(ignored_layers=["layers.1.conv3"]), r"ignored_layers: the model has no module 'layers.1.conv3'; did you mean 'layers.1.conv2', 'layers.1.conv1'"),
    (dict(ignored_layers=[torch.nn.LSTM]), "ignored_layers: the model has no LSTM"),
    (dict(ratios={"fc": 1.5}), r"ratios\['fc'\] is a share of a group's channels in \[0, 1\], got 1.5"),
    (dict(round_to={"fc": 0}), r"round_to\['fc'\] is a channel multiple \(an int >= 1\) or 'auto', got 0"),
    (dict(ignored_layers=[torch.nn.Linear(2, 2)]), "ignored_layers: the Linear given is not a module of the model pruned"),
])
def test_per_layer_options_that_cannot_mean_what_they_say_are_refused(options, message):
    with pytest.raises(OptionError, match=message):
        graphprune.apply(resnet20(), "l1", 0.5, X, **options)


def test_methods_that_plan_on_other_groups_refuse_per_layer_options():
    with pytest.raises(OptionError, match=r"method 'lwdna' cannot take ignored_layers: it plans on groups of its own; .*l1"):
        graphprune.prepare(resnet20(), "lwdna", 0.5, X, ignored_layers=[STREAM])
    with pytest.raises(OptionError, match="granularity='weight' prunes single weights, not channel groups, so it cannot take ratios"):
        graphprune.prepare(resnet20(), "nap", graphprune.Budget(params=0.5), X, granularity="weight", ratios={STREAM: 0.5})
