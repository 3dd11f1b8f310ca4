"""Round commits: everything a run needs to continue, in one durable, self-checking file per round.

Why one file: a run killed at any instant must resume from a state in which the global model,
the strategy's server-side state, the RNG states and the metrics all belong to the same round.
Separate files could disagree after a crash between two writes; one file cannot.

Why self-checking: the file is written to a temp file, fsynced, renamed over the target and the
directory fsynced (:func:`fedge.atomic.write_bytes` plus a directory sync), so a crash leaves the
previous file. A disk that lies about fsync, a copy cut short or a bit flip can still leave a
bad file, so every file starts with a magic and the SHA-256 of its body, and
:meth:`CommitStore.latest` falls back to the newest file that verifies.

Format: ``MAGIC`` + SHA-256(body) + body, where body is an uncompressed ``.npz`` (read with
``allow_pickle=False``: loading a commit never runs code) holding ``meta`` (UTF-8 JSON, the
state tree) and ``a0``, ``a1``, … (its arrays). :func:`encode` turns a tree of plain data —
``None``/bool/int/float/str, bytes, numpy arrays and scalars, lists, tuples, dicts and Flower
``ArrayRecord`` — into JSON plus arrays; :func:`decode` rebuilds it exactly (dtypes included).
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from flwr.app import Array, ArrayRecord

from fedge import atomic
from fedge.codec import array_view

log = logging.getLogger(__name__)

MAGIC = b"FEDGE-COMMIT-1\n"
_DIGEST = hashlib.sha256().digest_size
_NAME = re.compile(r"round-(\d{4,})\.ckpt")
_SCALARS = (type(None), bool, int, float, str)
_READ_BLOCK = 1 << 24


class CorruptCommit(Exception):
    """A commit file that does not verify or decode (torn, truncated, altered)."""


def encode(value: Any, arrays: list[np.ndarray]) -> Any:
    """JSON-able tree for ``value``; its arrays are appended to ``arrays`` and referenced by index.

    Raises ``TypeError`` for anything else, so callers decide what an unsupported value means.
    """

    def put(array: np.ndarray) -> int:
        arrays.append(array)
        return len(arrays) - 1

    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise TypeError("object arrays are not plain data")
        return {"$nd": put(value)}
    if isinstance(value, np.generic):  # before float: np.float64 is a float subclass
        return {"$np": put(np.asarray(value))}
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, bytes):
        return {"$bytes": put(np.frombuffer(value, dtype=np.uint8))}
    if isinstance(value, ArrayRecord):
        return {"$arrays": [[key, put(array_view(array))] for key, array in value.items()]}
    if isinstance(value, list):
        return {"$list": [encode(item, arrays) for item in value]}
    if isinstance(value, tuple):
        return {"$tuple": [encode(item, arrays) for item in value]}
    if isinstance(value, dict):
        if not all(isinstance(key, _SCALARS) for key in value):
            raise TypeError("dict keys must be None, bool, int, float or str")
        return {"$dict": [[key, encode(item, arrays)] for key, item in value.items()]}
    raise TypeError(f"{type(value).__name__} is not plain data")


def decode(tree: Any, arrays: list[np.ndarray]) -> Any:
    """Inverse of :func:`encode`."""
    if isinstance(tree, _SCALARS):
        return tree
    if not isinstance(tree, dict) or len(tree) != 1:
        raise CorruptCommit(f"unexpected node in the state tree: {str(tree)[:80]}")
    ((tag, body),) = tree.items()
    if tag == "$nd":
        return arrays[body]
    if tag == "$np":
        return arrays[body][()]
    if tag == "$bytes":
        return arrays[body].tobytes()
    if tag == "$arrays":
        return ArrayRecord({key: Array(arrays[index]) for key, index in body})
    if tag == "$list":
        return [decode(item, arrays) for item in body]
    if tag == "$tuple":
        return tuple(decode(item, arrays) for item in body)
    if tag == "$dict":
        return {key: decode(item, arrays) for key, item in body}
    raise CorruptCommit(f"unknown tag {tag!r} in the state tree")


def dump(state: dict[str, Any], fh: BinaryIO) -> None:
    """Write a commit file holding ``state`` into ``fh`` (seekable and readable, at its start).

    The body goes straight from the arrays (zero-copy views of a model's ``Array`` bytes) into
    the file, and its digest is computed by reading it back: a commit of a multi-GB model costs
    no model-sized buffer.
    """
    arrays: list[np.ndarray] = []
    meta = json.dumps(encode(state, arrays)).encode("utf-8")
    entries: dict[str, Any] = {"meta": np.frombuffer(meta, dtype=np.uint8)}
    entries.update((f"a{i}", array) for i, array in enumerate(arrays))
    fh.write(MAGIC + bytes(_DIGEST))
    body_at = fh.tell()
    np.savez(fh, **entries)  # zip offsets are relative to where the archive starts
    end = fh.tell()
    digest = hashlib.sha256()
    fh.seek(body_at)
    while block := fh.read(min(_READ_BLOCK, end - fh.tell())):
        digest.update(block)
    fh.seek(len(MAGIC))
    fh.write(digest.digest())
    fh.seek(end)


def dumps(state: dict[str, Any]) -> bytes:
    """The bytes of a commit file holding ``state``."""
    buf = io.BytesIO()
    dump(state, buf)
    return buf.getvalue()


def loads(data: bytes) -> dict[str, Any]:
    """The state in a commit file's bytes; :class:`CorruptCommit` unless it verifies and decodes."""
    body = _verified_body(data)
    try:
        with np.load(io.BytesIO(body), allow_pickle=False) as npz:
            meta = json.loads(npz["meta"].tobytes().decode("utf-8"))
            arrays = [npz[f"a{i}"] for i in range(len(npz.files) - 1)]
        state = decode(meta, arrays)
    except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:  # verified, yet another format
        raise CorruptCommit(f"unreadable body: {exc}") from None
    if not isinstance(state, dict):
        raise CorruptCommit("the state tree is not a mapping")
    return state


def _verified_body(data: bytes) -> bytes:
    if not data.startswith(MAGIC):
        raise CorruptCommit("not a fedge commit (bad magic)")
    digest, body = data[len(MAGIC) : len(MAGIC) + _DIGEST], data[len(MAGIC) + _DIGEST :]
    if len(digest) != _DIGEST or hashlib.sha256(body).digest() != digest:
        raise CorruptCommit("checksum mismatch (torn or truncated write)")
    return body


@dataclass(frozen=True)
class Commit:
    """One committed round: its number, the file, and the state written for it."""

    round: int
    path: Path
    state: dict[str, Any]


class CommitStore:
    """``<run_dir>/state/round-NNNN.ckpt``: write, prune, and find the newest good commit.

    Parameters
    ----------
    directory : Path
        Where commit files live (created on first write).
    keep : int (default: 3)
        Newest commits kept; older ones are deleted after each write. More than one, so a bad
        newest file still leaves a round to resume from.
    """

    def __init__(self, directory: Path, keep: int = 3) -> None:
        self.directory = directory
        self.keep = max(2, keep)

    def path(self, server_round: int) -> Path:
        """File of the commit for ``server_round``."""
        return self.directory / f"round-{server_round:04d}.ckpt"

    def write(self, server_round: int, state: dict[str, Any]) -> Path:
        """Durably commit ``state`` as round ``server_round``; prune old commits and temp files."""
        target = self.path(server_round)
        atomic.write_with(
            target, functools.partial(dump, {**state, "round": server_round}), mode=atomic.PRIVATE
        )
        _fsync_dir(self.directory)
        for old in self._rounds()[: -self.keep]:
            if old < server_round:
                self.path(old).unlink(missing_ok=True)
        for stale in self.directory.glob(".round-*.tmp"):  # left by writers killed mid-write
            stale.unlink(missing_ok=True)
        return target

    def latest(self) -> Commit | None:
        """The newest commit that verifies and decodes, skipping (and logging) bad ones."""
        return self._newest(lambda path: loads(path.read_bytes()))

    def latest_round(self) -> int | None:
        """Round of the newest commit that verifies (checksum only: cheap for a server process)."""
        found = self._newest(_checksum_only)
        return None if found is None else found.round

    def _newest(self, read: Callable[[Path], dict[str, Any]]) -> Commit | None:
        for server_round in reversed(self._rounds()):
            path = self.path(server_round)
            try:
                state = read(path)
            except (CorruptCommit, OSError) as exc:
                log.warning("commit %s is unusable (%s); trying the previous round", path, exc)
                continue
            if state and state.get("round") != server_round:
                log.warning("commit %s says round %s; trying the previous round", path, state.get("round"))
                continue
            return Commit(server_round, path, state)
        return None

    def _rounds(self) -> list[int]:
        if not self.directory.is_dir():
            return []
        found = (_NAME.fullmatch(p.name) for p in self.directory.iterdir())
        return sorted(int(m.group(1)) for m in found if m)


def _checksum_only(path: Path) -> dict[str, Any]:
    _verified_body(path.read_bytes())
    return {}


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (POSIX: the entry lives in the directory's data)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
