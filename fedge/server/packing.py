"""How the run worker hands a batch's serialized instructions to the server process.

A broadcast round sends the same global model to every device, so a batch's tensor frames are
views of the same ``Array.data``: each distinct buffer is copied once (:func:`shared_frames`),
or written once to the run's spool file (:func:`spooled_frames`) for the server to read as its
streams send, and every message of the batch points at that one copy.
"""

from __future__ import annotations

from typing import IO

import numpy as np

from fedge.chunks import FileSpan, Piece
from fedge.codec import Frame

__all__ = ["SPOOL_MIN", "shared_frames", "spooled_frames"]

#: Frames at least this large go to the spool file; the rest (headers, padding) travel in the pipe.
SPOOL_MIN = 1 << 16


def spooled_frames(
    frames: list[Frame], spool: IO[bytes], written: dict[tuple[int, int], FileSpan]
) -> list[Piece]:
    """``frames`` with each large tensor frame written once to ``spool`` and replaced by its span.

    A broadcast round sends the same global model to every device: its tensor frames are views of
    the same ``Array.data``, so each is written once (keyed by address and size) and every
    message points at the same span. Nothing model-sized is copied in memory or pickled: the
    server process reads the spans piece by piece as its streams send them.
    """
    out: list[Piece] = []
    for frame in frames:
        if isinstance(frame, bytes) or len(frame) < SPOOL_MIN:
            out.append(bytes(frame))
            continue
        view = np.frombuffer(frame, dtype=np.uint8)
        key = (view.ctypes.data, view.size)
        if key not in written:
            written[key] = FileSpan(spool.name, spool.tell(), view.size)
            spool.write(frame)
        out.append(written[key])
    return out


def shared_frames(frames: list[Frame], shared: dict[tuple[int, int], bytes]) -> list[Piece]:
    """``frames`` as ``bytes``, one object per distinct tensor buffer across a batch of messages.

    A broadcast round sends the same global model to every device: its tensor frames are views of
    the same ``Array.data``, so they are copied once (keyed by address and size) and shared.
    """
    out: list[Piece] = []
    for frame in frames:
        if isinstance(frame, bytes):
            out.append(frame)
            continue
        view = np.frombuffer(frame, dtype=np.uint8)
        key = (view.ctypes.data, view.size)
        if key not in shared:
            shared[key] = bytes(frame)
        out.append(shared[key])
    return out
