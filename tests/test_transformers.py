"""Hugging Face transformers models built from configs (no weights, nothing downloaded): captured
into one fx graph, exact counts, MLP hidden dims and hidden streams prunable, slim exact, ONNX verified;
and a Llama analyzed on the meta device, where no weight exists."""

import numpy as np
import pytest
import torch

import graphprune
from graphprune.tracing.flops import flop_counter
from helpers import EXACT, leak_check, member, random_keep, random_plan, slim_error
from zoo import check_model, check_slim

transformers = pytest.importorskip("transformers")

HIDDEN, INTERMEDIATE, VOCAB, TOKENS = 64, 128, 100, (2, 8)


def _llama_config(**sizes) -> "transformers.LlamaConfig":
    base = dict(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    return transformers.LlamaConfig(**{**base, **sizes})


def _build(name: str) -> tuple[torch.nn.Module, torch.Tensor, str]:
    """Model, example input, and the module whose output dim is a layer's MLP hidden dim."""
    torch.manual_seed(0)
    ids = torch.randint(0, VOCAB, TOKENS)
    layers = dict(num_hidden_layers=2, num_attention_heads=4, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE)
    if name == "bert":
        config = transformers.BertConfig(vocab_size=VOCAB, max_position_embeddings=32, **layers)
        return transformers.BertModel(config), ids, "encoder.layer.0.intermediate.dense"
    if name == "vit":
        config = transformers.ViTConfig(image_size=32, patch_size=8, num_labels=10, **layers)
        return transformers.ViTForImageClassification(config), torch.randn(2, 3, 32, 32), "vit.layers.0.mlp.fc1"
    if name == "gpt2":
        config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=32, n_embd=HIDDEN, n_layer=2, n_head=4,
                                         bos_token_id=0, eos_token_id=0)
        return transformers.GPT2LMHeadModel(config), ids, "transformer.h.0.mlp.c_fc"
    return transformers.LlamaForCausalLM(_llama_config()), ids, "model.layers.0.mlp.gate_proj"


@pytest.mark.parametrize("name", ["bert", "vit", "gpt2", "llama"])
def test_hugging_face_model_is_one_exact_graph(name, tmp_path):
    """No leaf, no TraceError; params/MACs exact; every exact group pruned by half at once slims
    exactly (the leak oracle too) and exports to a verified ONNX file."""
    model, x, mlp = _build(name)
    gg = check_model(model.eval(), x, name)
    assert gg.fallbacks == []
    (g,) = [g for g in gg.groups if any(m.module == mlp and m.dim == (1 if name == "gpt2" else 0) for m in g.members)]
    assert g.prunable and not g.inexact and g.size == (4 * HIDDEN if name == "gpt2" else INTERMEDIATE)
    check_slim(model, gg, x, str(tmp_path / "slim.onnx"))


@pytest.mark.parametrize("name,norm", [("vit", "vit.layers.0.layernorm_before"), ("gpt2", "transformer.h.0.ln_1"),
                                       ("llama", "model.layers.0.input_layernorm")])
def test_hidden_stream_is_prunable_through_layernorm_and_rmsnorm(name, norm, tmp_path):
    """The residual stream (embeddings, norms, every block's input columns and output rows) is one
    group. Through LayerNorm it is flagged inexact (mean and variance divide by the channel count);
    through Llama's RMSNorm it is exact (the slim pass keeps the mean of squares' divisor)."""
    model, x, _ = _build(name)
    gg = graphprune.analyze(model.eval(), x)
    (g,) = [g for g in gg.groups if any(m.module == norm for m in g.members)]
    assert g.prunable and g.size == HIDDEN
    if name == "llama":
        assert g.inexact is None
        assert slim_error(model, gg, graphprune.Plan({g.id: list(range(1, HIDDEN, 3))}), (x,)) <= EXACT
    else:
        assert "normalizes across these channels" in g.inexact
    frozen = [g for g in gg.groups if not g.prunable and g.reason != "model output" and "model input" not in g.reason]
    if name != "llama":  # GPT-2's output view is sized by a computed tuple with the count at its channel dim
        assert not frozen and gg.prunable_mac_share() == 1.0
    else:  # Llama's q/k head dims meet the rotary cos/sin, computed in forward: frozen; the rest scales
        assert all(m.module.endswith(("q_proj", "k_proj")) for g in frozen for m in g.members if m.role == "out")
        assert 0.98 < gg.prunable_mac_share() < 1.0
    plan = random_plan(gg, np.random.default_rng(0), 0.5)
    slim = graphprune.slim(gg, plan)
    assert sum(p.numel() for p in slim.parameters()) == gg.cost.params(plan.counts())
    if name == "gpt2":  # the tied lm_head stays tied: one sliced tensor
        assert slim.get_submodule("lm_head").weight is slim.get_submodule("transformer.wte").weight
    report = graphprune.export_onnx(slim, str(tmp_path / "slim.onnx"), x)
    assert report.relative_diff <= 1e-4


