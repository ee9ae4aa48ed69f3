"""msgpack codec for checkpoints: versioned, and strict about what it accepts.

A checkpoint crosses process and machine boundaries (Ray object store today, disk and other PCs
later), so decoding treats its input as untrusted: a truncated, garbage, oversized or wrong-version
payload raises `CheckpointError` with one clear line and never a msgpack or struct traceback.
"""

from __future__ import annotations

from typing import Any

import msgpack

from farm.contracts.errors import CheckpointError
from farm.wire.checkpoint import Checkpoint, RawTensor, StateValue
from farm.wire.envelope import open_envelope

FORMAT = "farm.checkpoint"
VERSION = 1
TENSOR_EXT = 1
MAX_BYTES = 4 * 2**30  # larger than any full-size video latent + embeddings, small enough to refuse junk
MAX_DEPTH = 8


def _ext_default(obj: Any) -> Any:
    if isinstance(obj, RawTensor):
        return msgpack.ExtType(TENSOR_EXT, msgpack.packb([obj.dtype, list(obj.shape), obj.data], use_bin_type=True))
    raise TypeError(f"cannot encode {type(obj).__name__} in a checkpoint")


def _ext_hook(code: int, data: bytes) -> Any:
    if code != TENSOR_EXT:
        raise CheckpointError(f"checkpoint: unknown extension type {code}")
    try:
        dtype, shape, raw = msgpack.unpackb(data, raw=False)
        return RawTensor(dtype, tuple(shape), raw)
    except CheckpointError:
        raise
    except Exception as e:  # any malformed tensor record is the same failure to the caller
        raise CheckpointError(f"checkpoint: bad tensor record ({e})") from None


def encode(cp: Checkpoint) -> bytes:
    """Checkpoint to msgpack bytes."""
    body = {
        "format": FORMAT,
        "version": VERSION,
        "model": cp.model,
        "family": cp.family,
        "sampler": cp.sampler,
        "step": cp.step,
        "steps": cp.steps,
        "guidance": cp.guidance,
        "width": cp.width,
        "height": cp.height,
        "frames": cp.frames,
        "seeds": list(cp.seeds),
        "latents": cp.latents,
        "conditioning": cp.conditioning,
        "scheduler_state": cp.scheduler_state,
        "rng_states": list(cp.rng_states),
    }
    return msgpack.packb(body, default=_ext_default, use_bin_type=True)


def _need(body: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    if key not in body:
        raise CheckpointError(f"checkpoint: missing field {key!r}")
    value = body[key]
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise CheckpointError(f"checkpoint: field {key!r} has type bool")
    if not isinstance(value, kind):
        raise CheckpointError(f"checkpoint: field {key!r} has type {type(value).__name__}")
    return value


def _state_value(key: str, value: Any, depth: int = 0) -> StateValue:
    if depth > MAX_DEPTH:
        raise CheckpointError(f"checkpoint: scheduler state {key!r} is nested too deeply")
    if value is None or isinstance(value, (bool, int, float, str, RawTensor)):
        return value
    if isinstance(value, list):
        return [_state_value(key, v, depth + 1) for v in value]
    raise CheckpointError(f"checkpoint: scheduler state {key!r} has type {type(value).__name__}")


def decode(payload: bytes, max_bytes: int = MAX_BYTES) -> Checkpoint:
    """msgpack bytes to a Checkpoint, or CheckpointError naming what is wrong."""
    body = open_envelope(payload, noun="checkpoint", fmt=FORMAT, version=VERSION, max_bytes=max_bytes,
                         ext_hook=_ext_hook, error=CheckpointError, accepted=(bytes, bytearray, memoryview))
    seeds = _need(body, "seeds", list)
    rng = _need(body, "rng_states", list)
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise CheckpointError("checkpoint: field 'seeds' must hold whole numbers")
    if not all(isinstance(r, bytes) for r in rng):
        raise CheckpointError("checkpoint: field 'rng_states' must hold bytes")
    conditioning = _need(body, "conditioning", dict)
    if not all(isinstance(k, str) and isinstance(v, RawTensor) for k, v in conditioning.items()):
        raise CheckpointError("checkpoint: conditioning must map names to tensors")
    state = _need(body, "scheduler_state", dict)
    if not all(isinstance(k, str) for k in state):
        raise CheckpointError("checkpoint: scheduler state keys must be strings")
    step, steps = _need(body, "step", int), _need(body, "steps", int)
    # `step` counts model evaluations: second-order samplers make up to two per step.
    if not (0 <= step <= 2 * steps and steps > 0):
        raise CheckpointError(f"checkpoint: evaluation {step} is outside 0..{2 * steps} for {steps} steps")
    latents = _need(body, "latents", RawTensor)
    if latents.shape[:1] != (len(seeds),) or len(rng) not in (0, len(seeds)):
        raise CheckpointError("checkpoint: latents, seeds and RNG states disagree on the batch size")
    return Checkpoint(
        model=_need(body, "model", str),
        family=_need(body, "family", str),
        sampler=_need(body, "sampler", str),
        step=step,
        steps=steps,
        guidance=float(_need(body, "guidance", (int, float))),
        width=_need(body, "width", int),
        height=_need(body, "height", int),
        frames=_need(body, "frames", int),
        seeds=tuple(seeds),
        latents=latents,
        conditioning=conditioning,
        scheduler_state={k: _state_value(k, v) for k, v in state.items()},
        rng_states=tuple(rng),
    )
