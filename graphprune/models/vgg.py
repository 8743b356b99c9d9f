"""VGG-16 for CIFAR (with BatchNorm), as pruned in DSA's Table 1 and NAP's experiments."""

from __future__ import annotations

import torch
import torch.nn as nn

CONFIG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class CifarVGG(nn.Module):
    def __init__(self, num_classes: int = 10, width: float = 1.0):
        super().__init__()
        layers, cin = [], 3
        for item in CONFIG:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                cout = max(1, round(item * width))
                layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
                cin = cout
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))
