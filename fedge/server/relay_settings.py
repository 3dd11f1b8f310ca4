"""Which runs may pass through relays: a partial aggregate must be all the server needs.

A relay answers for its subtree with one weighted mean and its weight (docs/relay.md). That is
sound exactly when the server's aggregate depends on the devices' updates only through their
weighted mean (:func:`fedge.strategies.streamed.can_stream`: FedAvg, FedProx, FedAvgM, the FedOpt
family). Refused, with the reason:

* secure aggregation: masks cancel only over the whole round's pairwise graph; a relay cannot
  unmask its subtree's sum, and the server's unmasking expects one masked vector per device
  (the design that would make it sound is in docs/relay.md);
* central differential privacy: Flower's wrapper clips each *device's* update on the server;
  clipping a subtree's mean instead changes the sensitivity the accountant assumes;
* median, trimmed mean, Krum, MultiKrum, Bulyan: they need every update, not a mean.

Checked twice: by ``fedge run start`` when a relay is connected (an ``error:``/``hint:`` before
the run exists) and by each relay on every instruction (relays that connect later).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fedge.errors import FedgeError
from fedge.server.run_settings import RunSettings
from fedge.strategies import build_strategy
from fedge.strategies.streamed import can_stream

HINT = "connect its devices to the server, not to relays, or run it without that setting"


def fedge_settings(run_config: Mapping[str, Any]) -> RunSettings | None:
    """The run's settings if it is a run of fedge's own ServerApp (its run config parses)."""
    try:
        return RunSettings.from_run_config(run_config)
    except FedgeError:
        return None


def relay_refusal(run_config: Mapping[str, Any]) -> FedgeError | None:
    """Why this run cannot go through relays (None: it can, or it is another app's run)."""
    settings = fedge_settings(run_config)
    if settings is None:
        return None  # another ServerApp: the relay's weighted mean is its contract (docs/relay.md)
    if settings.secagg:
        return FedgeError("secure aggregation cannot pass through relays (docs/relay.md)", HINT)
    if settings.dp_noise > 0:
        return FedgeError("central DP clips each device's update, which relays do not pass on", HINT)
    if not can_stream(build_strategy(settings.strategy, settings.strategy_config())):
        return FedgeError(f"strategy {settings.strategy!r} needs every update, not a relay's mean", HINT)
    return None
