"""fedge's wire codec: Flower Messages with their tensors carried as raw bytes.

Why not Flower's serde alone: ``message_to_proto`` copies every tensor into a protobuf message
and ``SerializeToString`` copies it again (twice more on the way back), and Flower's own
transport adds SHA-256 object ids on top (193–290 MB/s measured here). The codec sends a small
JSON header (record keys, array names, dtypes, shapes, stypes, npy headers, lengths, one
checksum) plus each tensor's raw bytes at 64-byte-aligned offsets; everything that is not a
tensor (metadata, config and metric records, errors, record order) still goes through Flower's
serde, so nothing of a Message is re-implemented here.

What Flower forces (flwr 1.41, ``flwr/app/message/array.py``): ``Array.data`` must be ``bytes``
holding ``np.save`` output. ``bytes`` cannot view another buffer, so decoding copies each tensor
exactly once (received buffer → ``Array.data``, npy header prepended in the same pass); encoding
copies nothing (:func:`encode_frames` returns views of ``Array.data``). Reads after that need
no copy either: :func:`array_view` (used by streaming aggregation) is an ``np.frombuffer`` over
``Array.data``, where ``Array.numpy()`` (``np.load``) copies twice.

That one copy is where decoding spends its time on our VMs: a fresh multi-MB ``bytes`` costs
~2.3 GB/s of 4 KiB page faults (a copy into warm memory runs at 10+ GB/s). Processes that decode
large models should run with ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` (glibc >= 2.35: large
allocations on transparent huge pages; decode of a 100 MB model 2.3 -> 7 GB/s, memory is still
returned to the OS). ``bench/datapath.py`` measures both.

Public API: :func:`encode_message` / :func:`encode_frames` / :func:`decode_message`,
:class:`CodecError`, :func:`array_view` / :func:`as_views` (:class:`ArrayFormatError`), and
:func:`array_from_numpy` (``Array(ndarray)`` with one copy instead of ``np.save``'s three).
The byte layout and the checksum choice are documented in :mod:`fedge.codec._format`.
"""

from fedge.codec._format import CodecError
from fedge.codec._message import (
    Frame,
    decode_message,
    decode_spooled,
    encode_frames,
    encode_message,
    read_blobs,
)
from fedge.codec._npy import ArrayFormatError, array_from_numpy, array_view, as_views, npy_prefix

__all__ = [
    "ArrayFormatError",
    "CodecError",
    "Frame",
    "array_from_numpy",
    "array_view",
    "as_views",
    "decode_message",
    "decode_spooled",
    "encode_frames",
    "encode_message",
    "npy_prefix",
    "read_blobs",
]
