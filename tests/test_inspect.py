"""The group-graph inspector: what the table, the dot file, the PNG and the HTML page show, for a CNN, a ViT and
a Hugging Face Llama; and the page driven in headless Chromium where one is installed."""

import html
import json
import re
import shutil
import subprocess

import pytest
import torch
import torchvision
from rich.console import Console

import graphprune
from graphprune.cli import main
from graphprune.groups.views import FROZEN, group_colours, group_facts, layer_graph
from graphprune.groups.inspector import abbreviate, figure, picture


def _resnet(name="resnet18"):
    model = getattr(torchvision.models, name)().eval()
    return model, graphprune.analyze(model, torch.randn(1, 3, 32, 32))


def _vit():
    model = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32,
                                                 mlp_dim=64).eval()
    return model, graphprune.analyze(model, torch.randn(1, 3, 32, 32))


def _llama():
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    model = transformers.LlamaForCausalLM(config).eval()
    return model, graphprune.analyze(model, torch.randint(0, 128, (2, 8)))


BUILDERS = {"resnet18": _resnet, "vit": _vit, "llama": _llama}


@pytest.fixture(scope="module", params=list(BUILDERS))
def analyzed(request):
    return request.param, *BUILDERS[request.param]()


def test_every_box_names_its_groups_and_every_group_has_a_legend_entry(analyzed):
    _, _, gg = analyzed
    pic = picture(gg)
    shown = {i for box in pic.boxes.values() for i in box.groups}
    assert shown <= {g.id for g in gg.groups} and len(shown) >= len(gg.groups) - 1  # the image input may be no box
    for box in pic.boxes.values():
        name, ids = pic.label(box)
        assert ids.startswith("+".join(f"g{i}" for i in box.groups[:3])) and f"{box.channels} ch" in ids
        assert len(name) <= 26
    texts = [t.get_text() for t in figure(gg).axes[0].texts]
    for g in gg.groups:  # the PNG's legend: one entry per group, a frozen one with its reason
        entry = next(t for t in texts if t.startswith(f"g{g.id}  "))
        assert f"{g.size} ch" in entry
        assert ("frozen: " in entry) == (not g.prunable)
    assert any("not a conv's groups=" in t for t in texts) and any("MACs % / params %" in t for t in texts)


def test_colours_are_distinct_for_up_to_many_groups_and_frozen_is_grey(analyzed):
    _, _, gg = analyzed
    facts = group_facts(gg)
    colours = group_colours(facts)
    prunable = [colours[f.id] for f in facts if f.prunable]
    assert len(set(prunable)) == len(prunable)
    assert {colours[f.id] for f in facts if not f.prunable} <= {FROZEN}


def test_html_page_is_self_contained_and_lists_every_group(analyzed):
    _, _, gg = analyzed
    page = gg.to_html()
    assert "<script src" not in page and "<link" not in page and "@import" not in page  # nothing fetched at view time
    assert re.findall(r"https?://[^\"' ]+", page) == ["http://www.w3.org/2000/svg"]  # the SVG namespace, not a fetch
    rows = re.findall(r'<tr data-group="(\d+)"', page)
    assert [int(r) for r in rows] == [g.id for g in gg.groups]
    assert f"{len(gg.groups)} channel groups" in page
    for g in gg.groups:
        if not g.prunable:
            assert html.escape(f"frozen: {g.reason}") in page
    data = json.loads(re.search(r'<script type="application/json" id="data">(.*?)</script>', page, re.S).group(1))
    assert [len(g["members"]) for g in data["groups"]] == [len(g.members) for g in gg.groups]
    boxes = re.findall(r'data-groups="([\d ]+)"', page)
    assert len(boxes) == layer_graph(gg).number_of_nodes()


def test_resnet_dot_says_group_ids_and_marks_frozen_layers():
    _, gg = _resnet()
    dot = gg.to_dot()
    assert dot.startswith("digraph") and '"conv1:1"' in dot
    assert "group id 1" in dot and "groups 1" not in dot
    assert re.search(r'label="fc\\n[^"]*group id 13\\nfrozen"[^;]*style="filled,dashed"', dot)
    assert "relu" not in dot  # ops that only pass channels on are bridged
    assert '"bn1:1" -> "layer1_0_conv1:1"' in dot


def test_vit_table_names_top_level_parameters_and_explains_its_columns():
    _, gg = _vit()
    console = Console(record=True, width=250)
    gg.summary(console)
    text = console.export_text()
    assert "conv_proj, class_token, encoder.pos_embedding" in text
    words = " ".join(text.split())  # the caption wraps
    assert "what pruning every channel of it would remove" in words and "not a conv's groups=" in words
    frozen_row = next(line for line in text.splitlines() if line.startswith("│     0 │"))
    assert "│      - │        - │ frozen" in frozen_row
    names = [m["name"] for g in gg.to_json()["groups"] for m in g["members"]]
    assert "class_token" in names and "encoder.pos_embedding" in names
    pic = picture(gg)
    assert {"class_token", "encoder.pos_embedding"} <= {b.name for b in pic.boxes.values()}


