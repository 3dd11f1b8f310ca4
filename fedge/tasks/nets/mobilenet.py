"""MobileNetV3-Small (Howard et al., 2019, "Searching for MobileNetV3", Table 2), randomly initialised.

Follows torchvision's ``mobilenet_v3_small`` layer for layer — module names included, so a
checkpoint loads into either definition: a 3×3 stem, eleven inverted-residual blocks (1×1
expansion, k×k depthwise convolution, optional squeeze-and-excitation with a hard-sigmoid gate,
linear 1×1 projection, residual when shape allows), hard-swish in the later blocks, a 1×1
convolution to 576 channels, global average pooling and a 1024-wide hard-swish classifier.
"""

from __future__ import annotations

import torch
from torch import nn

from fedge.tasks.nets.common import BN_MOMENTUM, stem_stride

# (input, kernel, expanded, output, squeeze-excite, hard-swish, stride) per block; the paper's Table 2.
BLOCKS = (
    (16, 3, 16, 16, True, False, 2),
    (16, 3, 72, 24, False, False, 2),
    (24, 3, 88, 24, False, False, 1),
    (24, 5, 96, 40, True, True, 2),
    (40, 5, 240, 40, True, True, 1),
    (40, 5, 240, 40, True, True, 1),
    (40, 5, 120, 48, True, True, 1),
    (48, 5, 144, 48, True, True, 1),
    (48, 5, 288, 96, True, True, 2),
    (96, 5, 576, 96, True, True, 1),
    (96, 5, 576, 96, True, True, 1),
)
LAST_CONV, HIDDEN = 576, 1024


def _divisible(v: float, divisor: int = 8) -> int:
    """Round channel counts to a multiple of 8 as the paper's reference code does (never down >10%)."""
    out = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return out + divisor if out < 0.9 * v else out


class ConvBNAct(nn.Sequential):
    """Convolution, batch norm (eps 1e-3 as in the paper) and an optional activation."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int,
        stride: int = 1,
        groups: int = 1,
        act: type[nn.Module] | None = None,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout, eps=0.001, momentum=BN_MOMENTUM),
        ]
        if act is not None:
            layers.append(act(inplace=True))
        super().__init__(*layers)


class SqueezeExcitation(nn.Module):
    """Channel attention: global pool → 1×1 (ReLU) → 1×1 → hard-sigmoid gate on the input."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        squeeze = _divisible(channels // 4)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.activation = nn.ReLU()
        self.scale_activation = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return scale * x


class InvertedResidual(nn.Module):
    """Expand (1×1) → depthwise (k×k) → squeeze-excite → project (1×1, linear); residual if shapes match."""

    def __init__(
        self, cin: int, kernel: int, expanded: int, cout: int, se: bool, hs: bool, stride: int
    ) -> None:
        super().__init__()
        act: type[nn.Module] = nn.Hardswish if hs else nn.ReLU
        layers: list[nn.Module] = []
        if expanded != cin:
            layers.append(ConvBNAct(cin, expanded, 1, act=act))
        layers.append(ConvBNAct(expanded, expanded, kernel, stride, groups=expanded, act=act))
        if se:
            layers.append(SqueezeExcitation(expanded))
        layers.append(ConvBNAct(expanded, cout, 1))
        self.block = nn.Sequential(*layers)
        self.use_res_connect = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return out + x if self.use_res_connect else out


class MobileNetV3Small(nn.Module):
    """The network; ``in_channels``/``num_classes`` from the task, the stem stride from its image size."""

    def __init__(self, in_channels: int, num_classes: int, side: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            ConvBNAct(in_channels, BLOCKS[0][0], 3, stem_stride(side), act=nn.Hardswish)
        ]
        layers += [InvertedResidual(*b) for b in BLOCKS]
        layers.append(ConvBNAct(BLOCKS[-1][3], LAST_CONV, 1, act=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(LAST_CONV, HIDDEN),
            nn.Hardswish(inplace=True),
            nn.Dropout(p=0.2, inplace=True),
            nn.Linear(HIDDEN, num_classes),
        )
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def init_weights(model: nn.Module) -> None:
    """torchvision's MobileNetV3 init: He (fan-out) convs, unit BN, N(0, 0.01) linear layers."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)
