"""CIFAR ResNets (He et al. 2016): ResNet-20/32/56/110 with basic blocks, ResNet-164 with bottlenecks.

``shortcut="B"`` (default) projects with a 1x1 conv + BN where the shape changes (ResNet-56: 0.856M
parameters, as LW-DNA's Table 1 reports); ``shortcut="A"`` subsamples and zero-pads the channels
instead (He et al.'s parameter-free option; ResNet-56: 0.853M). ``width`` scales every stage.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout))


class PadShortcut(nn.Module):
    """Option A: take every other pixel and zero-pad the new channels on both sides."""

    def __init__(self, extra: int):
        super().__init__()
        self.before, self.after = extra // 2, extra - extra // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.before, self.after))


def _shortcut(cin: int, cout: int, stride: int, kind: str) -> nn.Module:
    if stride == 1 and cin == cout:
        return nn.Identity()
    return PadShortcut(cout - cin) if kind == "A" else _conv_bn(cin, cout, 1, stride)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int, shortcut: str):
        super().__init__()
        self.conv1, self.conv2 = _conv_bn(cin, planes, 3, stride), _conv_bn(planes, planes, 3)
        self.shortcut = _shortcut(cin, planes, stride, shortcut)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(F.relu(self.conv1(x))) + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, shortcut: str):
        super().__init__()
        out = planes * self.expansion
        self.conv1, self.conv2 = _conv_bn(cin, planes, 1), _conv_bn(planes, planes, 3, stride)
        self.conv3 = _conv_bn(planes, out, 1)
        self.shortcut = _shortcut(cin, out, stride, shortcut)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.conv2(F.relu(self.conv1(x))))
        return F.relu(self.conv3(y) + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth: int, bottleneck: bool = False, num_classes: int = 10, width: float = 1.0, shortcut: str = "B"):
        super().__init__()
        block = Bottleneck if bottleneck else BasicBlock
        per_stage = (depth - 2) // (9 if bottleneck else 6)
        widths = [max(1, round(w * width)) for w in (16, 32, 64)]
        self.stem = nn.Sequential(_conv_bn(3, widths[0], 3), nn.ReLU())
        layers, cin = [], widths[0]
        for stage, planes in enumerate(widths):
            for i in range(per_stage):
                layers.append(block(cin, planes, 2 if stage > 0 and i == 0 else 1, shortcut))
                cin = planes * block.expansion
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def resnet(depth: int, **kwargs) -> CifarResNet:
    return CifarResNet(depth, bottleneck=depth == 164, **kwargs)
