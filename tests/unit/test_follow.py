"""What `fedge run start` / `fedge simulate` print while following a run (not a terminal here)."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from fedge.server.run_cli import follow


@dataclass
class _Event:
    kind: str
    data_json: str


@dataclass
class _Status:
    run_dir: str


class _Client:
    """The two Control calls ``follow`` makes, answered from a recorded run."""

    def __init__(self, events: list[tuple[str, dict[str, Any]]], run_dir: str) -> None:
        self._events = [_Event(kind, json.dumps(data)) for kind, data in events]
        self._run_dir = run_dir

    def events(self, run_id: int, replay: bool = False) -> list[_Event]:
        return self._events

    def get_run(self, run_id: int) -> _Status:
        return _Status(self._run_dir)


def test_dp_epsilon_per_round_and_at_the_end_and_whole_paths_in_non_tty_output() -> None:
    run_dir = "/srv/fedge/state/runs/" + "a-long-directory-name-" * 4 + "1234567890"
    rounds = [
        ("round-finished", {"round": r, "metrics": {"central-accuracy": 0.5 + r / 10, "dp-epsilon": 1.5 * r}})
        for r in (0, 1, 2)
    ]
    out = io.StringIO()
    console = Console(file=out, width=80, force_terminal=False)
    last = follow(_Client([*rounds, ("run-finished", {})], run_dir), 7, 2, console)  # type: ignore[arg-type]
    text = out.getvalue()
    assert "round   1: central-accuracy=0.6000  dp-epsilon=1.5000" in text
    assert "run 7 finished: central-accuracy=0.7000  dp-epsilon=3.0000" in text and last["round"] == 2
    lines = text.splitlines()
    for label, path in (
        ("run directory", run_dir),
        ("summary", f"{run_dir}/summary.json"),
        ("metrics per round", f"{run_dir}/metrics.jsonl"),
        ("plots", f"{run_dir}/plots"),
    ):
        assert f"{label}: {Path(path)}" in lines, text  # one line each, never split at 80 columns


def test_verbose_follow_prints_every_event() -> None:
    events = [
        ("round-started", {"round": 1}),
        ("model-exported", {"version": "7.1-ab"}),
        ("run-finished", {}),
    ]
    quiet, loud = io.StringIO(), io.StringIO()
    follow(_Client(events, "/r"), 7, 1, Console(file=quiet, width=80))  # type: ignore[arg-type]
    follow(_Client(events, "/r"), 7, 1, Console(file=loud, width=80), verbose=1)  # type: ignore[arg-type]
    assert "model-exported" not in quiet.getvalue()
    assert 'round-started {"round": 1}' in loud.getvalue() and "model-exported" in loud.getvalue()
