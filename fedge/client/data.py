"""Private data adapters: turn a node's local data into training data for its task.

A node's data never leaves the device, so this is the only place it is read. Where it comes
from is decided by the node config (``[client] node_config`` in fedge, or Flower's engines):

- ``data-path``: read by the task's own ``read_data`` when it has one, else by format:

  - ``.npz``: arrays ``x`` (raw features, flat or shaped) and ``y`` (labels);
  - ``.csv``: a header row, the label column(s) (``label-column``, default ``label``; several
    comma-separated for multi-output regression or multi-label) and one column per raw feature;
  - ``.parquet`` (needs ``pyarrow``: ``pip install fedge[parquet]``): the same columns;
  - a directory: an image folder, one sub-folder per class (sorted names are the class
    indices), PNG/JPEG files read with Pillow, converted to the task's channels (1: grey,
    3: RGB) and size. Images are read lazily, batch by batch (a torch ``Dataset``), not loaded
    into memory.

  Features go through ``task.prepare``, so files hold values in the task's raw scale (0..16 for
  ``digits``, 0..255 for ``mnist5k`` and 8-bit images). Labels are class indices
  (classification), numbers (regression) or 0/1 per class (multilabel).
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
from torch.utils.data import DataLoader, Dataset, Subset

from fedge import atomic
from fedge.client.images import ImageFolder
from fedge.errors import FedgeError
from fedge.tasks import Arrays, Data, Task, partition, task_data
from fedge.tasks.training import num_examples, to_arrays

DATA_FILE = "data.npz"
FORMATS_HINT = (
    "use .npz (arrays x and y), .csv or .parquet (a label column and feature columns), "
    "or a directory of images with one sub-folder per class"
)
_CACHE_SIZE = 8
_cache: OrderedDict[tuple[object, ...], Data] = OrderedDict()
_lock = threading.Lock()


def load_local(task: Task, node_config: Mapping[str, Any], config: Mapping[str, Any]) -> Data:
    """Return this node's private data, prepared for ``task`` (see the module docstring)."""
    if "data-path" in node_config:
        path = Path(str(node_config["data-path"])).expanduser()
        label_column = str(node_config.get("label-column", "label"))
        if not path.exists():
            raise FedgeError(
                f"data file not found: {path}",
                "set node_config data-path (fedge client start --data PATH) to an existing file or "
                f"directory on this device; {FORMATS_HINT}",
            )
        stat = path.stat()
        key: tuple[object, ...] = (
            "file",
            task.name,
            task.read_data,
            str(path.resolve()),
            stat.st_mtime_ns,
            stat.st_size,
            label_column,
        )
        if task.read_data is not None:
            reader = task.read_data
            return _cached(key, lambda: reader(path, node_config))
        return _cached(key, lambda: _read_path(task, path, label_column))
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
        "start the daemon with --data PATH (node config data-path: .npz, .csv, .parquet or an image "
        "folder), or set "
        "partition-id and num-partitions to use a partition of the task's built-in dataset",
    )


def split_local(data: Data, seed: int, eval_fraction: float = 0.2) -> tuple[Data, Data]:
    """Deterministically hold out ``eval_fraction`` of local data for federated evaluation.

    The split depends only on ``seed`` (not the round), so a node never trains on its
    evaluation samples. Nodes with fewer than 5 samples cannot spare any: they train and
    evaluate on all of them. A ``Dataset`` is split into two ``Subset`` views (nothing is read);
    a ``DataLoader`` is the task's own choice of batches and is used whole for both.
    """
    if isinstance(data, DataLoader):
        return data, data
    n = num_examples(data)
    if n < 5:
        return data, data
    order = np.random.default_rng(seed).permutation(n)
    cut = n - max(1, round(eval_fraction * n))
    train_idx, eval_idx = np.sort(order[:cut]), np.sort(order[cut:])
    if isinstance(data, tuple):
        x, y = data
        return (x[train_idx], y[train_idx]), (x[eval_idx], y[eval_idx])
    return Subset(data, train_idx.tolist()), Subset(data, eval_idx.tolist())


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
    x, y = to_arrays(task_data(task, seed)[0])
    paths = []
    for idx, out_dir in zip(partition(y, num_partitions, spec, seed), out_dirs, strict=True):
        buf = io.BytesIO()
        np.savez(buf, x=x[idx] * np.float32(task.input_scale), y=y[idx])
        path = Path(out_dir) / DATA_FILE
        atomic.write_bytes(path, buf.getvalue(), mode=0o600)
        paths.append(path)
    return paths


