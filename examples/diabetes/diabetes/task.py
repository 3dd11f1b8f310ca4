"""Diabetes progression as a federated regression task, with its own training and evaluation.

scikit-learn ships the data (442 patients, 10 standardised clinical features, a disease
progression score of 25..346 one year later), so the example runs offline. Each device holds its
patients as a CSV file with a header and a ``progression`` column (``make_device_files`` writes
such files from the training split); fedge's CSV adapter reads it when the daemon starts with
``--data edge-0.csv --node-config label-column=progression``.

What the example shows beyond the built-in tasks: ``kind="regression"`` (float targets, ONNX
bundles that serve the predicted score), a custom ``train_fn`` (Adam, MSE on standardised
targets, batches from a torch ``DataLoader``) and ``evaluate_fn`` (loss, MAE and R² in the
target's units), all running on whatever device fedge hands it in ``ctx.device``.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedge.tasks import Data, Task, TrainContext
from fedge.tasks.training import to_arrays

FEATURES = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]
LABEL = "progression"
MEAN, SCALE = 152.0, 77.0  # of the target: the model learns in standard units
FEATURE_SCALE = 0.05  # scikit-learn's features have norm 1 per column: about ±0.1


class Regressor(nn.Module):
    """A small MLP whose output is in the target's units (progression score)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(len(FEATURES), 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) * SCALE + MEAN


def load_data(seed: int) -> tuple[Data, Data]:
    """``seed -> (train, test)``: a fixed 80/20 split; the server evaluates on the test part."""
    from sklearn.datasets import load_diabetes
    from sklearn.model_selection import train_test_split

    bunch = load_diabetes()
    x = TASK.prepare(bunch.data)
    y = bunch.target.astype(np.float32)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, random_state=seed)
    return (x_tr, y_tr), (x_te, y_te)


def train(model: nn.Module, data: Data, ctx: TrainContext) -> dict[str, float]:
    """Adam on the MSE of standardised targets, ``local-epochs`` passes of ``batch-size`` batches."""
    x, y = to_arrays(data)
    dataset = TensorDataset(torch.from_numpy(x), torch.from_numpy(y.astype(np.float32)))
    loader = DataLoader(
        dataset,
        batch_size=ctx.settings.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(ctx.seed),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=ctx.settings.lr)
    model.train()
    total, count = 0.0, 0
    for _ in range(ctx.settings.local_epochs):
        total, count = 0.0, 0
        for xb, yb in loader:
            xb, yb = xb.to(ctx.device), yb.to(ctx.device)
            optimizer.zero_grad()
            loss = nn.functional.mse_loss((model(xb).squeeze(1) - MEAN) / SCALE, (yb - MEAN) / SCALE)
            loss.backward()
            optimizer.step()
            total += float(loss) * len(xb)
            count += len(xb)
    return {"loss": total / max(count, 1)}


def evaluate(model: nn.Module, data: Data, ctx: TrainContext) -> dict[str, float]:
    """Loss (standardised MSE), mean absolute error and R², both in progression-score units."""
    x, y = to_arrays(data)
    model.eval()
    with torch.no_grad():
        pred = model(torch.from_numpy(x).to(ctx.device)).squeeze(1).cpu().numpy()
    err = pred - y
    return {
        "loss": float(np.mean((err / SCALE) ** 2)),
        "mae": float(np.mean(np.abs(err))),
        "r2": float(1.0 - np.sum(err**2) / max(float(np.sum((y - y.mean()) ** 2)), 1e-12)),
    }


def make_device_files(out_dir: str | Path, devices: int, seed: int = 0) -> list[Path]:
    """Write ``edge-<i>.csv`` for ``devices`` devices from the training split (what a device holds)."""
    (x, y), _ = load_data(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, idx in enumerate(np.array_split(np.random.default_rng(seed).permutation(len(y)), devices)):
        path = out / f"edge-{i}.csv"
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow([*FEATURES, LABEL])
            for row, target in zip(x[idx] * FEATURE_SCALE, y[idx], strict=True):
                writer.writerow([*(f"{v:.6f}" for v in row), f"{target:g}"])
        paths.append(path)
    return paths


TASK = Task(
    name="diabetes",
    build_model=Regressor,
    load_data=load_data,
    input_shape=(len(FEATURES),),
    num_classes=1,  # one output: the predicted progression score
    output_name="progression",
    input_scale=FEATURE_SCALE,
    kind="regression",
    train_fn=train,
    evaluate_fn=evaluate,
)

if __name__ == "__main__":  # python -m diabetes.task DIR N: write N devices' CSV files into DIR
    import sys

    for written in make_device_files(sys.argv[1], int(sys.argv[2])):
        print(written)
