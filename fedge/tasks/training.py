"""Task-agnostic local training and evaluation loops.

One loop for every task keeps clients, the server's central evaluation and tests measuring the
same thing. Training is deterministic given ``seed`` (torch's RNG for any stochastic layers, a
seeded numpy permutation for batch order of in-memory arrays, a seeded generator for a
``Dataset``), so a replayed round reproduces the same update. Thread counts are left to the
caller: the edge daemon pins torch to one thread, tests do not.

Data comes in three shapes, all handled here so tasks never re-implement batching:

- ``(x, y)`` numpy arrays in memory (the built-in tasks; batches are index slices, the fast path);
- a ``torch.utils.data.Dataset`` of ``(x, y)`` samples, batched by a seeded ``DataLoader``
  (streamed from disk by datasets that read lazily, such as the image-folder adapter);
- a ready ``DataLoader``, used as it is.

The loss follows the task's kind: cross-entropy on class indices (``classification``), mean
squared error on float targets (``regression``), binary cross-entropy on logits against 0/1
targets (``multilabel``); a task may supply its own loss and optimizer instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sized
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from fedge.errors import FedgeError

KINDS = ("classification", "regression", "multilabel")
Data = tuple[np.ndarray, np.ndarray] | Dataset[Any] | DataLoader[Any]
"""What a task's data may be: ``(x, y)`` arrays, a ``Dataset`` of ``(x, y)`` or a ``DataLoader``."""
OptimizerFn = Callable[[Iterable[nn.Parameter], float], torch.optim.Optimizer]


def default_loss(kind: str) -> nn.Module:
    """The loss of a task kind (see the module docstring)."""
    if kind == "regression":
        return nn.MSELoss()
    if kind == "multilabel":
        return nn.BCEWithLogitsLoss()
    return nn.CrossEntropyLoss()


