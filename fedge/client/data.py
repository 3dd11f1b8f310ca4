"""Private data adapters: turn a node's local data into ``(x, y)`` for its task.

A node's data never leaves the device, so this is the only place it is read. Where it comes
from is decided by the node config (``[client] node_config`` in fedge, or Flower's engines):

- ``data-path``: a ``.npz`` file with arrays ``x`` (raw features, flat or shaped) and ``y``
  (integer labels), or a ``.csv`` file with a header row, a label column (``label-column``,
  default ``label``) and one column per raw feature. Features go through ``task.prepare``, so
  files hold values in the task's raw scale (0..16 for ``digits``, 0..255 for ``mnist5k``).
- ``partition-id`` + ``num-partitions`` (set by Flower's simulation engines): partition
  ``partition-id`` of the task's built-in training split, split by the run's ``partition`` spec
  and ``seed``. Every simulated node derives the same partitioning independently.

Loaded data is cached per source, because the daemon handles many messages per run.
"""

from __future__ import annotations

import csv
import io
import threading
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedge import atomic
from fedge.errors import FedgeError
from fedge.tasks import Arrays, Task, partition, task_data

DATA_FILE = "data.npz"
_CACHE_SIZE = 8
_cache: OrderedDict[tuple[object, ...], Arrays] = OrderedDict()
_lock = threading.Lock()


def load_local(task: Task, node_config: Mapping[str, Any], config: Mapping[str, Any]) -> Arrays:
    """Return this node's private ``(x, y)``, prepared for ``task`` (see the module docstring)."""
    if "data-path" in node_config:
        path = Path(str(node_config["data-path"])).expanduser()
        label_column = str(node_config.get("label-column", "label"))
        if not path.is_file():
            raise FedgeError(
                f"data file not found: {path}",
                "set node_config data-path to an existing .npz or .csv file on this device",
            )
        stat = path.stat()
        key: tuple[object, ...] = (
            "file",
            task.name,
            str(path.resolve()),
            stat.st_mtime_ns,
            stat.st_size,
            label_column,
        )
        return _cached(key, lambda: _read_file(task, path, label_column))
    if "partition-id" in node_config and "num-partitions" in node_config:
        pid = _as_int(node_config["partition-id"], "partition-id")
        num = _as_int(node_config["num-partitions"], "num-partitions")
        if not 0 <= pid < num:
            raise FedgeError(
                f"partition-id {pid} is outside 0..{num - 1}",
                "set partition-id to a value below num-partitions",
            )
        spec, seed = str(config.get("partition", "iid")), _as_int(config.get("seed", 0), "seed")
        key = ("partition", task.name, task.load_data, seed, spec, pid, num)
        return _cached(key, lambda: _partition_of_train(task, pid, num, spec, seed))
    raise FedgeError(
        "this node has no data configured",
        "set node_config data-path (an .npz or .csv file), or partition-id and num-partitions "
        "to use a partition of the task's built-in dataset",
    )


def split_local(x: np.ndarray, y: np.ndarray, seed: int, eval_fraction: float = 0.2) -> tuple[Arrays, Arrays]:
    """Deterministically hold out ``eval_fraction`` of local data for federated evaluation.

    The split depends only on ``seed`` (not the round), so a node never trains on its
    evaluation samples. Nodes with fewer than 5 samples cannot spare any: they train and
    evaluate on all of them.
    """
    if len(x) < 5:
        return (x, y), (x, y)
    order = np.random.default_rng(seed).permutation(len(x))
    cut = len(x) - max(1, round(eval_fraction * len(x)))
    train_idx, eval_idx = np.sort(order[:cut]), np.sort(order[cut:])
    return (x[train_idx], y[train_idx]), (x[eval_idx], y[eval_idx])


def write_partitions(
    task: Task, num_partitions: int, spec: str, seed: int, out_dirs: Sequence[str | Path]
) -> list[Path]:
    """Write partition ``i`` of the task's training split to ``out_dirs[i]/data.npz``.

    Gives each simulated daemon its own private data file in the same format a real device
    would use; features are written in the task's raw scale so ``load_local`` reads them back
    exactly as it reads user files.
    """
    if len(out_dirs) != num_partitions:
        raise FedgeError(
            f"{num_partitions} partitions need {num_partitions} output directories, got {len(out_dirs)}",
            "pass one directory per client",
        )
    (x, y), _ = task_data(task, seed)
    paths = []
    for idx, out_dir in zip(partition(y, num_partitions, spec, seed), out_dirs, strict=True):
        buf = io.BytesIO()
        np.savez(buf, x=x[idx] * np.float32(task.input_scale), y=y[idx])
        path = Path(out_dir) / DATA_FILE
        atomic.write_bytes(path, buf.getvalue(), mode=0o600)
        paths.append(path)
    return paths


