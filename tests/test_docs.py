"""The docs' code runs as written: every ```python block of a page (docs/**/*.md and README.md), in order, in
one namespace, in a fresh folder. A block whose first line is ``# not run here: <why>`` cannot run in a test (a
launch on several nodes): it is skipped, and the reader sees why."""

import re
from pathlib import Path

import pytest
import torch

import graphprune
from graphprune.ops import declaration_of

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("**/*.md")) + [ROOT / "README.md"]
NOT_RUN = "# not run here:"
#: pages that need an optional extra (pyproject.toml), which `make test` installs
NEEDS = {"yolo.md": "ultralytics"}


def code_blocks(page: Path) -> list[str]:
    """The blocks that run, each padded with blank lines so that a traceback gives the line in the page."""
    text = page.read_text()
    blocks = [("\n" * text.count("\n", 0, m.start(1)), m.group(1))
              for m in re.finditer(r"^```python\n(.*?)^```", text, flags=re.M | re.S)]
    return [pad + block for pad, block in blocks if not block.startswith(NOT_RUN)]


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_page_code_runs(page, tmp_path, monkeypatch):
    blocks = code_blocks(page)
    if not blocks:
        pytest.skip("no code on this page")
    if page.name in NEEDS:
        pytest.importorskip(NEEDS[page.name])
    monkeypatch.chdir(tmp_path)  # files a page writes (pruned.onnx, a checkpoint) land here
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the pages' models are tiny: more threads only contend on a shared machine
    namespace: dict = {"__name__": f"docs.{page.stem}"}
    try:
        for block in blocks:
            exec(compile(block, str(page), "exec"), namespace)
    finally:
        torch.set_num_threads(threads)
        for target in namespace.values():  # a page's declarations do not leak into other tests
            if callable(target) and not isinstance(target, torch.nn.Module) and declaration_of(target) is not None:
                graphprune.unregister_op(target)


def test_blocks_that_do_not_run_say_why():
    for page in PAGES:
        for block in re.findall(r"^```python\n(.*?)^```", page.read_text(), flags=re.M | re.S):
            first = block.splitlines()[0] if block else ""
            assert not first.startswith("# not run") or re.match(rf"{NOT_RUN} \w", first), f"{page}: {first}"
