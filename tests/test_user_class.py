"""The pruned model is the user's model: their class, methods, attributes and checkpoints, exact
against the zeroed original at other batch sizes and lengths; Hugging Face models keep their
outputs, generate() and config."""

import numpy as np
import pytest
import torch
import torch.fx as fx
import torch.nn as nn

import graphprune
from graphprune.slimming.exactness import exactness_error, half_plan
from graphprune.rebuild.user_class import class_fit
from helpers import EXACT


class MyNet(nn.Module):
    """A user's own model: methods, plain attributes, a config flag, indexable Sequentials."""

    def __init__(self, pooled: bool = True):
        super().__init__()
        self.n_blocks = 2
        self.pooled = pooled
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.blocks = nn.Sequential(*[nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=4), nn.BatchNorm2d(16), nn.ReLU())
                                      for _ in range(self.n_blocks)])
        self.head = nn.Linear(16, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = x + block(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.head(x.mean((2, 3)) if self.pooled else x.amax((2, 3)))


def _randomized(model: nn.Module) -> nn.Module:
    graphprune.slimming.exactness.randomize_small_tensors(model)
    return model.eval()


def test_a_custom_class_comes_back_as_itself_and_reloads(tmp_path):
    torch.manual_seed(0)
    model, x = _randomized(MyNet()), torch.randn(2, 3, 8, 8)
    result = graphprune.apply(model, "l1", 0.5, x)
    slim = result.model
    assert type(slim) is MyNet and isinstance(slim, MyNet) and result.report.notes == []
    assert slim.n_blocks == 2 and slim.pooled and slim.features(x).shape[1] == slim.stem[0].out_channels < 16
    conv = slim.blocks[1][0]
    assert isinstance(conv, nn.Conv2d) and conv.groups == conv.out_channels // 4  # whole conv groups of 4 channels go
    assert sum(p.numel() for p in slim.parameters()) == result.report.params_after
    for inputs in ((x,), (x[:1],), (torch.cat([x, x, x[:1]]),)):  # exact at the example's batch and others
        assert exactness_error(model, result.groups, result.plan, inputs, slim) <= EXACT

    path = str(tmp_path / "slim.pt")
    result.save(path)
    stored = torch.load(path, weights_only=True)
    assert stored["format"] == "graphprune.checkpoint/1" and stored["class"].endswith("MyNet")
    assert stored["state_dict"].keys() == slim.state_dict().keys()
    fresh = MyNet()
    loaded = graphprune.load(path, fresh)
    assert loaded is fresh and type(loaded) is MyNet
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), slim(x))
    with pytest.raises(graphprune.GraphPruneError, match="pass a fresh instance of that class"):
        graphprune.load(path, nn.Sequential(nn.Linear(2, 2)))


def test_in_place_resizes_the_model_itself():
    torch.manual_seed(0)
    model, x = _randomized(MyNet()), torch.randn(2, 3, 8, 8)
    copy = graphprune.apply(MyNet().eval(), "l1", 0.5, x).model
    result = graphprune.apply(model, "l1", 0.5, x, inplace=True)
    assert result.model is model and model.stem[0].out_channels == copy.stem[0].out_channels < 16
    assert sum(p.numel() for p in model.parameters()) == result.report.params_after


def test_output_graph_keeps_the_graph_module():
    model, x = MyNet().eval(), torch.randn(2, 3, 8, 8)
    result = graphprune.apply(model, "l1", 0.5, x, output="graph")
    assert isinstance(result.model, fx.GraphModule) and not isinstance(result.model, MyNet)
    with pytest.raises(graphprune.OptionError, match="choose one"):
        graphprune.apply(model, "l1", 0.5, x, output="graph", inplace=True)
    with pytest.raises(graphprune.OptionError, match="output is None"):
        graphprune.apply(model, "l1", 0.5, x, output="class")


class LiteralHeads(nn.Module):
    """Attention whose head count is a literal in its code: no attribute can carry a pruned size."""

    def __init__(self):
        super().__init__()
        self.qkv, self.proj = nn.Linear(16, 48), nn.Linear(16, 16)

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, 4, 4).permute(2, 0, 3, 1, 4)
        out = torch.softmax(q @ k.transpose(-1, -2), -1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, t, 16))


def test_a_size_written_as_a_literal_falls_back_to_the_graph_with_its_line():
    """By default the result is the slim graph and the report names the line; output="module"
    keeps those groups whole instead (here: all of them, so the budget cannot be met)."""
    model, x = LiteralHeads().eval(), torch.randn(2, 5, 16)
    result = graphprune.apply(model, "l1", 0.5, x)
    assert result.plan.keep and isinstance(result.model, fx.GraphModule)
    (note,) = [n for n in result.report.notes if "not a LiteralHeads" in n]
    assert 'test_user_class.py:' in note and "self.qkv(x).view(b, t, 3, 4, 4)" in note and "output='graph'" in note
    gg = graphprune.analyze(model, x)
    reasons = class_fit(gg).whole
    assert sorted(reasons) == [g.id for g in gg.prunable_groups] and all("test_user_class.py:" in r for r in reasons.values())
    with pytest.raises(graphprune.BudgetError, match="keeps 1.0000 of its macs"):
        graphprune.apply(model, "l1", 0.5, x, output="module")


