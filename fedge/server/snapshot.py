"""The server-side state of a run besides the model: strategy attributes and RNG states.

Why generic: Flower's strategies keep their server-side optimiser state in plain instance
attributes — FedAdam/FedYogi/FedAdagrad ``m_t``, ``v_t`` and ``current_arrays``, FedAvgM
``momentum_vector`` and ``current_arrays`` — and wrappers (fedge's ``SecureAggregation``,
Flower's DP wrappers) hold the wrapped strategy in an attribute. Capturing every attribute whose
value is plain data (what :func:`fedge.server.commit.encode` accepts) and recursing into
attributes that are strategies covers all of them, and any user strategy written the same way,
with no per-class list to keep in sync with Flower. Callables, loggers and other objects are
configuration: a resumed run rebuilds them from the same run config.

Why the RNGs: Flower samples nodes with :mod:`random`; numpy and torch are captured too so that
code drawing from them after a resume sees the numbers an uninterrupted run would have seen.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from flwr.serverapp.strategy import Strategy

from fedge.errors import FedgeError
from fedge.server.commit import encode


def strategy_state(strategy: Strategy) -> dict[str, Any]:
    """Plain-data attributes of ``strategy`` and, recursively, of the strategies it wraps."""
    attrs: dict[str, Any] = {}
    nested: dict[str, Any] = {}
    for name, value in vars(strategy).items():
        if isinstance(value, Strategy):
            nested[name] = strategy_state(value)
        elif not callable(value) and _plain(value):
            attrs[name] = value
    return {"class": type(strategy).__qualname__, "attrs": attrs, "nested": nested}


def restore_strategy(strategy: Strategy, state: dict[str, Any]) -> None:
    """Set the attributes captured by :func:`strategy_state` back on an identically built strategy."""
    if state["class"] != type(strategy).__qualname__:
        raise FedgeError(
            f"the committed state belongs to strategy {state['class']}, this run builds "
            f"{type(strategy).__qualname__}",
            "resume with the run config the run was started with",
        )
    for name, value in state["attrs"].items():
        setattr(strategy, name, value)
    for name, inner_state in state["nested"].items():
        inner = vars(strategy).get(name)
        if not isinstance(inner, Strategy):
            raise FedgeError(
                f"the committed state has a wrapped strategy '{name}' that this run's "
                f"{type(strategy).__qualname__} lacks",
                "resume with the run config the run was started with",
            )
        restore_strategy(inner, inner_state)


def rng_state() -> dict[str, Any]:
    """States of :mod:`random`, numpy's global generator and torch's CPU generator."""
    return {
        "random": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state().numpy(),
    }


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`rng_state`."""
    random.setstate(state["random"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(torch.from_numpy(np.array(state["torch"], dtype=np.uint8)))


def _plain(value: Any) -> bool:
    try:
        encode(value, [])
    except TypeError:
        return False
    return True
