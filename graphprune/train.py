"""``fit``: one plain, dependable training loop, with hooks for method passes.

Anything with ``bind_optimizer(optimizer)`` and ``bind_schedule(total_steps)`` (called once, before the
first step; the second when ``train_data`` has a length), ``before_step(step)``,
``after_step(step, loss)`` or ``end_epoch(epoch)`` methods can be a callback: a ``graphprune.prepare``
session is one, so a method that trains plugs in unchanged.
"""

from __future__ import annotations

import dataclasses
import random
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


@dataclasses.dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    seconds: float
    metrics: dict[str, float]


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Same seed, same run (on the same hardware): python, numpy and torch generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


def accuracy(model: torch.nn.Module, data: Iterable, device: torch.device | str = "cpu") -> float:
    """Top-1 accuracy of ``model`` on (input, label) batches, in eval mode."""
    was_training = model.training
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in data:
            x, y = x.to(device), y.to(device)
            correct += int((model(x).argmax(1) == y).sum())
            total += len(y)
    model.train(was_training)
    return correct / max(total, 1)


def sgd(parameters: Iterable[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """The default optimizer of ``fit`` and ``apply``: SGD, momentum 0.9, weight decay 5e-4."""
    return torch.optim.SGD(parameters, lr=lr, momentum=0.9, weight_decay=5e-4)


def _call(callbacks: Sequence[Any], hook: str, *args: Any) -> None:
    for cb in callbacks:
        fn = getattr(cb, hook, None)
        if fn is not None:
            fn(*args)


def fit(
    model: torch.nn.Module,
    train_data: Iterable,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    epochs: int,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    callbacks: Sequence[Any] = (),
    device: torch.device | str | None = None,
    val_data: Iterable | None = None,
    checkpoint: str | Path | None = None,
    seed: int | None = 0,
    amp: bool = False,
    progress: bool = True,
    description: str = "training",
) -> list[EpochRecord]:
    """Train ``model`` for ``epochs`` passes over ``train_data`` (an iterable of (input, target) batches).

    ``optimizer`` defaults to SGD (lr 0.05, momentum 0.9, weight decay 5e-4); ``scheduler`` is stepped
    once per epoch. ``val_data`` adds a ``val_accuracy`` metric per epoch. ``checkpoint``: a path the
    model, optimizer and history are saved to after every epoch. ``amp``: mixed precision on CUDA.
    """
    if seed is not None:
        seed_everything(seed)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(device)
    optimizer = optimizer or sgd(model.parameters(), 0.05)
    use_amp = amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    history: list[EpochRecord] = []
    _call(callbacks, "bind_optimizer", optimizer)
    if hasattr(train_data, "__len__"):
        _call(callbacks, "bind_schedule", epochs * len(train_data))
    step = 0
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"), TimeRemainingColumn())
    with Progress(*columns, disable=not progress, transient=False) as bar:
        task = bar.add_task(description, total=epochs, status="")
        for epoch in range(epochs):
            model.train()
            start, total_loss, batches = time.perf_counter(), 0.0, 0
            for x, y in train_data:
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                optimizer.zero_grad(set_to_none=True)
                with torch.autocast(device.type, enabled=use_amp):
                    loss = loss_fn(model(x), y)
                scaler.scale(loss).backward()
                _call(callbacks, "before_step", step)
                scaler.step(optimizer)
                scaler.update()
                value = float(loss.detach())
                _call(callbacks, "after_step", step, value)
                total_loss, batches, step = total_loss + value, batches + 1, step + 1
            if scheduler is not None:
                scheduler.step()
            metrics = {"val_accuracy": accuracy(model, val_data, device)} if val_data is not None else {}
            record = EpochRecord(epoch, total_loss / max(batches, 1), time.perf_counter() - start, metrics)
            history.append(record)
            _call(callbacks, "end_epoch", epoch)
            status = f"loss {record.train_loss:.3f}" + "".join(f"  {k} {v:.3f}" for k, v in metrics.items())
            bar.update(task, advance=1, status=status)
            if checkpoint is not None:
                torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                            "history": [dataclasses.asdict(h) for h in history]}, checkpoint)
    return history
