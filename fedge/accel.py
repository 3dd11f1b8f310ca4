"""Which accelerator a process computes on: ``--device auto|cpu|cuda[:i]|mps``.

One place decides it for the server (central evaluation) and the daemon (training, evaluation),
so both accept the same spellings and ``auto`` means the same everywhere: CUDA, then MPS, then
CPU. The daemon and the server process resolve ``auto`` without importing torch (it is ~220 MB
of a daemon's idle memory and is loaded only when work arrives): CUDA counts as present when the
installed torch is a CUDA build and the driver reports a device; MPS when torch runs on Apple
silicon. Where torch is loaded, :func:`torch_device` checks the choice against torch itself, so a
wrong guess fails the first task with the fix instead of computing on the wrong device.
Aggregation never moves here: it stays on the CPU (see ``bench/gpu.py`` and the README).
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import logging
import platform
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from fedge.errors import FedgeError

if TYPE_CHECKING:
    import torch

log = logging.getLogger("fedge.accel")

SPEC_HINT = "use --device auto, cpu, cuda, cuda:N (e.g. cuda:0) or mps"
_SPEC = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def parse(spec: str) -> str:
    """Normalise a ``--device`` value (``CUDA`` → ``cuda``) or raise a ``FedgeError``."""
    value = spec.strip().lower()
    if not _SPEC.match(value):
        raise FedgeError(f"invalid device {spec!r}", SPEC_HINT)
    return value


def resolve(spec: str) -> str:
    """The concrete device of ``spec``: ``auto`` becomes ``cuda:0``, ``mps`` or ``cpu``.

    An explicit accelerator that is not present is an error here, at startup, not at the first
    round. Logs the choice (and for ``auto`` why).
    """
    value = parse(spec)
    cuda, mps = _cuda_count(), _mps()
    if value == "auto":
        chosen = "cuda:0" if cuda else "mps" if mps else "cpu"
        log.info("device auto: %s (%d CUDA devices, MPS %s)", chosen, cuda, "yes" if mps else "no")
        return chosen
    if value.startswith("cuda"):
        index = int(value.partition(":")[2] or 0)
        if index >= cuda:
            raise FedgeError(
                f"device {value} is not available: {cuda} CUDA device(s) visible to this process",
                "use --device auto or cpu, or check the driver, CUDA_VISIBLE_DEVICES and that torch "
                "is a CUDA build",
            )
        value = f"cuda:{index}"
    elif value == "mps" and not mps:
        raise FedgeError(
            "device mps is not available here", "MPS needs Apple silicon; use --device auto or cpu"
        )
    log.info("device: %s", value)
    return value


@functools.lru_cache(maxsize=8)
def torch_device(name: str) -> torch.device:
    """``torch.device(name)`` after checking torch can use it (the process's torch decides).

    Memoised: a daemon asks for every message, and ``auto`` should be resolved and logged once.
    """
    import torch

    device = torch.device(parse(name) if name != "auto" else resolve(name))
    if device.type == "cuda" and (
        not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()
    ):
        raise FedgeError(
            f"device {name} was chosen but torch sees {torch.cuda.device_count()} CUDA device(s)",
            "start the process with --device cpu, or install a CUDA build of torch",
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise FedgeError("device mps was chosen but torch cannot use MPS", "use --device cpu")
    return device


def _cuda_count() -> int:
    """CUDA devices this process could use, asked of torch when loaded, else of the driver."""
    if "torch" in sys.modules:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    spec = importlib.util.find_spec("torch")
    if spec is None or spec.origin is None:
        return 0
    lib = Path(spec.origin).parent / "lib"
    if not any(lib.glob("libtorch_cuda*")):  # a CPU-only build of torch
        return 0
    try:
        driver = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if driver.cuInit(0) != 0 or driver.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


def _mps() -> bool:
    if "torch" in sys.modules:
        import torch

        return bool(torch.backends.mps.is_available())
    return platform.system() == "Darwin" and platform.machine() == "arm64"
