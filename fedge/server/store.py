"""The server's durable state: nodes, runs, rounds and run events in SQLite (WAL).

SQLite gives atomic commits, so a server killed at any instant restarts with a consistent view;
one connection behind a lock is plenty for the write rate of a federation (a few rows a round).
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedge.atomic import PRIVATE
from fedge.server.events import TERMINAL_STATES, RunState

_SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes (
    node_id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL,
    first_seen REAL NOT NULL, last_seen REAL NOT NULL, peer TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS runs (
    run_id INTEGER PRIMARY KEY, state TEXT NOT NULL, server_app TEXT NOT NULL,
    run_config_json TEXT NOT NULL, app_dir TEXT NOT NULL, run_dir TEXT NOT NULL,
    created_at REAL NOT NULL, finished_at REAL NOT NULL DEFAULT 0,
    current_round INTEGER NOT NULL DEFAULT 0, num_rounds INTEGER NOT NULL DEFAULT 0,
    error TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS rounds (
    run_id INTEGER NOT NULL, round INTEGER NOT NULL, metrics_json TEXT NOT NULL, at REAL NOT NULL,
    PRIMARY KEY (run_id, round)
);
CREATE TABLE IF NOT EXISTS events (
    run_id INTEGER NOT NULL, seq INTEGER NOT NULL, kind TEXT NOT NULL, at REAL NOT NULL,
    data_json TEXT NOT NULL, PRIMARY KEY (run_id, seq)
);
"""


@dataclass(frozen=True)
class RunRow:
    """One run as stored."""

    run_id: int
    state: str
    server_app: str
    run_config: dict[str, Any]
    app_dir: str
    run_dir: str
    created_at: float
    finished_at: float
    current_round: int
    num_rounds: int
    error: str


@dataclass(frozen=True)
class NodeRow:
    """One device ever seen."""

    node_id: int
    name: str
    first_seen: float
    last_seen: float
    peer: str


class Store:
    """Thread-safe access to ``fedge.db``."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Device names, peers and run configs are the operator's: 0600 before SQLite opens it
        # (its -wal and -shm files take the database file's mode).
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, PRIVATE))
        os.chmod(path, PRIVATE)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _exec(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # -- nodes ------------------------------------------------------------------------------
    def node_id_for(self, name: str, peer: str) -> int:
        """The stable node id of a device name (allocated on first sight)."""
        now = time.time()
        with self._lock:
            row = self._db.execute("SELECT node_id FROM nodes WHERE name=?", (name,)).fetchone()
            if row:
                self._db.execute("UPDATE nodes SET last_seen=?, peer=? WHERE node_id=?", (now, peer, row[0]))
                return int(row[0])
            node_id = secrets.randbits(62) + 2  # 0 is "no node", 1 is Flower's SuperLink node id
            self._db.execute("INSERT INTO nodes VALUES (?,?,?,?,?)", (node_id, name, now, now, peer))
            return node_id

    def touch_node(self, node_id: int) -> None:
        self._exec("UPDATE nodes SET last_seen=? WHERE node_id=?", (time.time(), node_id))

    def nodes(self) -> list[NodeRow]:
        return [NodeRow(*r) for r in self._exec("SELECT * FROM nodes ORDER BY name")]

    # -- runs -------------------------------------------------------------------------------
    def create_run(
        self, server_app: str, run_config: dict[str, Any], app_dir: str, runs_root: Path
    ) -> RunRow:
        run_id = secrets.randbelow(9 * 10**9) + 10**9  # ten digits: unique enough, easy to type
        run_dir = str(runs_root / str(run_id))
        num_rounds = int(run_config.get("num-server-rounds", 0) or 0)
        self._exec(
            "INSERT INTO runs (run_id, state, server_app, run_config_json, app_dir, run_dir, created_at,"
            " num_rounds) VALUES (?,?,?,?,?,?,?,?)",
            (
                run_id,
                RunState.PENDING,
                server_app,
                json.dumps(run_config),
                app_dir,
                run_dir,
                time.time(),
                num_rounds,
            ),
        )
        return self.run(run_id)  # type: ignore[return-value]

    def run(self, run_id: int) -> RunRow | None:
        rows = self._exec("SELECT * FROM runs WHERE run_id=?", (run_id,))
        return _run_row(rows[0]) if rows else None

    def runs(self) -> list[RunRow]:
        return [_run_row(r) for r in self._exec("SELECT * FROM runs ORDER BY created_at")]

    def set_state(self, run_id: int, state: str, error: str = "") -> None:
        finished = time.time() if state in TERMINAL_STATES else 0.0
        self._exec(
            "UPDATE runs SET state=?, error=?, finished_at=? WHERE run_id=?", (state, error, finished, run_id)
        )

    def set_round(self, run_id: int, current_round: int) -> None:
        self._exec(
            "UPDATE runs SET current_round=MAX(current_round, ?) WHERE run_id=?", (current_round, run_id)
        )

    def mark_interrupted(self) -> list[int]:
        """Runs left running by a dead server process: mark them so users can see (and resume)."""
        ids = [
            r[0]
            for r in self._exec(
                "SELECT run_id FROM runs WHERE state IN (?,?)", (RunState.PENDING, RunState.RUNNING)
            )
        ]
        for run_id in ids:
            self.set_state(run_id, RunState.INTERRUPTED, "the server stopped while this run was active")
        return ids

    # -- rounds and events ------------------------------------------------------------------
    def put_round(self, run_id: int, rnd: int, metrics: dict[str, Any]) -> None:
        self._exec(
            "INSERT OR REPLACE INTO rounds VALUES (?,?,?,?)", (run_id, rnd, json.dumps(metrics), time.time())
        )

    def rounds(self, run_id: int) -> list[dict[str, Any]]:
        rows = self._exec("SELECT round, metrics_json FROM rounds WHERE run_id=? ORDER BY round", (run_id,))
        return [{"round": r, **json.loads(m)} for r, m in rows]

    def add_event(self, run_id: int, kind: str, data: dict[str, Any]) -> tuple[int, float]:
        now = time.time()
        with self._lock:
            row = self._db.execute(
                "SELECT COALESCE(MAX(seq), 0) FROM events WHERE run_id=?", (run_id,)
            ).fetchone()
            seq = int(row[0]) + 1
            self._db.execute(
                "INSERT INTO events VALUES (?,?,?,?,?)", (run_id, seq, kind, now, json.dumps(data))
            )
        return seq, now

    def events(self, run_id: int, after_seq: int = 0) -> list[tuple[int, str, float, dict[str, Any]]]:
        rows = self._exec(
            "SELECT seq, kind, at, data_json FROM events WHERE run_id=? AND seq>? ORDER BY seq",
            (run_id, after_seq),
        )
        return [(s, k, a, json.loads(d)) for s, k, a, d in rows]


def _run_row(r: tuple[Any, ...]) -> RunRow:
    return RunRow(r[0], r[1], r[2], json.loads(r[3]), r[4], r[5], r[6], r[7], r[8], r[9], r[10])
