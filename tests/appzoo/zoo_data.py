"""Offline data and a tiny model shared by the zoo's apps (numpy only, no fedge import).

Each node's data is a linear-regression sample seeded by its ``partition-id``: the same on
fedge and on Flower's simulation engine, so the apps' results can be compared exactly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

TRUE_W = np.array([1.5, -2.0, 0.5, 3.0])


def partition(partition_id: int, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Features and targets of one node (seeded by its partition id)."""
    rng = np.random.default_rng(1000 + int(partition_id))
    x = rng.normal(size=(size + 8 * int(partition_id), TRUE_W.size))
    return x, x @ TRUE_W + 0.05 * rng.normal(size=len(x))


def sgd(w: np.ndarray, x: np.ndarray, y: np.ndarray, lr: float = 0.1, epochs: int = 5) -> np.ndarray:
    """Full-batch gradient descent on the mean squared error."""
    w = np.array(w, dtype=np.float64)
    for _ in range(epochs):
        w = w - lr * 2.0 * x.T @ (x @ w - y) / len(y)
    return w


def mse(w: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean((x @ np.asarray(w, dtype=np.float64) - y) ** 2))


def save_result(run_config: Any, result: Any) -> None:
    """Write ``result`` as JSON where the run config's ``result-path`` says (if it says)."""
    path = run_config.get("result-path")
    if path:
        Path(str(path)).write_text(json.dumps(result))
