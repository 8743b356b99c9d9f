"""Image restoration networks from DHP/LW-DNA: DnCNN and UNet (denoising), SRResNet and EDSR-lite
(super-resolution, pixel-shuffle upsamplers).

DnCNN (17 layers, 64 channels, grayscale): 0.56M parameters and 9.13 GMACs on a 128x128 input,
as DHP's denoising table reports. SRResNet (16 blocks, 64 channels, x4): 1.54M parameters (DHP's
super-resolution table). EDSR-lite is DHP's simplified EDSR: 8 residual blocks of 128 channels.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class DnCNN(nn.Module):
    """Predicts the noise and subtracts it (residual learning)."""

    def __init__(self, depth: int = 17, channels: int = 64, image_channels: int = 1):
        super().__init__()
        layers = [nn.Conv2d(image_channels, channels, 3, padding=1), nn.ReLU()]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU()]
        layers.append(nn.Conv2d(channels, image_channels, 3, padding=1, bias=False))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.body(x)


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
    )


class UNet(nn.Module):
    """Four resolutions, skip connections by concatenation, transposed-conv upsampling."""

    def __init__(self, image_channels: int = 1, base: int = 64, levels: int = 4):
        super().__init__()
        widths = [base * 2**i for i in range(levels)]
        self.down = nn.ModuleList()
        cin = image_channels
        for w in widths:
            self.down.append(_double_conv(cin, w))
            cin = w
        self.up, self.merge = nn.ModuleList(), nn.ModuleList()
        for w in reversed(widths[:-1]):
            self.up.append(nn.ConvTranspose2d(cin, w, 2, stride=2))
            self.merge.append(_double_conv(2 * w, w))
            cin = w
        self.out = nn.Conv2d(cin, image_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips, y = [], x
        for i, block in enumerate(self.down):
            y = block(y if i == 0 else F.max_pool2d(y, 2))
            skips.append(y)
        for up, merge, skip in zip(self.up, self.merge, reversed(skips[:-1])):
            y = merge(torch.cat([skip, up(y)], dim=1))
        return x - self.out(y)


class ResBlock(nn.Module):
    def __init__(self, channels: int, bn: bool, scale: float = 1.0):
        super().__init__()
        norm = (lambda: nn.BatchNorm2d(channels)) if bn else nn.Identity
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1), norm(), nn.PReLU() if bn else nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1), norm(),
        )
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) * self.scale


def _upsampler(channels: int, scale: int, act: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range({2: 1, 4: 2}[scale]):
        layers += [nn.Conv2d(channels, 4 * channels, 3, padding=1), nn.PixelShuffle(2)]
        if act:
            layers.append(nn.PReLU())
    return nn.Sequential(*layers)


class SRResNet(nn.Module):
    def __init__(self, blocks: int = 16, channels: int = 64, scale: int = 4):
        super().__init__()
        self.head = nn.Sequential(nn.Conv2d(3, channels, 9, padding=4), nn.PReLU())
        self.body = nn.Sequential(*[ResBlock(channels, bn=True) for _ in range(blocks)])
        self.body_end = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels))
        self.tail = nn.Sequential(_upsampler(channels, scale, act=True), nn.Conv2d(channels, 3, 9, padding=4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.head(x)
        return self.tail(h + self.body_end(self.body(h)))


class EDSR(nn.Module):
    """EDSR without BN; ``EDSR()`` is DHP's EDSR-lite (8 blocks x 128 channels, residual scale 1)."""

    def __init__(self, blocks: int = 8, channels: int = 128, scale: int = 4, res_scale: float = 1.0):
        super().__init__()
        self.head = nn.Conv2d(3, channels, 3, padding=1)
        self.body = nn.Sequential(*[ResBlock(channels, bn=False, scale=res_scale) for _ in range(blocks)], nn.Conv2d(channels, channels, 3, padding=1))
        self.tail = nn.Sequential(_upsampler(channels, scale, act=False), nn.Conv2d(channels, 3, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.head(x)
        return self.tail(h + self.body(h))
