"""Atomic file writes: a crash mid-write leaves the previous file, never a torn one."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

#: Mode of a file only its owner may read: the server's database, checkpoints, run files.
PRIVATE = 0o600


def private_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` (and parents) and make it ``0700``, also when it already existed.

    Why chmod: ``mkdir``'s mode is filtered by the umask and leaves an existing directory as
    it is; what is inside (a global model, device names, the audit log) is the operator's alone.
    """
    target = Path(path)
    target.mkdir(parents=True, exist_ok=True)
    os.chmod(target, 0o700)
    return target


def write_bytes(path: str | os.PathLike[str], data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` via a temp file in the same directory, fsync and rename."""
    write_with(path, lambda fh: fh.write(data), mode)


def write_with(path: str | os.PathLike[str], write: Callable[[BinaryIO], object], mode: int = 0o644) -> None:
    """:func:`write_bytes` of what ``write`` writes into the temp file (open for reading too).

    For large files: a writer that streams (``torch.save``, ``np.savez``) never builds the
    file's bytes in memory first.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w+b") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text(path: str | os.PathLike[str], text: str, mode: int = 0o644) -> None:
    """Text variant of :func:`write_bytes` (UTF-8)."""
    write_bytes(path, text.encode("utf-8"), mode)
