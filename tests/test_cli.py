"""The graphprune command line: inspect on every kind of MODEL spec, and its errors."""

import json
import subprocess
import sys

import pytest
import torch

import graphprune
from graphprune import models
from graphprune.cli import main
from graphprune.errors import ModelSpecError
from graphprune.modelspec import build_model, parse_shape


def run(*args):
    return subprocess.run([sys.executable, "-m", "graphprune.cli", *args], capture_output=True, text=True)


def test_inspect_json_for_a_zoo_model():
    out = run("inspect", "graphprune.models:digits_cnn", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["params"] == 78554 and data["prunable_mac_share"] == 1.0
    assert [g["size"] for g in data["groups"] if g["prunable"]] == [32, 32, 32, 16, 64]


def test_inspect_torchvision_writes_dot_and_png(tmp_path):
    dot, png = tmp_path / "g.dot", tmp_path / "g.png"
    assert main(["inspect", "torchvision:resnet18", "--input-shape", "1,3,32,32", "--dot", str(dot), "--png", str(png)]) == 0
    assert dot.read_text().startswith("digraph") and '"conv1:1"' in dot.read_text()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_inspect_python_file_factory(tmp_path):
    f = tmp_path / "mymodel.py"
    f.write_text("import torch.nn as nn\ndef make():\n    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3))\n")
    out = run("inspect", f"{f}:make", "--input-shape", "1,3,16,16", "--json")
    assert out.returncode == 0, out.stderr
    assert [g["size"] for g in json.loads(out.stdout)["groups"] if g["prunable"]] == [8]


def test_inspect_specialize_submodules_opens_a_branching_submodule(tmp_path):
    f = tmp_path / "branching.py"
    f.write_text(
        "import torch.nn as nn\n"
        "class Block(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.a, self.b = nn.Conv2d(8, 16, 1), nn.Conv2d(16, 8, 1)\n"
        "    def forward(self, x):\n"
        "        if x.shape[-1] > 4:\n"
        "            x = x * 2\n"
        "        return self.b(self.a(x))\n"
        "def make():\n"
        "    return nn.Sequential(nn.Conv2d(3, 8, 1), Block())\n"
    )
    plain = run("inspect", f"{f}:make", "--input-shape", "1,3,8,8")
    assert plain.returncode == 0, plain.stderr
    assert "1 is an opaque leaf" in plain.stdout and "specialize_submodules=True" in plain.stdout
    out = run("inspect", f"{f}:make", "--input-shape", "1,3,8,8", "--json", "--specialize-submodules")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["fallbacks"] == [] and sorted(g["size"] for g in data["groups"] if g["prunable"]) == [8, 16]


@pytest.mark.parametrize("spec, message", [
    ("nocolon", "cannot read MODEL"),
    ("foo:bar", "unknown model source"),
    ("torchvision:not_a_model", "torchvision has no model"),
    ("graphprune.models:nope", "unknown model"),
    ("missing.py:make", "no such file"),
])
def test_bad_model_specs(spec, message):
    with pytest.raises(ModelSpecError, match=message):
        build_model(spec)
    out = run("inspect", spec)
    assert out.returncode == 2 and "error:" in out.stderr


def test_bad_input_shape():
    with pytest.raises(ModelSpecError):
        parse_shape("1,x,3")
    out = run("inspect", "graphprune.models:digits_cnn", "--input-shape", "1,3,8,8")
    assert out.returncode == 2 and "example inputs" in out.stderr


def test_prune_writes_plan_model_and_verified_onnx(tmp_path):
    plan, onnx, saved = tmp_path / "plan.json", tmp_path / "slim.onnx", tmp_path / "slim.pt"
    out = run("prune", "graphprune.models:digits_cnn", "--method", "l1", "--budget", "0.5",
              "--plan", str(plan), "--onnx", str(onnx), "--save", str(saved))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "achieved" in out.stdout and "onnxruntime max |diff|" in out.stdout
    data = json.loads(plan.read_text())
    assert data["format"] == "graphprune.plan/1" and data["groups"]
    assert onnx.stat().st_size > 0
    stored = torch.load(saved, weights_only=True)
    pruned = graphprune.load(str(saved), build_model("graphprune.models:digits_cnn")[0])  # the plan re-applied to a fresh instance, the weights loaded
    assert type(pruned).__name__ == stored["class"].rpartition(".")[2] and pruned.state_dict().keys() == stored["state_dict"].keys()
    assert all(torch.equal(v, stored["state_dict"][k]) for k, v in pruned.state_dict().items())


def test_prune_reports_unreachable_budgets():
    out = run("prune", "graphprune.models:digits_cnn", "--budget", "0.001")
    assert out.returncode == 2 and "unreachable" in out.stderr


def test_prune_a_trained_checkpoint_ranks_its_weights(tmp_path):
    """--weights loads a state dict before pruning: l1 ranks those weights, as apply does from Python."""
    torch.manual_seed(3)
    trained = models.get("digits_cnn")
    with torch.no_grad():
        for p in trained.parameters():
            p.mul_(torch.rand_like(p) * 4)  # weights no fresh instance has
    torch.save({"state_dict": trained.state_dict(), "epoch": 7}, tmp_path / "ckpt.pt")
    plan_file = tmp_path / "plan.json"
    assert main(["prune", "graphprune.models:digits_cnn", "--weights", str(tmp_path / "ckpt.pt"), "--budget", "0.5",
                 "--plan", str(plan_file)]) == 0
    shape = models.input_shape("digits_cnn")
    expected = graphprune.apply(trained.eval(), "l1", 0.5, torch.randn(*shape)).plan
    assert graphprune.Plan.from_json(plan_file.read_text()).keep == expected.keep


def test_prune_with_weights_that_do_not_fit_says_so(tmp_path):
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "other.pt")
    out = run("prune", "graphprune.models:digits_cnn", "--weights", str(tmp_path / "other.pt"), "--budget", "0.5")
    assert out.returncode == 2
    assert "does not fit the model: missing" in out.stderr and "is it a checkpoint of this architecture?" in out.stderr


