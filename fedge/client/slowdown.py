"""``slowdown``: a node-config knob that makes a daemon train as a slower device would.

Real fleets mix fast gateways with devices ten times slower; tests and benchmarks of
asynchronous rounds (``bench/edge_fleet.py``) need such devices on one machine. With
``fedge client start --node-config slowdown=10`` fedge's ClientApp, after each local training,
waits nine times as long as the training took, so the device answers ten times later and its
``train-time`` says so. The wait holds the daemon's app thread (as a busy device would); its
stream, heartbeats and inference stay live. Unset or 1: no effect. Only for trials — a real
device is slow on its own.

The first training of a run is not slowed: it carries one-time warm-up (torch's first kernels,
page faults, several daemons starting at once on shared cores), measured at 30× a warm
training on a 2-core machine, which a factor would turn into minutes of waiting that no device
of that speed would spend. The knob models a device's steady pace; the run's ``Context.state``
remembers that the warm-up was done.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from flwr.app import ConfigRecord, Context

from fedge.errors import FedgeError

KEY = "slowdown"
#: ``Context.state`` record that marks the run's warm-up training as done on this device.
WARM = "fedge.slowdown"


def factor(node_config: Mapping[str, Any]) -> float:
    """The node's ``slowdown`` factor (1.0 when unset); at least 1."""
    value = node_config.get(KEY, 1.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 1:
        raise FedgeError(
            f"node config '{KEY}' must be a number ≥ 1, got {value!r}",
            "e.g. --node-config slowdown=10 for a device ten times slower (1: full speed)",
        )
    return float(value)


def slow_down(context: Context, worked: float) -> None:
    """Wait ``(factor - 1) × worked`` s: ``worked`` seconds of work took ``factor`` times as long.

    Not on the run's first training (its warm-up, see the module docstring).
    """
    slower = factor(context.node_config)
    if slower == 1.0:
        return
    if WARM not in context.state.config_records:
        context.state[WARM] = ConfigRecord({"warm": True})
        return
    time.sleep((slower - 1.0) * worked)
