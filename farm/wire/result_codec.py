"""msgpack codec for a node's reply to a segment: plain data in the farm's own format, never objects.

A node is a process the head does not control, so what it sends back is decoded by the head's code
as data only: a map with exactly the keys below (an unknown or missing key, a value of another type,
a msgpack extension type, an image of a dtype outside `IMAGE_DTYPES` or of another shape than the
job's, or a payload over `MAX_BYTES` is refused with one `ResultError` line). Images travel as raw
arrays of declared dtype and shape; the checkpoint as the checkpoint codec's bytes, which the head
decodes again on receipt. A failure on the node comes back as a plain code and message (`NodeError`),
not as an exception of the node's classes.

Ray still pickles the `bytes` object this returns (its envelope); unpickling a `bytes` runs no code of
the node's, but a Ray cluster member can schedule code anywhere anyway, so only trusted PCs join it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import msgpack

from farm.contracts.domain import JobSpec, SegmentResult
from farm.contracts.errors import FarmError
from farm.wire.checkpoint_codec import MAX_BYTES as CHECKPOINT_MAX_BYTES
from farm.wire.envelope import open_envelope

FORMAT = "farm.result"
VERSION = 1
# Decoded images are 8-bit RGB: the one dtype a node may send them in.
IMAGE_DTYPES = {"uint8": 1}
MAX_IMAGES = 4096
MAX_PREVIEW_BYTES = 2 * 2**20  # one small PNG per sample
MAX_TEXT = 1000  # gpu, memory mode, precision, a loaded model's name, an error message
MAX_LOADED = 64
# A whole reply: the largest checkpoint, or a batch of decoded full-size video frames.
MAX_BYTES = CHECKPOINT_MAX_BYTES
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

_REPLY_KEYS = {"format", "version", "kind"}
_OK_KEYS = _REPLY_KEYS | {"shard_id", "index", "node", "gpu", "seconds", "denoise_seconds", "memory_mode",
                          "stopped_at", "peak_gib", "loaded", "precision", "checkpoint", "images", "previews"}
_ERROR_KEYS = _REPLY_KEYS | {"code", "message"}
_IMAGE_KEYS = {"dtype", "shape", "data"}


class ResultError(FarmError):
    """A node's reply that is not a well-formed result: charged to the node it was sent to."""


@dataclass(frozen=True)
class NodeError:
    """A segment that failed on its node, as the node reported it: a short code and one message."""

    code: str
    message: str


def encode(result: SegmentResult, image_shape: tuple[int, ...]) -> bytes:
    """A node's result as reply bytes; each image is declared as uint8 of `image_shape`."""
    body = {
        "format": FORMAT, "version": VERSION, "kind": "ok",
        "shard_id": result.shard_id, "index": result.index, "node": result.node, "gpu": result.gpu,
        "seconds": float(result.seconds), "denoise_seconds": float(result.denoise_seconds),
        "memory_mode": result.memory_mode, "stopped_at": result.stopped_at, "peak_gib": float(result.peak_gib),
        "loaded": list(result.loaded), "precision": result.precision, "checkpoint": result.checkpoint,
        "images": [{"dtype": "uint8", "shape": list(image_shape), "data": image} for image in result.images],
        "previews": list(result.previews),
    }
    return msgpack.packb(body, use_bin_type=True)


def encode_error(code: str, message: str) -> bytes:
    """A failure on the node as reply bytes (code: the error's kind; message: one line)."""
    body = {"format": FORMAT, "version": VERSION, "kind": "error", "code": code[:MAX_TEXT],
            "message": message[:MAX_TEXT]}
    return msgpack.packb(body, use_bin_type=True)


def _refuse_ext(code: int, data: bytes) -> Any:
    raise ResultError(f"result: msgpack extension type {code} is not allowed")


