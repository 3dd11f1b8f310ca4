"""Logging setup: quiet by default, ``-v`` for info, ``-vv`` for debug.

Log records carry structured extras (``node``, ``run``, ``round``) that the formatter appends as
``key=value`` so lines stay grep-able.
"""

from __future__ import annotations

import logging
import sys
from typing import Annotated

import typer

#: ``-v``/``-vv`` of every command that runs something: one counter, one meaning everywhere.
VERBOSE_OPT = Annotated[
    int,
    typer.Option(
        "--verbose",
        "-v",
        count=True,
        help="-v: info (what each component does), -vv: debug; on the console and in the logs.",
    ),
]

_STD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class _KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        extras = {k: v for k, v in vars(record).items() if k not in _STD}
        return base + "".join(f" {k}={v}" for k, v in extras.items())


def setup(verbosity: int = 0) -> None:
    """Configure the ``fedge`` logger, and Flower's: its INFO lines are the progress of the Flower
    app being run (the compat layer's rounds, the app's own ``log(INFO, …)``), so they show by
    default; colour codes only on a terminal, never inside a log file.
    """
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_KeyValueFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("fedge")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    from flwr.common.logger import update_console_handler

    flwr_level = logging.DEBUG if verbosity >= 2 else logging.INFO
    logging.getLogger("flwr").setLevel(flwr_level)
    update_console_handler(level=flwr_level, colored=sys.stderr.isatty())