def test_output_module_keeps_uncarried_groups_whole_and_meets_the_budget():
    """Llama analyzed by head dims: q/k meet the rotary embedding (frozen), so v's head dims alone
    would be pruned, which LlamaAttention's one head_dim cannot state: output="module" keeps them
    whole, says so, and meets the budget with the other groups."""
    model, ids, _ = _hf("llama")
    result = graphprune.apply(model.eval(), "l1", 0.5, ids, output="module")
    assert type(result.model) is type(model) and abs(result.report.achieved - 0.5) <= 0.005
    kept = [n for n in result.report.notes if "kept whole for LlamaForCausalLM" in n]
    assert len(kept) == 2 and all("modeling_llama.py" in n and "the same size" in n for n in kept)
    default = graphprune.apply(model, "l1", 0.5, ids)
    assert isinstance(default.model, fx.GraphModule) and "not a LlamaForCausalLM" in default.report.notes[-1]


class ChunkedHeads(nn.Module):
    """Attention whose code sizes q, k and v together: one chunk into three equal parts, one head_dim."""

    def __init__(self):
        super().__init__()
        self.heads, self.head_dim = 2, 8
        self.qkv, self.proj = nn.Linear(16, 48), nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = (z.view(b, t, self.heads, self.head_dim).transpose(1, 2) for z in self.qkv(x).chunk(3, dim=-1))
        out = torch.softmax(q @ k.transpose(-1, -2), -1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, t, -1))


def test_groups_the_code_sizes_together_are_tied_to_one_count():
    """q/k's head dims and v's are two groups, which chunk(3) and the one head_dim need at one
    count: they are tied (not kept whole), so the class comes back with both pruned."""
    torch.manual_seed(0)
    model, x = _randomized(ChunkedHeads()), torch.randn(2, 5, 16)
    gg = graphprune.analyze(model, x)
    heads = sorted(g.id for g in gg.prunable_groups if {m.module for m in g.members} <= {"qkv", "proj"} and g.size == 8)
    fit = class_fit(gg)
    assert len(heads) == 2 and fit.ties == [heads] and fit.whole == {}
    result = graphprune.apply(model, "l1", 0.4, x, analysis=gg)
    kept = result.plan.counts()
    assert type(result.model) is ChunkedHeads and kept[heads[0]] == kept[heads[1]] == result.model.head_dim < 8
    assert f"groups {heads[0]}, {heads[1]} keep one count: ChunkedHeads's code sizes them together" in result.report.notes
    for inputs in ((x,), (x[:1],)):
        assert exactness_error(model, result.groups, result.plan, inputs, result.model) <= EXACT
    ignored = graphprune.prepare(model, "l1", 0.6, x, analysis=gg, ignored_layers=["proj"])  # proj reads v's head dims
    assert not ignored.gg.groups[heads[0]].prunable and not ignored.gg.groups[heads[1]].prunable
    assert f"group {heads[0]} kept whole: ChunkedHeads's code gives it the size of group {heads[1]}, which is kept whole" in ignored.notes


