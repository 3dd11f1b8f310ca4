"""The one error type of fedge.

Every failure a user can cause or fix (bad flag, malformed config, unreachable server, port in
use) is raised as a ``FedgeError`` carrying a hint, so the CLI can print two lines and exit 2
instead of a traceback.
"""

from __future__ import annotations


class FedgeError(Exception):
    """An actionable failure: ``message`` says what went wrong, ``hint`` how to fix it."""

    #: Process exit code when this reaches the CLI: 2 = bad input; subclasses may differ.
    exit_code = 2

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} (hint: {self.hint})"
