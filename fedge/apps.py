"""Load Flower apps and tasks named by reference ("package.module:attr")."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

from fedge.errors import FedgeError


def load_object(ref: str, app_dir: str | None = None, kind: str = "object") -> Any:
    """Import ``package.module:attr`` (``app_dir`` first on ``sys.path``), or fail with a hint."""
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise FedgeError(
            f"invalid {kind} reference '{ref}'", "use package.module:attr, e.g. fedge.client.app:app"
        )
    if app_dir:
        path = str(Path(app_dir).resolve())
        if path not in sys.path:
            sys.path.insert(0, path)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and not (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise FedgeError(
                f"importing '{module_name}' for {kind} '{ref}' failed: {exc}",
                f"install the missing package '{exc.name}' where this process runs",
            ) from None
        raise FedgeError(
            f"cannot import module '{module_name}' for {kind} '{ref}': {exc}",
            "check the reference and pass --app-dir with the directory that contains the package",
        ) from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise FedgeError(
                f"module '{module_name}' has no attribute '{attr}'", f"check the {kind} reference '{ref}'"
            )
        obj = getattr(obj, part)
    return obj
