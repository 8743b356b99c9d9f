"""The few torch.distributed primitives graphprune uses; every one is a no-op without a process group.

Under ``torchrun`` each rank runs the same program on its share of the data. ``fit`` wraps the model
in ``DistributedDataParallel`` for its forward and backward passes, so whatever is a parameter
(weights, DHP's hypernetworks and latents) stays identical on every rank by construction. A method
pass keeps the unwrapped model and synchronizes the rest of its state with these primitives: it
averages what each rank measured on its own batches (``all_reduce_mean``) and takes every decision
on rank 0 (``broadcast_object``, ``agree``), so every rank computes the same plan and slims the
same model. Files are written on rank 0 only (``main_only``).

A failed or timed-out collective raises :class:`DistributedError` naming the rank and the operation
instead of waiting for ever; ``init`` sets the timeout.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import os
from typing import Any, Callable, Iterable, Iterator, TypeVar

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ..errors import DistributedError

T = TypeVar("T")


def is_distributed() -> bool:
    """Whether a process group is initialized (``torchrun`` + ``init``, or the user's own ``init_process_group``)."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def init(backend: str | None = None, timeout: float = 600.0) -> None:
    """Join the process group ``torchrun`` describes in the environment (nccl on GPUs, gloo on CPUs).

    ``timeout``: seconds a collective waits for the other ranks before it fails with a
    :class:`DistributedError` (so a rank that died does not hang the rest). Each rank uses the GPU
    of its ``LOCAL_RANK``.
    """
    if is_distributed():
        return
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise DistributedError("graphprune.distributed.init: RANK and WORLD_SIZE are not set; launch the script with "
                               "torchrun (torchrun --nproc_per_node=N script.py), which sets them")
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout))


def default_device() -> torch.device:
    """This rank's device: its ``LOCAL_RANK`` GPU under nccl, the CPU under gloo (or one process: cuda if any)."""
    if is_distributed():
        if dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@contextlib.contextmanager
def _collective(what: str) -> Iterator[None]:
    try:
        yield
    except RuntimeError as exc:  # DistBackendError, gloo and nccl timeouts
        raise DistributedError(
            f"rank {rank()} of {world_size()}: {what} failed ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}). "
            "Another rank most likely failed or is stuck: look for its traceback above. If the ranks are only slow, "
            "raise the timeout: graphprune.distributed.init(timeout=seconds)") from exc


def _on_comm_device(tensor: torch.Tensor) -> torch.Tensor:
    """nccl reduces CUDA tensors only; gloo takes any."""
    if dist.get_backend() == "nccl" and tensor.device.type != "cuda":
        return tensor.to(default_device())
    return tensor


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` averaged over the ranks, in place (and returned): what each rank measured on its own batches."""
    if not is_distributed():
        return tensor
    with _collective(f"all_reduce of a {tuple(tensor.shape)} tensor"):
        buffer = _on_comm_device(tensor)
        dist.all_reduce(buffer)
        buffer /= world_size()
        if buffer is not tensor:
            tensor.copy_(buffer)
    return tensor


def all_reduce_gradients(parameters: Iterable[torch.nn.Parameter]) -> None:
    """Average the ``.grad`` of ``parameters`` over the ranks (what DDP does, for passes that step outside ``fit``)."""
    for p in parameters:
        if p.grad is not None:
            all_reduce_mean(p.grad)


def broadcast_object(obj: T, src: int = 0) -> T:
    """Rank ``src``'s ``obj`` (any picklable value) on every rank: a decision taken once."""
    if not is_distributed():
        return obj
    box = [obj]
    with _collective(f"broadcast of a {type(obj).__name__}"):
        dist.broadcast_object_list(box, src=src, device=default_device())
    return box[0]


def agree(flag: bool) -> bool:
    """Rank 0's ``flag`` on every rank (a stop decision); cheaper than ``broadcast_object`` for one bit."""
    if not is_distributed():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=default_device())
    with _collective("broadcast of a decision"):
        dist.broadcast(t, src=0)
    return bool(t.item())


def broadcast_module(module: torch.nn.Module, src: int = 0) -> None:
    """Rank ``src``'s parameters and buffers on every rank (BatchNorm statistics each rank updated on its own batch)."""
    if not is_distributed():
        return
    with _collective("broadcast of the model's state"), torch.no_grad():
        for t in (*module.parameters(), *module.buffers()):
            buffer = _on_comm_device(t.data)
            dist.broadcast(buffer, src=src)
            if buffer is not t.data:
                t.data.copy_(buffer)


def main_only(fn: Callable[..., T]) -> Callable[..., T | None]:
    """Run ``fn`` on rank 0 only (writing files: plots, checkpoints, ONNX); other ranks get None."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T | None:
        return fn(*args, **kwargs) if is_main() else None

    return wrapper


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` in DistributedDataParallel (rank 0's weights copied to every rank); the model itself without a process group.

    Wrap after a method pass attached its masks or hypernetworks: they change the parameter set.
    """
    if not is_distributed() or isinstance(model, DistributedDataParallel):
        return model
    with _collective("wrapping the model in DistributedDataParallel (every rank must hold the same architecture)"):
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DistributedDataParallel wrapper (method passes address its submodules by name)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


__all__ = ["is_distributed", "rank", "world_size", "is_main", "init", "default_device", "all_reduce_mean",
           "all_reduce_gradients", "broadcast_object", "agree", "broadcast_module", "main_only", "wrap", "unwrap"]