def test_llama_grouped_query_attention_prunes_whole_kv_heads(tmp_path):
    """attention="heads": Llama's ``repeat_kv`` (expand + reshape of the kv heads, their count read
    from the tensor) and its rotary rotate-half (a cat along the head dim) keep the heads. A channel
    of a layer's heads group is one kv head with the 2 query heads sharing it: its k/v rows, their q
    rows and o_proj columns. Half of the kv heads pruned, the slim model is exact, costs what the
    budget says and exports; every MAC scales with a prunable group."""
    model, x, _ = _build("llama")
    gg = graphprune.analyze(model.eval(), x, attention="heads")
    with flop_counter() as counter:
        model(x)
    assert gg.cost.macs() == counter.get_total_flops() // 2
    assert gg.cost.params() == sum(p.numel() for p in model.parameters())
    heads = [g for g in gg.groups if any(m.module.endswith("self_attn.k_proj") and m.dim == 0 for m in g.members)]
    assert [(g.size, g.prunable, g.inexact) for g in heads] == [(2, True, None)] * 2
    head_dim = HIDDEN // 4
    for layer, g in enumerate(heads):
        attn = f"model.layers.{layer}.self_attn"
        assert {m.module for m in g.members} == {f"{attn}.{p}_proj" for p in "qkvo"}
        assert member(g, f"{attn}.q_proj").indices([1]) == member(g, f"{attn}.o_proj", dim=1).indices([1]) == list(range(2 * head_dim, 4 * head_dim))
        assert member(g, f"{attn}.k_proj").indices([1]) == member(g, f"{attn}.v_proj").indices([1]) == list(range(head_dim, 2 * head_dim))
    assert gg.prunable_mac_share() == 1.0
    check_slim(model, gg, x, str(tmp_path / "slim.onnx"))
    slim = graphprune.slim(gg, graphprune.Plan({g.id: [0] for g in heads}, {g.id: 2 for g in heads}))
    assert slim.get_submodule("model.layers.0.self_attn.q_proj").out_features == 2 * head_dim
    assert slim.get_submodule("model.layers.0.self_attn.k_proj").out_features == head_dim
    model, x, _ = _build("llama")
    gg = graphprune.analyze(model.eval(), x, attention="heads")
    assert leak_check(model, gg, random_keep(gg, np.random.default_rng(0)), (x,)) == 0.0


def test_a_mean_across_channels_that_is_no_rms_norm_still_freezes():
    class MeanFeature(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(4, 8), torch.nn.Linear(8, 3)

        def forward(self, x):
            y = self.a(x)
            return self.b(y * y.pow(2).mean(-1, keepdim=True) + y.pow(2).mean(-1, keepdim=True))

    gg = graphprune.analyze(MeanFeature(), torch.randn(2, 4))
    (g,) = [g for g in gg.groups if any(m.module == "a" and m.dim == 0 for m in g.members)]
    assert not g.prunable and "combines values across the channels" in g.reason


def test_llama_with_grouped_query_attention_analyzes_on_the_meta_device():
    """No weight exists: analysis reads shapes only. Params are the config's, MACs the closed form
    of one forward (on meta, FlopCounterMode counts sdpa's two attention matmuls)."""
    config = _llama_config()
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(config)
    gg = graphprune.analyze(model.eval(), torch.randint(0, VOCAB, TOKENS))
    h, kv, i, v, layers = HIDDEN, 2 * HIDDEN // 4, INTERMEDIATE, VOCAB, 2
    tokens, seq = TOKENS[0] * TOKENS[1], TOKENS[1]
    assert gg.cost.params() == sum(p.numel() for p in model.parameters()) == (
        2 * v * h + layers * (2 * h * h + 2 * h * kv + 3 * h * i + 2 * h) + h)
    assert gg.cost.macs() == layers * (tokens * (2 * h * h + 2 * h * kv + 3 * h * i) + 2 * tokens * seq * h) + tokens * h * v
    mlp = [g for g in gg.groups if any(m.module.endswith("mlp.gate_proj") and m.dim == 0 for m in g.members)]
    assert [(g.size, g.prunable, g.inexact) for g in mlp] == [(INTERMEDIATE, True, None)] * layers
