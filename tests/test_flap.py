"""flap: activation fluctuation times the reading weights' column norms, against a brute-force
reference, and its bias compensation: the mean output kept, the slim model equal to the
compensated masked model, a Hugging Face Llama pruned to its budget."""

import copy

import pytest
import torch
import torch.nn as nn

import graphprune
from graphprune.errors import OptionError

transformers = pytest.importorskip("transformers")


def mlp(widths=(8, 16, 12, 3)):
    """Linear -> ReLU -> Linear (-> Tanh -> Linear for three widths more), float64."""
    torch.manual_seed(0)
    layers = [nn.Linear(widths[0], widths[1])]
    for a, b, act in zip(widths[1:], widths[2:], (nn.ReLU, nn.Tanh)):
        layers += [act(), nn.Linear(a, b)]
    return nn.Sequential(*layers).double().eval()


def tokens(sizes=(2, 3, 1), length=5, features=8):
    """Batches of (batch, tokens, features), of different batch sizes: the statistics merge across them."""
    g = torch.Generator().manual_seed(1)
    return [torch.randn(n, length, features, generator=g, dtype=torch.float64) for n in sizes]


def test_score_is_the_input_variance_over_tokens_times_the_reading_columns_squared_norm():
    """Each hidden channel j of each group: Var(x_j) over every calibration token (x the next layer's
    input, after its activation) times ||W_next[:, j]||², whatever form the batches take."""
    model, data = mlp(), tokens()
    x = torch.cat(data).reshape(-1, 8)
    with torch.no_grad():
        read1 = torch.relu(model[0](x))
        read2 = torch.tanh(model[2](read1))
        expected = {16: read1.var(0) * model[2].weight.square().sum(0), 12: read2.var(0) * model[4].weight.square().sum(0)}
    forms = {"tensors": data, "pairs": [(b, torch.zeros(len(b))) for b in data], "dicts": [{"input": b} for b in data]}
    for form, batches in forms.items():
        session = graphprune.prepare(model, "flap", 0.5, data[0], calib_data=batches)
        scores = session.method.scores()
        assert sorted(g.size for g in session.gg.prunable_groups) == [12, 16]
        for g in session.gg.prunable_groups:
            assert scores[g.id] == pytest.approx(expected[g.size].numpy(), rel=1e-5), form


