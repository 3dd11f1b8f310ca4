"""A run's worker process: executes one ServerApp against a FedgeGrid.

One process per run, because flwr 1.41's ``Message`` reads process-global task identity
(``TaskIdentity``): two runs in one process would stamp each other's run ids. The worker talks
to the server process over a pipe (:class:`fedge.server.pipe.PipeLink`); it never touches sockets
or SQLite.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from fedge.errors import FedgeError
from fedge.server.events import EventKind
from fedge.server.pipe import PipeLink

log = logging.getLogger("fedge.server.worker")


def run_worker(
    conn: Connection,
    run_id: int,
    server_app_ref: str,
    app_dir: str,
    run_config: dict[str, Any],
    node_wait_timeout: float,
    verbosity: int,
    pki_dir: str = "",
    device: str = "cpu",
) -> None:
    """Process entry point: run the ServerApp, report how it ended, exit."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    # Compute threads are set by the parent (fedge.procenv.tune_spawned_children): numpy is
    # already imported here, too late for OpenBLAS to read them.
    from fedge import logs

    logs.setup(verbosity)
    link = PipeLink(conn)
    try:
        _execute(link, run_id, server_app_ref, app_dir, run_config, node_wait_timeout, pki_dir, device)
        link.event(EventKind.RUN_FINISHED, {})
    except FedgeError as exc:
        link.event(EventKind.RUN_FAILED, {"error": exc.message, "hint": exc.hint})
    except BaseException as exc:  # the worker must always say how the run ended
        log.debug("run %s failed:\n%s", run_id, traceback.format_exc())
        link.event(
            EventKind.RUN_FAILED, {"error": f"{type(exc).__name__}: {exc}", "hint": "see the server log (-v)"}
        )
    finally:
        link.close()


def _execute(
    link: PipeLink,
    run_id: int,
    ref: str,
    app_dir: str,
    run_config: dict[str, Any],
    node_wait_timeout: float,
    pki_dir: str,
    device: str,
) -> None:
    from flwr.app import Context, RecordDict
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.serverapp import ServerApp
    from flwr.supercore.run import Run
    from flwr.supercore.task_identity import TaskIdentity

    from fedge.apps import load_object
    from fedge.chunks import fresh_spool
    from fedge.server.audit import AuditLog
    from fedge.server.bounds import bounded_screen
    from fedge.server.control import DEFAULT_SERVER_APP
    from fedge.server.grid import FedgeGrid
    from fedge.server.progress import Progress
    from fedge.server.screening import max_norm_from, mirror_from
    from fedge.server.sealing import ReplyOpener

    TaskIdentity.task_id = 1
    TaskIdentity.run_id = run_id
    TaskIdentity.node_id = SUPERLINK_NODE_ID
    server_app = load_object(ref, app_dir, "ServerApp")
    if not isinstance(server_app, ServerApp):
        raise FedgeError(
            f"'{ref}' is a {type(server_app).__name__}, not a Flower ServerApp",
            "point --server-app at a flwr.serverapp.ServerApp instance",
        )
    run = Run.create_empty(run_id)
    run.override_config = dict(run_config)
    run_dir = Path(str(run_config.get("run-dir") or "."))
    audit = AuditLog(run_dir / "audit.jsonl")
    own_app = ref == DEFAULT_SERVER_APP
    # fedge's own app records its rounds itself; any other app gets its rounds from the grid.
    rounds = None if own_app else RoundsLog(run_dir, link.event, run_config.get("num-server-rounds"))
    progress = Progress(rounds.add if rounds else None)
    screen = bounded_screen(
        run_id,
        _reported(audit.write, link),
        run_config,
        max_norm_from(run_config),
        own_app,
        mirror=mirror_from(run_config, own_app=own_app),
    )
    grid = FedgeGrid(
        link,
        run,
        node_wait_timeout=float(run_config.get("node-wait-timeout", node_wait_timeout)),
        screen=screen,
        opener=ReplyOpener(run_id, Path(pki_dir)) if pki_dir else None,
        reporter=link.event,
        progress=progress,
        # Instructions are written here and read by the server process as it sends (issue 16).
        spool=fresh_spool(run_dir / "spool"),
        eligibility=_filter_of(run_config),
        # Secret sampling (`--secret-sampling`): node order from the OS's CSPRNG, so the sample is
        # uniform and unpredictable, which the DP accountant's amplification by sampling assumes.
        sampler=secrets.SystemRandom() if run_config.get("secret-sampling") is True else None,
    )
    context = Context(
        run_id=run_id,
        node_id=SUPERLINK_NODE_ID,
        node_config={"device": device},  # the server's --device, read by fedge's ServerApp
        state=RecordDict(),
        run_config=dict(run_config),
    )
    link.event(EventKind.RUN_STARTED, {})
    hint = f"see {run_dir / 'audit.jsonl'} and the daemon logs"
    try:
        server_app(grid, context)
    except FedgeError:  # fedge's own app says what went wrong, with its own hint
        raise
    except Exception as exc:  # another app's crash: what went wrong before it comes first
        verdict = progress.verdict()
        if verdict:
            raise FedgeError(f"{verdict}; then the app failed: {type(exc).__name__}: {exc}", hint) from exc
        raise
    finally:
        progress.close()
        if rounds is not None:
            rounds.finish(f"run {run_id}")
    verdict = progress.verdict()
    if verdict:  # the app may carry on regardless; the run did not work, and must say so
        raise FedgeError(verdict, hint)


