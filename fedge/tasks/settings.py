"""The training settings a server sends and a client reads, defined once for both sides.

Flower carries settings as flat kebab-case key/values (``run_config``, ``ConfigRecord``). The
ServerApp puts :class:`TrainSettings` into every train/evaluate ``ConfigRecord`` and the
ClientApp parses the same keys back, so the two can never disagree on names or defaults — and a
client still works on engines that hand it an empty ``run_config``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from fedge.errors import FedgeError
from fedge.tasks.nets import check_name
from fedge.tasks.partition import parse_spec

T = TypeVar("T")


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
    def from_config(cls, config: Mapping[str, Any]) -> TrainSettings:
        """Read the kebab-case keys of ``config``; missing keys take the defaults."""
        return read_fields(cls, config, "config")

    def to_config(self) -> dict[str, Any]:
        """The kebab-case key/values, ready for a ``ConfigRecord``."""
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in dataclasses.fields(self)}


def require(ok: bool, key: str, value: Any, hint: str) -> None:
    """Raise ``FedgeError("invalid <key>: <value>", hint)`` unless ``ok``."""
    if not ok:
        raise FedgeError(f"invalid {key}: {value!r}", hint)


def read_fields(cls: type[T], mapping: Mapping[str, Any], source: str) -> T:
    """Build dataclass ``cls`` from the kebab-case keys of ``mapping`` that name its fields.

    Values are checked against the field types (``int`` where an ``int`` is expected, ints are
    accepted for floats, ``X | None`` accepts ``X``); keys that name no field are ignored because
    run configs legitimately carry settings for other components. Fields declared with
    ``metadata={"config": False}`` are never read from ``mapping``.
    """
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        key = field.name.replace("_", "-")
        if key in mapping and field.init and field.metadata.get("config", True):
            values[field.name] = _coerce(mapping[key], hints[field.name], key, source)
    return cls(**values)


def _coerce(value: Any, annotation: Any, key: str, source: str) -> Any:
    allowed = (
        [a for a in typing.get_args(annotation) if a is not type(None)]
        if isinstance(annotation, types.UnionType)
        else [annotation]
    )
    for kind in allowed:
        if kind is bool and isinstance(value, bool):
            return value
        if isinstance(value, bool):
            continue
        if kind is int and isinstance(value, int):
            return value
        if kind is float and isinstance(value, (int, float)):
            return float(value)
        if kind is str and isinstance(value, str):
            return value
    names = " or ".join(getattr(a, "__name__", str(a)) for a in allowed)
    raise FedgeError(f"'{key}' in {source} must be {names}, got {value!r}", f"fix the type of '{key}'")
