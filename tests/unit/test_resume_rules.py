"""Which runs `fedge run resume` accepts, and the errors for the others (no worker is started)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedge.errors import FedgeError
from fedge.server.router import Router
from fedge.server.runs import RunManager
from fedge.server.store import Store


@pytest.fixture()
def manager(tmp_path: Path) -> RunManager:
    return RunManager(Store(tmp_path / "fedge.db"), Router(), tmp_path, node_wait_timeout=1.0)


def _run_in_state(manager: RunManager, state: str) -> int:
    store: Store = manager._store
    row = store.create_run("fedge.server.app:app", {"num-server-rounds": 5}, ".", Path(manager._runs_root))
    store.set_state(row.run_id, state)
    return row.run_id


def test_unknown_run(manager: RunManager) -> None:
    with pytest.raises(FedgeError, match="no run with id 42") as err:
        manager.resume(42)
    assert "fedge run list" in err.value.hint


@pytest.mark.parametrize(("state", "hint"), [("finished", "fedge run start"), ("running", "--follow")])
def test_finished_or_running_runs_are_refused(manager: RunManager, state: str, hint: str) -> None:
    run_id = _run_in_state(manager, state)
    with pytest.raises(FedgeError, match=f"is {state}; only interrupted, failed or stopped") as err:
        manager.resume(run_id)
    assert hint in err.value.hint


def test_a_run_with_nothing_committed_is_refused(manager: RunManager) -> None:
    run_id = _run_in_state(manager, "running")
    assert manager._store.mark_interrupted() == [run_id]  # what a server restart does
    with pytest.raises(FedgeError, match="no committed round to resume from") as err:
        manager.resume(run_id)
    assert "fedge's ServerApp" in err.value.hint
    assert manager._store.run(run_id).state == "interrupted"  # type: ignore[union-attr]
