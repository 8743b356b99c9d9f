"""``fit``: one plain, dependable training loop, with hooks for method passes.

Anything with ``bind_optimizer(optimizer)`` and ``bind_schedule(total_steps)`` (called once, before the
first step; the second when ``train_data`` has a length), ``before_step(step)``,
``after_step(step, loss)`` or ``end_epoch(epoch)`` methods can be a callback: a ``graphprune.prepare``
session is one, so a method that trains plugs in unchanged.

Under ``torchrun`` (a process group initialized, e.g. by ``graphprune.distributed.init()``) ``fit``
trains data-parallel: the model is wrapped in ``DistributedDataParallel`` for the forward and
backward passes only (callbacks keep addressing the plain model), a ``DistributedSampler`` gets a
new epoch each pass, BatchNorm statistics are taken from rank 0 after each epoch, metrics are
averaged over the ranks, and only rank 0 shows progress and writes the checkpoint.
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

from .distributed import all_reduce_mean, broadcast_module, default_device, is_distributed, is_main, unwrap, wrap
from .errors import DistributedError


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
    """Top-1 accuracy of ``model`` on (input, label) batches, in eval mode.

    Under a process group every rank must call it: the counts are averaged over the ranks, right both for
    a sharded loader and for the whole set on every rank."""
    was_training = model.training
    model.eval()
    counts = torch.zeros(2, dtype=torch.float64)  # correct, total
    with torch.no_grad():
        for x, y in data:
            x, y = x.to(device), y.to(device)
            counts += torch.tensor([float((model(x).argmax(1) == y).sum()), float(len(y))], dtype=torch.float64)
    model.train(was_training)
    correct, total = all_reduce_mean(counts).tolist()  # every rank's share (or the same set on every rank)
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
    distributed: bool | None = None,
) -> list[EpochRecord]:
    """Train ``model`` for ``epochs`` passes over ``train_data`` (an iterable of (input, target) batches).

    ``optimizer`` defaults to SGD (lr 0.05, momentum 0.9, weight decay 5e-4); ``scheduler`` is stepped
    once per epoch. ``val_data`` adds a ``val_accuracy`` metric per epoch. ``checkpoint``: a path the
    model, optimizer and history are saved to after every epoch. ``amp``: mixed precision on CUDA.
    ``distributed``: train data-parallel over the initialized process group (None: whenever one is
    initialized); ``train_data`` then gives each rank its share (``graphprune.data`` loaders do).
    """
    if distributed is None:
        distributed = is_distributed()
    elif distributed and not is_distributed():
        raise DistributedError("fit(distributed=True) needs a process group: launch with torchrun and call "
                               "graphprune.distributed.init() first")
    if seed is not None:
        seed_everything(seed)
    model = unwrap(model)
    device = torch.device(device) if device is not None else default_device()
    model.to(device)
    net = wrap(model, device) if distributed else model  # after the callbacks attached: DDP sees their parameters
    optimizer = optimizer or sgd(model.parameters(), 0.05)
    use_amp = amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    history: list[EpochRecord] = []
    _call(callbacks, "bind_optimizer", optimizer)
    if hasattr(train_data, "__len__"):
        _call(callbacks, "bind_schedule", epochs * len(train_data))
    step = 0
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"), TimeRemainingColumn())
    sampler = getattr(train_data, "sampler", None)
    with Progress(*columns, disable=not (progress and is_main()), transient=False) as bar:
        task = bar.add_task(description, total=epochs, status="")
        for epoch in range(epochs):
            model.train()
            start, total_loss, batches = time.perf_counter(), 0.0, 0
            for x, y in train_data:
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                optimizer.zero_grad(set_to_none=True)
                with torch.autocast(device.type, enabled=use_amp):
                    loss = loss_fn(net(x), y)
                scaler.scale(loss).backward()
                _call(callbacks, "before_step", step)
                scaler.step(optimizer)
                scaler.update()
                value = float(loss.detach())
                _call(callbacks, "after_step", step, value)
                total_loss, batches, step = total_loss + value, batches + 1, step + 1
            if hasattr(sampler, "set_epoch"):  # a DistributedSampler: a new order for the next pass, however fit is called
                sampler.set_epoch(sampler.epoch + 1)
            if distributed:
                broadcast_module(model)  # BatchNorm statistics: each rank updated them on its own batches
            if scheduler is not None:
                scheduler.step()
            metrics = {"val_accuracy": accuracy(model, val_data, device)} if val_data is not None else {}
            mean_loss = float(all_reduce_mean(torch.tensor(total_loss / max(batches, 1), dtype=torch.float64)))
            record = EpochRecord(epoch, mean_loss, time.perf_counter() - start, metrics)
            history.append(record)
            _call(callbacks, "end_epoch", epoch)
            status = f"loss {record.train_loss:.3f}" + "".join(f"  {k} {v:.3f}" for k, v in metrics.items())
            bar.update(task, advance=1, status=status)
            if checkpoint is not None and is_main():
                torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                            "history": [dataclasses.asdict(h) for h in history]}, checkpoint)
    return history
