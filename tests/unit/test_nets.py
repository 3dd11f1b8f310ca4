"""The built-in edge networks: published architectures, adapted to a task, selectable by name."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch
from torch import nn

from fedge.errors import FedgeError
from fedge.tasks import Task, load_task, task_data
from fedge.tasks.nets import build
from fedge.tasks.nets.mobilenet import MobileNetV3Small, SqueezeExcitation
from fedge.tasks.nets.resnet import BasicBlock, ResNet18
from fedge.tasks.settings import TrainSettings


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_imagenet_configurations_have_the_published_parameter_counts() -> None:
    # torchvision's mobilenet_v3_small / resnet18 (3×224×224, 1000 classes): 2,542,856 / 11,689,512.
    mobilenet = MobileNetV3Small(3, 1000, 224)
    assert _params(mobilenet) == 2_542_856
    assert _params(ResNet18(3, 1000, 224)) == 11_689_512
    convs = [m for m in mobilenet.modules() if isinstance(m, nn.Conv2d)]
    depthwise = [c for c in convs if c.groups > 1]
    assert len(depthwise) == 11 and all(c.groups == c.in_channels == c.out_channels for c in depthwise)
    assert sum(isinstance(m, SqueezeExcitation) for m in mobilenet.modules()) == 9
    assert any(isinstance(m, nn.Hardswish) for m in mobilenet.modules())
    assert convs[0].stride == (2, 2)  # the paper's stem on ImageNet-sized input


def test_selected_net_is_adapted_to_the_task() -> None:
    digits = load_task("digits", model="mobilenet_v3_small")
    assert digits.name == "digits" and load_task("digits", model="mobilenet_v3_small") is digits
    _, (x, _) = task_data(digits, 0)
    for name, kind in (("mobilenet_v3_small", MobileNetV3Small), ("resnet18", ResNet18)):
        model = load_task("digits", model=name).build_model().eval()
        assert isinstance(model, kind)
        stem = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
        assert stem.in_channels == 1 and stem.stride == (1, 1)  # 8×8 digits keep their pixels
        with torch.no_grad():
            assert model(torch.from_numpy(x[:3])).shape == (3, 10)
    assert sum(isinstance(m, BasicBlock) for m in ResNet18(1, 10, 8).modules()) == 8


def test_unknown_or_unfit_model_is_refused_with_a_suggestion() -> None:
    with pytest.raises(FedgeError) as err:
        TrainSettings.from_config({"model": "mobilenet_v3"})
    assert err.value.message == "unknown model 'mobilenet_v3'"
    assert "did you mean 'mobilenet_v3_small'?" in err.value.hint and "resnet18" in err.value.hint
    flat = Task("flat", nn.Identity, lambda seed: ((np.zeros((1, 4)),) * 2,) * 2, (4,), 2)  # type: ignore[arg-type,return-value]
    with pytest.raises(FedgeError, match="needs image input"):
        from fedge.tasks._loading import with_model

        with_model(flat, "resnet18")


def test_batch_norm_never_reads_its_batch_counter() -> None:
    # Aggregation averages num_batches_tracked into a mean count (see fedge.tasks.nets.common); with
    # a fixed momentum that number must not change what training computes.
    for name in ("mobilenet_v3_small", "resnet18"):
        torch.manual_seed(0)
        a = build(name, 1, 10, 8)
        b = build(name, 1, 10, 8)
        b.load_state_dict(a.state_dict())
        for key, value in b.state_dict().items():
            if key.endswith("num_batches_tracked"):
                value.fill_(12345)
        x = torch.randn(16, 1, 8, 8)
        a.train(), b.train()
        torch.manual_seed(1)
        out_a = a(x)
        torch.manual_seed(1)
        out_b = b(x)
        assert torch.equal(out_a, out_b)
        bn_a = [m for m in a.modules() if isinstance(m, nn.BatchNorm2d)]
        bn_b = [m for m in b.modules() if isinstance(m, nn.BatchNorm2d)]
        assert all(m.momentum == 0.1 for m in bn_a)
        for p, q in zip(bn_a, bn_b, strict=True):
            assert torch.equal(p.running_mean, q.running_mean) and torch.equal(p.running_var, q.running_var)


def test_torchvision_definitions_are_used_and_adapted_when_it_imports(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def stock(cls: type[nn.Module]):  # torchvision's builders: 3-channel ImageNet nets, its BN momentum
        def make(num_classes: int) -> nn.Module:
            net = cls(3, num_classes, 224)
            for m in net.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.momentum = 0.01
            return net

        return make

    fake = types.ModuleType("torchvision")
    fake.models = types.SimpleNamespace(  # type: ignore[attr-defined]
        mobilenet_v3_small=stock(MobileNetV3Small), resnet18=stock(ResNet18)
    )
    monkeypatch.setitem(sys.modules, "torchvision", fake)
    for name, own in (("mobilenet_v3_small", MobileNetV3Small(1, 10, 8)), ("resnet18", ResNet18(1, 10, 8))):
        net = build(name, 1, 10, 8)
        assert all(m.momentum == 0.1 for m in net.modules() if isinstance(m, nn.BatchNorm2d))
        theirs = {k: v.shape for k, v in net.state_dict().items()}
        assert theirs == {k: v.shape for k, v in own.state_dict().items()}  # checkpoints move between them
        stem = next(m for m in net.modules() if isinstance(m, nn.Conv2d))
        assert stem.in_channels == 1 and stem.stride == (1, 1)
