"""Flower ``Message`` ⇄ codec bytes: tensors as raw bytes beside Flower's own serde of the rest."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import BinaryIO

from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.constant import SType
from flwr.common.serde import error_to_proto, message_from_proto, metadata_to_proto, recorddict_to_proto
from flwr.proto.message_pb2 import Message as ProtoMessage

from fedge.buffers import fresh_bytes
from fedge.chunks import FileSpan
from fedge.codec._format import (
    ARRAYS,
    BLOB_MIN,
    BLOBS,
    FIXED,
    MAGIC,
    MAX_HEADER_BYTES,
    ArraySpec,
    CodecError,
    Entry,
    align,
    digest,
    digest_pieces,
    encode_header,
    parse_header,
)
from fedge.codec._npy import layout_of

_ZEROS = memoryview(bytes(64))

Frame = bytes | memoryview
"""One piece of an encoded message; ``b"".join(frames)`` is the wire form."""
Record = ArrayRecord | ConfigRecord | MetricRecord


def _split(array: Array) -> tuple[bytes, memoryview]:
    """``(npy prefix, tensor body)`` of an Array; an empty prefix when its data is not plain npy.

    Only prefixes the receiver will accept are split off (version 1/2, numeric dtype, length
    matching the header), so anything else — another ``stype``, a hand-built Array — still
    travels byte for byte, as one opaque body.
    """
    data = memoryview(array.data).cast("B")
    layout = layout_of(data) if array.stype == SType.NUMPY else None
    if layout is None:
        return b"", data
    return data[: layout.offset].tobytes(), data[layout.offset :]


def _strip(
    key: str, record: Record, bodies: list[memoryview]
) -> tuple[Record, tuple[str, str, list[Entry]] | None]:
    """The record as Flower's serde will carry it, and its header entry (``None``: nothing taken out)."""
    if isinstance(record, ArrayRecord):
        entries: list[Entry] = []
        for name, array in record.items():
            prefix, body = _split(array)
            entries.append((name, array.dtype, tuple(array.shape), array.stype, prefix, len(body)))
            bodies.append(body)
        return ArrayRecord(), (key, ARRAYS, entries)  # keeps the key and its place among the records
    if isinstance(record, ConfigRecord):
        big = {k: v for k, v in record.items() if isinstance(v, bytes) and len(v) >= BLOB_MIN}
        if big:
            bodies.extend(memoryview(v) for v in big.values())
            stub = ConfigRecord({k: b"" if k in big else v for k, v in record.items()})
            return stub, (key, BLOBS, [(k, "", (), "", b"", len(v)) for k, v in big.items()])
    return record, None


def encode_frames(message: Message) -> list[Frame]:
    """Encode ``message`` as frames whose concatenation is the wire form; tensors are not copied.

    The first frame holds the fixed fields, the JSON header and Flower's serde of everything that
    is not a tensor (metadata, config/metric records, error, the keys and order of all records).
    Then come memoryviews over each ``Array.data`` (the raw tensor after its npy header) and each
    large ``bytes`` value, with the zero padding between them. A sender can chunk these frames
    without first joining them into one large ``bytes``.
    """
    headers: list[tuple[str, str, list[Entry]]] = []
    bodies: list[memoryview] = []
    content = None
    if message.has_content():
        content = RecordDict()
        for key, record in message.content.items():
            content[key], entry = _strip(key, record, bodies)
            if entry is not None:
                headers.append(entry)
    # message_to_proto, spelled out: building a stub Message would reset metadata.delivered_at.
    meta = ProtoMessage(
        metadata=metadata_to_proto(message.metadata),
        content=recorddict_to_proto(content) if content is not None else None,
        error=error_to_proto(message.error) if message.has_error() else None,
    ).SerializeToString()
    header = encode_header(headers)
    if len(header) > MAX_HEADER_BYTES:
        raise CodecError(f"the header of {len(bodies)} arrays exceeds {MAX_HEADER_BYTES} bytes")
    data_len = sum(align(len(b)) for b in bodies)
    check = _head_digest(len(header), len(meta), data_len, header, meta)
    for body in bodies:
        check = digest(check, body)
    used = FIXED.size + len(header) + len(meta)
    head = FIXED.pack(MAGIC, len(header), check, len(meta), data_len)
    frames: list[Frame] = [b"".join((head, header, meta, _ZEROS[: align(used) - used]))]
    for body in bodies:
        frames.append(body)
        if pad := align(len(body)) - len(body):
            frames.append(_ZEROS[:pad])
    return frames


