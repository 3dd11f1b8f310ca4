"""A Flower app's own run config: ``[tool.flwr.app.config]`` in its ``pyproject.toml``.

``flwr run`` starts every run from that table (nested tables flattened to dotted keys, as
Flower's ``flatten_dict`` does) and lets ``--run-config`` override it. fedge does the same with
``--set``, so an app written for ``flwr run`` finds its own keys without repeating each one.
"""

from __future__ import annotations

import importlib.util
import sys
import tomllib
from pathlib import Path
from typing import Any

from flwr.common.config import flatten_dict

from fedge.errors import FedgeError

PROJECT_FILE = "pyproject.toml"


def find_project(server_app_ref: str, app_dir: str | None) -> Path | None:
    """The ``pyproject.toml`` of the app: in ``app_dir``, else beside the app's top-level package.

    Flower's layout is ``<project>/pyproject.toml`` next to ``<project>/<package>/``; ``app_dir``
    is that project directory when given.
    """
    if app_dir and (Path(app_dir) / PROJECT_FILE).is_file():
        return Path(app_dir) / PROJECT_FILE
    package = server_app_ref.partition(":")[0].split(".")[0]
    if not package:
        return None
    search = [str(Path(app_dir).resolve())] if app_dir else []
    try:
        spec = importlib.util.find_spec(package) if not search else _find_in(package, search)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    origin = Path(spec.origin)
    root = origin.parent.parent if origin.name == "__init__.py" else origin.parent
    candidate = root / PROJECT_FILE
    return candidate if candidate.is_file() else None


def _find_in(package: str, paths: list[str]) -> Any:
    """``find_spec`` with ``paths`` searched first (as the run worker's ``sys.path`` will be)."""
    saved = list(sys.path)
    sys.path[:0] = [p for p in paths if p not in sys.path]
    try:
        return importlib.util.find_spec(package)
    finally:
        sys.path[:] = saved


def app_config(project: Path | None) -> dict[str, Any]:
    """``[tool.flwr.app.config]`` of ``project`` flattened (``{}`` when there is none)."""
    if project is None:
        return {}
    try:
        data = tomllib.loads(project.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise FedgeError(f"cannot read the app's {project}: {exc}", "fix the file's TOML syntax") from None
    table = data.get("tool", {}).get("flwr", {}).get("app", {}).get("config", {})
    if not isinstance(table, dict):
        raise FedgeError(f"[tool.flwr.app.config] in {project} is not a table", "write key = value lines")
    try:
        return dict(flatten_dict(table))
    except ValueError as exc:
        raise FedgeError(
            f"[tool.flwr.app.config] in {project}: {exc}", "use int, float, bool or str values"
        ) from None
