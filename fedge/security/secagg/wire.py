"""What travels between the server's :class:`fedge.strategies.SecureExchange` and the client-side secagg mod.

One module both sides import, so the two cannot disagree on record names, stages, keys or the
layout of the masked vector. Everything rides in ordinary Flower records:

* stages ``advertise``, ``share`` and ``unmask`` are ``query.secagg`` messages whose content is
  one ``ConfigRecord`` named :data:`RECORD`;
* the masked-input stage is the strategy's own ``train`` message with that record added; the
  client mod strips it, lets the ClientApp train unchanged, and replies with the masked vector
  (one ``uint32`` array, :data:`MASKED`) instead of the model.

Vector layout (length d + 1): ``r·(local − global)`` flattened over the global ArrayRecord's
arrays in order, then ``r`` itself, where ``r = min(1, num_examples / max_weight)`` (``r = 1``
with differential privacy, whose sensitivity analysis needs equal weights). The sum over
clients therefore carries both the weighted update and the total weight, so the server obtains
the weighted mean without ever seeing a single weight or update.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord

from fedge.codec import array_view
from fedge.security.dp import DPSettings
from fedge.security.secagg._errors import SecAggError

RECORD = "fedge.secagg"
MASKED = "masked"
MESSAGE_TYPE = "query.secagg"
ADVERTISE, SHARE, MASK, UNMASK = "advertise", "share", "mask", "unmask"


@dataclass(frozen=True)
class SecAggSettings:
    """Secure-aggregation parameters of a run (``k``/``t`` of 0 mean automatic, per round).

    Parameters
    ----------
    k : int
        Neighbours per client on the masking graph.
    t : int
        Shares needed to recover a client's secrets (dropout tolerance is ``k - t``).
    l2_clip : float
        L2 bound each client scales its update to (0: none). It also bounds every element, so
        when set it is the quantization range and nothing is cut element-wise.
    clip : float
        Element-wise range of the weighted update before quantization (the quantization range).
    quant_bits : int
        Bits per element; ``clients × 2^bits`` must stay below 2^32.
    max_weight : float
        ``num-examples`` that count as weight 1.0; more are capped (a weight is at most 1).
    dp : DPSettings
        Distributed Gaussian noise added by each client (``noise_multiplier`` 0: off).
    min_contributors : int
        Fewest clients whose noise shares must add up to the target noise.
    """

    k: int
    t: int
    l2_clip: float
    clip: float
    quant_bits: int
    max_weight: float
    dp: DPSettings
    min_contributors: int

    def to_config(self, num_clients: int, stage: str) -> ConfigRecord:
        """The advertise-stage record: everything a client checks and needs for the round."""
        return ConfigRecord(
            {
                "stage": stage,
                "num-clients": num_clients,
                "k": self.k,
                "t": self.t,
                "l2-clip": float(self.l2_clip),
                "clip": float(self.clip),
                "quant-bits": self.quant_bits,
                "max-weight": float(self.max_weight),
                "dp-noise": float(self.dp.noise_multiplier),
                "dp-clip": float(self.dp.clip_norm),
                "dp-delta": float(self.dp.delta),
                "min-contributors": self.min_contributors,
            }
        )

    @classmethod
    def from_config(cls, record: ConfigRecord) -> SecAggSettings:
        """Inverse of :meth:`to_config` (``num-clients`` and ``stage`` are read separately).

        Every key is required: the server always writes them all, and a default here would be a
        second, silently diverging copy of a run setting (``RunSettings`` holds the defaults).
        """

        def get(key: str) -> Any:
            if key not in record:
                raise SecAggError(
                    f"the secure-aggregation record lacks '{key}'",
                    "run the server and the devices from the same fedge version",
                )
            return record[key]

        return cls(
            k=int(get("k")),
            t=int(get("t")),
            l2_clip=float(get("l2-clip")),
            clip=float(get("clip")),
            quant_bits=int(get("quant-bits")),
            max_weight=float(get("max-weight")),
            dp=DPSettings(
                noise_multiplier=float(get("dp-noise")),
                clip_norm=float(get("dp-clip")),
                delta=float(get("dp-delta")),
            ),
            min_contributors=int(get("min-contributors")),
        )


def _values(array: Array) -> np.ndarray:
    """The array's values without a copy when it is a plain numpy tensor (the usual case)."""
    try:
        return array_view(array)
    except ValueError:
        return array.numpy()


def flatten(record: ArrayRecord) -> np.ndarray:
    """All arrays of ``record`` as one float64 vector, in the record's order."""
    out = np.empty(size_of(record))
    offset = 0
    for array in record.values():
        values = _values(array).reshape(-1)
        out[offset : offset + values.size] = values
        offset += values.size
    return out


def difference(local: ArrayRecord, base: ArrayRecord) -> np.ndarray:
    """``local − base`` flattened in float64, plus one free last slot (for the weight).

    One pass over each pair of arrays straight into the vector the client masks: this is the
    client's largest float cost per round (no intermediate flattened copies).
    """
    out = np.empty(size_of(base) + 1)
    offset = 0
    for (name, a), b in zip(local.items(), base.values(), strict=True):
        x, y = _values(a), _values(b)
        if x.shape != y.shape:
            raise ValueError(f"array '{name}' is {list(x.shape)}, the global model's {list(y.shape)}")
        np.subtract(x.reshape(-1), y.reshape(-1), out=out[offset : offset + y.size], dtype=np.float64)
        offset += y.size
    return out


def unflatten(vector: np.ndarray, like: ArrayRecord) -> ArrayRecord:
    """``vector`` cut back into ``like``'s arrays (names, shapes, dtypes; integers rounded)."""
    out: dict[str, Array] = {}
    offset = 0
    for name, array in like.items():
        ref = array.numpy()
        size = int(ref.size)
        piece = vector[offset : offset + size].reshape(ref.shape)
        if np.issubdtype(ref.dtype, np.integer):
            piece = np.rint(piece)
        out[name] = Array(np.ascontiguousarray(piece.astype(ref.dtype)))
        offset += size
    if offset != vector.size:
        raise ValueError(f"vector has {vector.size} elements, the model {offset}")
    return ArrayRecord(out)


def ints(record: ConfigRecord, key: str) -> list[int]:
    """``record[key]`` as a list of ints (an absent key is an empty list)."""
    value: Any = record.get(key, [])
    return [int(v) for v in value]


def blobs(record: ConfigRecord, key: str) -> list[bytes]:
    """``record[key]`` as a list of bytes (an absent key is an empty list)."""
    value: Any = record.get(key, [])
    return [bytes(v) for v in value]


def pairs(record: ConfigRecord, ids: str, data: str) -> dict[int, bytes]:
    """Two parallel lists of a record (node ids and their blobs) as one mapping."""
    return dict(zip(ints(record, ids), blobs(record, data), strict=True))


def size_of(record: ArrayRecord) -> int:
    """Number of elements of all arrays in ``record``."""
    return sum(int(np.prod(a.shape, dtype=np.int64)) for a in record.values())
