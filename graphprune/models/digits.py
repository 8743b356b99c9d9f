"""A small residual CNN for scikit-learn's 8x8 digits: the demo's default model.

It has the structures pruning must get right (a residual add tying two convs, a concat, BN,
flatten into a linear) at a size that trains in seconds on a CPU.
"""

from __future__ import annotations

import torch
import torch.nn as nn


class DigitsCNN(nn.Module):
    def __init__(self, width: int = 32, num_classes: int = 10):
        super().__init__()
        w = width
        self.stem = nn.Sequential(nn.Conv2d(1, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU())
        self.block = nn.Sequential(
            nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w),
        )
        self.branch_a = nn.Sequential(nn.Conv2d(w, w, 3, stride=2, padding=1), nn.ReLU())
        self.branch_b = nn.Sequential(nn.Conv2d(w, w // 2, 1, stride=2), nn.ReLU())
        self.head = nn.Sequential(nn.Flatten(), nn.Linear((w + w // 2) * 16, 64), nn.ReLU(), nn.Linear(64, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.block(x))
        x = torch.cat([self.branch_a(x), self.branch_b(x)], dim=1)
        return self.head(x)
