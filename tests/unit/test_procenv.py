"""The environment run workers inherit: one OpenBLAS thread, set before numpy is imported."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from fedge.procenv import WORKER_THREADS, tune_spawned_children

# What a spawned run worker does before its own code runs: import numpy (unpickling its target).
_COUNT_THREADS = "import os, numpy; print(len(os.listdir('/proc/self/task')))"


def _threads_after_numpy(env: dict[str, str]) -> int:
    out = subprocess.run([sys.executable, "-c", _COUNT_THREADS], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return int(out.stdout)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [*WORKER_THREADS, "GLIBC_TUNABLES"]:
        monkeypatch.setenv(name, "x")  # records the original value, restored after the test
        monkeypatch.delenv(name)


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads through Linux /proc")
def test_spawned_children_import_numpy_with_one_blas_thread(clean_env: None) -> None:
    untuned = _threads_after_numpy(dict(os.environ))
    tune_spawned_children()
    assert _threads_after_numpy(dict(os.environ)) == 1
    if (os.cpu_count() or 1) > 1:  # the control: without the setting OpenBLAS starts a thread per core
        assert untuned > 1


def test_an_operators_own_thread_setting_wins(clean_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "4")
    tune_spawned_children()
    assert os.environ["OPENBLAS_NUM_THREADS"] == "4"
    assert os.environ["OMP_NUM_THREADS"] == "1"
