"""The export job the server runs in its exporter process (see :mod:`fedge.server.exports`).

A plain function with picklable arguments and result: the server process never imports torch,
and an export that crashes takes down only the exporter process.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import traceback
from pathlib import Path

log = logging.getLogger("fedge.export")


def exit_with_parent(parent_pid: int, interval: float = 1.0) -> None:
    """Exporter-process initializer: exit when the server process is gone (even after SIGKILL).

    A pool worker never sees EOF on its task queue (it holds both ends of the pipe), and
    PR_SET_PDEATHSIG follows the *thread* that started the worker (a run's link thread, which
    ends with the run), so the worker watches its parent pid instead.
    """

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(interval)
        os._exit(0)

    threading.Thread(target=watch, name="fedge-exporter-watchdog", daemon=True).start()


def run_export(
    run_dir: str, round: int | None, int8: bool, pki_dir: str, exporter: str = "torchscript"
) -> dict[str, object]:
    """Export and sign.

    Returns ``{"ok": True, "dir", "version", "round"}`` or ``{"ok": False, "error", "hint"}``: a
    result, never an exception, because a FedgeError's hint does not survive pickling.
    """
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from fedge.errors import FedgeError
    from fedge.export.bundle import export_bundle

    try:
        import torch

        torch.set_num_threads(1)  # the server shares its cores with run workers
        key = None
        if pki_dir:
            from fedge.security import Pki

            key = Pki.open(pki_dir).signing_key()
        result = export_bundle(Path(run_dir), round, None, int8, key, exporter=exporter)
        return {
            "ok": True,
            "dir": str(result.bundle_dir),
            "version": result.version,
            "round": result.manifest.round,
        }
    except FedgeError as exc:
        return {"ok": False, "error": exc.message, "hint": exc.hint}
    except Exception as exc:  # the server must learn how the export ended, whatever happened
        log.debug("export of %s failed:\n%s", run_dir, traceback.format_exc())
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}", "hint": "see the server log (-v)"}