def _cached(key: tuple[object, ...], load: Callable[[], Data]) -> Data:
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


def _partition_of_train(task: Task, pid: int, num: int, spec: str, seed: int) -> Data:
    train = task_data(task, seed)[0]
    if isinstance(train, Dataset):  # partition its indices by its labels
        _, labels = to_arrays(train)
        return Subset(train, partition(labels, num, spec, seed)[pid].tolist())
    if isinstance(train, DataLoader):
        raise FedgeError(
            f"task '{task.name}' gives its training split as a DataLoader, which cannot be partitioned",
            "return a Dataset (or arrays) from load_data; DataLoaders suit a device's own read_data",
        )
    x, y = train
    idx = partition(y, num, spec, seed)[pid]
    return x[idx], y[idx]


def _read_path(task: Task, path: Path, label_column: str) -> Data:
    if path.is_dir():
        return ImageFolder(path, task)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        x, y = _read_npz(path)
    elif suffix == ".csv":
        x, y = _read_csv(path, label_column)
    elif suffix in (".parquet", ".pq"):
        x, y = _read_parquet(path, label_column)
    else:
        raise FedgeError(f"unsupported data file format '{suffix}': {path}", FORMATS_HINT)
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
        labels = _label_columns(path, header, label_column)
        body = fh.read()
    if not body.strip():
        raise FedgeError(f"{path} has a header but no data rows", hint)
    try:
        rows = np.loadtxt(io.StringIO(body), delimiter=",", dtype=np.float64, ndmin=2)
    except ValueError as exc:
        raise FedgeError(f"{path}: non-numeric or ragged CSV rows ({exc})", hint) from None
    if rows.shape[1] != len(header):
        raise FedgeError(f"{path}: {rows.shape[1]} values per row but {len(header)} header columns", hint)
    return _features_and_labels(rows, header, labels)


def _read_parquet(path: Path, label_column: str) -> Arrays:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise FedgeError(
            f"reading {path} needs the optional package pyarrow", "pip install 'fedge[parquet]'"
        ) from None
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises its own types for every kind of bad file
        raise FedgeError(f"cannot read {path} as parquet: {exc}", "write it with pandas or pyarrow") from None
    header = list(table.column_names)
    labels = _label_columns(path, header, label_column)
    try:
        rows = np.column_stack([table.column(c).to_numpy(zero_copy_only=False) for c in header])
        rows = rows.astype(np.float64)
    except (ValueError, TypeError) as exc:
        raise FedgeError(
            f"{path}: non-numeric or missing values ({exc})", "store numbers only, without nulls"
        ) from None
    if not len(rows):
        raise FedgeError(f"{path} has no rows", "write at least one sample")
    return _features_and_labels(rows, header, labels)


def _label_columns(path: Path, header: list[str], label_column: str) -> list[str]:
    """The label column names (comma-separated for several), each checked against ``header``."""
    wanted = [c.strip() for c in label_column.split(",") if c.strip()]
    missing = [c for c in wanted if c not in header]
    if missing or not wanted:
        raise FedgeError(
            f"{path} has no label column '{', '.join(missing) or label_column}' "
            f"(columns: {', '.join(header[:8]) or 'none'}{', …' if len(header) > 8 else ''})",
            f"name the label column '{label_column}' or set node_config label-column",
        )
    return wanted


def _features_and_labels(rows: np.ndarray, header: list[str], labels: list[str]) -> Arrays:
    at = [header.index(c) for c in labels]
    y = rows[:, at[0]] if len(at) == 1 else rows[:, at]
    return np.delete(rows, at, axis=1), y


def _labels(y: np.ndarray, task: Task, path: Path) -> np.ndarray:
    """Labels checked against the task's kind: class indices, finite targets, or 0/1 per class."""
    y = np.asarray(y)
    if not np.issubdtype(y.dtype, np.number) or not np.all(np.isfinite(y)):
        raise FedgeError(f"{path}: labels must be finite numbers", "remove or impute missing labels")
    if task.kind == "regression":
        return y.astype(np.float32)
    if task.kind == "multilabel":
        if y.ndim != 2 or y.shape[1] != task.num_classes or not np.isin(y, (0, 1)).all():
            raise FedgeError(
                f"{path}: multi-label targets must be 0/1 shaped (n, {task.num_classes}), got {y.shape}",
                "one 0/1 column per class (label-column=a,b,c for CSV/parquet)",
            )
        return y.astype(np.float32)
    y = y.reshape(-1)
    if np.any(y != np.round(y)):
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
