"""The text chunks of a PNG (tEXt, zTXt, iTXt), read without an image library.

The HTTP API answers with an output's own bytes and needs only its `parameters` and `farm` chunks
(the infotext and the sample's index), so it reads them here instead of decoding the image.
"""

from __future__ import annotations

import struct
import zlib

SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_text(data: bytes) -> dict[str, str]:
    """Every text chunk of `data` by keyword; {} for bytes that are not a PNG."""
    if not data.startswith(SIGNATURE):
        return {}
    out: dict[str, str] = {}
    at = len(SIGNATURE)
    while at + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[at:at + 8])
        body = data[at + 8:at + 8 + length]
        at += 12 + length
        if kind == b"IEND":
            break
        key, _, rest = body.partition(b"\0")
        if kind == b"tEXt":
            out[key.decode("latin-1")] = rest.decode("latin-1")
        elif kind == b"zTXt":
            out[key.decode("latin-1")] = zlib.decompress(rest[1:]).decode("latin-1")
        elif kind == b"iTXt" and len(rest) >= 2:
            compressed, text = rest[0], rest[2:].split(b"\0", 2)[-1]  # skip language and translated keyword
            out[key.decode("latin-1")] = (zlib.decompress(text) if compressed else text).decode("utf-8")
    return out