def test_llama_frozen_reason_names_the_source_line():
    _, gg = _llama()
    page = gg.to_html()
    frozen = [g for g in gg.groups if not g.prunable and g.reason != "model output"]
    assert frozen and all(re.search(r"\.py:\d+", g.reason) for g in frozen)
    assert 'data-name="model.layers.0.self_attn.q_proj"' in page
    assert any(t.get_text().startswith(f"g{frozen[0].id}  ") and "modeling_llama.py:" in t.get_text() for t in figure(gg).axes[0].texts)


def test_plan_shows_kept_channels_per_group_and_layer(tmp_path):
    model, gg = _resnet()
    result = graphprune.apply(model, "l1", 0.5, torch.randn(1, 3, 32, 32))
    kept = result.plan.counts()
    g = next(iter(kept))
    page = gg.to_html(result.plan)
    assert "<th>kept</th>" in page and f'<tr data-group="{g}" class="prunable"><td>' in page
    pic = picture(gg, result.plan)
    box = next(b for b in pic.boxes.values() if b.groups == [g])
    assert f"{kept[g]}/{box.channels} ch" in pic.label(box)[1]
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(result.plan.to_json())
    out = tmp_path / "r18.html"
    assert main(["inspect", "torchvision:resnet18", "--input-shape", "1,3,32,32", "--plan", str(plan_file), "--html", str(out)]) == 0
    assert "<th>kept</th>" in out.read_text()


def test_inspect_with_a_plan_of_another_model_says_so(tmp_path):
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(graphprune.Plan({0: [0]}, {0: 7}).to_json())
    assert main(["inspect", "torchvision:resnet18", "--input-shape", "1,3,32,32", "--plan", str(plan_file)]) == 2
    assert main(["inspect", "torchvision:resnet18", "--input-shape", "1,3,32,32", "--plan", str(tmp_path / "none.json")]) == 2


def test_abbreviations_keep_the_last_part_and_the_numbers():
    assert abbreviate("layer2.0.downsample.0") == "layer2.0.downsample.0"
    assert abbreviate("encoder.layers.encoder_layer_0.self_attention.out_proj") == "e.l.el0.sa.out_proj"
    assert abbreviate("model.layers.11.self_attn/scaled_dot_product_attention") == "m.l.11.sa/sdpa"
    assert abbreviate("x" * 40).startswith("…") and len(abbreviate("x" * 40)) == 26


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")

# Run after the page's own script: click each group's row, search, and report what is highlighted.
HARNESS = """<script>
const out = {errors: window.__errors, title: document.getElementById('title').textContent,
             rows: document.querySelectorAll('tr[data-group]').length, highlight: {}};
try {
  for (const tr of document.querySelectorAll('tr[data-group]')) {
    tr.click();
    out.highlight[tr.dataset.group] = [...document.querySelectorAll('.box.hit')].map(b => b.dataset.key).sort();
  }
  const s = document.getElementById('search');
  s.value = QUERY; s.dispatchEvent(new Event('input'));
  out.search = [...document.querySelectorAll('.box.hit')].map(b => b.dataset.name);
} catch (e) { out.errors.push(String(e)); }
document.body.insertAdjacentHTML('beforeend', '<pre id="result">' + JSON.stringify(out).replace(/</g, '\\\\u003c') + '</pre>');
</script>"""


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (Debian: apt-get install chromium); .ci/run installs it")
@pytest.mark.parametrize("name, query", [("resnet50", "layer2.0.conv1"), ("vit", "class_token"), ("llama", "mlp.down_proj")])
def test_page_in_a_browser(name, query, tmp_path):
    builder = (lambda: _resnet("resnet50")) if name == "resnet50" else BUILDERS[name]
    _, gg = builder()
    page = gg.to_html()
    page = page.replace("<head>", "<head><script>window.__errors = []; "
                                  "addEventListener('error', e => window.__errors.push(String(e.message)));</script>", 1)
    page = page.replace("</body>", HARNESS.replace("QUERY", json.dumps(query)) + "</body>")
    path = tmp_path / "page.html"
    path.write_text(page)
    run = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", path.as_uri()],
                         capture_output=True, text=True, timeout=120)
    found = re.findall(r'<pre id="result">(\{.*?)</pre>', run.stdout, re.S)  # not the harness's own source
    assert found, run.stderr[-2000:]
    out = json.loads(html.unescape(found[-1]))
    assert out["errors"] == []
    assert f"{len(gg.groups)} channel groups" in out["title"] and out["rows"] == len(gg.groups)
    g = layer_graph(gg)
    for group in gg.groups:  # clicking a group highlights exactly the boxes holding its channels
        assert out["highlight"][str(group.id)] == sorted(k for k, d in g.nodes(data=True) if group.id in d["groups"])
    assert out["search"] and all(query in name for name in out["search"])
