"""The state handed between two segments, as plain data (no torch, no msgpack).

Pipelines turn torch tensors into `RawTensor` (dtype name, shape, raw bytes) and back; the wire codec
turns a `Checkpoint` into msgpack bytes and back. Resuming from a checkpoint gives the same latents
as never stopping: latents and prompt embeddings travel bit for bit, with the scheduler's mutable
state (step index, multistep history) and each sample's RNG state (ancestral samplers draw noise
every step).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Union

# Bytes per element of the dtypes a checkpoint may carry.
DTYPE_SIZES: dict[str, int] = {
    "float32": 4, "float16": 2, "bfloat16": 2, "float64": 8,
    "int64": 8, "int32": 4, "int16": 2, "int8": 1, "uint8": 1, "bool": 1,
}


@dataclass(frozen=True)
class RawTensor:
    """A tensor as bytes: enough to rebuild it exactly in any framework."""

    dtype: str
    shape: tuple[int, ...]
    data: bytes

    def __post_init__(self) -> None:
        if self.dtype not in DTYPE_SIZES:
            raise ValueError(f"dtype {self.dtype!r} is not one of {', '.join(DTYPE_SIZES)}")
        if any(d < 0 for d in self.shape):
            raise ValueError(f"shape {self.shape} has a negative dimension")
        expected = math.prod(self.shape) * DTYPE_SIZES[self.dtype]
        if len(self.data) != expected:
            raise ValueError(f"{len(self.data)} bytes for a {self.dtype} tensor of shape {self.shape} "
                             f"(expected {expected})")


# A runtime alias, so it stays Union[...]: the recursive "StateValue" forward reference needs typing to resolve it.
StateValue = Union[None, bool, int, float, str, RawTensor, list["StateValue"]]  # noqa: UP007 recursive runtime alias


@dataclass(frozen=True)
class Checkpoint:
    """Everything a node needs to run steps `[step, ...)` of a shard without text encoders or VAE.

    `step` counts the denoising loop's iterations (model evaluations): for first-order samplers
    that is the step number; second-order samplers may only be cut where a whole step ends.
    `conditioning` holds the family's encoded prompts by name (e.g. `prompt_embeds`,
    `pooled_prompt_embeds`), already arranged as the denoiser consumes them, and an image-to-video
    job's encoded image (Wan: `condition`, the first frame's latents and mask; `image_embeds`).
    """

    model: str
    family: str
    sampler: str
    step: int
    steps: int
    guidance: float
    width: int
    height: int
    frames: int
    seeds: tuple[int, ...]
    latents: RawTensor
    conditioning: dict[str, RawTensor]
    scheduler_state: dict[str, StateValue]
    rng_states: tuple[bytes, ...]
