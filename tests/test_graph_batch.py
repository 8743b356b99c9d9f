"""The slim graph runs at every batch size (and, for sequence models, length) the model runs at,
whatever the example's: conditions on sizes whose other path the graph computes too lose their
guards (Hugging Face's mask and attention code), those whose other path differs keep them; and
ONNX exports of sequence models have dynamic batch and length axes, checked in onnxruntime."""

import numpy as np
import onnxruntime
import pytest
import torch
import torch.nn as nn
import torchvision

import graphprune
from graphprune.errors import GuardError
from graphprune.slimming.exactness import exactness_error
from helpers import EXACT, random_plan

transformers = pytest.importorskip("transformers")

VOCAB = 100


def _hugging_face(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if name == "llama":
        config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
        return transformers.LlamaForCausalLM(config).eval()
    if name == "gpt2":
        config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=32, n_embd=64, n_layer=2, n_head=4,
                                         bos_token_id=0, eos_token_id=0)
        return transformers.GPT2LMHeadModel(config).eval()
    config = transformers.BertConfig(vocab_size=VOCAB, max_position_embeddings=32, num_hidden_layers=2,
                                     num_attention_heads=4, hidden_size=64, intermediate_size=128)
    return transformers.BertModel(config).eval()


def _exact_plan(gg: graphprune.GroupGraph) -> graphprune.Plan:
    """Half of every group's channels, leaving out groups that normalize over them (inexact by design)."""
    plan = random_plan(gg, np.random.default_rng(0), 0.5)
    return graphprune.Plan({g: k for g, k in plan.keep.items() if not gg.groups[g].inexact}, plan.sizes)


def _ids(batch: int, length: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(batch * 100 + length))


@pytest.mark.parametrize("name", ["llama", "gpt2", "bert"])
def test_hugging_face_slim_graph_runs_at_other_batch_sizes_and_lengths(name):
    """Analyzed at batch 2, length 8: the conditions on sizes (position ids expanded to the batch,
    ``q_length > 1``) are checked at batch 1 and length 1 and lose their guards; the slim graph is
    exact against the zeroed original at batch 1 and 3 and length 5."""
    model = _hugging_face(name)
    gg = graphprune.analyze(model, _ids(2, 8))
    conditions = [s for s in gg.traced.specializations if s.conversion == "bool"]
    assert conditions and all(not s.guarded and s.checked_at for s in conditions)
    plan = _exact_plan(gg)
    slim = graphprune.slim(gg, plan)
    for batch, length in [(1, 8), (3, 8), (2, 5), (1, 5)]:
        assert exactness_error(model, gg, plan, (_ids(batch, length),), slim) <= EXACT, (batch, length)


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_analyzed_at_batch_1_the_graph_runs_at_larger_batches(name):
    """At batch 1 the mask code leaves position ids as they are, a path batch 3 does not take: the
    graph is traced at batch 2, its condition checked at the example's batch 1, and the analysis
    still describes the example (its shapes, its MACs)."""
    model = _hugging_face(name)
    x = _ids(1, 8)
    gg = graphprune.analyze(model, x)
    output = next(n for n in gg.gm.graph.nodes if n.op == "output")
    assert gg.traced.values[output.args[0]["logits"]].shape == (1, 8, VOCAB)
    assert gg.traced.placeholder_values[0] is x
    expand = [s for s in gg.traced.specializations if "batch_size != position_ids.shape[0]" in s.location]
    assert [(s.guarded, s.checked_at[0]) for s in expand] == [(False, "batch 1")]
    plan = _exact_plan(gg)
    slim = graphprune.slim(gg, plan)
    for batch, length in [(1, 8), (3, 8), (3, 5)]:
        assert exactness_error(model, gg, plan, (_ids(batch, length),), slim) <= EXACT, (batch, length)


def test_masks_follow_the_length():
    """Keyword inputs: the attention mask is resized with the ids when checking other sizes."""
    model = _hugging_face("bert")
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[0, 5:] = 0
    gg = graphprune.analyze(model, dict(input_ids=_ids(2, 8), attention_mask=mask))
    plan = _exact_plan(gg)
    slim = graphprune.slim(gg, plan)
    for batch, length in [(1, 5), (3, 8)]:
        other = torch.ones(batch, length, dtype=torch.long)
        other[0, length - 2:] = 0
        want = model(input_ids=_ids(batch, length), attention_mask=other).last_hidden_state
        got = slim(input_ids=_ids(batch, length), attention_mask=other)["last_hidden_state"]
        assert got.shape == want.shape == (batch, length, 64)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small"])