def encode_message(message: Message) -> bytes:
    """Encode ``message`` as one ``bytes`` (the frames of :func:`encode_frames`, joined)."""
    return b"".join(encode_frames(message))


def _head_digest(header_len: int, meta_len: int, data_len: int, header: Frame, meta: Frame) -> int:
    fixed = FIXED.pack(MAGIC, header_len, 0, meta_len, data_len)  # the checksum field counts as 0
    return digest(digest(digest(0, fixed), header), meta)


def decode_message(data: bytes | bytearray | memoryview | FileSpan) -> Message:
    """Decode codec bytes into a Flower ``Message`` with ordinary ``ArrayRecord`` s.

    Each ``Array`` gets exactly what the sender's had (dtype, shape, stype and the same
    ``np.save`` bytes), so ``to_numpy_ndarrays()`` / ``to_torch_state_dict()`` work unchanged.
    Flower's ``Array`` only takes ``bytes``, which own their memory, so every tensor is copied
    exactly once: from the received buffer into its ``Array.data`` (with its npy header in the
    same pass). Anything malformed raises :class:`CodecError`, never another exception, and
    nothing is allocated before every declared length has been checked against ``data``.
    ``data`` may be a :class:`fedge.chunks.FileSpan`: see :func:`decode_spooled`.
    """
    if isinstance(data, FileSpan):
        return decode_spooled(data)[0]
    try:
        buf = memoryview(data).cast("B")
    except (TypeError, ValueError) as exc:
        raise CodecError(f"not a byte buffer ({exc})") from None
    if len(buf) < FIXED.size or bytes(buf[:8]) != MAGIC:
        raise CodecError("not a fedge codec message (bad magic)")
    _, header_len, check, meta_len, data_len = FIXED.unpack_from(buf)
    used = FIXED.size + header_len + meta_len
    if header_len > MAX_HEADER_BYTES:
        raise CodecError(f"header of {header_len} bytes exceeds {MAX_HEADER_BYTES}")
    if align(used) + data_len != len(buf):
        raise CodecError(f"{len(buf)} bytes received, the message declares {align(used) + data_len}")
    header, meta = buf[FIXED.size : FIXED.size + header_len], buf[FIXED.size + header_len : used]
    records = parse_header(header, data_len)
    start = align(used)
    ours = _head_digest(header_len, meta_len, data_len, header, meta)
    for _, _, specs in records:
        for spec in specs:
            ours = digest(ours, buf[start + spec.offset : start + spec.offset + spec.nbytes])
    if ours != check:
        raise CodecError("checksum mismatch: corrupted in transit or storage")
    message = _flower_part(meta.tobytes(), records)
    content = message.content if message.has_content() else RecordDict()
    for key, kind, specs in records:
        _fill(content.get(key), kind, specs, buf[start:])
    return message


def _fill(record: object, kind: str, specs: list[ArraySpec], region: memoryview) -> None:
    """Put the bodies back into the (stub) record the Flower part decoded to (checked by
    :func:`_flower_part`)."""
    if kind == ARRAYS:
        assert isinstance(record, ArrayRecord)
        for spec in specs:
            body = region[spec.offset : spec.offset + spec.nbytes]
            payload = b"".join((spec.prefix, body)) if spec.prefix else body.tobytes()
            record[spec.name] = Array(dtype=spec.dtype, shape=spec.shape, stype=spec.stype, data=payload)
        return
    assert isinstance(record, ConfigRecord)
    for spec in specs:
        record[spec.name] = region[spec.offset : spec.offset + spec.nbytes].tobytes()


