"""Resolve the CLI's MODEL strings: torchvision:NAME, timm:NAME, graphprune.models:NAME, file.py:factory."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch.nn as nn

from .errors import ModelSpecError

DEFAULT_INPUT_SHAPE = (1, 3, 224, 224)


def build_model(spec: str) -> tuple[nn.Module, tuple[int, ...]]:
    """The model a spec names (randomly initialised: weights are never downloaded) and a default input shape."""
    source, sep, name = spec.rpartition(":")
    if not sep or not source or not name:
        raise ModelSpecError(
            f"cannot read MODEL {spec!r}: use torchvision:NAME, timm:NAME, graphprune.models:NAME or path/to/file.py:factory"
        )
    if source == "torchvision":
        import torchvision

        try:
            return torchvision.models.get_model(name, weights=None), (1, 3, 299, 299) if "inception" in name else DEFAULT_INPUT_SHAPE
        except ValueError as exc:
            raise ModelSpecError(f"torchvision has no model {name!r}: {exc}") from exc
    if source == "timm":
        try:
            import timm
        except ImportError as exc:
            raise ModelSpecError("timm is not installed: pip install timm") from exc
        try:
            model = timm.create_model(name, pretrained=False)
        except RuntimeError as exc:
            raise ModelSpecError(f"timm has no model {name!r}: {exc}") from exc
        shape = tuple(model.pretrained_cfg.get("input_size", DEFAULT_INPUT_SHAPE[1:])) if hasattr(model, "pretrained_cfg") else DEFAULT_INPUT_SHAPE[1:]
        return model, (1, *shape)
    if source == "graphprune.models":
        from graphprune import models

        return models.get(name), models.input_shape(name)
    path = Path(source)
    if path.suffix == ".py":
        if not path.exists():
            raise ModelSpecError(f"no such file: {path}")
        module_spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        factory = getattr(module, name, None)
        if factory is None:
            raise ModelSpecError(f"{path} defines no {name!r}")
        return factory(), DEFAULT_INPUT_SHAPE
    raise ModelSpecError(f"unknown model source {source!r}: use torchvision, timm, graphprune.models or a .py file")


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in text.split(","))
    except ValueError as exc:
        raise ModelSpecError(f"--input-shape must be comma-separated integers like 1,3,224,224, got {text!r}") from exc
    if not shape or any(s <= 0 for s in shape):
        raise ModelSpecError(f"--input-shape must be positive integers, got {text!r}")
    return shape