def sgd(params: Iterable[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """fedge's default optimizer: SGD with momentum 0.9."""
    return torch.optim.SGD(params, lr=lr, momentum=0.9)


def num_examples(data: Data) -> int:
    """Number of samples in ``data`` (a ``DataLoader`` counts its dataset's samples)."""
    if isinstance(data, tuple):
        return len(data[0])
    source = data.dataset if isinstance(data, DataLoader) else data
    if not isinstance(source, Sized):
        raise FedgeError(
            f"cannot count the samples of a {type(source).__name__}",
            "give the dataset a __len__ (map-style torch Dataset)",
        )
    return len(source)


def batches(
    data: Data, batch_size: int, device: torch.device, shuffle: np.random.Generator | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(x, y)`` batches of ``data`` on ``device``; in an order drawn from ``shuffle`` when given.

    In-memory arrays are shuffled by a permutation from ``shuffle`` itself; a ``Dataset`` by a
    ``DataLoader`` whose generator is seeded from it; a ``DataLoader`` keeps its own order.
    """
    if isinstance(data, tuple):
        xt = torch.from_numpy(np.ascontiguousarray(data[0], dtype=np.float32))
        yt = torch.from_numpy(np.ascontiguousarray(data[1]))
        order = torch.from_numpy(shuffle.permutation(len(xt))) if shuffle else torch.arange(len(xt))
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            yield xt[idx].to(device), yt[idx].to(device)
        return
    if isinstance(data, DataLoader):
        loader: DataLoader[Any] = data
    else:
        generator = torch.Generator().manual_seed(int(shuffle.integers(2**62))) if shuffle else None
        loader = DataLoader(data, batch_size=batch_size, shuffle=shuffle is not None, generator=generator)
    for xb, yb in loader:
        yield xb.to(device, dtype=torch.float32), yb.to(device)


def to_arrays(data: Data) -> tuple[np.ndarray, np.ndarray]:
    """``data`` as in-memory ``(x, y)`` arrays (a ``Dataset`` is read once, in order).

    For what needs every sample at once: writing simulated partitions, the export's parity check
    and int8 calibration.
    """
    if isinstance(data, tuple):
        return data
    xs, ys = [], []
    for xb, yb in batches(data, 256, torch.device("cpu")):
        xs.append(xb.numpy())
        ys.append(yb.numpy())
    if not xs:
        raise FedgeError("the dataset is empty", "give the task at least one sample")
    return np.concatenate(xs), np.concatenate(ys)


def _target(y: torch.Tensor, out: torch.Tensor, kind: str) -> torch.Tensor:
    """Labels as the loss wants them: class indices, or floats shaped like the output."""
    return y.long() if kind == "classification" else y.float().reshape(out.shape)


def train(
    model: nn.Module,
    data: Data,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    proximal_mu: float = 0.0,
    kind: str = "classification",
    loss_fn: nn.Module | None = None,
    optimizer_fn: OptimizerFn = sgd,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Train ``model`` in place on ``device`` and return ``{"loss": …}`` (mean of the last epoch).

    With ``proximal_mu > 0`` the FedProx term ``mu/2 * ||w - w_global||^2`` is added, where
    ``w_global`` are the weights the model holds when this function is called (the global
    model just received from the server). The reported loss is the task loss without the
    proximal term, so it stays comparable across strategies. The model stays on ``device``.
    """
    if num_examples(data) == 0:
        raise FedgeError("no local training examples", "give this node a non-empty data file")
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise FedgeError(
            f"invalid training settings: epochs={epochs}, batch-size={batch_size}, lr={lr}",
            "use local-epochs >= 1, batch-size >= 1 and lr > 0",
        )
    device = torch.device(device)
    torch.manual_seed(seed)
    model.to(device)
    global_params = [p.detach().clone() for p in model.parameters()] if proximal_mu > 0 else []
    optimizer = optimizer_fn(model.parameters(), lr)
    criterion = (loss_fn or default_loss(kind)).to(device)
    model.train()
    epoch_loss = 0.0
    shuffle = np.random.default_rng(seed)
    for _ in range(epochs):
        total, count = 0.0, 0
        for xb, yb in batches(data, batch_size, device, shuffle):
            optimizer.zero_grad()
            out = model(xb)
            loss = criterion(out, _target(yb, out, kind))
            objective = loss
            if global_params:
                prox = sum(
                    ((p - g) ** 2).sum() for p, g in zip(model.parameters(), global_params, strict=True)
                )
                objective = loss + (proximal_mu / 2.0) * prox
            objective.backward()
            optimizer.step()
            total += float(loss.detach()) * len(xb)
            count += len(xb)
        epoch_loss = total / max(count, 1)
    return {"loss": epoch_loss}


def evaluate(
    model: nn.Module,
    data: Data,
    *,
    kind: str = "classification",
    loss_fn: nn.Module | None = None,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Mean loss and the kind's quality metric of ``model`` on ``data``.

    ``{"loss", "accuracy"}`` for classification, ``{"loss", "mae"}`` for regression,
    ``{"loss", "accuracy"}`` (per label) for multilabel. The loss is the batch mean of
    ``loss_fn`` weighted by batch size, so the same loss object serves training and evaluation.
    """
    n = num_examples(data)
    if n == 0:
        raise FedgeError("no evaluation examples", "give this node a non-empty data file")
    device = torch.device(device)
    model.to(device)
    criterion = (loss_fn or default_loss(kind)).to(device)
    model.eval()
    loss, hits, labels = 0.0, 0.0, 0
    with torch.no_grad():
        for xb, yb in batches(data, batch_size, device):
            out = model(xb)
            target = _target(yb, out, kind)
            loss += float(criterion(out, target)) * len(xb)
            if kind == "classification":
                hits += float((out.argmax(dim=1) == target).sum())
                labels += len(target)
            elif kind == "multilabel":
                hits += float(((out > 0).float() == target).sum())
                labels += target.numel()
            else:
                hits += float((out - target).abs().sum())
                labels += target.numel()
    quality = "mae" if kind == "regression" else "accuracy"
    return {"loss": loss / n, quality: hits / max(labels, 1)}
