"""Round commits: exact round trips, and no torn, truncated or altered file is ever used."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord

from fedge.server.commit import CommitStore, CorruptCommit, dumps, loads
from tests.conftest import REPO


def _state(value: float) -> dict:
    return {
        "arrays": ArrayRecord({"w": Array(np.full((3, 2), value, dtype=np.float32))}),
        "metrics": [{"round": 0, "acc": value}],
    }


def test_plain_data_round_trips_exactly() -> None:
    state = {
        "none": None,
        "flags": [True, False],
        "int": 2**62,
        "float": 0.1,
        "nan": float("nan"),
        "text": "ü",
        "bytes": b"\x00\xff",
        "tuple": (3, (1, 2), None),
        "int-keys": {1: "a", 2: [np.int64(7)]},
        "f16": np.arange(4, dtype=np.float16).reshape(2, 2),
        "f64-scalar": np.float64(1.5),
        "u32-scalar": np.uint32(9),
        "empty": np.zeros((0, 3), dtype=np.int8),
        "arrays": ArrayRecord({"b": Array(np.ones(2, dtype=np.float64)), "a": Array(np.arange(3))}),
    }
    back = loads(dumps(state))
    assert back.keys() == state.keys()
    assert back["tuple"] == (3, (1, 2), None) and back["int-keys"] == {1: "a", 2: [7]}
    assert type(back["int-keys"][2][0]) is np.int64 and type(back["f64-scalar"]) is np.float64
    assert type(back["u32-scalar"]) is np.uint32 and back["bytes"] == b"\x00\xff"
    assert np.isnan(back["nan"]) and back["int"] == 2**62 and back["text"] == "ü"
    assert back["f16"].dtype == np.float16 and np.array_equal(back["f16"], state["f16"])
    assert back["empty"].shape == (0, 3) and back["empty"].dtype == np.int8
    assert list(back["arrays"].keys()) == ["b", "a"]
    assert all(np.array_equal(back["arrays"][k].numpy(), state["arrays"][k].numpy()) for k in "ab")


def test_only_plain_data_is_accepted() -> None:
    with pytest.raises(TypeError):
        dumps({"f": lambda: 0})
    with pytest.raises(TypeError):
        dumps({"o": np.array([object()])})


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b[: len(b) // 2],  # truncated
        lambda b: b[:-1],
        lambda b: b[:20],  # cut inside the header
        lambda b: b[:-100] + bytes([b[-100] ^ 1]) + b[-99:],  # one bit flipped
        lambda b: b"X" + b[1:],  # bad magic
        lambda b: b"",
    ],
)
def test_a_damaged_file_is_rejected(damage) -> None:  # noqa: ANN001
    with pytest.raises(CorruptCommit):
        loads(damage(dumps(_state(1.0))))


def test_latest_falls_back_past_bad_files_and_prunes(tmp_path: Path) -> None:
    store = CommitStore(tmp_path / "state", keep=3)
    assert store.latest() is None and store.latest_round() is None
    for r in range(5):
        store.write(r, _state(float(r)))
    assert sorted(p.name for p in store.directory.iterdir()) == [f"round-000{r}.ckpt" for r in (2, 3, 4)]
    latest = store.latest()
    assert latest is not None and latest.round == 4 and latest.state["metrics"][0]["acc"] == 4.0

    newest = store.path(4)
    newest.write_bytes(newest.read_bytes()[:-10])  # torn
    store.path(3).write_bytes(store.path(2).read_bytes())  # intact, but another round's state
    latest = store.latest()
    assert latest is not None and latest.round == 2 and latest.state["round"] == 2
    assert store.latest_round() == 3  # checksum only: cheap, and then latest() still verifies the round


# A helper that commits rounds 0, 1, 2, … forever. With a stall round, the fsync of that round's
# temp file never returns, so the kill is certain to land in the middle of saving it.
_WRITER = """
import os, sys, time
import numpy as np
from pathlib import Path
from flwr.app import Array, ArrayRecord
from fedge.server.commit import CommitStore

store, stall_round, current = CommitStore(Path(sys.argv[1])), int(sys.argv[2]), 0
real_fsync = os.fsync
def stalling_fsync(fd):
    if current == stall_round and os.fstat(fd).st_size > 1_000_000:
        print("in-write", flush=True)
        time.sleep(60)
    real_fsync(fd)
os.fsync = stalling_fsync
big = np.random.default_rng(0).standard_normal(1_000_000).astype(np.float32)
while True:
    arrays = ArrayRecord({"w": Array(big + current)})
    store.write(current, {"arrays": arrays, "metrics": [{"round": current}]})
    print(f"wrote {current}", flush=True)
    current += 1
"""
BIG0 = np.random.default_rng(0).standard_normal(1_000_000).astype(np.float32)[0]


def _writer(state_dir: Path, stall_round: int = -1) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(state_dir), str(stall_round)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0"},
    )


def test_a_process_killed_while_saving_leaves_the_previous_round(tmp_path: Path) -> None:
    proc = _writer(tmp_path / "state", stall_round=2)
    assert proc.stdout is not None
    assert [proc.stdout.readline().strip() for _ in range(3)] == ["wrote 0", "wrote 1", "in-write"]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    names = sorted(p.name for p in (tmp_path / "state").iterdir())
    # Round 2 was being saved: only its temp file exists next to the two complete commits.
    assert names[0].startswith(".round-0002.ckpt.") and names[1:] == ["round-0000.ckpt", "round-0001.ckpt"]
    store = CommitStore(tmp_path / "state")
    latest = store.latest()
    assert latest is not None and latest.round == 1
    assert latest.state["arrays"]["w"].numpy()[0] == BIG0 + 1

    store.write(2, _state(2.0))  # the resumed run commits round 2 again and sweeps the leftover
    assert not [p for p in store.directory.iterdir() if p.name.startswith(".")]


def test_kills_at_random_moments_never_leave_a_corrupt_commit(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for attempt in range(3):
        state_dir = tmp_path / str(attempt)
        proc = _writer(state_dir)
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("wrote")
        time.sleep(float(rng.uniform(0.0, 0.3)))  # a random kill point, not synchronisation
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        reported = [int(line.split()[1]) for line in [first, *proc.stdout.read().splitlines()]]
        latest = CommitStore(state_dir).latest()
        # Every commit the writer reported is durable; at most one more got in before the kill.
        assert latest is not None and latest.round in (max(reported), max(reported) + 1)
        assert latest.state["arrays"]["w"].numpy()[0] == BIG0 + latest.round


def test_a_commit_streams_a_large_model_into_its_file_without_a_model_sized_buffer(tmp_path: Path) -> None:
    import tracemalloc

    model = 128 * 2**20  # numpy writes a zip entry in 16 MiB pieces: the buffers a write needs
    weights = np.random.default_rng(0).random(model // 4, dtype=np.float32)
    state = {"arrays": ArrayRecord({"w": Array(weights)}), "metrics": [{"round": 1}]}
    store = CommitStore(tmp_path)
    tracemalloc.start()
    try:
        path = store.write(1, state)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < model // 2, f"{peak / 2**20:.1f} MiB traced for a {model / 2**20:.0f} MiB model"
    assert path.read_bytes() == dumps({**state, "round": 1})  # the same format as in memory
    back = loads(path.read_bytes())
    assert np.array_equal(back["arrays"]["w"].numpy(), weights) and back["round"] == 1
