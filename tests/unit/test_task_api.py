"""The Task API beyond classification arrays: kinds, own loss/optimizer/train/evaluate, Datasets."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedge.errors import FedgeError
from fedge.tasks import Task, TrainContext, evaluate, train
from fedge.tasks.settings import TrainSettings
from fedge.tasks.training import num_examples, to_arrays

CPU = torch.device("cpu")


def _regression_data(n: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    y = (x @ np.array([1.5, -2.0, 0.5, 3.0], np.float32) + 0.1).astype(np.float32)
    return x, y


def _task(**overrides: object) -> Task:
    base = Task(
        name="lin",
        build_model=lambda: nn.Linear(4, 1),
        load_data=lambda seed: (_regression_data(), _regression_data(64, 1)),
        input_shape=(4,),
        num_classes=1,
        kind="regression",
    )
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]


def test_regression_trains_with_mse_and_reports_mae() -> None:
    data = _regression_data()
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    before = evaluate(model, data, kind="regression")
    result = train(model, data, epochs=20, lr=0.02, batch_size=32, seed=0, kind="regression")
    after = evaluate(model, data, kind="regression")
    assert set(after) == {"loss", "mae"}
    assert after["mae"] < 0.1 * before["mae"] and result["loss"] < 0.05


def test_multilabel_uses_bce_and_per_label_accuracy() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 3)).astype(np.float32)
    y = (x > 0).astype(np.float32)  # three independent labels
    torch.manual_seed(0)
    model = nn.Linear(3, 3)
    train(model, (x, y), epochs=10, lr=0.1, batch_size=32, seed=0, kind="multilabel")
    scores = evaluate(model, (x, y), kind="multilabel")
    assert set(scores) == {"loss", "accuracy"} and scores["accuracy"] > 0.95


@pytest.mark.parametrize("wrap", ["dataset", "loader"])
def test_dataset_and_dataloader_train_like_arrays_and_reproducibly(wrap: str) -> None:
    x, y = _regression_data()
    dataset = TensorDataset(torch.from_numpy(x), torch.from_numpy(y))

    def trained(seed: int) -> torch.Tensor:
        data = dataset if wrap == "dataset" else DataLoader(dataset, batch_size=16)
        torch.manual_seed(0)
        model = nn.Linear(4, 1)
        train(model, data, epochs=3, lr=0.02, batch_size=16, seed=seed, kind="regression")
        return model.weight.detach().clone()

    assert torch.equal(trained(1), trained(1))
    assert evaluate(nn.Linear(4, 1), dataset, kind="regression")["loss"] > 0
    assert num_examples(dataset) == num_examples(DataLoader(dataset, batch_size=7)) == len(x)
    ax, ay = to_arrays(dataset)
    assert np.array_equal(ax, x) and np.array_equal(ay, y)


def test_own_loss_and_optimizer_are_used_by_fedges_loop() -> None:
    calls: list[str] = []

    class L1(nn.Module):
        def forward(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            calls.append("loss")
            return (out - target).abs().mean()

    def adam(params, lr: float) -> torch.optim.Optimizer:  # noqa: ANN001
        calls.append("optimizer")
        return torch.optim.Adam(params, lr=lr)

    task = _task(loss_fn=L1, optimizer_fn=adam)
    ctx = TrainContext(TrainSettings(lr=0.05, batch_size=64), seed=0, device=CPU)
    result = task.fit(task.build_model(), _regression_data(), ctx)
    assert calls[0] == "optimizer" and calls.count("loss") == 4 and set(result) == {"loss"}


def test_own_train_and_evaluate_replace_fedges_loops() -> None:
    seen: dict[str, object] = {}

    def my_train(model: nn.Module, data: object, ctx: TrainContext) -> dict[str, float]:
        seen["train"] = (ctx.seed, ctx.device, ctx.settings.local_epochs)
        return {"loss": 0.5, "steps": 3}

    def my_evaluate(model: nn.Module, data: object, ctx: TrainContext) -> dict[str, float]:
        seen["evaluate"] = ctx.device
        return {"loss": 0.25, "r2": 0.9}

    task = _task(train_fn=my_train, evaluate_fn=my_evaluate)
    ctx = TrainContext(TrainSettings(local_epochs=2), seed=7, device=CPU)
    assert task.fit(task.build_model(), _regression_data(), ctx) == {"loss": 0.5, "steps": 3.0}
    assert task.score(task.build_model(), _regression_data(), ctx) == {"loss": 0.25, "r2": 0.9}
    assert seen == {"train": (7, CPU, 2), "evaluate": CPU}


def test_bad_task_definitions_and_results_are_clear_errors() -> None:
    with pytest.raises(FedgeError, match="unknown kind 'ranking'"):
        _task(kind="ranking")
    task = _task(train_fn=lambda model, data, ctx: 0.5)
    ctx = TrainContext(TrainSettings(), seed=0, device=CPU)
    with pytest.raises(FedgeError, match="train_fn returned float, not a dict of metrics"):
        task.fit(task.build_model(), _regression_data(), ctx)
    task = _task(evaluate_fn=lambda model, data, ctx: {"loss": "low"})
    with pytest.raises(FedgeError, match="evaluate_fn metric 'loss' is 'low', not a number"):
        task.score(task.build_model(), _regression_data(), ctx)