def test_prune_token_ids_a_file_that_imports_its_neighbour_per_layer_options_and_calibration(tmp_path):
    (tmp_path / "blocks.py").write_text(
        "import torch.nn as nn\n"
        "class Block(nn.Module):\n"
        "    def __init__(self, d):\n"
        "        super().__init__()\n"
        "        self.up, self.down = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)\n"
        "    def forward(self, x):\n"
        "        return x + self.down(self.up(x).relu())\n")
    (tmp_path / "lm.py").write_text(
        "import torch.nn as nn\nfrom blocks import Block\n"
        "class LM(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.embed, self.blocks, self.head = nn.Embedding(100, 32), nn.Sequential(Block(32), Block(32)), nn.Linear(32, 100)\n"
        "    def forward(self, ids):\n"
        "        return self.head(self.blocks(self.embed(ids))).flatten(0, 1)\n"
        "def make():\n    return LM()\n")
    ids = torch.randint(0, 100, (4, 6))
    torch.save([(ids, ids.flatten())], tmp_path / "calib.pt")
    plan_file = tmp_path / "plan.json"
    out = run("prune", f"{tmp_path / 'lm.py'}:make", "--input-shape", "4,6", "--vocab", "100", "--method", "taylor",
              "--calib", str(tmp_path / "calib.pt"), "--budget", "0.9", "--metric", "params", "--round-to", "1",
              "--ignore", "blocks.0", "--ratio", "blocks.1.up=0.5", "--plan", str(plan_file))
    assert out.returncode == 0, out.stderr
    keep = graphprune.Plan.from_json(plan_file.read_text()).keep
    assert sorted(len(k) for k in keep.values()) == [64]  # blocks.1's MLP at half; blocks.0's and the stream whole


def test_list_methods_says_what_each_needs():
    out = run("--list-methods")
    assert out.returncode == 0
    assert "taylor (reads --calib): First-order Taylor importance" in out.stdout
    assert "dsa (trains: prune with it from Python)" in out.stdout and "l1 (data-free)" in out.stdout


def test_calib_help_names_every_method_that_reads_it():
    out = run("prune", "--help")
    assert out.returncode == 0
    assert "(flap, hessian, importance, lwdna, nap, taylor)" in " ".join(out.stdout.split())
