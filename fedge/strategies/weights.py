"""Whether a reply's claimed weight (``num-examples``) may count in a weighted mean.

One device's weight in FedAvg is whatever it reports; unchecked, ``1e9`` makes the new global
model that device's own and ``NaN`` fails the whole round. The run worker's screen
(:mod:`fedge.server.bounds`) refuses such replies with an audit line on fedge's grid; the
streaming exchange applies the same rule itself so it holds on every engine.
"""

from __future__ import annotations

import math

from flwr.app import Message

#: MetricRecord key that weighs a reply in Flower's weighted means (``weighted_by_key``'s default).
WEIGHT_KEY = "num-examples"
#: Default cap on one reply's weight (run setting ``max-examples``): far above any one edge
#: device's local dataset, yet one device claiming it cannot outweigh a thousand honest ones.
DEFAULT_MAX_EXAMPLES = 100_000


def weight_problem(reply: Message, max_examples: float, key: str = WEIGHT_KEY) -> str | None:
    """Why ``reply``'s ``key`` cannot be a weight: not a finite number in ``(0, max_examples]``.

    ``None`` when it can, or when no MetricRecord of the reply carries ``key``.
    """
    for record in reply.content.metric_records.values():
        if key not in record:
            continue
        value = record[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"{key} is not a number"
        if not math.isfinite(value) or value <= 0:
            return f"{key} {value!r} is not a finite positive number"
        if value > max_examples:
            return f"{key} {value!r} exceeds max-examples {max_examples:g}"
    return None
