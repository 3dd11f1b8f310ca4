"""Sealing replies on the device (docs/architecture.md, security layer 2).

Every array a reply carries is sealed to the run's aggregator key before it leaves the process,
and signed with the device key bound to its certificate at enrollment. The announcement that
names the aggregator key must be signed by this federation's server key (received at
enrollment): a reply is never sealed to a key the server did not vouch for.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.serialization import load_pem_public_key
from flwr.app import Message

from fedge.errors import FedgeError
from fedge.protos.v1 import envelope_pb2
from fedge.security import load_device_keys
from fedge.security.seal import seal_record, verify_announcement

SERVER_SIGNING_PUB = "server-signing.pub"


class ReplySealer:
    """The device's signing key and the server key that vouches for aggregator keys."""

    def __init__(self, state_dir: str | Path) -> None:
        root = Path(state_dir)
        if not (root / SERVER_SIGNING_PUB).is_file():
            raise FedgeError(
                f"no server signing key in {root}", "enroll the device again (`fedge client enroll`)"
            )
        self._device_key = load_device_keys(root).signing_key
        self._server_pub = load_pem_public_key((root / SERVER_SIGNING_PUB).read_bytes())

    def seal(self, reply: Message, announcement: bytes, round: int, node_id: int) -> Message:
        """Replace each ArrayRecord of ``reply`` with its sealed ConfigRecord (same key)."""
        run_id = reply.metadata.run_id
        verify_announcement(announcement, self._server_pub, run_id)  # type: ignore[arg-type]
        ann = envelope_pb2.AggregatorAnnouncement.FromString(announcement)
        content = reply.content
        for key, record in list(content.array_records.items()):
            sealed_record = seal_record(
                record,
                announcement=ann,
                run_id=run_id,
                round=round,
                node_id=node_id,
                stage=reply.metadata.message_type,
                device_key=self._device_key,
            )
            # Deleted first: replacing a record with one of another type under the same key
            # makes Flower warn "Key ... was overwritten" for every reply.
            del content[key]
            content[key] = sealed_record
            # Flower's records sit in reference cycles, freed only by the cyclic GC: without
            # this the plaintext stayed beside the sealed copy until a collection (issue 16).
            record.clear()
        return reply
