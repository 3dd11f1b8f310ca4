"""Replies whose arrays stay sealed in their spool file until a fold reads them, tensor by tensor.

Why: a fold (:class:`fedge.strategies.StreamingExchange`) needs each tensor of a reply once, in
any order, and never the whole reply. Opening a large sealed reply into an ``ArrayRecord`` made
the run worker hold a full model beside the global model and the running sum (three models at
its peak); read tensor by tensor it holds one tensor instead. Each read decrypts (and
authenticates) the file again, so the reply is screened in one pass and folded in a second, and
nothing of it is folded before every chunk has been authenticated and screened.

Only a consumer that asks for it (``FedgeGrid.send_and_stream(..., defer=True)``) gets one, and
it turns it into a plain ``ArrayRecord`` (:meth:`DeferredArrays.materialize`) before handing the
reply to anything else: to every other reader it would look empty.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from flwr.app import ArrayRecord, Message

from fedge.security.sealed_file import Layout, SealedFile

__all__ = ["DeferredArrays", "close_deferred", "materialized"]


class DeferredArrays(ArrayRecord):
    """An update's arrays, still sealed in a file (signature and context already verified).

    An ``ArrayRecord`` so that it can sit in a reply's ``RecordDict``; it holds no ``Array``.
    """

    def __init__(self, source: SealedFile) -> None:
        super().__init__()
        self._source = source

    @property
    def layout(self) -> Layout:
        """Names, dtypes and shapes of the arrays, from the authenticated manifest."""
        return self._source.layout

    def arrays(self) -> Iterator[tuple[str, np.ndarray]]:
        """Each array, decrypted afresh from the file; raises ``SealError`` on a bad chunk."""
        return self._source.arrays()

    def materialize(self) -> ArrayRecord:
        """The arrays as a plain ``ArrayRecord`` (a whole model in memory); closes the file."""
        try:
            return self._source.record()
        finally:
            self.close()

    def close(self) -> None:
        """Close the spool file (its space is freed then)."""
        self._source.close()


def materialized(reply: Message) -> Message:
    """``reply`` with every :class:`DeferredArrays` in it replaced by a plain ``ArrayRecord``."""
    if reply.has_content():
        content = reply.content
        for key, record in list(content.array_records.items()):
            if isinstance(record, DeferredArrays):
                del content[key]  # replacing in place makes Flower warn "Key ... was overwritten"
                content[key] = record.materialize()
    return reply


def close_deferred(reply: Message) -> None:
    """Close the spool files of every :class:`DeferredArrays` in ``reply`` (a refused reply)."""
    if reply.has_content():
        for record in reply.content.array_records.values():
            if isinstance(record, DeferredArrays):
                record.close()
