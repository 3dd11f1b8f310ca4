"""The round loop is explicit: no strategy method patched at run time, no attribute fallbacks.

fedge's ServerApp calls Flower's strategy hooks itself (``fedge.strategies.loop``) and hands the
train exchange and the recorder to it as parameters. Patching a strategy's methods
(``type: ignore[method-assign]``) or forwarding unknown attributes through ``__getattr__`` would
bring back the hidden control flow this replaced, so neither may appear in the server or the
strategies (checked on the source tree, so that a new module cannot slip past).
"""

from __future__ import annotations

import ast
from pathlib import Path

import fedge

ROOT = Path(fedge.__file__).parent
PACKAGES = ("server", "strategies")


def _sources() -> list[Path]:
    files = [f for pkg in PACKAGES for f in sorted((ROOT / pkg).rglob("*.py"))]
    assert len(files) > 10  # the scan really sees the packages
    return files


def test_no_strategy_method_is_patched_in_server_or_strategies() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in _sources()
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if "method-assign" in line
    ]
    assert offenders == []


def test_nothing_in_server_or_strategies_delegates_through_getattr() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for path in _sources()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.name in ("__getattr__", "__getattribute__")
    ]
    assert offenders == []
