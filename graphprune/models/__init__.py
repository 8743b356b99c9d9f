"""Reference architectures, constructible by name: ``graphprune.models.get("digits_cnn")``.

Each entry also knows its natural input shape, so the CLI can build example inputs for it.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch.nn as nn

from functools import partial

from .cifar_resnet import resnet
from .densenet import CifarDenseNet
from .digits import DigitsCNN
from .lenet import CifarNet, LeNet5, LeNet300100
from .mobilenet import MobileNetV1, MobileNetV2
from .restoration import EDSR, SRResNet, UNet, DnCNN
from .vgg import CifarVGG


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    factory: Callable[..., nn.Module]
    input_shape: tuple[int, ...]
    summary: str


CIFAR = (1, 3, 32, 32)
TINY = (1, 3, 64, 64)

REGISTRY: dict[str, ModelEntry] = {
    "digits_cnn": ModelEntry(DigitsCNN, (1, 1, 8, 8), "small residual CNN for scikit-learn's 8x8 digits (the demo model)"),
    **{
        f"resnet{d}": ModelEntry(partial(resnet, d), CIFAR, f"CIFAR ResNet-{d} ({'bottleneck' if d == 164 else 'basic'} blocks)")
        for d in (20, 32, 56, 110, 164)
    },
    "vgg16": ModelEntry(CifarVGG, CIFAR, "VGG-16 with BatchNorm for CIFAR"),
    "densenet40": ModelEntry(CifarDenseNet, CIFAR, "DenseNet-40, growth 12, for CIFAR"),
    "densenet12_40": ModelEntry(CifarDenseNet, CIFAR, "DHP's name for DenseNet-40 with growth 12"),
    "mobilenet_v1": ModelEntry(partial(MobileNetV1, num_classes=200, stem="tiny"), TINY, "MobileNetV1 for Tiny-ImageNet"),
    "mobilenet_v2": ModelEntry(partial(MobileNetV2, num_classes=200, stem="tiny"), TINY, "MobileNetV2 for Tiny-ImageNet"),
    "mobilenet_v1_cifar": ModelEntry(partial(MobileNetV1, num_classes=10, stem="cifar"), CIFAR, "MobileNetV1 for CIFAR-10"),
    "mobilenet_v2_cifar": ModelEntry(partial(MobileNetV2, num_classes=10, stem="cifar"), CIFAR, "MobileNetV2 for CIFAR-10"),
    "lenet_300_100": ModelEntry(LeNet300100, (1, 1, 28, 28), "LeNet-300-100 for MNIST"),
    "lenet5": ModelEntry(LeNet5, (1, 1, 28, 28), "LeNet-5 (Caffe variant) for MNIST"),
    "cifarnet": ModelEntry(CifarNet, CIFAR, "CifarNet: 3 conv + 2 fc layers"),
    "dncnn": ModelEntry(DnCNN, (1, 1, 64, 64), "DnCNN-17 grayscale denoiser"),
    "unet": ModelEntry(UNet, (1, 1, 64, 64), "UNet denoiser (4 levels)"),
    "srresnet": ModelEntry(SRResNet, (1, 3, 24, 24), "SRResNet x4 (16 blocks, 64 channels)"),
    "edsr_lite": ModelEntry(EDSR, (1, 3, 24, 24), "EDSR-lite x4 (8 blocks, 128 channels)"),
}


def names() -> list[str]:
    return sorted(REGISTRY)


def get(name: str, **kwargs) -> nn.Module:
    """Build a registered model; keyword arguments go to its factory (e.g. width multipliers)."""
    from graphprune.errors import ModelSpecError

    if name not in REGISTRY:
        raise ModelSpecError(f"unknown model {name!r}; graphprune.models has: {', '.join(names())}")
    return REGISTRY[name].factory(**kwargs)


def input_shape(name: str) -> tuple[int, ...]:
    return REGISTRY[name].input_shape
