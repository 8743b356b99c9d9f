"""Where in the user's code: the line being traced, the line that broke tracing, the line that made a node."""

from __future__ import annotations

import linecache
import os
import sys
import traceback
from types import FrameType

import torch
import torch.fx as fx

_OURS = (os.path.dirname(torch.__file__) + os.sep, os.path.dirname(os.path.dirname(__file__)) + os.sep)  # graphprune/; torchvision is not torch

#: ``node.meta`` key of the user's (file, line) that made a node while tracing (see :func:`user_frame`)
FRAME = "user_frame"


def user_location(exc: BaseException) -> str:
    """The user's line that broke tracing."""
    user = [(f.filename, f.lineno) for f in traceback.extract_tb(exc.__traceback__) if is_user_code(f.filename)]
    return format_location(user[-1] if user else None)


def caller_location() -> str:
    """The user's line being traced."""
    return format_location(user_frame())


def user_frame() -> tuple[str, int] | None:
    """(file, line) of the innermost frame of the running stack outside torch and graphprune.

    Walks the live frames instead of extracting a traceback: tracing records it for every node it
    makes, and fx's own ``record_stack_traces`` made analyzing a ResNet-50 about 60% slower.
    """
    frame = innermost_user_frame()
    return None if frame is None else (frame.f_code.co_filename, frame.f_lineno)


def innermost_user_frame() -> FrameType | None:
    """The innermost frame of the running stack outside torch and graphprune."""
    frame = sys._getframe(1)
    while frame is not None and not is_user_code(frame.f_code.co_filename):
        frame = frame.f_back
    return frame


def format_location(frame: tuple[str, int] | None) -> str:
    """``file:line: code``."""
    if frame is None:
        return "<unknown location>"
    filename, lineno = frame
    return f"{filename}:{lineno}: {linecache.getline(filename, lineno).strip()}"


def describe_node(node: fx.Node, module_type: str | None = None) -> str:
    """How a message names an op: a module call by its module's path and class (``module_type``);
    any other op by the user's line that made it and the module it ran in, which the user can
    find, with fx's node name last (only ``gm.code`` shows it)."""
    if node.op == "call_module":
        return f"'{node.target}' ({module_type})" if module_type else f"'{node.target}'"
    what = f".{node.target}()" if node.op == "call_method" else getattr(node.target, "__name__", str(node.target))
    frame = node.meta.get(FRAME)
    if frame is None:  # made by a pass, not traced from the user's code
        return f"'{node.name}' ({what})"
    filename, lineno = frame
    code = linecache.getline(filename, lineno).strip()
    stack = list((node.meta.get("nn_module_stack") or {}).values())  # (path, type) of each enclosing module
    module = stack[-1][0] if stack else ""
    return (f"{what} at {filename}:{lineno}" + (f' "{code}"' if code else "")
            + (f" in module '{module}'" if module else "") + f" (fx node '{node.name}')")


def qualified_name(obj: object) -> str:
    """``module.qualname`` of a function or class: how tables name code outside torch (timm, torchvision)."""
    return f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', '')}"


def is_user_code(filename: str) -> bool:
    """Whether a source file is the user's or a library's (torchvision, timm), not torch's or graphprune's."""
    return not filename.startswith(_OURS)
