"""Run manager: one worker process per run, its events, its lifecycle.

The manager is the only writer of run state: worker events arrive over the run's pipe, are
stored, and wake every ``StreamEvents`` watcher.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import tomli_w

from fedge.atomic import PRIVATE, private_dir, write_text
from fedge.eligibility import Eligibility
from fedge.errors import FedgeError
from fedge.procenv import tune_spawned_children
from fedge.protos.v1 import fleet_pb2
from fedge.server.audit import AuditLog
from fedge.server.commit import CommitStore
from fedge.server.events import RESUMABLE_STATES, TERMINAL_EVENTS, TERMINAL_STATES, EventKind, RunState
from fedge.server.exports import RunExports
from fedge.server.exports import check_config as check_export_config
from fedge.server.grid import Outcome, Payload
from fedge.server.pipe import PipeServer
from fedge.server.router import Router
from fedge.server.store import RunRow, Store
from fedge.server.worker import run_worker

log = logging.getLogger("fedge.server.runs")


class RunManager:
    """Starts, watches and stops runs."""

    def __init__(
        self,
        store: Store,
        router: Router,
        state_dir: Path,
        node_wait_timeout: float,
        verbosity: int = 0,
        pki_dir: Path | None = None,
        exports: RunExports | None = None,
        device: str = "cpu",
    ):
        self._device = device  # the worker's central evaluation (fedge.accel)
        self._exports = exports  # model export at the end of runs (fedge.server.exports)
        self._pki_dir = str(pki_dir) if pki_dir else ""
        self._store = store
        self._router = router
        self._runs_root = state_dir / "runs"
        self._node_wait_timeout = node_wait_timeout
        self._verbosity = verbosity
        self._procs: dict[int, BaseProcess] = {}
        self._lock = threading.Lock()
        # One event at a time: a check of the run's state and the event it lets through must not
        # interleave with another thread's (a worker's round-started landed after run-stopped).
        self._recording = threading.RLock()
        self.changed = threading.Condition()
        # Called with (run_id, kind, data) after each event is stored (e.g. fedge.server.metrics).
        self.on_event: Callable[[int, str, dict[str, Any]], None] | None = None

    def start(self, server_app: str, run_config: dict[str, Any], app_dir: str) -> RunRow:
        """Create the run, its directory and its worker process."""
        check_export_config(run_config)
        row = self._store.create_run(server_app, run_config, app_dir, self._runs_root)
        config = {**run_config, "run-dir": row.run_dir}
        run_dir = Path(row.run_dir)
        private_dir(run_dir)  # also when run-dir points outside the state directory
        write_text(
            run_dir / "config.toml",
            tomli_w.dumps({"server-app": server_app, "app-dir": app_dir, "run-config": config}),
            PRIVATE,
        )
        self._spawn(row, config)
        return self._store.run(row.run_id)  # type: ignore[return-value]

    def resume(self, run_id: int) -> RunRow:
        """Continue a run that did not finish from its last committed round, in a new worker.

        Same run id, run directory and run config (plus ``resume = true``): fedge's ServerApp
        then restores the newest good commit in ``<run_dir>/state`` and sends the round numbers
        an uninterrupted run would have sent.
        """
        with self._lock:  # two concurrent resumes must not start two workers
            row = self._store.run(run_id)
            if row is None:
                raise FedgeError(f"no run with id {run_id}", "list runs with `fedge run list`")
            if row.state not in RESUMABLE_STATES:
                raise FedgeError(
                    f"run {run_id} is {row.state}; only interrupted, failed or stopped runs can be resumed",
                    "start a new run with `fedge run start`"
                    if row.state == RunState.FINISHED
                    else f"follow it with `fedge run logs {run_id} --follow`",
                )
            if run_id in self._procs:
                raise FedgeError(
                    f"the last worker of run {run_id} is still exiting", "retry in a few seconds"
                )
            committed = CommitStore(Path(row.run_dir) / "state").latest_round()
            if committed is None:
                raise FedgeError(
                    f"run {run_id} has no committed round to resume from in {row.run_dir}",
                    "only runs of fedge's ServerApp commit rounds; start a new run with `fedge run start`",
                )
            self._store.set_state(run_id, RunState.RUNNING)
        self._record(run_id, EventKind.RUN_RESUMED, {"round": committed, "num_rounds": row.num_rounds})
        log.info("run %s resumes after round %d", run_id, committed, extra={"run": run_id})
        self._spawn(row, {**row.run_config, "run-dir": row.run_dir, "resume": True})
        return self._store.run(run_id)  # type: ignore[return-value]

    def _spawn(self, row: RunRow, config: dict[str, Any]) -> None:
        """Start the worker process of ``row`` with ``config`` and the thread serving its pipe."""
        server_app, app_dir = row.server_app, row.app_dir
        tune_spawned_children()  # the worker decodes every update: see fedge.procenv
        parent, child = mp.get_context("spawn").Pipe()
        proc = mp.get_context("spawn").Process(
            target=run_worker,
            args=(
                child,
                row.run_id,
                server_app,
                app_dir,
                config,
                self._node_wait_timeout,
                self._verbosity,
                self._pki_dir,
                self._device,
            ),
            name=f"fedge-run-{row.run_id}",
            daemon=True,
        )
        proc.start()
        child.close()
        with self._lock:
            self._procs[row.run_id] = proc
        self._store.set_state(row.run_id, RunState.RUNNING)
        run_ctx = fleet_pb2.RunContext(run_id=row.run_id, run_config_json=json.dumps(config))
        threading.Thread(
            target=self._serve,
            args=(row.run_id, parent, proc, run_ctx),
            daemon=True,
            name=f"fedge-run-{row.run_id}-link",
        ).start()

    def stop(self, run_id: int) -> RunRow:
        """Stop a run: its worker is terminated; pending device work is abandoned."""
        row = self._store.run(run_id)
        if row is None:
            raise FedgeError(f"no run with id {run_id}", "list runs with `fedge run list`")
        if row.state in TERMINAL_STATES:
            return row
        self._record(run_id, EventKind.RUN_STOPPED, {"error": "stopped by the user"})
        with self._lock:
            proc = self._procs.pop(run_id, None)
        if proc is not None:
            _terminate(proc)
        return self._store.run(run_id)  # type: ignore[return-value]

    def shutdown(self) -> None:
        """Server exit: stop workers; their runs stay 'running' in the store and become 'interrupted'."""
        with self._lock:
            procs, self._procs = list(self._procs.values()), {}
        for proc in procs:
            _terminate(proc)

    def _serve(self, run_id: int, conn: Connection, proc: BaseProcess, run_ctx: fleet_pb2.RunContext) -> None:
        """Answer the worker's requests until it exits."""
        PipeServer(conn, RunEndpoint(self._router, run_id, run_ctx, self._on_worker_event)).serve()
        proc.join(timeout=10)
        with self._lock:  # held while checking the state, so that a resume cannot slip in between
            if self._procs.get(run_id) is not proc:  # stopped, server closing, or resumed by a newer worker
                return
            del self._procs[run_id]
            row = self._store.run(run_id)
            if row is None or row.state in TERMINAL_STATES:
                return
            self._record(
                run_id,
                EventKind.RUN_FAILED,
                {
                    "error": f"run worker exited unexpectedly (code {proc.exitcode})",
                    "hint": "see the server log (-v)",
                },
            )

    def _on_worker_event(
        self, run_id: int, kind: str, data: dict[str, Any], run_ctx: fleet_pb2.RunContext
    ) -> None:
        if self._exports is not None:  # the final export happens before run-finished is recorded
            self._exports.on_event(run_id, kind, data, run_ctx, self._record)
        self._record(run_id, kind, data)

    def _record(self, run_id: int, kind: str, data: dict[str, Any]) -> None:
        with self._recording:
            self._record_one(run_id, kind, data)

    def _record_one(self, run_id: int, kind: str, data: dict[str, Any]) -> None:
        row = self._store.run(run_id)
        if row is None or row.state in TERMINAL_STATES:
            return
        if kind == EventKind.ROUND_STARTED:
            self._store.set_round(run_id, _as_int(data.get("round")))
        elif kind == EventKind.ROUND_FINISHED:
            rnd = _as_int(data.get("round"))
            self._store.put_round(run_id, rnd, data.get("metrics", {}))
            self._store.set_round(run_id, rnd)
        if kind in (EventKind.RUN_STARTED, EventKind.RUN_RESUMED, *TERMINAL_EVENTS):
            AuditLog(Path(row.run_dir) / "audit.jsonl").write(
                kind, run_id=run_id, error=data.get("error", "")
            )
        # The event before the state: an event stream that sees the run ended must also find its
        # last event (the other order let a follower stop one event short).
        self._store.add_event(run_id, kind, data)
        if kind in TERMINAL_EVENTS:
            self._store.set_state(run_id, TERMINAL_EVENTS[kind], str(data.get("error", "")))
            log.info("run %s %s", run_id, TERMINAL_EVENTS[kind], extra={"run": run_id})
        if self.on_event is not None:
            self.on_event(run_id, kind, data)
        with self.changed:
            self.changed.notify_all()