def _cached(key: tuple[object, ...], load: Callable[[], Arrays]) -> Arrays:
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    arrays = load()
    with _lock:
        _cache[key] = arrays
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return arrays


def _partition_of_train(task: Task, pid: int, num: int, spec: str, seed: int) -> Arrays:
    (x, y), _ = task_data(task, seed)
    idx = partition(y, num, spec, seed)[pid]
    return x[idx], y[idx]


def _read_file(task: Task, path: Path, label_column: str) -> Arrays:
    suffix = path.suffix.lower()
    if suffix == ".npz":
        x, y = _read_npz(path)
    elif suffix == ".csv":
        x, y = _read_csv(path, label_column)
    else:
        raise FedgeError(
            f"unsupported data file format '{suffix}': {path}",
            "use .npz (arrays x and y) or .csv (header row, label column, feature columns)",
        )
    if len(x) != len(y):
        raise FedgeError(
            f"{path}: {len(x)} feature rows but {len(y)} labels",
            "x and y must have one entry per sample",
        )
    try:
        return task.prepare(x), _labels(y, task, path)
    except FedgeError as exc:
        raise FedgeError(f"{path}: {exc.message}", exc.hint) from None


def _read_npz(path: Path) -> Arrays:
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [name for name in ("x", "y") if name not in npz.files]
            if missing:
                found = ", ".join(npz.files) or "none"
                raise FedgeError(
                    f"{path} has no array {' or '.join(repr(m) for m in missing)} (found: {found})",
                    "save it with numpy.savez(path, x=features, y=labels)",
                )
            return npz["x"], npz["y"]
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise FedgeError(
            f"cannot read {path} as .npz: {exc}", "save it with numpy.savez(path, x=features, y=labels)"
        ) from None


def _read_csv(path: Path, label_column: str) -> Arrays:
    hint = f"write a header row, a '{label_column}' column and numeric feature columns"
    with path.open(newline="", encoding="utf-8") as fh:
        header = [h.strip() for h in next(csv.reader(fh), [])]
        if label_column not in header:
            raise FedgeError(
                f"{path} has no label column '{label_column}' (columns: {', '.join(header[:8]) or 'none'}"
                f"{', …' if len(header) > 8 else ''})",
                f"name the label column '{label_column}' or set node_config label-column",
            )
        body = fh.read()
    if not body.strip():
        raise FedgeError(f"{path} has a header but no data rows", hint)
    try:
        rows = np.loadtxt(io.StringIO(body), delimiter=",", dtype=np.float64, ndmin=2)
    except ValueError as exc:
        raise FedgeError(f"{path}: non-numeric or ragged CSV rows ({exc})", hint) from None
    if rows.shape[1] != len(header):
        raise FedgeError(f"{path}: {rows.shape[1]} values per row but {len(header)} header columns", hint)
    label_at = header.index(label_column)
    return np.delete(rows, label_at, axis=1), rows[:, label_at]


def _labels(y: np.ndarray, task: Task, path: Path) -> np.ndarray:
    y = np.asarray(y).reshape(-1)
    if not np.issubdtype(y.dtype, np.number) or not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
        raise FedgeError(f"{path}: labels must be whole numbers", "store class indices 0..num_classes-1")
    labels = y.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= task.num_classes):
        raise FedgeError(
            f"{path}: labels range {labels.min()}..{labels.max()} but task '{task.name}' has "
            f"{task.num_classes} classes",
            f"use class indices 0..{task.num_classes - 1}",
        )
    return labels


def _as_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise FedgeError(f"{name} must be an integer, got {value!r}", f"set {name} to a whole number")
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not number.is_integer():
        raise FedgeError(f"{name} must be an integer, got {value!r}", f"set {name} to a whole number")
    return int(number)
