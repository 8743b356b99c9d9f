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
import inspect
import random
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ..common.distributed import all_reduce_mean, broadcast_module, default_device, is_distributed, is_main, unwrap, wrap
from ..errors import DistributedError, GraphPruneError, OptionError


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

    Dict batches are refused rather than guessed at: which output are the logits, and how they line up
    with the labels (a causal language model's are shifted by one token), is the model's to say.
    Under a process group every rank must call it: the counts are averaged over the ranks, right both for
    a sharded loader and for the whole set on every rank."""
    was_training = model.training
    model.eval()
    counts = torch.zeros(2, dtype=torch.float64)  # correct, total
    with torch.no_grad():
        for batch in data:
            x, y = _pair(batch, "accuracy takes (input, label) batches; for dict batches compute your metric from model(**batch)")
            x, y = _to_device(x, device), _to_device(y, device)
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


def _to_device(value: Any, device: torch.device | str, non_blocking: bool = False) -> Any:
    """``value`` with its tensors (itself, or a dict's values) on ``device``; anything else as it is."""
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=non_blocking)
    if isinstance(value, Mapping):
        return {k: _to_device(v, device, non_blocking) for k, v in value.items()}
    return value


def _pair(batch: Any, takes: str) -> tuple[Any, Any]:
    """``batch`` as (input, target), or a GraphPruneError saying what it is and what the caller ``takes``."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    got = f"{type(batch).__name__} of {len(batch)}" if isinstance(batch, (tuple, list, Mapping)) else type(batch).__name__
    raise GraphPruneError(f"got a batch that is a {got}; {takes}")


_BATCHES = ("fit takes (input, target) batches, trained on loss_fn(model(input), target), or dicts of the model's "
            "keyword arguments, trained as model(**batch): have the dataset (or the DataLoader's collate_fn) return one of these")
_LOSS_FN = "loss_fn(output, target) -> scalar tensor (with dict batches: loss_fn(output, batch))"
_EMPTY = ("train_data has no batches: give fit a DataLoader or list with at least one (an iterator or generator "
          "is used up after one pass)")


def _cannot_call(fn: Any, *args: Any, **kwargs: Any) -> str | None:
    """Why ``fn`` cannot take these arguments, read from its signature; None where it can or has no
    signature to read. Never a call: a TypeError raised inside ``fn`` is its own, not taken for this."""
    if isinstance(fn, torch.nn.Module):
        fn = fn.forward  # a Module's __call__ takes anything
    try:
        inspect.signature(fn).bind(*args, **kwargs)
    except ValueError:  # no signature (a builtin, a scripted model): its own call reports a mismatch
        return None
    except TypeError as exc:  # not callable, or not with these arguments
        return str(exc)
    return None


def batch_output(net: torch.nn.Module, batch: Any, device: torch.device) -> Any:
    """The model on one calibration batch's inputs, where activations are read and no loss is needed:
    a dict as ``net(**batch)``, an (input, target) pair as ``net(input)``, a tensor as ``net(tensor)``."""
    if isinstance(batch, Mapping):
        return net(**_to_device(batch, device))
    x = batch[0] if isinstance(batch, (tuple, list)) and len(batch) == 2 else batch
    if not isinstance(x, torch.Tensor):
        raise OptionError(f"calib_data holds a batch that is a {type(batch).__name__}: give (input, target) pairs, dicts of "
                          "the model's keyword arguments, or input tensors")
    return net(_to_device(x, device))


def batch_loss(net: torch.nn.Module, batch: Any, loss_fn: Callable | None, device: torch.device) -> torch.Tensor:
    """The loss of one batch, by the conventions in fit's docstring."""
    if isinstance(batch, Mapping):
        mismatch = _cannot_call(unwrap(net), **batch)
        if mismatch:
            raise GraphPruneError(f"a dict batch is passed whole, as model(**batch), and the model's forward cannot be called "
                                  f"with its keys {list(batch)} ({mismatch}): give batches whose keys are forward's arguments "
                                  "(Hugging Face models take labels=; a model graphprune pruned takes the keys of its example "
                                  "inputs), or (input, target) batches")
        batch = _to_device(batch, device, non_blocking=True)
        output = net(**batch)
        if loss_fn is not None:
            loss = loss_fn(output, batch)
        else:
            loss = output.get("loss") if isinstance(output, Mapping) else getattr(output, "loss", None)
            if loss is None:
                raise GraphPruneError("the model's output has no loss for this dict batch: put the targets in the "
                                      f"batch (Hugging Face models return a loss given labels=) or pass {_LOSS_FN}")
    else:
        x, y = _pair(batch, _BATCHES)
        if loss_fn is None:
            raise GraphPruneError(f"(input, target) batches need a loss: pass {_LOSS_FN}")
        x, y = _to_device(x, device, non_blocking=True), _to_device(y, device, non_blocking=True)
        loss = loss_fn(net(x), y)
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        shape = f"a tensor of shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise GraphPruneError(f"the loss is {shape}, not a scalar tensor: fit calls {_LOSS_FN} (reduce it, e.g. with .mean())")
    return loss


def fit(
    model: torch.nn.Module,
    train_data: Iterable,
    loss_fn: Callable[[Any, Any], torch.Tensor] | None,
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
    """Train ``model`` for ``epochs`` passes over ``train_data``; ``epochs=0`` trains nothing and returns [].

    ``train_data`` is re-iterable (a DataLoader, a list) and yields one of two kinds of batches:
    ``(input, target)`` pairs (a tuple or list of two), trained on ``loss_fn(model(input), target)``;
    or dicts of the model's keyword arguments (Hugging Face style), called as ``model(**batch)`` and
    trained on ``loss_fn(output, batch)``, or with ``loss_fn=None`` on the output's ``loss`` (an
    attribute or key, as Hugging Face models return when the batch holds ``labels``). Tensors in a
    batch (a dict's values) are moved to ``device``. The loss must be a scalar tensor.
    ``optimizer`` defaults to SGD (lr 0.05, momentum 0.9, weight decay 5e-4); ``scheduler`` is stepped
    once per epoch. ``val_data`` adds a ``val_accuracy`` metric per epoch. ``checkpoint``: a path the
    model, optimizer and history are saved to after every epoch. ``amp``: mixed precision on CUDA.
    ``distributed``: train data-parallel over the initialized process group (None: whenever one is
    initialized); ``train_data`` then gives each rank its share (``graphprune.data`` loaders do).
    """
    if epochs < 0:
        raise GraphPruneError(f"fit got epochs={epochs}: pass the number of passes over train_data (0 trains nothing)")
    mismatch = None if loss_fn is None else _cannot_call(loss_fn, None, None)
    if mismatch:
        raise GraphPruneError(f"fit calls {_LOSS_FN}; {loss_fn!r} cannot be called so: {mismatch}")
    trained = [p for group in optimizer.param_groups for p in group["params"]] if optimizer else list(model.parameters())
    if not any(p.requires_grad for p in trained):
        raise GraphPruneError(f"nothing to train: no parameter the {'optimizer' if optimizer else 'model'} holds has "
                              "requires_grad=True; unfreeze those to train (p.requires_grad_(True))")
    if hasattr(train_data, "__len__") and len(train_data) == 0:
        raise GraphPruneError(_EMPTY)
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
            for batch in train_data:
                optimizer.zero_grad(set_to_none=True)
                with torch.autocast(device.type, enabled=use_amp):
                    loss = batch_loss(net, batch, loss_fn, device)
                scaler.scale(loss).backward()
                _call(callbacks, "before_step", step)
                scaler.step(optimizer)
                scaler.update()
                value = float(loss.detach())
                _call(callbacks, "after_step", step, value)
                total_loss, batches, step = total_loss + value, batches + 1, step + 1
            if batches == 0:  # an iterable without len(), or an iterator used up by an earlier pass
                raise GraphPruneError(_EMPTY)
            if hasattr(sampler, "set_epoch"):  # a DistributedSampler: a new order for the next pass, however fit is called
                sampler.set_epoch(sampler.epoch + 1)
            if distributed:
                broadcast_module(model)  # BatchNorm statistics: each rank updated them on its own batches
            if scheduler is not None:
                scheduler.step()
            metrics = {"val_accuracy": accuracy(model, val_data, device)} if val_data is not None else {}
            mean_loss = float(all_reduce_mean(torch.tensor(total_loss / batches, dtype=torch.float64)))
            record = EpochRecord(epoch, mean_loss, time.perf_counter() - start, metrics)
            history.append(record)
            _call(callbacks, "end_epoch", epoch)
            status = f"loss {record.train_loss:.3f}" + "".join(f"  {k} {v:.3f}" for k, v in metrics.items())
            bar.update(task, advance=1, status=status)
            if checkpoint is not None and is_main():
                torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                            "history": [dataclasses.asdict(h) for h in history]}, checkpoint)
    return history
