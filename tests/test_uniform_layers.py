"""``uniform_layers=True``: every layer of a repeated stack keeps one width per role, so a config with one
width per role (a Hugging Face model's intermediate_size, num_key_value_heads, ...) describes the pruned
model; every method ties its counts where it decides them, each layer keeps its own best channels, and
the budget is still met within half a point."""

import importlib.util

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision

import graphprune
from graphprune import models, passes
from graphprune.budget.allocate import Allocation, allocate_by_score
from graphprune.cli import main as cli
from graphprune.errors import OptionError
from graphprune.groups.graph import layer_pattern, layer_roles
from graphprune.passes import MethodPass
from graphprune.groups.plan import Plan

needs_transformers = pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="needs transformers")
QUIET = dict(verbose=False)


def kept(plan: Plan, gg, gid: int) -> int:
    return len(plan.keep.get(gid, range(gg.groups[gid].size)))


def assert_tied(gg, plan: Plan) -> list[list[int]]:
    """Every role's groups keep one count; returns the roles that tie two or more groups."""
    repeated = [role for role in layer_roles(gg) if len(role) > 1]
    for role in repeated:
        assert len({kept(plan, gg, gid) for gid in role}) == 1, [(gid, kept(plan, gg, gid)) for gid in role]
    assert repeated, "the model has no repeated layers: the test would prove nothing"
    return repeated


def assert_layers_alike(original: torch.nn.Module, slim: torch.nn.Module) -> None:
    """Tensors that were alike in every layer (same path once the layer index is abstracted, same shape)
    are still alike: one config describes all layers."""
    before = {k: tuple(v.shape) for k, v in original.state_dict().items()}
    after = {k: tuple(v.shape) for k, v in slim.state_dict().items()}
    alike: dict[tuple, set] = {}
    for key, shape in before.items():
        if key in after and layer_pattern(key) != key:
            alike.setdefault((layer_pattern(key), shape), set()).add(after[key])
    assert alike and all(len(shapes) == 1 for shapes in alike.values()), {k: v for k, v in alike.items() if len(v) > 1}


def assert_within_half_a_point(gg, plan: Plan, metric: str, target: float) -> None:
    ratio = gg.cost.exact(metric, plan.counts()) / gg.cost.exact(metric)
    assert target - 0.005 <= ratio <= target, ratio


# ------------------------------------------------------------------ roles
def test_the_layer_index_is_abstracted_nested_ones_too():
    assert layer_pattern("model.layers.10.mlp.gate_proj") == "model.layers.*.mlp.gate_proj"
    assert layer_pattern("stages.1.blocks.2.attn.qkv") == "stages.*.blocks.*.attn.qkv"
    assert layer_pattern("0") == "*" and layer_pattern("conv1") == "conv1"


def test_resnet18_blocks_of_a_stage_are_layers_and_the_stem_is_its_own_role():
    model = torchvision.models.resnet18(weights=None).eval()
    gg = graphprune.analyze(model, torch.randn(1, 3, 64, 64))
    roles = layer_roles(gg)
    assert sorted(gid for role in roles for gid in role) == [g.id for g in gg.prunable_groups]  # a partition

    def role_of(module: str) -> list[int]:
        (gid,) = [g.id for g in gg.groups if any(m.module == module and m.dim == 0 and m.param == "weight" for m in g.members)]
        (role,) = [r for r in roles if gid in r]
        return role

    for stage in range(1, 5):
        first, second = role_of(f"layer{stage}.0.conv1"), role_of(f"layer{stage}.1.conv1")
        assert first == second and len(first) == 2
    assert len(role_of("conv1")) == 1  # the stem's channels: the stage-1 stream, one group


# ------------------------------------------------------------------ the allocation
def test_singleton_roles_allocate_exactly_as_no_roles():
    model = torchvision.models.resnet18(weights=None).eval()
    gg = graphprune.analyze(model, torch.randn(1, 3, 64, 64))
    rng = np.random.default_rng(0)
    scores = {g.id: rng.random(g.size) for g in gg.prunable_groups}
    budget = graphprune.Budget(macs=0.5)
    alone = allocate_by_score(gg, scores, budget, roles=[[g.id] for g in gg.prunable_groups])
    assert alone.keep == allocate_by_score(gg, scores, budget).keep


