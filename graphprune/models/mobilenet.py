"""MobileNetV1 and MobileNetV2 with a width multiplier and an input stem per dataset.

``stem="imagenet"`` is the original (first conv stride 2); ``"tiny"`` (Tiny-ImageNet, 64x64) makes
the first conv stride 1, as DHP does; ``"cifar"`` (32x32) also makes the first stride-2 stage stride 1.
"""

from __future__ import annotations

import torch
import torch.nn as nn

V1 = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [(1024, 2), (1024, 1)]
V2 = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


def _make_divisible(v: float, divisor: int = 8) -> int:
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


def _cbr(cin: int, cout: int, k: int, stride: int, groups: int = 1, act: type = nn.ReLU) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), act())


def _strides(stem: str) -> tuple[int, int]:
    """(first conv stride, stride of the first stride-2 stage)."""
    return {"imagenet": (2, 2), "tiny": (1, 2), "cifar": (1, 1)}[stem]


class MobileNetV1(nn.Module):
    def __init__(self, num_classes: int = 1000, width: float = 1.0, stem: str = "imagenet"):
        super().__init__()
        first, downsample = _strides(stem)
        cin = _make_divisible(32 * width)
        layers = [_cbr(3, cin, 3, first)]
        seen_stride2 = False
        for cout, stride in V1:
            if stride == 2 and not seen_stride2:
                stride, seen_stride2 = downsample, True
            cout = _make_divisible(cout * width)
            layers += [_cbr(cin, cin, 3, stride, groups=cin), _cbr(cin, cout, 1, 1)]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean((2, 3)))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers = [] if expand == 1 else [_cbr(cin, hidden, 1, 1, act=nn.ReLU6)]
        layers += [_cbr(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6)]
        layers += [nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.residual else self.block(x)


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 1000, width: float = 1.0, stem: str = "imagenet"):
        super().__init__()
        first, downsample = _strides(stem)
        cin = _make_divisible(32 * width)
        layers: list[nn.Module] = [_cbr(3, cin, 3, first, act=nn.ReLU6)]
        seen_stride2 = False
        for expand, channels, repeats, stride in V2:
            cout = _make_divisible(channels * width)
            for i in range(repeats):
                s = stride if i == 0 else 1
                if s == 2 and not seen_stride2:
                    s, seen_stride2 = downsample, True
                layers.append(InvertedResidual(cin, cout, s, expand))
                cin = cout
        last = _make_divisible(1280 * max(1.0, width))
        layers.append(_cbr(cin, last, 1, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean((2, 3)))
