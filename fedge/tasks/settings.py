"""The training settings a server sends and a client reads, defined once for both sides.

Flower carries settings as flat kebab-case key/values (``run_config``, ``ConfigRecord``). The
ServerApp puts :class:`TrainSettings` into every train/evaluate ``ConfigRecord`` and the
ClientApp parses the same keys back, so the two can never disagree on names or defaults — and a
client still works on engines that hand it an empty ``run_config``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from fedge import fields
from fedge.errors import FedgeError
from fedge.tasks.nets import check_name
from fedge.tasks.partition import parse_spec


@dataclass(frozen=True)
class TrainSettings:
    """What a client needs to train and evaluate (keys: ``task``, ``local-epochs``, …).

    Parameters
    ----------
    task : str (default: "digits")
        Built-in task name or ``package.module:attr``.
    local_epochs : int (default: 1)
        Passes over the local training data per round.
    lr : float (default: 0.05)
        Client SGD learning rate (momentum 0.9).
    batch_size : int (default: 32)
        Local mini-batch size.
    seed : int (default: 0)
        Seeds data splits, partitioning and (mixed with round and node) local training.
    partition : str (default: "iid")
        How simulated nodes split the built-in data: ``iid``, ``dirichlet:<a>``, ``shards:<n>``.
    model : str (default: "")
        A built-in edge network (``mobilenet_v3_small``, ``resnet18``) trained instead of the
        task's own model, adapted to its images (see :mod:`fedge.tasks.nets`); "" for the task's.
    """

    task: str = "digits"
    local_epochs: int = 1
    lr: float = 0.05
    batch_size: int = 32
    seed: int = 0
    partition: str = "iid"
    model: str = ""

    def __post_init__(self) -> None:
        require(self.local_epochs >= 1, "local-epochs", self.local_epochs, "use 1 or more")
        require(self.lr > 0, "lr", self.lr, "use a positive learning rate, e.g. 0.05")
        require(self.batch_size >= 1, "batch-size", self.batch_size, "use 1 or more")
        parse_spec(self.partition)
        check_name(self.model)

    @classmethod
    def from_config(
        cls, config: Mapping[str, Any], source: str = "config", others: Collection[str] = ()
    ) -> TrainSettings:
        """Read the kebab-case keys of ``config``; missing keys take the defaults.

        A key that is not a train setting and not in ``others`` is an error
        (:func:`fedge.fields.load`); a ClientApp, which sees the whole run config, passes only its
        own keys (:func:`fedge.fields.pick`).
        """
        return fields.load(cls, config, source, others=others)

    def to_config(self) -> dict[str, Any]:
        """The kebab-case key/values, ready for a ``ConfigRecord``."""
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in dataclasses.fields(self)}


def require(ok: bool, key: str, value: Any, hint: str) -> None:
    """Raise ``FedgeError("invalid <key>: <value>", hint)`` unless ``ok``."""
    if not ok:
        raise FedgeError(f"invalid {key}: {value!r}", hint)
