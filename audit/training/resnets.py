"""ResNet-9 (CIFAR-10) and ResNet-18 (FMoW) in plain torch, each with a ``features()`` output.

ResNet-9 is the fast-training network the datamodels paper used (the KakaoBrain /
FFCV CIFAR-10 example): conv-BN-ReLU blocks of widths w, 2w, 2w, 4w, 4w, 2w with two
residual pairs, a global max pool and a bias-free linear layer scaled by 0.2.
ResNet-18 is the standard ImageNet ResNet-18 (7x7 stem, four stages of two basic
blocks, global average pool), trained from scratch. ``width`` scales every layer's
channels (64 is the published size; tests use 4 or 8).
"""

from __future__ import annotations

import torch
from torch import nn


def conv_bn(c_in: int, c_out: int, kernel_size: int = 3, stride: int = 1, padding: int = 1) -> nn.Sequential:
    """Conv (no bias) -> BatchNorm -> ReLU."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel_size, stride=stride, padding=padding, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class Residual(nn.Module):
    """``x + f(x)``."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResNet9(nn.Module):
    """The datamodels paper's CIFAR-10 ResNet-9 (about 2.3M parameters at width 64)."""

    def __init__(self, n_classes: int = 10, width: int = 64, in_channels: int = 3) -> None:
        super().__init__()
        w = int(width)
        self.body = nn.Sequential(
            conv_bn(in_channels, w),
            conv_bn(w, 2 * w, kernel_size=5, stride=2, padding=2),
            Residual(nn.Sequential(conv_bn(2 * w, 2 * w), conv_bn(2 * w, 2 * w))),
            conv_bn(2 * w, 4 * w),
            nn.MaxPool2d(2),
            Residual(nn.Sequential(conv_bn(4 * w, 4 * w), conv_bn(4 * w, 4 * w))),
            conv_bn(4 * w, 2 * w, padding=0),
            nn.AdaptiveMaxPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(2 * w, n_classes, bias=False)
        self.scale = 0.2
        self.n_features = 2 * w

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features ``[N, 2*width]`` (after the global max pool)."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x)) * self.scale


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 projection) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ImageNet-style ResNet-18 (about 11.2M parameters at width 64 with 62 classes)."""

    def __init__(self, n_classes: int = 62, width: int = 64, in_channels: int = 3) -> None:
        super().__init__()
        w = int(width)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, w, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(w),
                                  nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=2, padding=1))
        layers: list[nn.Module] = []
        c_in = w
        for i, c_out in enumerate((w, 2 * w, 4 * w, 8 * w)):
            stride = 1 if i == 0 else 2
            layers += [BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out)]
            c_in = c_out
        self.stages = nn.Sequential(*layers)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(8 * w, n_classes)
        self.n_features = 8 * w
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features ``[N, 8*width]`` (after the global average pool)."""
        return self.pool(self.stages(self.stem(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


ARCHITECTURES = {"resnet9": ResNet9, "resnet18": ResNet18}


def build_model(name: str, n_classes: int, width: int = 64, in_channels: int = 3) -> nn.Module:
    """A fresh network by name (initialised from torch's global RNG: seed it first)."""
    return ARCHITECTURES[name](n_classes=n_classes, width=width, in_channels=in_channels)