def test_torchvision_cnn_analyzed_at_batch_2_runs_at_batch_1(name):
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    gg = graphprune.analyze(model, torch.randn(2, 3, 64, 64))
    plan = _exact_plan(gg)
    slim = graphprune.slim(gg, plan)
    assert exactness_error(model, gg, plan, (torch.randn(1, 3, 64, 64),), slim) <= EXACT


class BatchCentered(nn.Module):
    """Centers the batch where it has more than one row: batch 1 really takes another path."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.a(x)
        if x.shape[0] > 1:
            y = y - y.mean(0)
        return self.b(torch.relu(y))


class OneRowBias(nn.Module):
    """Expands a one-row tensor to the batch where the batch has more rows: a no-op at batch 1."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)
        self.bias = nn.Parameter(torch.randn(1, 8, 1, 1))

    def forward(self, x):
        y = self.a(x)
        bias = self.bias
        if bias.shape[0] != y.shape[0]:
            bias = bias.expand(y.shape[0], -1, -1, -1)
        return self.b(torch.relu(y + bias))


def test_a_branch_on_the_batch_size_keeps_its_guard():
    torch.manual_seed(0)
    model = BatchCentered().train()
    gg = graphprune.analyze(model, torch.randn(2, 3, 4, 4))
    assert all(m.training for m in model.modules())  # checking other sizes ran it in eval mode, and gave its mode back
    (spec,) = gg.traced.specializations
    assert spec.guarded and spec.checked_at == ()
    slim = graphprune.slim(gg, _exact_plan(gg)).eval()
    assert slim(torch.randn(3, 3, 4, 4)).shape == (3, 4, 4, 4)
    with pytest.raises(GuardError, match=r"test_graph_batch\.py:\d+: if x\.shape\[0\] > 1:"):
        slim(torch.randn(1, 3, 4, 4))


def test_analyzed_at_batch_1_a_branch_on_the_batch_size_keeps_the_examples_path():
    """Batch 2 takes another path: traced there, the graph fails at the example's batch 1, so the
    graph of the example's path stays, with its guard."""
    torch.manual_seed(0)
    gg = graphprune.analyze(BatchCentered().eval(), torch.randn(1, 3, 4, 4))
    (spec,) = gg.traced.specializations
    assert spec.guarded and spec.value is False
    with pytest.raises(GuardError, match=r"test_graph_batch\.py:\d+: if x\.shape\[0\] > 1:"):
        gg.gm(torch.randn(2, 3, 4, 4))


def test_a_branch_computing_the_same_at_batch_1_loses_its_guard():
    torch.manual_seed(0)
    model = OneRowBias().eval()
    gg = graphprune.analyze(model, torch.randn(2, 3, 4, 4))
    (spec,) = gg.traced.specializations
    assert not spec.guarded and spec.checked_at == ("batch 1",) and "bias.shape[0] != y.shape[0]" in spec.location
    plan = _exact_plan(gg)
    slim = graphprune.slim(gg, plan)
    assert exactness_error(model, gg, plan, (torch.randn(1, 3, 4, 4),), slim) <= EXACT


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_sequence_model_exports_with_dynamic_batch_and_length(name, tmp_path):
    """A pruned graph exported at batch 2, length 8 runs in onnxruntime at lengths 5 and 8 and
    batch 1 and 3, as PyTorch runs it; without dynamic_length the length stays the example's.
    (The TorchScript exporter fails on these graphs: dynamo exports them.)"""
    model = _hugging_face(name)
    gg = graphprune.analyze(model, _ids(2, 8))
    slim = graphprune.slim(gg, random_plan(gg, np.random.default_rng(0), 0.5))
    path = str(tmp_path / "slim.onnx")
    dynamic = name == "gpt2"
    report = graphprune.export_onnx(slim, path, _ids(2, 8), exporter="dynamo", dynamic_length=dynamic)
    assert report.dynamic_batch_checked and report.dynamic_length_checked is dynamic and report.relative_diff < 1e-4
    assert report.checked_sizes == ["batch 2, length 8", "batch 4, length 8"] + ["batch 2, length 4"] * dynamic
    session = onnxruntime.InferenceSession(path)
    (only,) = session.get_inputs()
    assert only.shape == ["batch", "length" if dynamic else 8]
    for batch in (1, 3):
        for length in (5, 8) if dynamic else (8,):
            ids = _ids(batch, length)
            (got,) = session.run(None, {only.name: ids.numpy()})
            with torch.no_grad():
                want = slim(ids)["logits"]
            assert got.shape == (batch, length, VOCAB)
            assert np.abs(got - want.numpy()).max() <= 1e-4 * want.abs().max().item()