class HalfSplit(nn.Module):
    """A split whose size the code computes from an attribute (timm's CSP stages: ``self.expand_chs // 2``)."""

    def __init__(self):
        super().__init__()
        self.expand_chs = 16
        self.expand, self.inner, self.out = nn.Conv2d(3, 16, 1), nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(16, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xs, xb = self.expand(x).split(self.expand_chs // 2, dim=1)
        return self.out(torch.cat([xs, self.inner(xb)], dim=1))


def test_an_attribute_inside_the_size_expression_is_solved_for():
    torch.manual_seed(0)
    model, x = _randomized(HalfSplit()), torch.randn(2, 3, 6, 6)
    result = graphprune.apply(model, "l1", 0.5, x, output="module")
    halves = [g.id for g in result.groups.prunable_groups if any(m.module == "expand" for m in g.members)]
    kept = result.plan.counts()
    assert len(halves) == 2 and kept[halves[0]] == kept[halves[1]] < 8
    assert type(result.model) is HalfSplit and result.model.expand_chs == 2 * kept[halves[0]]
    for inputs in ((x,), (x[:1],)):
        assert exactness_error(model, result.groups, result.plan, inputs, result.model) <= EXACT


# ------------------------------------------------------------------ Hugging Face

transformers = pytest.importorskip("transformers")
VOCAB = 100


def _hf(name: str) -> tuple[nn.Module, torch.Tensor, type]:
    """A model from a small config, its token ids (or images), and the Auto class that reloads it."""
    torch.manual_seed(0)
    sizes = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
    ids = torch.randint(0, VOCAB, (2, 8))
    if name == "llama":
        config = transformers.LlamaConfig(vocab_size=VOCAB, num_key_value_heads=2, max_position_embeddings=64, **sizes)
        return transformers.LlamaForCausalLM(config), ids, transformers.AutoModelForCausalLM
    if name == "qwen2":
        config = transformers.Qwen2Config(vocab_size=VOCAB, num_key_value_heads=2, max_position_embeddings=64, **sizes)
        return transformers.Qwen2ForCausalLM(config), ids, transformers.AutoModelForCausalLM
    if name == "gpt2":
        config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=64, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0)
        return transformers.GPT2LMHeadModel(config), ids, transformers.AutoModelForCausalLM
    if name == "bert":
        config = transformers.BertConfig(vocab_size=VOCAB, max_position_embeddings=64, **sizes)
        return transformers.BertModel(config), ids, transformers.AutoModel
    config = transformers.ViTConfig(image_size=32, patch_size=8, num_labels=10, **sizes)
    return transformers.ViTForImageClassification(config), torch.randn(2, 3, 32, 32), transformers.AutoModelForImageClassification


@pytest.mark.parametrize("name", ["llama", "qwen2", "gpt2", "bert", "vit"])
def test_hugging_face_model_keeps_its_class_outputs_and_arguments(name):
    """An exact plan (every other channel of every exact group, whole heads): the result is the
    model's class with its output type; exact against the zeroed original at batch 1 and 3 and,
    for token models, lengths 5 and 37, with an attention mask."""
    model, x, _ = _hf(name)
    model = _randomized(model)
    gg = graphprune.analyze(model, x, attention="heads")
    plan = half_plan(gg)
    slim = graphprune.apply_plan(model, plan, x, attention="heads")
    assert type(slim) is type(model)
    out = slim(x)
    assert isinstance(out, transformers.utils.ModelOutput)
    if name == "vit":
        cases = [(x[:1],), (torch.cat([x, x[:1]]),)]
    else:
        cases = [(torch.randint(0, VOCAB, (b, t)),) for b, t in ((1, 5), (3, 37))]
    for inputs in cases:
        assert exactness_error(model, gg, plan, inputs, slim) <= EXACT
    if name != "vit":  # a keyword the graph never saw: the model's own code takes it (model is zeroed by now)
        mask = torch.ones(3, 37, dtype=torch.long)
        mask[0, :4] = 0
        with torch.no_grad():
            want, got = model(cases[1][0], attention_mask=mask)[0], slim(cases[1][0], attention_mask=mask)[0]
        assert got.shape[:2] == (3, 37) and torch.allclose(got, want, rtol=1e-4, atol=1e-5 * want.abs().max())


@pytest.mark.parametrize("name", ["llama", "qwen2", "gpt2"])
def test_generate_with_the_kv_cache_gives_the_zeroed_originals_tokens(name):
    model, ids, _ = _hf(name)
    model = _randomized(model)
    gg = graphprune.analyze(model, ids, attention="heads")
    plan = half_plan(gg)
    slim = graphprune.apply_plan(model, plan, ids, attention="heads")
    graphprune.slimming.exactness.zero_pruned(model, gg, plan)
    prompt = ids[:1, :5]
    want = model.generate(prompt, max_new_tokens=16, do_sample=False, use_cache=True, pad_token_id=0)
    got = slim.generate(prompt, max_new_tokens=16, do_sample=False, use_cache=True, pad_token_id=0)
    assert got.shape == (1, 21) and torch.equal(got, want)


@pytest.mark.parametrize("name", ["llama", "qwen2", "gpt2", "bert", "vit"])
def test_save_pretrained_reloads(name, tmp_path):
    """l1 at half the parameters: where the config states the pruned sizes, AutoModel.from_pretrained
    reloads the checkpoint with no custom code; elsewhere the directory holds the plan and
    graphprune.load rebuilds it. Either way the outputs are the pruned model's."""
    model, x, auto = _hf(name)
    # Llama's and Qwen2's configs refuse hidden sizes that are no multiple of the head count (4): round to it
    rounding = dict(round_to=4) if name in ("llama", "qwen2") else {}
    result = graphprune.apply(model.eval(), "l1", graphprune.Budget(params=0.5), x, attention="heads", uniform_layers=True, **rounding)
    assert 0.45 <= result.report.params_ratio <= 0.505  # tied layers and whole heads are coarse steps in models this small
    slim = result.model
    assert type(slim) is type(model)
    slim.save_pretrained(tmp_path)
    stated = not hasattr(slim.config, "graphprune")
    fresh, _, _ = _hf(name)
    if stated:
        reloaded = auto.from_pretrained(tmp_path).eval()
    elif name == "vit":  # saved under Hugging Face's legacy key names: the directory is no checkpoint of ours
        with pytest.raises(graphprune.GraphPruneError, match="save with result.save"):
            graphprune.load(str(tmp_path), fresh)
        result.save(str(tmp_path / "vit.pt"))
        reloaded = graphprune.load(str(tmp_path / "vit.pt"), fresh).eval()
    else:
        reloaded = graphprune.load(str(tmp_path), fresh).eval()
    assert type(reloaded) is type(model)
    with torch.no_grad():
        want, got = slim(x), reloaded(x)
    assert torch.allclose(got[0], want[0], atol=1e-5, rtol=1e-5)
    if name in ("llama", "qwen2"):
        assert stated, result.report.notes
