"""Where in the user's code: the line being traced, or the line that broke tracing."""

from __future__ import annotations

import os
import traceback
from typing import Iterable

import torch

_OURS = (os.path.dirname(torch.__file__), os.path.dirname(__file__))


def user_location(exc: BaseException) -> str:
    """The user's line that broke tracing."""
    return _format_user_frame(traceback.extract_tb(exc.__traceback__))


def caller_location() -> str:
    """The user's line being traced."""
    return _format_user_frame(traceback.extract_stack())


def _format_user_frame(frames: Iterable[traceback.FrameSummary]) -> str:
    """The innermost frame outside torch and graphprune."""
    user = [f for f in frames if not f.filename.startswith(_OURS)]
    if not user:
        return "<unknown location>"
    f = user[-1]
    return f"{f.filename}:{f.lineno}: {(f.line or '').strip()}"


def qualified_name(obj: object) -> str:
    """``module.qualname`` of a function or class: how tables name code outside torch (timm, torchvision)."""
    return f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', '')}"
