"""A task that records the device of every tensor fedge's loops hand it (tests/integration/test_devices.py).

It is the built-in ``digits`` task with a spying loss, optimizer factory and evaluation, so the
default training loop, the ClientApp and the ServerApp's central evaluation are the code under test.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import torch
from torch import nn

from fedge.tasks import Data, TrainContext, load_task
from fedge.tasks.training import evaluate

SEEN: list[tuple[str, torch.device]] = []


class ProbeLoss(nn.CrossEntropyLoss):
    def forward(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        SEEN.extend([("train-output", out.device), ("train-target", target.device)])
        return super().forward(out, target)


def _optimizer(params: Iterable[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    params = list(params)
    SEEN.extend(("train-param", p.device) for p in params)
    return torch.optim.SGD(params, lr=lr)


def _evaluate(model: nn.Module, data: Data, ctx: TrainContext) -> dict[str, float]:
    SEEN.append(("evaluate-ctx", ctx.device))
    SEEN.extend(("evaluate-param", p.device) for p in model.parameters())
    return evaluate(model, data, device=ctx.device)


TASK = dataclasses.replace(
    load_task("digits"),
    name="device-probe",
    loss_fn=ProbeLoss,
    optimizer_fn=_optimizer,
    evaluate_fn=_evaluate,
)
