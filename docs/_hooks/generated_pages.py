"""mkdocs hooks: the pages made at build time, so that nothing the site shows can go stale.

- Every ``bench/results/**/*.md`` becomes a page under ``benchmarks/results/``, headed by the commit that
  last changed it (or "not committed"), with the figures beside it shown below it.
- The inspector pictures of ``guides/inspect.md`` (a PNG, interactive pages and their screenshots) are drawn by
  the code they document; the screenshots by headless Chromium (Debian's ``chromium``, which ``.ci/run`` installs).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"


def on_files(files: Files, config) -> Files:
    for path in sorted(RESULTS.rglob("*")):
        rel = path.relative_to(RESULTS).as_posix()
        if path.suffix == ".md":
            files.append(File.generated(config, f"benchmarks/results/{rel}", content=_result_page(path)))
        elif path.suffix == ".png":
            files.append(File.generated(config, f"benchmarks/results/{rel}", abs_src_path=str(path)))
    for name, content in _inspector_pictures().items():
        files.append(File.generated(config, f"guides/inspector/{name}", content=content))
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    """benchmarks.md's ``<!-- results table -->``: every results file, the command it states, its commit."""
    if page.file.src_uri != "benchmarks.md":
        return markdown
    rows = ["| result | command | commit |", "|---|---|---|"]
    for path in sorted(RESULTS.rglob("*.md")):
        rel = path.relative_to(RESULTS).as_posix()
        command = re.search(r"`([^`]*bench/\w+\.py[^`]*)`", path.read_text())
        rows.append(f"| [{rel[:-3]}](benchmarks/results/{rel}) | {f'`{command.group(1)}`' if command else 'see the page'} "
                    f"| {_commit(path)} |")
    return markdown.replace("<!-- results table -->", "\n".join(rows))


def _result_page(path: Path) -> str:
    """The results file as committed, headed by where it comes from, with the figures of its folder below it."""
    rel = path.relative_to(ROOT).as_posix()
    text = path.read_text()
    title, _, body = text.partition("\n") if text.startswith("# ") else (f"# {rel}", "", text)
    figures = sorted(p.name for p in path.parent.glob("*.png")) if path.parent != RESULTS else []
    shown = "".join(f"\n\n![{name}]({name})" for name in figures)
    up = "../" * rel.count("/")  # bench/results/x.md is benchmarks/results/x.md: as deep below the site root
    return (f"{title}\n\n!!! info \"Source\"\n    `{rel}`, {_commit(path)}. The command that wrote it is in the text "
            f"below; [all benchmarks]({up}benchmarks.md).\n{body}" + (f"\n\n## Figures{shown}\n" if shown else "\n"))


def _commit(path: Path) -> str:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    if not git("rev-parse", "--git-dir"):
        return "commit unknown (not a git checkout)"
    last = git("log", "-1", "--format=%h (%cs)", "--", str(path))
    if not last:
        return "not committed yet"
    return f"last committed at {last}" + (", with uncommitted changes" if git("status", "--porcelain", "--", str(path)) else "")


def _inspector_pictures() -> dict[str, str | bytes]:
    """resnet18's PNG and the interactive pages of a ResNet-50, a small ViT and a small Llama."""
    import io

    import torch
    import torchvision
    import transformers

    import graphprune
    from graphprune.groups.inspector import figure

    resnet18 = graphprune.analyze(torchvision.models.resnet18().eval(), torch.randn(1, 3, 224, 224))
    png = io.BytesIO()
    figure(resnet18).savefig(png, format="png", dpi=100)
    resnet50 = graphprune.analyze(torchvision.models.resnet50().eval(), torch.randn(1, 3, 224, 224))
    vit = torchvision.models.VisionTransformer(image_size=64, patch_size=16, num_layers=4, num_heads=4, hidden_dim=64, mlp_dim=128)
    vit_gg = graphprune.analyze(vit.eval(), torch.randn(1, 3, 64, 64))
    config = transformers.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=176, num_hidden_layers=4,
                                      num_attention_heads=4, num_key_value_heads=2)
    llama_gg = graphprune.analyze(transformers.LlamaForCausalLM(config).eval(), torch.randint(0, 256, (1, 16)))
    pages = {"resnet50.html": resnet50.to_html(), "vit.html": vit_gg.to_html(), "llama.html": llama_gg.to_html()}
    shots = {name.replace(".html", ".png"): _screenshot(page) for name, page in pages.items()}
    return {"resnet18.png": png.getvalue(), **pages, **shots}


def _screenshot(page: str) -> bytes:
    """The page as a browser shows it at 1400 x 900, taken by headless Chromium."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if chromium is None:
        raise RuntimeError("make docs takes screenshots of the inspector's pages with Chromium: install it "
                           "(Debian: apt-get install chromium), as .ci/run does")
    with tempfile.TemporaryDirectory() as folder:
        html, png = Path(folder) / "page.html", Path(folder) / "page.png"
        html.write_text(page)
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1400,900",
                        f"--screenshot={png}", html.as_uri()], capture_output=True, timeout=120, check=True)
        return png.read_bytes()
