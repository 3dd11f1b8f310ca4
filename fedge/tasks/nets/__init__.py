"""Built-in edge networks a task can train instead of its own small model (``--set model=<name>``).

``mobilenet_v3_small`` and ``resnet18`` follow the papers and torchvision's layer structure and
module names, adapted to the task's input channels, image size and classes, randomly initialised
(nothing is downloaded). When torchvision imports, its definitions are used instead (adapted
the same way); the state dicts are the same, so checkpoints move between the two.

This module imports no torch: run settings validate model names before anything is built.
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING

from fedge.errors import FedgeError

if TYPE_CHECKING:
    from torch import nn

NETS = ("mobilenet_v3_small", "resnet18")


def check_name(name: str) -> None:
    """Raise ``FedgeError`` (with the closest name as a suggestion) unless ``name`` is '' or a net."""
    if name and name not in NETS:
        close = difflib.get_close_matches(name, NETS, n=1, cutoff=0.4)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise FedgeError(
            f"unknown model '{name}'",
            f"{hint}choose one of: {', '.join(NETS)} (or leave 'model' unset for the task's own model)",
        )


def build(name: str, in_channels: int, num_classes: int, side: int) -> nn.Module:
    """A fresh, randomly initialised ``name`` for images of ``in_channels`` × ``side`` × ``side``."""
    check_name(name)
    net = _torchvision(name, in_channels, num_classes, side)
    if net is not None:
        return net
    if name == "mobilenet_v3_small":
        from fedge.tasks.nets.mobilenet import MobileNetV3Small

        return MobileNetV3Small(in_channels, num_classes, side)
    from fedge.tasks.nets.resnet import ResNet18

    return ResNet18(in_channels, num_classes, side)


def _torchvision(name: str, in_channels: int, num_classes: int, side: int) -> nn.Module | None:
    """torchvision's definition with fedge's stem and batch-norm momentum, or None without torchvision.

    Any import failure counts as "not available": the CUDA-only wheels fail to load with a CPU
    torch at import time (``operator torchvision::nms does not exist``).
    """
    try:
        from torchvision import models
    except Exception:
        return None
    from torch import nn

    from fedge.tasks.nets.common import BN_MOMENTUM, stem_stride

    stride = stem_stride(side)
    net: nn.Module
    if name == "mobilenet_v3_small":
        net = models.mobilenet_v3_small(num_classes=num_classes)
        stem = nn.Conv2d(in_channels, 16, 3, stride, 1, bias=False)
        net.get_submodule("features.0").register_module("0", stem)
    else:
        net = models.resnet18(num_classes=num_classes)
        kernel = 7 if stride == 2 else 3
        stem = nn.Conv2d(in_channels, 64, kernel, stride, kernel // 2, bias=False)
        net.register_module("conv1", stem)
    nn.init.kaiming_normal_(stem.weight, mode="fan_out", nonlinearity="relu")
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = BN_MOMENTUM
    return net
