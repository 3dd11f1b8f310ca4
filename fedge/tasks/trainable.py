"""Only what trains travels: a task's trainable/frozen split, the frozen part's hash, partial loads.

A task that marks trainable parameters (``Task.trainable``) has its frozen part built on every
device and never sent. The server sends, and the clients return and the strategy aggregates,
only the trainable arrays (for secure aggregation the masked vector is that part alone, since it
is built from the reply's arrays). A device whose frozen part differs from the server's would
train adapters for another model and poison the average, so every instruction carries the
frozen part's SHA-256 and a device that computes another refuses the round with both hashes.
"""

from __future__ import annotations

import fnmatch
import hashlib
from collections.abc import Mapping

import torch
from torch import nn

from fedge.errors import FedgeError
from fedge.tasks.base import Task

CONFIG_KEY = "frozen-sha256"


def is_trainable(task: Task, name: str) -> bool:
    """Whether ``name`` (a ``state_dict`` key) trains; every name does for tasks that mark none."""
    return not task.trainable or any(fnmatch.fnmatchcase(name, p) for p in task.trainable)


def trainable_state(task: Task, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The entries of ``state`` that train (all of them for tasks that mark none)."""
    return {k: v for k, v in state.items() if is_trainable(task, k)}


def frozen_digest(task: Task, state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over the frozen entries' names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(k for k in state if not is_trainable(task, k)):
        t = state[name].detach().contiguous().cpu()
        h.update(f"{name}\0{t.dtype}\0{list(t.shape)}\0".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def freeze(task: Task, model: nn.Module) -> None:
    """Turn gradients off for every frozen parameter, so local training leaves them as built."""
    if task.trainable:
        for name, param in model.named_parameters():
            param.requires_grad_(is_trainable(task, name))


def load_received(task: Task, model: nn.Module, state: Mapping[str, torch.Tensor], digest: object) -> None:
    """Load what the server sent into a freshly built ``model``: all of it, or the trainable part.

    A partial ``state`` must name exactly the task's trainable entries, and ``digest`` (the
    server's :func:`frozen_digest`) must match this device's frozen part.
    """
    local = model.state_dict()
    if set(state) == set(local):
        model.load_state_dict(state)
        return
    expected = set(trainable_state(task, local))
    if not task.trainable or set(state) != expected:
        raise FedgeError(
            f"received {len(state)} arrays for task '{task.name}', which has {len(local)} "
            f"({len(expected)} trainable)",
            "make sure server and clients use the same task and model",
        )
    mine = frozen_digest(task, local)
    if digest != mine:
        raise FedgeError(
            f"frozen part of task '{task.name}' differs from the server's "
            f"(server sha256 {str(digest)[:16]}…, this device {mine[:16]}…)",
            "install the same base model on this device as the server uses",
        )
    model.load_state_dict({**local, **state})
