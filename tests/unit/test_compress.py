"""Compressed updates: the shared codec (fedge.compress) and the device's error feedback."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedge.client.compression import RESIDUAL, compressed
from fedge.codec import array_from_numpy, as_views
from fedge.compress import BLOB, RECORD, CompressionError, Scheme, decode_reply, decode_update, encode_update
from fedge.errors import FedgeError
from fedge.server.run_settings import RunSettings

RNG = np.random.default_rng(0)
MODEL = {
    "w": RNG.normal(size=(40, 30)).astype(np.float32),
    "b": RNG.normal(size=7).astype(np.float32),
    "count": np.array(5, dtype=np.int64),
}


def _trained(scale: float = 0.1) -> dict[str, np.ndarray]:
    out = {
        k: (v + RNG.normal(scale=scale, size=v.shape).astype(v.dtype))
        for k, v in MODEL.items()
        if k != "count"
    }
    return {**out, "count": np.array(9, dtype=np.int64)}


def test_parse_and_refuse() -> None:
    assert str(Scheme.parse("int8")) == "int8" and Scheme.parse("topk:0.05").fraction == 0.05
    for bad in ("int3", "topk", "topk:0", "topk:1.5", "topk:x", ""):
        with pytest.raises(FedgeError):
            Scheme.parse(bad)
    with pytest.raises(FedgeError) as err:
        RunSettings.from_run_config({"compress": "int8", "secagg": True, "min-clients": 3})
    assert "32-bit ring elements" in err.value.hint


@pytest.mark.parametrize(("scheme", "levels"), [("int8", 127), ("int4", 7)])
def test_quantized_updates_decode_within_half_a_step(scheme: str, levels: int) -> None:
    trained = _trained()
    blob, residual = encode_update(Scheme.parse(scheme), MODEL, trained, {})
    decoded = decode_update(Scheme.parse(scheme), blob, MODEL)
    for name in ("w", "b"):
        delta = trained[name] - MODEL[name]
        step = np.abs(delta).max() / levels
        assert np.abs(decoded[name] - trained[name]).max() <= step / 2 + 1e-6
        np.testing.assert_allclose(residual[name], trained[name] - decoded[name], atol=1e-5)
    assert decoded["count"] == 9 and decoded["count"].dtype == np.int64  # integers travel raw
    floats = sum(v.size for k, v in MODEL.items() if k != "count")
    per = 1 if scheme == "int8" else 0.5
    assert blob.nbytes <= floats * per + 2 * 5 + 8  # scales, odd-length padding, the raw counter


def test_top_k_keeps_the_largest_entries_and_feeds_back_the_rest() -> None:
    trained = _trained()
    scheme = Scheme.parse("topk:0.05")
    blob, residual = encode_update(scheme, MODEL, trained, {})
    decoded = decode_update(scheme, blob, MODEL)
    delta = (trained["w"] - MODEL["w"]).ravel()
    kept = np.flatnonzero((decoded["w"] - MODEL["w"]).ravel())
    assert len(kept) == scheme.k(delta.size) == 60
    assert set(kept) == set(np.argsort(-np.abs(delta))[:60])
    assert blob.nbytes == 60 * 4 + 1 * 4 + 8  # w: 60 (uint16 + float16); b: 1 kept; count raw
    np.testing.assert_allclose(residual["w"].ravel()[kept], 0, atol=1e-2)  # float16 rounding only


def test_error_feedback_loses_nothing_over_rounds() -> None:
    """Σ decoded updates + the last residual = Σ true updates (the encoding only delays)."""
    scheme, residual = Scheme.parse("topk:0.05"), {}
    total_true = np.zeros_like(MODEL["w"])
    total_sent = np.zeros_like(MODEL["w"])
    for _ in range(20):
        trained = _trained()
        blob, residual = encode_update(scheme, MODEL, trained, residual)
        total_true += trained["w"] - MODEL["w"]
        total_sent += decode_update(scheme, blob, MODEL)["w"] - MODEL["w"]
    np.testing.assert_allclose(total_sent + residual["w"], total_true, atol=1e-3)


def test_misfit_blobs_are_refused() -> None:
    blob, _ = encode_update(Scheme.parse("int8"), MODEL, _trained(), {})
    with pytest.raises(CompressionError):
        decode_update(Scheme.parse("int8"), blob[:-1], MODEL)
    with pytest.raises(CompressionError):
        decode_update(Scheme.parse("int4"), blob, MODEL)
    topk = Scheme.parse("topk:0.05")
    tk, _ = encode_update(topk, MODEL, _trained(), {})
    bad = tk.copy()
    bad[:2] = 0xFF  # index 65535 in a 1,200-element array
    with pytest.raises(CompressionError):
        decode_update(topk, bad, MODEL)


def _instruction() -> Message:
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 4, 2
    record = ArrayRecord()
    for k, v in MODEL.items():
        record[k] = array_from_numpy(v)
    msg = Message(RecordDict({"arrays": record}), dst_node_id=2, message_type="train")
    msg.metadata.__dict__["_message_id"] = "m1"
    return msg


def _app(trained: dict[str, np.ndarray]):  # type: ignore[no-untyped-def]
    def app(msg: Message, ctx: Context) -> Message:
        record = ArrayRecord()
        for k, v in trained.items():
            record[k] = array_from_numpy(v)
        return Message(
            RecordDict({"arrays": record, "metrics": MetricRecord({"num-examples": 3})}), reply_to=msg
        )

    return app


def test_a_device_reply_round_trips_and_keeps_its_residual_in_the_run_state() -> None:
    ctx = Context(run_id=4, node_id=2, node_config={}, state=RecordDict(), run_config={"compress": "int8"})
    trained = _trained()
    instruction = _instruction()
    reply = compressed(instruction, ctx, _app(trained))
    assert list(reply.content.array_records["arrays"].keys()) == [BLOB]
    assert reply.content.config_records[RECORD]["scheme"] == "int8"
    assert reply.content.metric_records["metrics"]["num-examples"] == 3
    assert set(ctx.state.array_records[RESIDUAL].keys()) == {"w", "b"}
    opened = decode_reply(reply, instruction.content.array_records["arrays"])
    assert RECORD not in opened.content.config_records
    views = as_views(opened.content.array_records["arrays"])
    assert list(views) == list(MODEL)
    np.testing.assert_allclose(views["w"], trained["w"], atol=np.abs(trained["w"] - MODEL["w"]).max() / 127)


def test_uncompressed_runs_and_other_messages_pass_through() -> None:
    trained = _trained()
    plain = Context(run_id=4, node_id=2, node_config={}, state=RecordDict(), run_config={})
    assert list(
        compressed(_instruction(), plain, _app(trained)).content.array_records["arrays"].keys()
    ) == list(MODEL)
    ctx = Context(run_id=4, node_id=2, node_config={}, state=RecordDict(), run_config={"compress": "int8"})
    evaluate = _instruction()
    evaluate.metadata.__dict__["_message_type"] = "evaluate"
    assert RECORD not in compressed(evaluate, ctx, _app(trained)).content.config_records
    reshaped = {**trained, "b": np.zeros(3, np.float32)}  # not an update of what was sent
    assert RECORD not in compressed(_instruction(), ctx, _app(reshaped)).content.config_records