def test_a_roles_channel_scores_the_mean_of_its_groups_channels_of_that_rank():
    """Ranked as one unit with the untied groups: the mean keeps a role of many layers on their scale."""
    model = torchvision.models.resnet18(weights=None).eval()
    gg = graphprune.analyze(model, torch.randn(1, 3, 64, 64))
    roles = layer_roles(gg)
    role = next(r for r in roles if len(r) == 2)
    rng = np.random.default_rng(0)
    scores = {g.id: rng.random(g.size) for g in gg.prunable_groups}
    alloc = Allocation(gg, scores, roles=roles)
    (unit,) = [u for u, gids in enumerate(alloc.units) if gids == role]
    assert np.allclose(alloc.combine(scores)[unit], (np.sort(scores[role[0]]) + np.sort(scores[role[1]])) / 2)
    assert len(alloc.ranked_units) == sum(gg.groups[gids[0]].size for gids in alloc.units)
    counts = alloc.counts(len(alloc.ranked_units) // 2)
    assert counts[role[0]] == counts[role[1]]


# ------------------------------------------------------------------ Hugging Face models (from configs: nothing downloaded)
def _llama_config(**sizes):
    import transformers

    base = dict(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=32)
    return transformers.LlamaConfig(**{**base, **sizes})


def _hugging_face(name: str) -> tuple[torch.nn.Module, torch.Tensor]:
    import transformers

    torch.manual_seed(0)
    ids = torch.randint(0, 100, (2, 8))
    if name == "gpt2":
        config = transformers.GPT2Config(vocab_size=100, n_positions=32, n_embd=64, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0)
        return transformers.GPT2LMHeadModel(config).eval(), ids
    return transformers.LlamaForCausalLM(_llama_config()).eval(), ids


def _groups_of(gg, suffix: str, dim: int) -> list:
    return [g for g in gg.groups if any(m.module.endswith(suffix) and m.dim == dim and m.param == "weight" for m in g.members)]


@needs_transformers
def test_llama_gqa_heads_half_the_params_one_width_per_role_that_a_config_describes():
    import transformers

    model, x = _hugging_face("llama")
    budget = graphprune.Budget(params=0.5)
    result = graphprune.apply(model, "l1", budget, x, attention="heads", uniform_layers=True)
    gg, counts = result.groups, result.plan.counts()
    mlp, heads = _groups_of(gg, "mlp.gate_proj", 0), _groups_of(gg, "self_attn.k_proj", 0)
    assert len(mlp) == len(heads) == 2
    for g in mlp:  # gate/up rows, down columns
        assert {(layer_pattern(m.module), m.dim) for m in g.members} == {
            ("model.layers.*.mlp.gate_proj", 0), ("model.layers.*.mlp.up_proj", 0), ("model.layers.*.mlp.down_proj", 1)}
    assert len({counts[g.id] for g in mlp}) == 1 and counts[mlp[0].id] < mlp[0].size
    assert len({counts.get(g.id, g.size) for g in heads}) == 1
    assert_within_half_a_point(gg, result.plan, "params", 0.5)
    assert 0.495 <= result.report.params_ratio <= 0.5
    assert_layers_alike(model, result.model)
    (stream,) = _groups_of(gg, "model.embed_tokens", 1)
    kv = counts.get(heads[0].id, heads[0].size)
    config = _llama_config(intermediate_size=counts[mlp[0].id], num_key_value_heads=kv, num_attention_heads=2 * kv,
                           head_dim=model.config.head_dim)
    # the hidden stream is one group (no per-layer role); set after validation, which asks hidden_size to be a
    # multiple of the head count even where head_dim is given
    config.hidden_size = counts.get(stream.id, stream.size)
    transformers.LlamaForCausalLM(config).load_state_dict(result.model.state_dict())  # strict: every shape the config's
    untied = graphprune.apply(model, "l1", budget, x, attention="heads").plan.counts()
    assert len({untied[g.id] for g in mlp}) == 2  # without the tie the layers differ: no config could say both


@needs_transformers
def test_each_layer_keeps_its_own_best_channels_only_the_count_is_shared():
    model, x = _hugging_face("llama")
    with torch.no_grad():  # layer 0 wants the first half of its MLP channels, layer 1 the second
        for layer, best in ((0, slice(0, 64)), (1, slice(64, 128))):
            mlp = model.model.layers[layer].mlp
            mlp.gate_proj.weight[best] *= 10
            mlp.up_proj.weight[best] *= 10
            mlp.down_proj.weight[:, best] *= 10
    result = graphprune.apply(model, "l1", graphprune.Budget(params=0.5), x, attention="heads", uniform_layers=True)
    (first, second) = _groups_of(result.groups, "mlp.gate_proj", 0)
    keep0, keep1 = set(result.plan.keep[first.id]), set(result.plan.keep[second.id])
    n = len(keep0)
    assert n == len(keep1) and keep0 != keep1
    assert len(keep0 & set(range(64))) == min(n, 64) and len(keep1 & set(range(64, 128))) == min(n, 64)


@needs_transformers
def test_gpt2_layers_keep_one_width_per_role():
    model, x = _hugging_face("gpt2")
    result = graphprune.apply(model, "l1", graphprune.Budget(params=0.5), x, uniform_layers=True)
    roles = assert_tied(result.groups, result.plan)
    assert len(roles) >= 2 and all(len(role) == 2 for role in roles)  # per layer: the MLP and the attention dims
    assert_within_half_a_point(result.groups, result.plan, "params", 0.5)
    assert_layers_alike(model, result.model)


def test_resnet18_blocks_of_a_stage_keep_one_width():
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(1, 3, 64, 64)
    result = graphprune.apply(model, "l1", 0.5, x, uniform_layers=True)
    assert len(assert_tied(result.groups, result.plan)) == 4
    assert_within_half_a_point(result.groups, result.plan, "macs", 0.5)
    assert_layers_alike(model, result.model)


# ------------------------------------------------------------------ every method
def _resnet20():
    torch.manual_seed(0)
    model = models.get("resnet20")
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.2, 1.5)  # a trained network's spread of importances
    return model, torch.randn(8, 3, 8, 8)


