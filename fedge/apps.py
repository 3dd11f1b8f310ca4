"""Load Flower apps and tasks named by reference ("package.module:attr")."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

from fedge.errors import FedgeError

IMPORT_HINT = (
    "pass --app-dir with the directory that contains the package, or install it (pip install) "
    "in the environment of this process"
)
DEVICE_HINT = (
    "a task's or app's code must be on every device: install its package there (pip install), "
    "or copy it and start the daemon with `fedge client start --app-dir DIR`"
)


def add_app_dir(app_dir: str | None) -> None:
    """Make ``app_dir`` importable by this process and the processes it spawns.

    Appended, not prepended: an app directory (often the current one) must never shadow fedge or
    its dependencies, e.g. when it holds a checkout with its own ``fedge/`` folder. Spawned
    children (run workers, Ray actors, which get ``sys.path`` as ``PYTHONPATH``) inherit it.
    """
    if app_dir:
        path = str(Path(app_dir).expanduser().resolve())
        if path not in sys.path:
            sys.path.append(path)


def _split(ref: str, app_dir: str | None, kind: str) -> tuple[str, str]:
    """``(module, attr)`` of a reference, with ``app_dir`` made importable."""
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise FedgeError(
            f"invalid {kind} reference '{ref}'", "use package.module:attr, e.g. fedge.client.app:app"
        )
    add_app_dir(app_dir)
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
            f"check the reference; {IMPORT_HINT}",
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
            f"check the reference; {IMPORT_HINT}",
        ) from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise FedgeError(
                f"module '{module_name}' has no attribute '{attr}'", f"check the {kind} reference '{ref}'"
            )
        obj = getattr(obj, part)
    return obj
