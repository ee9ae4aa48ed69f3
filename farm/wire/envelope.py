"""The outer checks every farm msgpack payload gets before its fields are read: bytes of a bounded
size, msgpack that decodes (extension types only through the codec's own hook), and a map naming
the farm's format and a version this farm reads. Checkpoints and node results share them, each with
its own error class, so a bad payload is refused the same way wherever it comes from.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgpack

from farm.contracts.errors import FarmError


def open_envelope(payload: object, *, noun: str, fmt: str, version: int, max_bytes: int,
                  ext_hook: Callable[[int, bytes], Any], error: type[FarmError],
                  accepted: tuple[type, ...] = (bytes,)) -> dict[str, Any]:
    """The payload's top-level map, or `error` naming `noun` and what is wrong in one line."""
    if not isinstance(payload, accepted):
        raise error(f"{noun}: expected bytes, got {type(payload).__name__}")
    if len(payload) > max_bytes:  # type: ignore[arg-type]
        raise error(f"{noun}: {len(payload)} bytes is over the limit (allowed: 0 to {max_bytes})")  # type: ignore[arg-type]
    try:
        body = msgpack.unpackb(bytes(payload), raw=False, ext_hook=ext_hook, strict_map_key=True)  # type: ignore[arg-type]
    except error:
        raise
    except Exception as e:  # msgpack raises several unrelated types for bad input; all mean "not ours"
        raise error(f"{noun}: not a valid msgpack payload ({type(e).__name__})") from None
    if not isinstance(body, dict) or body.get("format") != fmt:
        raise error(f"{noun}: not a farm {noun}")
    if body.get("version") != version:
        raise error(f"{noun}: format version {str(body.get('version'))[:20]} (allowed: {version})")
    return body