def _batches(n: int = 3) -> list:
    return [(torch.randn(8, 3, 8, 8), torch.randint(0, 10, (8,))) for _ in range(n)]


def _prune(method: str, model, x, budget: float):
    """The method's plan with uniform_layers, driven as cheaply as its tests drive it."""
    if method in ("l1", "l2", "random", "uniform"):
        return graphprune.apply(model, method, budget, x[:2], uniform_layers=True)
    if method == "lwdna":
        return graphprune.apply(model, method, budget, x[:2], train_data=_batches(), loss_fn=F.cross_entropy, uniform_layers=True)
    if method == "nap":
        return graphprune.prepare(model, method, budget, x[:4], rounds=2, max_factor_elements=20_000, uniform_layers=True,
                                  **QUIET).finish()
    total = 80
    options = dict(val_data=_batches(), loss_fn=F.cross_entropy, allocation_steps=10, val_batches=1) if method == "dsa" else {}
    session = graphprune.prepare(model, method, budget, x[:2], total_steps=total, uniform_layers=True, **options)
    if method == "dhp":
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        session.bind_optimizer(optimizer)
        noise = torch.Generator().manual_seed(0)
    for step in range(total):
        if method == "dhp":  # the optimizer's step stood in for by noise (see tests/test_dhp.py)
            with torch.no_grad():
                z = session.method.latents.bank.values
                z += 0.05 * (0.02 * z.sign() + 0.2 * torch.randn(z.shape, generator=noise))
        session.after_step(step)
        if session.method.ready():
            break
    assert session.method.ready()
    return session.finish()


@pytest.mark.parametrize("method", ["l1", "l2", "random", "uniform", "nap", "lwdna", "dsa", "dhp"])
def test_every_method_ties_the_layers_and_meets_the_budget(method):
    model, x = _resnet20()
    result = _prune(method, model, x, 0.5)
    assert set(passes.names()) >= {method} and "uniform_layers" in passes.get(method).options()
    roles = assert_tied(result.groups, result.plan)
    assert any(len(role) == 3 for role in roles)  # resnet20: three blocks per stage
    report = result.report  # the exact cost model, against the original (lwdna plans on its widened copy)
    assert report.target == pytest.approx(0.5, abs=1e-6) and 0.495 <= report.achieved <= report.target
    if method == "dsa":  # one keep ratio per role
        assert len(result.method.alpha) == len(set(result.method._role_of.tolist())) < len(result.method.group_ids)


# ------------------------------------------------------------------ the option itself
class _KeepAll(MethodPass):
    """A method that does not tie its counts (a third party's, say)."""

    name = "keep_all_untied"

    def plan(self) -> Plan:
        return Plan({})


def test_a_method_that_cannot_tie_refuses_and_names_those_that_can(monkeypatch, capsys):
    monkeypatch.setitem(passes.base._REGISTRY, _KeepAll.name, _KeepAll)
    model, x = _resnet20()
    with pytest.raises(OptionError, match=r"cannot give every layer.*uniform_layers=True.*dhp, dsa, flap, hessian, importance, .*l1, l2, lwdna, nap, random, taylor, uniform"):
        graphprune.prepare(model, _KeepAll.name, 0.5, x[:2], uniform_layers=True)
    assert "uniform_layers" not in _KeepAll.options()
    graphprune.prepare(model, _KeepAll.name, 0.5, x[:2])  # without the option it runs
    with pytest.raises(OptionError, match="True or False"):
        graphprune.prepare(model, "l1", 0.5, x[:2], uniform_layers="yes")
    assert cli(["prune", "graphprune.models:resnet20", "--method", _KeepAll.name, "--budget", "50%", "--uniform-layers"]) == 2
    assert "cannot give every layer" in capsys.readouterr().err


def test_the_cli_flag(tmp_path):
    plan_path = tmp_path / "plan.json"
    assert cli(["prune", "graphprune.models:resnet20", "--budget", "50%", "--uniform-layers", "--plan", str(plan_path)]) == 0
    gg = graphprune.analyze(models.get("resnet20"), torch.randn(1, 3, 32, 32))
    plan = Plan.from_json(plan_path.read_text())
    assert_tied(gg, plan)
    assert_within_half_a_point(gg, plan, "macs", 0.5)
