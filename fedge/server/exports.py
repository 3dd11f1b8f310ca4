"""Automatic export at the end of a run (and every k rounds), run by the server process.

Run config keys (any run of fedge's ServerApp; other apps write no checkpoints and are skipped):

- ``export``: ``"final"`` (default) — export the final round when the run succeeds;
  ``"every:k"`` — also every k-th round while the run goes on; ``"off"``.
- ``export-int8``: ``true`` to also quantize (and serve the int8 model when it keeps accuracy).

Why here and not in the run worker: the bundle is signed with the server's key, published to the
fleet by the server, and must exist before the run is reported finished — a run that ends
"finished" has its model on the way to the devices. The export itself runs in one long-lived
exporter process (spawned on first use, torch stays warm there): the server process never
imports torch, and an export that crashes costs only that process. The final export happens
before the run's ``run-finished`` event is recorded (a ``model-exported`` or ``export-failed``
event comes first); a failed export never fails the run.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from fedge.errors import FedgeError
from fedge.protos.v1 import fleet_pb2
from fedge.server.events import EventKind
from fedge.server.models import ModelHub

log = logging.getLogger("fedge.server.exports")

EXPORT_TIMEOUT = 600.0
Record = Callable[[int, str, dict[str, Any]], None]


def parse_export(spec: object) -> tuple[str, int]:
    """``"final"`` → ("final", 0), ``"every:3"`` → ("every", 3), ``"off"`` → ("off", 0)."""
    text = str(spec).strip().lower()
    if text in ("final", "off"):
        return text, 0
    kind, _, k = text.partition(":")
    if kind == "every" and k.isdigit() and int(k) >= 1:
        return "every", int(k)
    raise FedgeError(f"invalid export setting {spec!r}", 'use export="final", "every:K" (K ≥ 1) or "off"')


def check_config(run_config: dict[str, Any]) -> None:
    """Reject a bad ``export``/``export-int8`` before the run starts."""
    parse_export(run_config.get("export", "final"))
    if not isinstance(run_config.get("export-int8", False), bool):
        raise FedgeError("export-int8 must be true or false", "pass --set export-int8=true")


class RunExports:
    """Decides when a run's checkpoints are exported, runs the exports, publishes the bundles."""

    def __init__(self, hub: ModelHub, pki_dir: str) -> None:
        self._hub = hub
        self._pki_dir = pki_dir
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()
        self._configs: dict[int, dict[str, Any]] = {}
        self._closed = False

    def on_event(
        self, run_id: int, kind: str, data: dict[str, Any], run: fleet_pb2.RunContext, record: Record
    ) -> None:
        """Called by the run manager for each worker event, before it is recorded.

        ``round-finished`` of an every-k round starts an export in the background;
        ``run-finished`` exports the final round and waits for it (seconds), so the bundle is
        published before the run is reported finished.
        """
        if kind not in (EventKind.ROUND_FINISHED, EventKind.RUN_FINISHED):
            return
        config = self._configs.get(run_id)
        if config is None:
            config = self._configs[run_id] = json.loads(run.run_config_json or "{}")
        try:
            mode, every = parse_export(config.get("export", "final"))
        except FedgeError:
            mode, every = "off", 0
        run_dir = config.get("run-dir")
        if mode == "off" or not run_dir:
            return
        int8 = bool(config.get("export-int8", False))
        if kind == EventKind.ROUND_FINISHED:
            rnd, total = int(data.get("round", 0) or 0), int(data.get("num_rounds", 0) or 0)
            if mode == "every" and rnd > 0 and rnd % every == 0 and rnd != total:
                future = self._submit(run_dir, rnd, int8)
                if future is not None:
                    future.add_done_callback(lambda f: self._finish(run_id, f, record))
            return
        self._configs.pop(run_id, None)
        if not (Path(run_dir) / "summary.json").is_file():
            log.info("run %s wrote no summary/checkpoints; nothing to export", run_id)
            return
        future = self._submit(run_dir, None, int8)
        if future is None:
            if not self._closed:
                record(
                    run_id,
                    EventKind.EXPORT_FAILED,
                    {"error": "the exporter process could not start", "hint": "-v"},
                )
            return
        try:
            future.result(timeout=EXPORT_TIMEOUT)
        except Exception:  # timeout or a dead exporter: reported by _finish below
            pass
        self._finish(run_id, future, record)

    def _submit(self, run_dir: str, round: int | None, int8: bool) -> Future[dict[str, Any]] | None:
        """Queue an export on the exporter process (started on first use, restarted once if dead)."""
        from fedge.export.job import exit_with_parent, run_export

        for _attempt in range(2):
            with self._lock:
                if self._closed:
                    return None
                if self._pool is None:
                    self._pool = ProcessPoolExecutor(
                        max_workers=1,
                        mp_context=mp.get_context("spawn"),
                        initializer=exit_with_parent,
                        initargs=(os.getpid(),),
                    )
                pool = self._pool
            try:
                return pool.submit(run_export, run_dir, round, int8, self._pki_dir)
            except BrokenProcessPool:  # the exporter died earlier: start a fresh one
                with self._lock:
                    if self._pool is pool:
                        self._pool = None
            except RuntimeError as exc:  # e.g. cannot start a process at all
                log.warning("cannot start the model exporter: %s", exc)
                return None
        return None

    def _finish(self, run_id: int, future: Future[dict[str, Any]], record: Record) -> None:
        if self._closed:  # server exit: the store is closing, nothing is recorded any more
            return
        try:
            result = future.result(timeout=0)
        except Exception as exc:
            result = {"ok": False, "error": f"exporter failed: {type(exc).__name__}: {exc}", "hint": "see -v"}
            with self._lock:
                self._pool = None if isinstance(exc, BrokenProcessPool) else self._pool
        if result.get("ok"):
            try:
                pub = self._hub.publish(str(result["dir"]))
            except FedgeError as exc:
                result = {
                    "ok": False,
                    "error": f"exported bundle failed verification: {exc.message}",
                    "hint": exc.hint,
                }
            else:
                record(
                    run_id,
                    EventKind.MODEL_EXPORTED,
                    {"version": pub.version, "round": pub.round, "dir": result["dir"]},
                )
                return
        log.warning("run %s: model export failed: %s", run_id, result.get("error"))
        record(
            run_id,
            EventKind.EXPORT_FAILED,
            {"error": result.get("error", ""), "hint": result.get("hint", "")},
        )

    def shutdown(self) -> None:
        """Server exit: stop the exporter process (a running export is abandoned)."""
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            for proc in list(getattr(pool, "_processes", {}).values()):
                proc.terminate()
            pool.shutdown(wait=False, cancel_futures=True)
