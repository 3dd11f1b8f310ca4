"""Resolve task references and keep loaded datasets warm.

The edge daemon and Ray actors are long-lived: loading (and preparing) a dataset on every
message would dominate a round, so datasets are cached per (task, seed) for the process.
"""

from __future__ import annotations

import threading

from fedge.apps import load_object
from fedge.errors import FedgeError
from fedge.tasks import digits, mnist5k
from fedge.tasks.base import Task
from fedge.tasks.training import Data

BUILTIN_TASKS: dict[str, Task] = {digits.TASK.name: digits.TASK, mnist5k.TASK.name: mnist5k.TASK}

_tasks: dict[tuple[str, str | None], Task] = {}
_data: dict[tuple[object, ...], tuple[Data, Data]] = {}
_lock = threading.Lock()


def load_task(ref: str, app_dir: str | None = None) -> Task:
    """Return the built-in task ``ref`` or the user task at ``package.module:attr``.

    The one way every component names a task: the reference (not ``Task.name``) is what run
    configs, ``summary.json`` and exports record. The module is found through ``app_dir`` (made
    importable by :func:`fedge.apps.add_app_dir`) or the installed environment. The attribute may
    be a ``Task`` or a zero-argument callable returning one.
    """
    key = (ref, app_dir)
    if key in _tasks:
        return _tasks[key]
    if ref in BUILTIN_TASKS:
        task = BUILTIN_TASKS[ref]
    elif ":" in ref:
        obj = load_object(ref, app_dir, kind="task")
        task = obj() if callable(obj) and not isinstance(obj, Task) else obj
        if not isinstance(task, Task):
            raise FedgeError(
                f"task reference '{ref}' resolved to {type(task).__name__}, not a fedge Task",
                "point it at a fedge.tasks.Task instance or a zero-argument function returning one",
            )
    else:
        raise FedgeError(
            f"unknown task '{ref}'",
            f"choose a built-in task ({', '.join(BUILTIN_TASKS)}) "
            "or reference your own as package.module:attr",
        )
    _tasks[key] = task
    return task


def task_data(task: Task, seed: int) -> tuple[Data, Data]:
    """``task.load_data(seed)``, computed once per process (callers must not mutate the arrays)."""
    key = (task.name, task.load_data, seed)
    with _lock:
        if key not in _data:
            _data[key] = task.load_data(seed)
        return _data[key]
