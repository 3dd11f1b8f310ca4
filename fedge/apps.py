"""Load Flower apps and tasks named by reference ("package.module:attr")."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

from fedge.errors import FedgeError


def _split(ref: str, app_dir: str | None, kind: str) -> tuple[str, str]:
    """``(module, attr)`` of a reference, with ``app_dir`` put first on ``sys.path``."""
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise FedgeError(
            f"invalid {kind} reference '{ref}'", "use package.module:attr, e.g. fedge.client.app:app"
        )
    if app_dir:
        path = str(Path(app_dir).resolve())
        if path not in sys.path:
            sys.path.insert(0, path)
    return module_name, attr


def check_importable(ref: str, app_dir: str | None = None, kind: str = "object") -> None:
    """Fail now, with a hint, if ``ref``'s module cannot be found — without importing it.

    For processes that import the app later (a daemon loads torch only when work arrives).
    """
    module_name, _ = _split(ref, app_dir, kind)
    try:
        found = importlib.util.find_spec(module_name) is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        raise FedgeError(
            f"cannot import module '{module_name}' for {kind} '{ref}': no module named '{module_name}'",
            "check the reference and pass --app-dir with the directory that contains the package",
        )


def load_object(ref: str, app_dir: str | None = None, kind: str = "object") -> Any:
    """Import ``package.module:attr`` (``app_dir`` first on ``sys.path``), or fail with a hint."""
    module_name, attr = _split(ref, app_dir, kind)
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
