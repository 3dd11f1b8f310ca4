"""Reply validation: each defect is refused with its reason and the offending array's name."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord

from fedge.errors import FedgeError
from fedge.security.validate import ValidationError, check_freshness, validate_reply

rng = np.random.default_rng(0)
GLOBAL = {
    "conv.weight": rng.standard_normal((8, 3, 3, 3)).astype(np.float32),
    "conv.bias": np.zeros(8, np.float32),
    "bn.num_batches_tracked": np.array(0, np.int64),
    "fc.weight": rng.standard_normal((10, 72)).astype(np.float64),
}
REFERENCE = ArrayRecord({k: Array(v) for k, v in GLOBAL.items()})


def _reply(**changes: np.ndarray) -> dict[str, np.ndarray]:
    reply = {k: v.copy() for k, v in GLOBAL.items()}
    reply.update(changes)
    return reply


def _refused(reason: str, reply: object, **kw: float) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        validate_reply(reply, REFERENCE, **kw)  # type: ignore[arg-type]
    assert info.value.reason == reason, str(info.value)
    assert isinstance(info.value, FedgeError)
    return info.value


def test_a_good_reply_passes_as_mapping_or_record() -> None:
    reply = _reply(**{"conv.weight": GLOBAL["conv.weight"] + 0.01})
    validate_reply(reply, REFERENCE)
    validate_reply(ArrayRecord({k: Array(v) for k, v in reply.items()}), REFERENCE, max_norm=10.0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values(bad: float) -> None:
    w = GLOBAL["fc.weight"].copy()
    w[3, 7] = bad
    err = _refused("non-finite", _reply(**{"fc.weight": w}))
    assert err.array == "fc.weight" and "'fc.weight'" in str(err)


def test_non_finite_in_a_large_tensor_found_in_the_last_block() -> None:
    big = np.zeros(3_000_001, np.float32)
    big[-1] = np.nan
    ref = ArrayRecord({"big": Array(np.zeros_like(big))})
    with pytest.raises(ValidationError) as info:
        validate_reply({"big": big}, ref)
    assert info.value.reason == "non-finite" and info.value.array == "big"


def test_wrong_shape() -> None:
    err = _refused("shape", _reply(**{"conv.bias": np.zeros(9, np.float32)}))
    assert err.array == "conv.bias" and "(9,)" in str(err) and "(8,)" in str(err)
    _refused("shape", _reply(**{"fc.weight": GLOBAL["fc.weight"].T.copy()}))


def test_wrong_dtype() -> None:
    err = _refused("dtype", _reply(**{"conv.weight": GLOBAL["conv.weight"].astype(np.float64)}))
    assert err.array == "conv.weight" and "float64" in str(err) and "float32" in str(err)


def test_missing_and_extra_names() -> None:
    reply = _reply()
    del reply["conv.bias"]
    err = _refused("names", reply)
    assert "missing 'conv.bias'" in str(err) and err.array == "conv.bias"
    err = _refused("names", _reply(backdoor=np.zeros(3, np.float32)))
    assert "unexpected 'backdoor'" in str(err)


def test_norm_bound_on_the_update() -> None:
    delta = np.zeros_like(GLOBAL["fc.weight"])
    delta[0, :4] = [3.0, 4.0, 0.0, 0.0]  # norm 5 on one array ...
    bias = GLOBAL["conv.bias"] + np.float32(12.0) / np.sqrt(np.float32(8))  # ... 12 on another: total 13
    reply = _reply(**{"fc.weight": GLOBAL["fc.weight"] + delta, "conv.bias": bias})
    validate_reply(reply, REFERENCE, max_norm=13.001)
    err = _refused("norm", reply, max_norm=12.9)
    assert "13" in str(err)


def test_norm_ignores_integer_counters_and_accumulates_in_float64() -> None:
    reply = _reply(**{"bn.num_batches_tracked": np.array(10_000, np.int64)})
    validate_reply(reply, REFERENCE, max_norm=1e-9)
    big = np.full(1 << 21, 1e-4, np.float32)  # streamed over 8 blocks; must match numpy in float64
    ref = ArrayRecord({"x": Array(np.zeros_like(big))})
    expected = float(np.sqrt(np.sum(big.astype(np.float64) ** 2)))
    validate_reply({"x": big}, ref, max_norm=expected * (1 + 1e-9))
    with pytest.raises(ValidationError):
        validate_reply({"x": big}, ref, max_norm=expected * (1 - 1e-6))


def test_validation_does_not_copy_large_tensors() -> None:
    n = 4 << 20  # 16 MB of float32
    ref = ArrayRecord({"w": Array(np.zeros(n, np.float32))})
    reply = ArrayRecord({"w": Array(np.full(n, 1e-3, np.float32))})
    was_tracing = tracemalloc.is_tracing()
    tracemalloc.start()
    tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]
    try:
        validate_reply(reply, ref, max_norm=10.0)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        if not was_tracing:
            tracemalloc.stop()
    assert peak < 4 << 20, f"validation allocated {peak} B for a 16 MB tensor"


def test_unreadable_reply_array_is_a_dtype_refusal() -> None:
    reply = ArrayRecord({k: Array(v) for k, v in GLOBAL.items()})
    reply["conv.bias"] = Array(dtype="float32", shape=(8,), stype="numpy.ndarray", data=b"garbage")
    err = _refused("dtype", reply)
    assert err.array == "conv.bias"
    reply["conv.bias"] = Array(dtype="float32", shape=(8,), stype="torch.raw", data=bytes(32))
    _refused("dtype", reply)


@pytest.mark.parametrize("cut", [-4, 4], ids=["truncated", "trailing-bytes"])
def test_a_tensor_whose_length_disagrees_with_its_npy_header_is_refused(cut: int) -> None:
    """Validation reads arrays with the codec's one view, which checks the tensor's length."""
    good = Array(GLOBAL["conv.bias"]).data
    data = good[:cut] if cut < 0 else good + bytes(cut)
    reply = ArrayRecord({k: Array(v) for k, v in GLOBAL.items()})
    reply["conv.bias"] = Array(dtype="float32", shape=(8,), stype="numpy.ndarray", data=data)
    assert _refused("dtype", reply).array == "conv.bias"


def test_check_freshness() -> None:
    check_freshness(reply_round=4, current_round=4, reply_run=9, current_run=9)
    with pytest.raises(ValidationError) as info:
        check_freshness(reply_round=3, current_round=4, reply_run=9, current_run=9)
    assert info.value.reason == "stale-round" and "earlier" in str(info.value)
    with pytest.raises(ValidationError) as info:
        check_freshness(reply_round=5, current_round=4, reply_run=9, current_run=9)
    assert info.value.reason == "stale-round"
    with pytest.raises(ValidationError) as info:
        check_freshness(reply_round=4, current_round=4, reply_run=8, current_run=9)
    assert info.value.reason == "foreign-run"
