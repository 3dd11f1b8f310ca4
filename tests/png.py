"""Read a PNG the strict way for tests: signature, every chunk's CRC, IHDR size, text chunks, IEND.

A file that passes is structurally valid; :func:`png_info` also decodes the pixels with Pillow
(matplotlib's own dependency) so a valid container with broken image data fails too.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class PngInfo:
    width: int
    height: int
    text: dict[str, str]


def png_info(path: Path) -> PngInfo:
    """Validate ``path`` as a PNG; return its size and ``tEXt``/``iTXt`` chunks."""
    data = path.read_bytes()
    assert data.startswith(SIGNATURE), f"{path}: not a PNG signature"
    pos, chunks = len(SIGNATURE), []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(kind + body) == crc, f"{path}: bad CRC in {kind!r}"
        chunks.append((kind, body))
        pos += 12 + length
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND", f"{path}: chunk order"
    width, height = struct.unpack(">II", chunks[0][1][:8])
    text: dict[str, str] = {}
    for kind, body in chunks:
        if kind == b"tEXt":
            key, _, value = body.partition(b"\0")
            text[key.decode("latin-1")] = value.decode("latin-1")
        elif kind == b"iTXt":  # key \0 compressed-flag method language \0 translated \0 text
            key, _, rest = body.partition(b"\0")
            compressed, value = rest[0], rest[2:].split(b"\0", 2)[2]
            text[key.decode("latin-1")] = (zlib.decompress(value) if compressed else value).decode("utf-8")
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        assert image.size == (width, height)
    return PngInfo(width, height, text)