def test_bias_compensation_keeps_the_mean_output_and_the_slim_model_is_the_compensated_masked_one():
    model, data = mlp((8, 32, 3)), tokens()
    original = copy.deepcopy(model)
    x = torch.cat(data)
    result = graphprune.apply(model, "flap", graphprune.Budget(params=0.6), data[0], calib_data=data, round_to=1)
    ((gid, kept),) = result.plan.keep.items()
    dropped = sorted(set(range(32)) - set(kept))
    assert len(dropped) >= 8
    with torch.no_grad():
        mean_in = torch.relu(original[0](x.reshape(-1, 8))).mean(0)  # what the second layer reads, on average
        assert result.model(x).mean((0, 1)) == pytest.approx(original(x).mean((0, 1)).numpy(), abs=1e-12)
        uncompensated = graphprune.apply(copy.deepcopy(original), "flap", graphprune.Budget(params=0.6), data[0],
                                         calib_data=data, round_to=1, compensate=False)
        assert uncompensated.plan.keep == result.plan.keep
        assert (uncompensated.model(x).mean((0, 1)) - original(x).mean((0, 1))).abs().max() > 1e-2  # what it makes up for
        masked = copy.deepcopy(original)  # by hand: the removed channels zeroed, their mean contribution in the bias
        masked[2].bias += original[2].weight[:, dropped] @ mean_in[dropped]
        masked[0].weight[dropped] = 0
        masked[0].bias[dropped] = 0
        masked[2].weight[:, dropped] = 0
        fresh = torch.randn(4, 7, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
        assert (result.model(fresh) - masked(fresh)).abs().max() <= 1e-12
        assert (model(fresh) - masked(fresh)).abs().max() <= 1e-12  # written into the model given, as nap's OBS updates are
    assert result.model[2].in_features == len(kept)
    assert result.report.notes == ["flap: the biases of 1 layer(s) absorb their removed inputs' means: 2"]


def test_without_compensation_the_model_given_is_left_as_it_was():
    model, data = mlp(), tokens()
    before = copy.deepcopy(model.state_dict())
    graphprune.apply(model, "flap", graphprune.Budget(params=0.6), data[0], calib_data=data, round_to=1, compensate=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def llama(bias: bool) -> tuple[torch.nn.Module, torch.Tensor, list[torch.Tensor]]:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                                      attention_bias=bias, mlp_bias=bias)
    g = torch.Generator().manual_seed(1)
    return (transformers.LlamaForCausalLM(config).eval(), torch.randint(0, 100, (2, 8), generator=g),
            [torch.randint(0, 100, (2, 8), generator=g) for _ in range(3)])


def test_a_llama_meets_its_budget_and_its_projections_absorb_the_removed_means():
    """MLP width and heads (the residual stream kept whole); the slim LlamaForCausalLM computes what
    the compensated masked model does."""
    model, ids, calib = llama(bias=True)
    original = copy.deepcopy(model)
    result = graphprune.apply(model, "flap", graphprune.Budget(params=0.7), ids, calib_data=calib, attention="heads",
                              ignored_layers=["model.embed_tokens"])
    assert type(result.model).__name__ == "LlamaForCausalLM"
    assert 0.695 <= result.report.params_ratio <= 0.7
    (note,) = [n for n in result.report.notes if n.startswith("flap")]
    compensated = note.split(": ")[-1].split(", ")
    assert "model.layers.0.mlp.down_proj" in compensated and all(n.endswith(("down_proj", "o_proj")) for n in compensated)
    with torch.no_grad():
        for name in compensated:
            assert not torch.equal(model.get_submodule(name).bias, original.get_submodule(name).bias)
        assert (result.model(ids).logits - model(ids).logits).abs().max() <= 1e-4


def test_groups_normalized_across_and_layers_without_a_bias_are_not_compensated_and_the_report_says_so():
    model, ids, calib = llama(bias=True)
    original = copy.deepcopy(model)
    stream = dict(ratios={"model.embed_tokens": 0.75})  # the residual stream, read through RMS norms, pruned by a quarter
    result = graphprune.apply(model, "flap", graphprune.Budget(params=0.7), ids, calib_data=calib, attention="heads", **stream)
    assert any(n.startswith("flap: group") and "an RMS norm takes a mean of squares across these channels" in n
               for n in result.report.notes)
    assert torch.equal(model.model.layers[0].self_attn.q_proj.bias, original.model.layers[0].self_attn.q_proj.bias)

    model, ids, calib = llama(bias=False)
    before = copy.deepcopy(model.state_dict())
    result = graphprune.apply(model, "flap", graphprune.Budget(params=0.7), ids, calib_data=calib, attention="heads",
                              ignored_layers=["model.embed_tokens"])
    (note,) = [n for n in result.report.notes if n.startswith("flap")]
    assert note.startswith("flap: not compensated, no bias to add to (graphprune adds no parameter): model.layers.0.mlp.down_proj")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing to write: nothing zeroed


def test_without_calibration_data_says_what_to_pass():
    with pytest.raises(OptionError, match=r"flap reads the activations of calibration data: pass calib_data="):
        graphprune.apply(mlp(), "flap", 0.5, tokens()[0])
    with pytest.raises(OptionError, match=r"calib_data holds a batch that is a str: give \(input, target\) pairs"):
        graphprune.apply(mlp(), "flap", 0.5, tokens()[0], calib_data=["text"])
    with pytest.raises(OptionError, match="calib_data has no batches"):
        graphprune.apply(mlp(), "flap", 0.5, tokens()[0], calib_data=[])
