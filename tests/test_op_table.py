"""The op table describes each op once: a second description is refused, and no op list is kept
anywhere but op_table.py (an op named in two module-level lists is what the table replaced)."""

import ast
from pathlib import Path

import pytest
import torch.nn as nn

from graphprune import ops
from graphprune.errors import OptionError
from graphprune.analysis import rules

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "graphprune").rglob("*.py"))
#: names of modules whose attributes are ops (torch.nn classes, functions)
OP_MODULES = {"nn", "F", "torch", "operator"}
#: torch attributes that are types or constants, not ops
NOT_OPS = {"Tensor", "Parameter", "dtype", "device", "memory_format", "float16", "float32", "float64", "bfloat16"}


def test_an_entry_refuses_a_second_description():
    with pytest.raises(OptionError, match=r"register_op\(Conv2d\): its rule is already .*; each op is described once"):
        ops.register_op(nn.Conv2d, rule=rules.elementwise)
    assert ops.module_op(nn.Conv2d).rule is rules.conv_module


def _op_names(node: ast.AST) -> set[str]:
    return {f"{n.value.id}.{n.attr}" for n in ast.walk(node) if isinstance(n, ast.Attribute)
            and isinstance(n.value, ast.Name) and n.value.id in OP_MODULES and n.attr not in NOT_OPS}


def test_no_op_list_outside_the_table():
    """Module-level collections of two or more ops live in op_table.py only."""
    lists = []
    for path in SOURCES:
        if path.name == "op_table.py":
            continue
        for statement in ast.parse(path.read_text()).body:
            value = statement.value if isinstance(statement, (ast.Assign, ast.AnnAssign)) else None
            if isinstance(value, (ast.Tuple, ast.List, ast.Set, ast.Dict, ast.Call)) and len(_op_names(value)) >= 2:
                lists.append(f"{path.relative_to(ROOT)}:{statement.lineno}: {sorted(_op_names(value))[:4]}")
    assert not lists, "op lists outside op_table.py (give the ops' entries a field instead):\n" + "\n".join(lists)
