"""What this device reports about itself: its properties and its operator's dynamic signals.

Static properties (accelerator, cores, memory, the operator's ``tags``) are read once; free disk
and the signals (:data:`fedge.eligibility.SIGNALS`) before every heartbeat and every train task,
so a device unplugged between two heartbeats still declines the next task itself.

The signal provider is the operator's, because only the device's platform knows how to read a
battery or a metered link. The contract, kept small so a one-line script can meet it:

* ``signals_file = "/run/fedge/signals.json"``: a JSON object such as
  ``{"charging": true, "idle": false, "unmetered": "unknown"}``, read each time;
* ``signals_command = "/usr/local/bin/fedge-signals"``: run (no shell, 5 s limit), printing that
  object on stdout.

Values are ``true``/``false`` or ``"yes"``/``"no"``/``"unknown"``; a missing key is ``unknown``.
With neither setting, or when the provider fails (logged, rate-limited), every signal is
``unknown``: the safe side, since a run that requires a signal then never uses this device.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedge.config import EdgeConfig
from fedge.eligibility import NO, SIGNALS, UNKNOWN, YES, DeviceProperties, Eligibility, check_tags
from fedge.errors import FedgeError

log = logging.getLogger("fedge.client.properties")

COMMAND_TIMEOUT = 5.0
WARN_EVERY = 60.0  # a broken provider is logged at most this often


def _memory_bytes() -> int:
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 0


def _signal(value: Any) -> str:
    if value is True or value == YES:
        return YES
    if value is False or value == NO:
        return NO
    return UNKNOWN


class PropertyReader:
    """Reads this device's :class:`DeviceProperties` (fresh signals and free disk each call)."""

    def __init__(self, cfg: EdgeConfig) -> None:
        self._cfg = cfg
        self._tags = check_tags(cfg.tags, "the daemon's tags")
        self._cores = os.cpu_count() or 0
        self._memory = _memory_bytes()
        self._warned_at = -WARN_EVERY

    def current(self) -> DeviceProperties:
        """The device now."""
        try:
            free = shutil.disk_usage(self._cfg.state_dir).free
        except OSError:
            free = 0
        return DeviceProperties(
            accelerator=self._cfg.device,
            cores=self._cores,
            memory_bytes=self._memory,
            free_disk_bytes=free,
            tags=self._tags,
            signals=self.signals(),
        )

    def signals(self) -> dict[str, str]:
        """Each of :data:`SIGNALS` as the provider says now (``unknown`` without one)."""
        raw: Any = {}
        try:
            if self._cfg.signals_file:
                raw = json.loads(Path(self._cfg.signals_file).read_text(encoding="utf-8"))
            elif self._cfg.signals_command:
                out = subprocess.run(
                    shlex.split(self._cfg.signals_command),
                    capture_output=True,
                    text=True,
                    timeout=COMMAND_TIMEOUT,
                    check=True,
                )
                raw = json.loads(out.stdout)
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            self._warn(f"signal provider failed ({type(exc).__name__}: {exc}); signals are unknown")
            raw = {}
        if not isinstance(raw, dict):
            self._warn("signal provider gave no JSON object; signals are unknown")
            raw = {}
        return {name: _signal(raw.get(name)) for name in SIGNALS}

    def _warn(self, text: str) -> None:
        now = time.monotonic()
        if now - self._warned_at >= WARN_EVERY:
            self._warned_at = now
            log.warning(text)


def decline_reason(reader: PropertyReader, message_type: str, run_config: Mapping[str, Any]) -> str:
    """Why this device declines a task now ("" to take it): only train tasks of filtered runs.

    Evaluation and secure-aggregation setup are cheap and keep a round's cohort whole; training
    is what drains a battery or a metered link, so that is where fresh signals are checked.
    """
    if message_type.split(".")[0] != "train":
        return ""
    try:
        wanted = Eligibility.from_run_config(run_config)
    except FedgeError:  # the server validated it; a device never fails a task over it
        return ""
    problems = wanted.problems(reader.current()) if wanted.active else []
    return f"declined: {'; '.join(problems)} (run filter {wanted.describe()})" if problems else ""
