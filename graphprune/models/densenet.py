"""DenseNet for CIFAR (Huang et al.): DenseNet-40 with growth rate 12 (DHP calls it DenseNet-12-40).

A 3x3 stem of 2 x growth channels, three dense blocks of (depth - 4) / 3 BN-ReLU-Conv3x3 layers,
transitions BN-ReLU-Conv1x1-AvgPool without compression. DenseNet-40: 1.059M parameters, as
LW-DNA's Table 1 reports (it gives 0.2901 GFLOPs where FlopCounterMode counts 0.2829 GMACs; the
paper does not state its counting convention).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int):
        super().__init__()
        self.bn, self.conv = nn.BatchNorm2d(cin), nn.Conv2d(cin, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.conv(F.relu(self.bn(x)))], dim=1)


class Transition(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.bn, self.conv = nn.BatchNorm2d(cin), nn.Conv2d(cin, cin, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv(F.relu(self.bn(x))), 2)


class CifarDenseNet(nn.Module):
    def __init__(self, depth: int = 40, growth: int = 12, num_classes: int = 10):
        super().__init__()
        per_block = (depth - 4) // 3
        cin = 2 * growth
        layers: list[nn.Module] = [nn.Conv2d(3, cin, 3, padding=1, bias=False)]
        for block in range(3):
            for _ in range(per_block):
                layers.append(DenseLayer(cin, growth))
                cin += growth
            if block < 2:
                layers.append(Transition(cin))
        self.features = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(cin)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.features(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))
