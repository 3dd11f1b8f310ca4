"""ResNet-18 (He et al., 2016, "Deep Residual Learning for Image Recognition", Table 1), randomly initialised.

Follows torchvision's ``resnet18`` layer for layer — module names included, so a checkpoint loads
into either definition: a stem convolution with batch norm, ReLU and 3×3 max-pool, four stages
of two basic blocks (two 3×3 convolutions with batch norm; a 1×1 strided projection on the
shortcut where the shape changes) with 64, 128, 256 and 512 channels, global average pooling
and a linear classifier. Only the stem adapts to small images (see :func:`stem_stride`).
"""

from __future__ import annotations

import torch
from torch import nn

from fedge.tasks.nets.common import BN_MOMENTUM, stem_stride

WIDTHS = (64, 128, 256, 512)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, momentum=BN_MOMENTUM)


class BasicBlock(nn.Module):
    """Two 3×3 conv + BN layers with an identity (or 1×1 projection) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = _bn(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = _bn(cout)
        self.downsample = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _bn(cout))
            if stride != 1 or cin != cout
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


def _stage(cin: int, cout: int, stride: int) -> nn.Sequential:
    """Two basic blocks; the first changes width and (for stages 2-4) halves the resolution."""
    return nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1))


class ResNet18(nn.Module):
    """The network; ``in_channels``/``num_classes`` from the task, the stem from its image size."""

    def __init__(self, in_channels: int, num_classes: int, side: int) -> None:
        super().__init__()
        stride = stem_stride(side)
        # The paper's 7×7/2 stem on ImageNet-sized input; 3×3/1 on small images, whose few pixels a
        # 7×7 stride-2 stem (and the max-pool after it) would mostly throw away.
        kernel = 7 if stride == 2 else 3
        self.conv1 = nn.Conv2d(in_channels, WIDTHS[0], kernel, stride, kernel // 2, bias=False)
        self.bn1 = _bn(WIDTHS[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = _stage(WIDTHS[0], WIDTHS[0], 1)
        self.layer2 = _stage(WIDTHS[0], WIDTHS[1], 2)
        self.layer3 = _stage(WIDTHS[1], WIDTHS[2], 2)
        self.layer4 = _stage(WIDTHS[2], WIDTHS[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(WIDTHS[-1], num_classes)
        for m in self.modules():  # torchvision's init
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))