class RoundsLog:
    """``metrics.jsonl``, ``round-finished`` events and plots from a run's :class:`Progress` rows."""

    def __init__(self, run_dir: Path, report: Callable[[str, dict[str, Any]], None], num_rounds: Any) -> None:
        self._run_dir = run_dir
        self._report = report
        self._num_rounds = int(num_rounds) if isinstance(num_rounds, int) else 0
        self._rows: list[dict[str, Any]] = []

    def add(self, row: dict[str, Any]) -> None:
        """A completed round: written to ``metrics.jsonl`` and reported."""
        from fedge import atomic

        self._rows.append(row)
        text = "".join(json.dumps(r) + "\n" for r in self._rows)
        atomic.write_text(self._run_dir / "metrics.jsonl", text)
        metrics = {k: v for k, v in row.items() if k != "round"}
        self._report(
            EventKind.ROUND_FINISHED,
            {"round": row["round"], "num_rounds": self._num_rounds, "metrics": metrics},
        )

    def finish(self, title: str) -> None:
        """The plots of the rows (never fails the run: they can be redrawn by `fedge run plot`)."""
        from fedge.server.plots import write_plots

        if not self._rows:
            return
        try:
            write_plots(self._run_dir, self._rows, title)
        except (FedgeError, OSError) as exc:
            log.warning("no plots for %s (%s)", title, exc)


def _filter_of(run_config: dict[str, Any]) -> str:
    """The run's device filter as flags ("" without one); the server process applies it."""
    from fedge.eligibility import Eligibility

    wanted = Eligibility.from_run_config(run_config)
    return wanted.describe() if wanted.active else ""


def _reported(audit: Callable[..., None], link: PipeLink) -> Callable[..., None]:
    """The screen's audit writer, also reporting each rejected update to the server process.

    Screening runs here, in the worker; the server process (``fedge run logs``, the
    ``fedge_server_updates_rejected_total`` metric) learns of a rejection only from this event.
    """

    def write(event: str, **fields: Any) -> None:
        audit(event, **fields)
        if event == EventKind.UPDATE_REJECTED:
            keep = ("node_id", "reason", "message_type")
            data = {k: fields[k] for k in keep if k in fields}
            link.event(event, {**data, "detail": str(fields.get("detail", ""))[:200]})

    return write
