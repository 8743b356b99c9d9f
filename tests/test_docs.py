"""The guides' code runs as written: every ```python block of a page, in order, in one namespace."""

import re
from pathlib import Path

import pytest
import torch

import graphprune
from graphprune.ops import declaration_of

DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGES = sorted(DOCS.glob("**/*.md"))


def code_blocks(page: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", page.read_text(), flags=re.M | re.S)


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(DOCS)) for p in PAGES])
def test_page_code_runs(page, tmp_path, monkeypatch):
    blocks = code_blocks(page)
    if not blocks:
        pytest.skip("no code on this page")
    monkeypatch.chdir(tmp_path)  # files a guide writes (pruned.onnx) land here
    namespace: dict = {"__name__": f"docs.{page.stem}"}
    try:
        for block in blocks:
            exec(compile(block, str(page), "exec"), namespace)
    finally:
        for target in namespace.values():  # a guide's declarations do not leak into other tests
            if callable(target) and not isinstance(target, torch.nn.Module) and declaration_of(target) is not None:
                graphprune.unregister_op(target)
