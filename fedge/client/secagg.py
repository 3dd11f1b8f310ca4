"""Client side of secure aggregation: a Flower client mod, so no ClientApp changes to take part.

The fedge runtime (:class:`fedge.client.runtime.ClientRuntime`) puts its own :class:`SecAggMod`
in front of every ClientApp; on Flower's engines, whose servers never start fedge's secure
aggregation, nothing needs it. Messages without the secagg record pass straight through. With it:

* ``advertise`` — check the round's parameters are safe (:func:`resolve_params` refuses ``t`` too
  small for ``k``, ``k`` too small for ``n``, overflow), then answer with two fresh public keys;
* ``share`` — answer with encrypted shares of this round's secrets for each neighbour;
* ``mask`` — strip the record, let the ClientApp train as usual, then replace its model with the
  masked vector ``r·(local − global) ‖ r`` (clipped and noised first when DP is on) and keep
  its metrics;
* ``unmask`` — answer with the shares the server needs, then forget the round.

Round secrets live only in the mod's memory (never in the persisted ``Context``): a daemon that
restarts mid-round simply counts as a dropout, which the protocol tolerates.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.app.message import make_message
from flwr.common.constant import ErrorCode

from fedge.codec import array_from_numpy
from fedge.errors import FedgeError
from fedge.security.dp import clip_update, noise_share
from fedge.security.secagg import ClientSession, resolve_params, round_tag
from fedge.security.secagg.wire import (
    ADVERTISE,
    MASK,
    MASKED,
    RECORD,
    SHARE,
    UNMASK,
    SecAggSettings,
    blobs,
    difference,
    ints,
    pairs,
)

log = logging.getLogger("fedge.client.secagg")

CallNext = Callable[[Message, Context], Message]
R = TypeVar("R", ArrayRecord, MetricRecord)

Rounds = dict[tuple[int, int], tuple[SecAggSettings, ClientSession]]
"""(run_id, node_id) -> (settings, session) of the round in progress."""


class SecAggMod:
    """Flower client mod: take part in secure aggregation when the server asks for it.

    One per client runtime: it holds that node's rounds in progress, so two runtimes in one
    process (tests, simulations) never see each other's secrets.
    """

    def __init__(self) -> None:
        self._rounds: Rounds = {}

    def __call__(self, msg: Message, context: Context, call_next: CallNext) -> Message:
        if not msg.has_content() or RECORD not in msg.content.config_records:
            return call_next(msg, context)
        record = msg.content.config_records[RECORD]
        stage = str(record.get("stage", ""))
        key = (msg.metadata.run_id, context.node_id)
        rounds = self._rounds
        try:
            if stage == ADVERTISE:
                return _reply(msg, _advertise(rounds, key, record))
            if stage == SHARE:
                return _reply(msg, _share(rounds, key, record))
            if stage == MASK:
                return _mask(rounds, key, msg, record, context, call_next)
            if stage == UNMASK:
                return _reply(msg, _unmask(rounds, key, record))
            raise FedgeError(f"unknown secure-aggregation stage '{stage}'", "update the edge daemon")
        except FedgeError as exc:
            log.error("secure aggregation refused: %s", exc.message, extra={"run": key[0]})
            rounds.pop(key, None)
            return Message(Error(code=ErrorCode.UNKNOWN, reason=f"secagg: {exc.message}"), reply_to=msg)


def _reply(msg: Message, record: ConfigRecord) -> Message:
    return Message(RecordDict({RECORD: record}), reply_to=msg)


def _session(rounds: Rounds, key: tuple[int, int]) -> tuple[SecAggSettings, ClientSession]:
    if key not in rounds:
        raise FedgeError(
            "no secure-aggregation round in progress on this device (restarted mid-round?)",
            "nothing to do: the server treats this device as dropped for the round",
        )
    return rounds[key]


def _advertise(rounds: Rounds, key: tuple[int, int], record: ConfigRecord) -> ConfigRecord:
    settings = SecAggSettings.from_config(record)
    num_clients = int(record["num-clients"])  # type: ignore[arg-type]
    params = resolve_params(num_clients, settings.k, settings.t, settings.clip, settings.quant_bits)
    round_number = int(record.get("round", 0))  # type: ignore[arg-type]
    session = ClientSession(key[1], params, round_tag(key[0], round_number))
    rounds[key] = (settings, session)
    c_pk, s_pk = session.advertise()
    return ConfigRecord({"c-pk": c_pk, "s-pk": s_pk})


def _share(rounds: Rounds, key: tuple[int, int], record: ConfigRecord) -> ConfigRecord:
    _, session = _session(rounds, key)
    keys = dict(
        zip(
            ints(record, "nodes"),
            zip(blobs(record, "c-pks"), blobs(record, "s-pks"), strict=True),
            strict=True,
        )
    )
    ciphertexts = session.share_keys(keys)
    return ConfigRecord({"nodes": list(ciphertexts), "ciphertexts": list(ciphertexts.values())})


def _unmask(rounds: Rounds, key: tuple[int, int], record: ConfigRecord) -> ConfigRecord:
    _, session = _session(rounds, key)
    shares = session.unmask(ints(record, "survivors"), ints(record, "dropped"))
    del rounds[key]
    return ConfigRecord({"nodes": list(shares), "shares": list(shares.values())})


def _mask(
    rounds: Rounds,
    key: tuple[int, int],
    msg: Message,
    record: ConfigRecord,
    context: Context,
    call_next: CallNext,
) -> Message:
    settings, session = _session(rounds, key)
    content = RecordDict({name: value for name, value in msg.content.items() if name != RECORD})
    reply = call_next(make_message(metadata=msg.metadata, content=content), context)
    if reply.has_error():
        return reply
    global_arrays = _single(list(msg.content.array_records.values()), "train message")
    local = _single(list(reply.content.array_records.values()), "ClientApp reply")
    if list(local.keys()) != list(global_arrays.keys()):
        raise FedgeError(
            "the ClientApp's reply arrays do not match the global model's",
            "return the trained model with the same keys as the received ArrayRecord",
        )
    try:
        vector = difference(local, global_arrays)  # r·(local − global) ‖ r, built in place below
    except ValueError as exc:
        raise FedgeError(
            f"the ClientApp's reply does not fit the global model: {exc}",
            "return the trained model with the received arrays' shapes",
        ) from None
    delta = vector[:-1]
    metrics = _single(list(reply.content.metric_records.values()), "ClientApp reply")
    if settings.l2_clip > 0:
        (clipped,), norm = clip_update([delta], settings.l2_clip)
        delta[:] = clipped
        metrics["update-norm"] = float(norm)
    if settings.dp.enabled:
        # DP-FedAvg: equal weights, clipped update, this client's share of the Gaussian noise.
        (noise,) = noise_share([delta], settings.dp, settings.min_contributors, np.random.default_rng())
        delta += noise
        weight = 1.0
    else:
        examples = metrics.get("num-examples", 0)
        if not isinstance(examples, (int, float)) or examples <= 0:
            raise FedgeError(
                "the ClientApp reported no 'num-examples'",
                "put 'num-examples' in the train reply's MetricRecord (secure aggregation weights by it)",
            )
        weight = min(1.0, examples / settings.max_weight)
        delta *= weight
    vector[-1] = weight
    metrics["secagg-clipped"] = float(np.count_nonzero(np.abs(vector) > settings.clip)) / vector.size
    masked = session.masked_input(vector, pairs(record, "srcs", "ciphertexts"))
    content = RecordDict({RECORD: ArrayRecord({MASKED: array_from_numpy(masked)}), "metrics": metrics})
    return Message(content, reply_to=msg)


def _single(values: list[R], what: str) -> R:
    if len(values) != 1:
        raise FedgeError(
            f"secure aggregation needs exactly one record of each kind in the {what}, got {len(values)}",
            "return one ArrayRecord (the model) and one MetricRecord (with num-examples)",
        )
    return values[0]