class RunEndpoint:
    """What the server process does for one run's worker (:class:`fedge.server.pipe.Endpoint`)."""

    def __init__(
        self,
        router: Router,
        run_id: int,
        run_ctx: fleet_pb2.RunContext,
        on_event: Callable[[int, str, dict[str, Any], fleet_pb2.RunContext], None],
    ) -> None:
        self._router = router
        self._run_id = run_id
        self._run_ctx = run_ctx
        self._wanted: Eligibility | None = None  # the run's device filter, parsed on first use
        self._on_event = on_event

    def node_ids(self) -> list[int]:
        """The connected nodes this run may sample: those whose last report matches its filter."""
        if self._wanted is None:
            self._wanted = Eligibility.from_run_config(json.loads(self._run_ctx.run_config_json or "{}"))
        if not self._wanted.active:
            return self._router.node_ids()
        return sorted(s.node_id for s in self._router.sessions() if self._wanted.matches(s.properties))

    def push(self, items: list[tuple[str, int, Payload]], round: int, announcement: bytes) -> None:
        ctx = fleet_pb2.RunContext()
        ctx.CopyFrom(self._run_ctx)
        ctx.round, ctx.announcement = round, announcement
        self._router.push(ctx, items)

    def wait(self, message_ids: list[str], timeout: float | None, first: bool) -> dict[str, Outcome]:
        return self._router.wait(message_ids, timeout, first)

    def event(self, kind: str, data: dict[str, Any]) -> None:
        self._on_event(self._run_id, kind, data, self._run_ctx)


def _as_int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _terminate(proc: BaseProcess) -> None:
    proc.terminate()
    proc.join(timeout=5)
    if proc.is_alive():
        proc.kill()
        proc.join(timeout=5)
