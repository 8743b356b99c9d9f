"""Data for the demo and the benchmarks: scikit-learn digits, the CIFAR-10 subset, real CIFAR-10.

Nothing here downloads. Loaders yield (images, labels) batches; CIFAR training batches get the
standard augmentation (4-pixel padded random crop, horizontal flip) and per-channel normalization.

Under a process group (``torchrun``) the training loaders are sharded by a ``DistributedSampler``:
``batch_size`` stays the *global* batch, each rank loads its 1/world share of every batch, so
steps per epoch, and with them the schedules the methods place their searches in, do not change
with the number of ranks. Validation loaders are not sharded: every rank evaluates the whole set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset, TensorDataset

from ..common.distributed import is_distributed, rank, world_size
from ..errors import GraphPruneError

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


class AugmentedImages(Dataset):
    """uint8 NCHW images -> normalized float tensors, with crop+flip when ``augment``."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, augment: bool, seed: int = 0):
        self.images = torch.from_numpy(images)
        self.labels = torch.from_numpy(labels.astype(np.int64))
        self.augment = augment
        self.mean = torch.tensor(CIFAR_MEAN).view(3, 1, 1)
        self.std = torch.tensor(CIFAR_STD).view(3, 1, 1)
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[i].float() / 255.0
        if self.augment:
            dy, dx = torch.randint(0, 9, (2,), generator=self.generator).tolist()
            x = torch.nn.functional.pad(x, (4, 4, 4, 4))[:, dy : dy + 32, dx : dx + 32]
            if torch.rand((), generator=self.generator) < 0.5:
                x = x.flip(2)
        return (x - self.mean) / self.std, self.labels[i]


def _split(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    cut = int(round(n * val_fraction))
    return order[cut:], order[:cut]


def cifar10_subset(path: str | Path, batch_size: int = 128, val_fraction: float = 0.1,
                   seed: int = 0, augment: bool = True) -> tuple[DataLoader, DataLoader]:
    """Train/validation loaders over an ``.npz`` with uint8 ``x`` (N,3,32,32) and ``y`` (N,), split by ``seed``."""
    path = Path(path)
    if not path.exists():
        raise GraphPruneError(f"no CIFAR subset at {path}: pass the path of an .npz with keys x and y")
    data = np.load(path)
    train, val = _split(len(data["y"]), val_fraction, seed)
    return _loaders(data["x"], data["y"], train, val, batch_size, seed, augment)


def cifar10(root: str | Path, batch_size: int = 128, val_fraction: float = 0.1, seed: int = 0, augment: bool = True) -> tuple[DataLoader, DataLoader]:
    """The full CIFAR-10 training set from ``root`` (torchvision layout; never downloaded), split by ``seed``."""
    import torchvision

    try:
        ds = torchvision.datasets.CIFAR10(str(root), train=True, download=False)
    except RuntimeError as exc:
        raise GraphPruneError(f"no CIFAR-10 at {root}: {exc}") from exc
    x = np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2))
    train, val = _split(len(ds.targets), val_fraction, seed)
    return _loaders(x, np.asarray(ds.targets), train, val, batch_size, seed, augment)


def loader(dataset: Dataset, batch_size: int, shuffle: bool = True, seed: int = 0, num_workers: int = 0,
           distributed: bool | None = None) -> DataLoader:
    """A training loader of global batches of ``batch_size``, seeded; sharded over the ranks when
    ``distributed`` (None: whenever a process group is initialized). ``fit`` moves a sharded
    loader's ``DistributedSampler`` to a new epoch after each pass."""
    if distributed is None:
        distributed = is_distributed()
    if not distributed:
        g = torch.Generator().manual_seed(seed)
        return DataLoader(dataset, batch_size, shuffle=shuffle, generator=g, num_workers=num_workers)
    if batch_size % world_size():
        raise GraphPruneError(f"a global batch of {batch_size} does not split over {world_size()} ranks: "
                              f"give a batch_size divisible by {world_size()}")
    sampler = DistributedSampler(dataset, world_size(), rank(), shuffle=shuffle, seed=seed)
    return DataLoader(dataset, batch_size // world_size(), sampler=sampler, num_workers=num_workers)


def _loaders(x, y, train, val, batch_size, seed, augment) -> tuple[DataLoader, DataLoader]:
    train_ds = AugmentedImages(x[train], y[train], augment, seed + rank())  # augmentation draws differ per rank
    val_ds = AugmentedImages(x[val], y[val], False)
    return loader(train_ds, batch_size, seed=seed), DataLoader(val_ds, 512)


def digits(batch_size: int = 64, val_fraction: float = 0.2, seed: int = 0) -> tuple[DataLoader, DataLoader]:
    """scikit-learn's bundled 8x8 digits as (N,1,8,8) floats in [0,1]; the demo's default data."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise GraphPruneError("the digits data needs scikit-learn: pip install scikit-learn") from exc
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target)
    train, val = _split(len(y), val_fraction, seed)
    return loader(TensorDataset(x[train], y[train]), batch_size, seed=seed), DataLoader(TensorDataset(x[val], y[val]), 512)


def hold_out(train: Iterable, fraction: float, seed: int = 0) -> tuple[DataLoader, DataLoader]:
    """Split a training DataLoader's dataset, seeded: (the rest for the weights, ``fraction`` held out).

    Both loaders keep the batch size and shuffle (and the sharding over ranks of a loader with a
    ``DistributedSampler``); DSA allocates on the held-out part (the paper's 10% of the training
    data), and ``apply`` trains the slim model on the whole loader again.
    """
    if not isinstance(train, DataLoader):
        raise GraphPruneError(
            f"cannot hold out {fraction:.0%} of train_data for the search: it is a {type(train).__name__}, not a "
            "torch DataLoader. Pass val_data= (batches the search may use) or train_data as a DataLoader."
        )
    n = len(train.dataset)
    cut = int(round(n * fraction))
    if not 0 < cut < n:
        raise GraphPruneError(f"holding out {fraction:.0%} of {n} training samples leaves an empty part: pass val_data=")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 1000)).tolist()
    kept, held = Subset(train.dataset, order[cut:]), Subset(train.dataset, order[:cut])
    sharded = isinstance(train.sampler, DistributedSampler)
    batch = train.batch_size * (world_size() if sharded else 1)
    return tuple(loader(part, batch, seed=seed, num_workers=train.num_workers, distributed=sharded) for part in (kept, held))
