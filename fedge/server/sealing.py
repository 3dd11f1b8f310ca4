"""Opening sealed replies inside a run's worker.

The server process that owns the device streams only ever holds ciphertext; the run worker holds
the run's aggregator key (announced to devices, signed by the server key) and opens each reply in
memory right before screening. A reply that is not sealed when sealing is on, fails its
signature, or was sealed for another round (a replay) is rejected like any invalid update.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from flwr.app import ArrayRecord, Message

from fedge.chunks import FileSpan
from fedge.security import Pki
from fedge.security.seal import (
    SEALED_KEY,
    AggregatorKey,
    SealError,
    new_aggregator_key,
    open_record,
)
from fedge.security.sealed_file import open_sealed_file, verify_sealed_file
from fedge.server.deferred import DeferredArrays

ANNOUNCEMENT_TTL = 30 * 24 * 3600.0


class ReplyOpener:
    """The run's aggregator key, its announcement, and the opening of sealed replies."""

    def __init__(self, run_id: int, pki_dir: Path) -> None:
        self._run_id = run_id
        self._key, announcement = new_aggregator_key(
            run_id, Pki.open(pki_dir).signing_key(), ANNOUNCEMENT_TTL
        )
        self.announcement = announcement.SerializeToString()

    @classmethod
    def held(cls, run_id: int, key: AggregatorKey, announcement: bytes) -> ReplyOpener:
        """An opener for a key made elsewhere: a relay's per-run key (:mod:`fedge.relay.keys`)."""
        opener = cls.__new__(cls)
        opener._run_id, opener._key, opener.announcement = run_id, key, announcement
        return opener

    def open(
        self,
        reply: Message,
        round: int,
        node_id: int,
        stage: str,
        signer: bytes,
        spans: dict[tuple[str, str], FileSpan] | None = None,
        *,
        defer: bool = False,
    ) -> Message:
        """Replace every sealed record of ``reply`` with its ArrayRecord; raise SealError if any fails.

        ``spans``: sealed payloads still in the file the reply was spooled to (see
        :func:`fedge.codec.decode_spooled`), read and decrypted from there chunk by chunk; each
        one opened is taken out of ``spans``. With ``defer``, such a payload is verified up to
        its decryption and becomes a :class:`~fedge.server.deferred.DeferredArrays` (decrypted
        when its consumer reads it, one tensor at a time).
        """
        if not reply.has_content():
            return reply
        content = reply.content
        if content.array_records:
            raise SealError("unsealed", "sealing is on but the reply carries plaintext arrays")
        sealed = {k: r for k, r in content.config_records.items() if SEALED_KEY in r}
        if sealed and not signer:
            raise SealError("bad-signature", "no device signing key is bound to this stream")
        pub = Ed25519PublicKey.from_public_bytes(signer) if signer else None
        for key, record in sealed.items():
            assert pub is not None  # sealed records and no signer were refused above
            span = spans.pop((key, SEALED_KEY), None) if spans is not None else None
            opener: Callable[..., ArrayRecord]
            if span is None:
                opener = functools.partial(open_record, record)
            elif defer:
                opener = functools.partial(_deferred, span)
            else:
                opener = functools.partial(open_sealed_file, span)
            opened = opener(
                aggregator_key=self._key,
                expected_run_id=self._run_id,
                expected_round=round,
                expected_node_id=node_id,
                expected_stage=stage,
                device_signing_pub=pub,
            )
            # Deleted first: replacing a record with one of another type under the same key
            # makes Flower warn "Key ... was overwritten" for every reply.
            del content[key]
            content[key] = opened
        return reply


def _deferred(span: FileSpan, **checks: Any) -> DeferredArrays:
    return DeferredArrays(verify_sealed_file(span, **checks))
