"""Resolve the CLI's MODEL strings: torchvision:NAME, timm:NAME, graphprune.models:NAME, file.py:factory."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch
import torch.nn as nn

from .rebuild.checkpoint import load
from .errors import ModelSpecError
from .rebuild.records import FORMAT

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
        folder = str(path.resolve().parent)
        sys.path.insert(0, folder)  # the file imports the modules beside it, as `python file.py` would let it
        try:
            module_spec.loader.exec_module(module)
        finally:
            sys.path.remove(folder)
        factory = getattr(module, name, None)
        if factory is None:
            raise ModelSpecError(f"{path} defines no {name!r}")
        return factory(), DEFAULT_INPUT_SHAPE
    raise ModelSpecError(f"unknown model source {source!r}: use torchvision, timm, graphprune.models or a .py file")


def load_weights(model: nn.Module, path: str) -> nn.Module:
    """``model`` with the weights at ``path``: a state dict (or a training checkpoint holding one
    under "state_dict" or "model"), or a graphprune checkpoint, which gives the pruned model back."""
    if not Path(path).exists():
        raise ModelSpecError(f"--weights: no such file: {path}")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickles of whole models, corrupt files: torch raises many types
        raise ModelSpecError(f"--weights: {path} is not a state dict torch.load(weights_only=True) can read ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0]}): save model.state_dict() with torch.save") from exc
    if isinstance(saved, dict) and saved.get("format") == FORMAT:
        return load(path, model)
    state = next((saved[k] for k in ("state_dict", "model") if isinstance(saved, dict) and isinstance(saved.get(k), dict)), saved)
    if not isinstance(state, dict):
        raise ModelSpecError(f"--weights: {path} holds a {type(state).__name__}, not a state dict")
    missing, unexpected = set(model.state_dict()) - set(state), set(state) - set(model.state_dict())
    if missing or unexpected:
        raise ModelSpecError(f"--weights: {path} does not fit the model: missing {sorted(missing)[:3]}, unexpected "
                             f"{sorted(unexpected)[:3]}: is it a checkpoint of this architecture?")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelSpecError(f"--weights: {path} does not fit the model: {str(exc).splitlines()[-1].strip()}") from exc
    return model


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in text.split(","))
    except ValueError as exc:
        raise ModelSpecError(f"--input-shape must be comma-separated integers like 1,3,224,224, got {text!r}") from exc
    if not shape or any(s <= 0 for s in shape):
        raise ModelSpecError(f"--input-shape must be positive integers, got {text!r}")
    return shape
