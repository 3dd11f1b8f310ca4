"""One partial aggregate for a relay's subtree: ``Σ wᵢ·xᵢ`` and ``Σ wᵢ``, sent as (mean, weight).

Why (mean, weight) rather than (sum, weight): the pair carries the same information (sum = mean ×
weight), and as a mean with ``num-examples = Σ wᵢ`` it is an ordinary reply, so the server's
weighted-mean strategies (FedAvg and the FedOpt family; :func:`fedge.strategies.streamed.can_stream`)
fold it unchanged: ``Σ_r W_r·mean_r / Σ_r W_r = Σᵢ wᵢ·xᵢ / Σᵢ wᵢ``, the flat federation's
aggregate up to float rounding. Metrics get the same treatment (weighted means by ``num-examples``,
as Flower's ``aggregate_metricrecords``).

The fold is :class:`fedge.strategies.streaming.WeightedSum`: O(model) memory at the relay, each
reply dropped once folded. Arrays go back in the dtype the devices sent (Flower's mean makes
integer arrays float64; the server's screen expects replies to mirror instructions).
"""

from __future__ import annotations

import math

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

from fedge.codec import array_from_numpy, array_view, as_views
from fedge.strategies.streaming import WeightedSum
from fedge.strategies.weights import WEIGHT_KEY


class PartialAggregate:
    """Folds a subtree's replies (one ArrayRecord and one MetricRecord each, at most)."""

    def __init__(self) -> None:
        self._arrays = WeightedSum()
        self._array_key = ""
        self._dtypes: dict[str, np.dtype] = {}
        self._metric_key = ""
        self._metric_sums: dict[str, float] = {}
        self._weight = 0.0
        self._integral = True
        self.count = 0

    def add(self, reply: Message) -> None:
        """Fold one reply; ValueError (nothing folded) when it cannot be part of a weighted mean."""
        content = reply.content
        if len(content.array_records) > 1 or len(content.metric_records) != 1:
            raise ValueError("a reply must hold at most one ArrayRecord and exactly one MetricRecord")
        ((metric_key, metrics),) = content.metric_records.items()
        weight = metrics.get(WEIGHT_KEY)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 < weight < math.inf:
            raise ValueError(f"the reply's {WEIGHT_KEY!r} is not a finite positive number")
        if content.array_records:
            ((key, record),) = content.array_records.items()
            if self.count and key != self._array_key:
                raise ValueError(f"reply arrays under {key!r}, the others under {self._array_key!r}")
            if not self.count:
                self._array_key = key
                self._dtypes = {name: view.dtype for name, view in as_views(record).items()}
            self._arrays.add(record, float(weight))
        elif self._array_key:
            raise ValueError("a reply without arrays among replies with arrays")
        self._metric_key = self._metric_key or metric_key
        for name, value in metrics.items():
            if name != WEIGHT_KEY and isinstance(value, (int, float)) and not isinstance(value, bool):
                self._metric_sums[name] = self._metric_sums.get(name, 0.0) + float(weight) * value
        self._integral &= isinstance(weight, int)
        self._weight += float(weight)
        self.count += 1

    def reply_to(self, instruction: Message) -> Message:
        """The subtree's one reply: the weighted mean, ``num-examples`` = the subtree's weight."""
        if not self.count:
            raise ValueError("no reply was folded")
        total: int | float = int(self._weight) if self._integral else self._weight
        metrics = MetricRecord({name: s / self._weight for name, s in self._metric_sums.items()})
        metrics[WEIGHT_KEY] = total
        content = RecordDict({self._metric_key: metrics})
        if self._array_key:
            mean = self._arrays.result()
            record = ArrayRecord()
            for name, array in mean.items():
                record[name] = array_from_numpy(array_view(array).astype(self._dtypes[name], copy=False))
            content[self._array_key] = record
        return Message(content, reply_to=instruction)
