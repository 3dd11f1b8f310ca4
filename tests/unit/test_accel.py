"""``--device``: the spellings, what ``auto`` resolves to here, and refusals with the fix."""

from __future__ import annotations

import logging

import pytest
import torch

from fedge import accel
from fedge.errors import FedgeError


def _expected_auto() -> str:
    if torch.cuda.is_available():
        return "cuda:0"
    return "mps" if torch.backends.mps.is_available() else "cpu"


def test_spellings_are_normalised_and_bad_ones_refused() -> None:
    assert [accel.parse(s) for s in ("AUTO", " cpu ", "cuda", "cuda:1", "mps")] == [
        "auto",
        "cpu",
        "cuda",
        "cuda:1",
        "mps",
    ]
    for bad in ("gpu", "cuda:", "cuda:x", "tpu", ""):
        with pytest.raises(FedgeError, match="invalid device") as err:
            accel.parse(bad)
        assert "auto, cpu, cuda" in err.value.hint


def test_auto_picks_cuda_then_mps_then_cpu_and_says_which(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="fedge.accel"):
        chosen = accel.resolve("auto")
    assert chosen == _expected_auto()  # "cpu" on a machine without accelerators
    assert f"device auto: {chosen}" in caplog.text
    assert accel.resolve("cpu") == "cpu"
    assert accel.torch_device("auto") == torch.device(_expected_auto())


def test_an_absent_accelerator_is_refused_at_startup() -> None:
    with pytest.raises(FedgeError, match="device cuda:64 is not available") as err:
        accel.resolve("cuda:64")
    assert "--device auto or cpu" in err.value.hint
    if not torch.backends.mps.is_available():
        with pytest.raises(FedgeError, match="device mps is not available"):
            accel.resolve("mps")