def _field(body: dict[str, Any], key: str, kind: type | tuple[type, ...], limit: int | None = None) -> Any:
    value = body[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        allowed = " or ".join("nil" if k is type(None) else k.__name__ for k in kinds)
        raise ResultError(f"result: field {key!r} has type {type(value).__name__} (allowed: {allowed})")
    if limit is not None and isinstance(value, (str, bytes, list)) and len(value) > limit:
        raise ResultError(f"result: field {key!r} has {len(value)} items or bytes (allowed: 0 to {limit})")
    return value


def _number(body: dict[str, Any], key: str) -> float:
    value = float(_field(body, key, (int, float)))
    if not math.isfinite(value):
        raise ResultError(f"result: field {key!r} is {value} (allowed: a finite number)")
    return value


def _image(i: int, record: Any, shape: tuple[int, ...]) -> bytes:
    if not isinstance(record, dict) or set(record) != _IMAGE_KEYS:
        keys = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise ResultError(f"result: image {i} must be a map of {sorted(_IMAGE_KEYS)}, got {keys}")
    dtype, declared, data = record["dtype"], record["shape"], record["data"]
    if dtype not in IMAGE_DTYPES:
        raise ResultError(f"result: image {i} has dtype {str(dtype)[:40]!r} (allowed: {', '.join(IMAGE_DTYPES)})")
    if not isinstance(declared, list) or tuple(declared) != shape:
        raise ResultError(f"result: image {i} has shape {str(declared)[:80]} (allowed: {list(shape)}, the job's)")
    size = math.prod(shape) * IMAGE_DTYPES[dtype]
    if not isinstance(data, bytes) or len(data) != size:
        got = len(data) if isinstance(data, bytes) else type(data).__name__
        raise ResultError(f"result: image {i} has {got} bytes (allowed: {size} for its shape)")
    return data


def decode(payload: object, image_shape: tuple[int, ...], max_bytes: int = MAX_BYTES) -> SegmentResult | NodeError:
    """Reply bytes to a `SegmentResult` (or the node's `NodeError`); `ResultError` for anything else.
    `image_shape` is what the job's images must be (frames, height, width, 3)."""
    body = open_envelope(payload, noun="result", fmt=FORMAT, version=VERSION, max_bytes=max_bytes,
                         ext_hook=_refuse_ext, error=ResultError)
    keys = {"ok": _OK_KEYS, "error": _ERROR_KEYS}.get(body.get("kind"))  # type: ignore[arg-type]
    if keys is None:
        raise ResultError(f"result: kind {str(body.get('kind'))[:20]!r} (allowed: ok, error)")
    if set(body) != keys:
        extra, missing = sorted(set(body) - keys)[:5], sorted(keys - set(body))[:5]
        raise ResultError(f"result: unknown fields {extra} / missing fields {missing}")
    if body["kind"] == "error":
        return NodeError(_field(body, "code", str, MAX_TEXT), _field(body, "message", str, MAX_TEXT))
    images = _field(body, "images", list, MAX_IMAGES)
    previews = _field(body, "previews", list, MAX_IMAGES)
    if not all(isinstance(p, bytes) and len(p) <= MAX_PREVIEW_BYTES and p.startswith(PNG_SIGNATURE)
               for p in previews):
        raise ResultError(f"result: previews must be PNG files of at most {MAX_PREVIEW_BYTES} bytes")
    loaded = _field(body, "loaded", list, MAX_LOADED)
    if not all(isinstance(m, str) and len(m) <= MAX_TEXT for m in loaded):
        raise ResultError(f"result: field 'loaded' must hold model names of at most {MAX_TEXT} characters")
    return SegmentResult(
        shard_id=_field(body, "shard_id", str, MAX_TEXT),
        index=_field(body, "index", int),
        node=_field(body, "node", str, MAX_TEXT),
        gpu=_field(body, "gpu", str, MAX_TEXT),
        seconds=_number(body, "seconds"),
        denoise_seconds=_number(body, "denoise_seconds"),
        memory_mode=_field(body, "memory_mode", str, MAX_TEXT),
        stopped_at=_field(body, "stopped_at", (int, type(None))),
        peak_gib=_number(body, "peak_gib"),
        loaded=tuple(loaded),
        precision=_field(body, "precision", str, MAX_TEXT),
        checkpoint=_field(body, "checkpoint", (bytes, type(None))),
        images=tuple(_image(i, record, image_shape) for i, record in enumerate(images)),
        previews=tuple(previews),
    )


def image_shape(job: JobSpec) -> tuple[int, int, int, int]:
    """The shape every decoded sample of `job` has on the wire: frames, height, width, RGB."""
    return (job.frames, job.height, job.width, 3)
