"""Resolve task references and keep loaded datasets warm.

The edge daemon and Ray actors are long-lived: loading (and preparing) a dataset on every
message would dominate a round, so datasets are cached per (task, seed) for the process.
"""

from __future__ import annotations

import dataclasses
import functools
import threading

from fedge.apps import load_object
from fedge.errors import FedgeError
from fedge.tasks import charlm, digits, mnist5k
from fedge.tasks.base import Task
from fedge.tasks.nets import build, check_name
from fedge.tasks.training import Data

BUILTIN_TASKS: dict[str, Task] = {t.name: t for t in (digits.TASK, mnist5k.TASK, charlm.TASK)}

_tasks: dict[tuple[str, str | None, str], Task] = {}
_data: dict[tuple[object, ...], tuple[Data, Data]] = {}
_lock = threading.Lock()


def load_task(ref: str, app_dir: str | None = None, model: str = "") -> Task:
    """Return the built-in task ``ref`` or the user task at ``package.module:attr``.

    The one way every component names a task: the reference (not ``Task.name``) is what run
    configs, ``summary.json`` and exports record. The module is found through ``app_dir`` (made
    importable by :func:`fedge.apps.add_app_dir`) or the installed environment. The attribute may
    be a ``Task`` or a zero-argument callable returning one. ``model`` names a
    built-in edge network (:mod:`fedge.tasks.nets`) that replaces the task's own model.
    """
    key = (ref, app_dir, model)
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
    _tasks[key] = with_model(task, model) if model else task
    return _tasks[key]


def with_model(task: Task, model: str) -> Task:
    """``task`` with its model replaced by the edge network ``model``, sized to its images.

    The name stays the task's: data, data adapters and cached splits are the task's own.
    """
    check_name(model)
    if len(task.input_shape) != 3:
        raise FedgeError(
            f"model '{model}' needs image input (channels, height, width); "
            f"task '{task.name}' has input shape {task.input_shape}",
            "use it with an image task such as digits or mnist5k",
        )
    channels, height, width = task.input_shape
    return dataclasses.replace(
        task, build_model=functools.partial(build, model, channels, task.num_classes, min(height, width))
    )


def task_data(task: Task, seed: int) -> tuple[Data, Data]:
    """``task.load_data(seed)``, computed once per process (callers must not mutate the arrays)."""
    key = (task.name, task.load_data, seed)
    with _lock:
        if key not in _data:
            _data[key] = task.load_data(seed)
        return _data[key]
