"""Task-agnostic local training and evaluation loops.

One loop for every task keeps clients, the server's central evaluation and tests measuring the
same thing. Training is deterministic given ``seed`` (torch's RNG for any stochastic layers, a
seeded numpy permutation for batch order), so a replayed round reproduces the same update.
Thread counts are left to the caller: the edge daemon pins torch to one thread, tests do not.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedge.errors import FedgeError


def train(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    proximal_mu: float = 0.0,
) -> dict[str, float]:
    """Train ``model`` in place with SGD (momentum 0.9) and return ``{"train-loss": …}``.

    With ``proximal_mu > 0`` the FedProx term ``mu/2 * ||w - w_global||^2`` is added, where
    ``w_global`` are the weights the model holds when this function is called (the global
    model just received from the server). The reported loss is the mean cross-entropy of the
    last epoch, without the proximal term, so it stays comparable across strategies.
    """
    if len(x) == 0:
        raise FedgeError("no local training examples", "give this node a non-empty data file")
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise FedgeError(
            f"invalid training settings: epochs={epochs}, batch-size={batch_size}, lr={lr}",
            "use local-epochs >= 1, batch-size >= 1 and lr > 0",
        )
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    yt = torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))
    global_params = [p.detach().clone() for p in model.parameters()] if proximal_mu > 0 else []
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    criterion = nn.CrossEntropyLoss()
    model.train()
    epoch_loss = 0.0
    for _ in range(epochs):
        order = torch.from_numpy(rng.permutation(len(xt)))
        total, count = 0.0, 0
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            optimizer.zero_grad()
            loss = criterion(model(xt[idx]), yt[idx])
            objective = loss
            if global_params:
                prox = sum(
                    ((p - g) ** 2).sum() for p, g in zip(model.parameters(), global_params, strict=True)
                )
                objective = loss + (proximal_mu / 2.0) * prox
            objective.backward()
            optimizer.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
        epoch_loss = total / count
    return {"train-loss": epoch_loss}


def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray, batch_size: int = 256) -> tuple[float, float]:
    """Return ``(mean cross-entropy, accuracy)`` of ``model`` on ``(x, y)``."""
    if len(x) == 0:
        raise FedgeError("no evaluation examples", "give this node a non-empty data file")
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    yt = torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))
    criterion = nn.CrossEntropyLoss(reduction="sum")
    model.eval()
    loss, correct = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(xt), batch_size):
            logits = model(xt[start : start + batch_size])
            target = yt[start : start + batch_size]
            loss += float(criterion(logits, target))
            correct += int((logits.argmax(dim=1) == target).sum())
    return loss / len(xt), correct / len(xt)