def decode_spooled(
    span: FileSpan, keep_blobs: bool = False
) -> tuple[Message, dict[tuple[str, str], FileSpan]]:
    """:func:`decode_message` of a message in a file, reading each tensor straight into its ``Array``.

    Each body is read from the file into a fresh ``bytes`` (npy header first, then the tensor:
    :func:`fedge.buffers.fresh_bytes`), so decoding holds the message once, never the file's
    bytes beside it. With ``keep_blobs``, large ``ConfigRecord`` bytes values (a sealed reply)
    are not read: they stay ``b""`` in the message and come back as spans of the file, keyed
    by (record key, value key), for a reader that consumes them piece by piece
    (:func:`fedge.security.seal.open_record_file`). The checksum then covers them too: they are
    read once, in blocks, to check it. The file is not deleted.
    """
    with open(span.path, "rb") as file:
        fixed = os.pread(file.fileno(), FIXED.size, span.offset)
        if len(fixed) < FIXED.size or fixed[:8] != MAGIC:
            raise CodecError("not a fedge codec message (bad magic)")
        _, header_len, check, meta_len, data_len = FIXED.unpack(fixed)
        used = FIXED.size + header_len + meta_len
        if header_len > MAX_HEADER_BYTES:
            raise CodecError(f"header of {header_len} bytes exceeds {MAX_HEADER_BYTES}")
        if align(used) + data_len != span.length:
            raise CodecError(f"{span.length} bytes received, the message declares {align(used) + data_len}")
        head = memoryview(_pread(file, header_len + meta_len, span.offset + FIXED.size))
        header, meta = head[:header_len], head[header_len:]
        records = parse_header(header, data_len)
        ours = _head_digest(header_len, meta_len, data_len, header, meta)
        start = span.offset + align(used)
        bodies: dict[tuple[str, str], bytes] = {}
        spans: dict[tuple[str, str], FileSpan] = {}
        for key, kind, specs in records:
            for spec in specs:
                where = start + spec.offset
                if kind == BLOBS and keep_blobs:
                    spans[key, spec.name] = FileSpan(span.path, where, spec.nbytes)
                    ours = digest_pieces(ours, _blocks(file, where, spec.nbytes), spec.nbytes)
                    continue
                data, view = fresh_bytes(len(spec.prefix) + spec.nbytes)
                view[: len(spec.prefix)] = spec.prefix
                body = view[len(spec.prefix) :]
                _read_into(file, body, where)
                ours = digest(ours, body)
                del view, body
                bodies[key, spec.name] = data
    if ours != check:
        raise CodecError("checksum mismatch: corrupted in transit or storage")
    message = _flower_part(meta.tobytes(), records)
    content = message.content if message.has_content() else RecordDict()
    for key, kind, specs in records:
        record = content.get(key)
        for spec in specs:
            if (key, spec.name) in spans:
                continue
            data = bodies.pop((key, spec.name))
            if kind == ARRAYS:
                assert isinstance(record, ArrayRecord)
                record[spec.name] = Array(dtype=spec.dtype, shape=spec.shape, stype=spec.stype, data=data)
            else:
                assert isinstance(record, ConfigRecord)
                record[spec.name] = data
    return message, spans


def read_blobs(message: Message, spans: dict[tuple[str, str], FileSpan]) -> None:
    """Put the large ``ConfigRecord`` values :func:`decode_spooled` left in the file into ``message``."""
    for (key, name), span in spans.items():
        record = message.content.config_records[key]
        with open(span.path, "rb") as file:
            data, view = fresh_bytes(span.length)
            _read_into(file, view, span.offset)
            del view
        record[name] = data
    spans.clear()


def _flower_part(meta: bytes, records: list[tuple[str, str, list[ArraySpec]]]) -> Message:
    """The Flower part of a message, checked against the header's records (stubs still empty)."""
    try:
        message = message_from_proto(ProtoMessage.FromString(meta))
    except Exception as exc:  # DecodeError, bad UTF-8, unknown record types: be total
        raise CodecError(f"Flower part does not parse ({type(exc).__name__})") from None
    content = message.content if message.has_content() else RecordDict()
    stubs = {k for k, r in content.items() if isinstance(r, ArrayRecord)}
    if stubs != {key for key, kind, _ in records if kind == ARRAYS}:
        raise CodecError("array records in the header and in the Flower part do not match")
    for key, kind, specs in records:
        record = content.get(key)
        if kind == ARRAYS and (not isinstance(record, ArrayRecord) or len(record)):
            raise CodecError("an array record arrived with arrays inside the Flower part")
        if kind == BLOBS and (
            not isinstance(record, ConfigRecord) or any(record.get(s.name, None) != b"" for s in specs)
        ):
            raise CodecError("large bytes values do not match a ConfigRecord of the Flower part")
    return message


def _pread(file: BinaryIO, size: int, offset: int) -> bytes:
    data = os.pread(file.fileno(), size, offset)
    if len(data) != size:
        raise CodecError(f"the file ends {size - len(data)} bytes early")
    return data


def _read_into(file: BinaryIO, out: memoryview, offset: int) -> None:
    done = 0
    while done < len(out):
        got = os.preadv(file.fileno(), [out[done:]], offset + done)
        if got <= 0:
            raise CodecError(f"the file ends {len(out) - done} bytes early")
        done += got


def _blocks(file: BinaryIO, offset: int, size: int, block: int = 1 << 24) -> Iterator[bytes]:
    for start in range(0, size, block):
        yield _pread(file, min(block, size - start), offset + start)
