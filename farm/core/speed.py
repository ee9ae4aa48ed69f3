"""How long work takes on a node (pure): a prior from the H100 measurements, then what the node shows.

Time is counted in reference-seconds: seconds on a card of speed 1.0, the unit of `NodeInfo.speed`.
The prior for one denoising step of a batch is the H100's measured step time, fitted per family as
`overhead + per_sample * batch * token scale` (../shared/data/gpu_backbones_h100.json), times
`H100_SPEED`. A node's time is reference-seconds times its factor: 1 / speed until it has run work of
that family, then the learned ratio of measured to reference seconds (an average in log space,
so one slow segment moves it a little and a consistently slow card a lot).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from farm.contracts.domain import NodeInfo
from farm.core.costmodel import ENCODE_ROLES, MemoryMode, Role, Shape

# An H100 relative to the reference card (speed 1.0, an 8 GB RTX 3060 Ti class card): about 7 times
# its dense fp16 tensor throughput. Only the prior depends on it; learned factors replace it.
H100_SPEED = 7.0
# The family key under which a node's join calibration is kept (a proxy for every family).
CALIBRATED = "*calibrated"
# Weight of the newest observation in the running average of a node's factor.
LEARNING_RATE = 0.3
# Reading a model's weights into GPU memory (page cache or NVMe, then PCIe) and building the pipeline.
LOAD_GIB_PER_S = 2.0
LOAD_FIXED_S = 3.0
# Encoded prompts a checkpoint carries per sample (a long T5/LLM prompt embedding in bf16).
PROMPT_BYTES = 4 * 2**20
# Moving a component between CPU and GPU memory under model CPU offload (pinned-less PCIe 4.0).
OFFLOAD_GIB_PER_S = 12.0


@dataclass(frozen=True)
class StepTime:
    """H100 seconds of one denoising step (classifier-free guidance included) at the reference shape."""

    overhead_s: float
    per_sample_s: float

    def seconds(self, batch: int, scale: float) -> float:
        return self.overhead_s + self.per_sample_s * batch * scale


# Least squares over every row of gpu_backbones_h100.json.
STEP_TIMES: dict[str, StepTime] = {
    "sd15": StepTime(0.0173, 0.00536),
    "sdxl": StepTime(0.0192, 0.03423),
    "ltxv": StepTime(0.0069, 0.17471),
    "wan21": StepTime(0.0031, 1.28318),
    "hunyuanvideo15": StepTime(0.0, 17.94204),
}
# H100 seconds to decode one sample at the reference shape, untiled and tiled (gpu_stages_h100.json;
# HunyuanVideo's untiled decode does not fit, so it has only the tiled time).
DECODE_SECONDS: dict[str, tuple[float, float]] = {
    "sd15": (0.121 / 8, 0.121 / 8),
    "sdxl": (0.342 / 4, 0.461 / 4),
    "ltxv": (0.181, 0.235),
    "wan21": (2.071, 5.029),
    "hunyuanvideo15": (7.792, 7.792),
}


def reference_step_seconds(shape: Shape, batch: int) -> float:
    """Seconds of one denoising step of `batch` samples on the reference card (the prior). A real
    model sized from its files scales its family's time by its denoiser's parameters."""
    profile = shape.profile
    return STEP_TIMES[profile.timing].seconds(batch, shape.scale) * H100_SPEED * profile.compute_scale


def reference_decode_seconds(shape: Shape, batch: int, tiled: bool) -> float:
    """Seconds to decode `batch` samples on the reference card."""
    untiled, tiled_s = DECODE_SECONDS[shape.profile.timing]
    return (tiled_s if tiled else untiled) * batch * shape.scale * H100_SPEED


def streamed_step_seconds(shape: Shape) -> float:
    """Seconds one denoising step spends moving the denoisers' weights under group offload, when the
    CUDA stream cannot hide the copy behind the compute (an upper bound: add it to the step time)."""
    return sum(c.weights_gib for c in shape.profile.role(Role.DENOISER)) / OFFLOAD_GIB_PER_S


def offload_seconds(shape: Shape) -> float:
    """Seconds a shard spends moving components over PCIe under model CPU offload: each moves onto
    the GPU when it runs and off when another runs (the denoiser stays between a shard's segments on
    one card), so about every component's weights once per shard."""
    return sum(c.weights_gib for c in shape.profile.components) / OFFLOAD_GIB_PER_S


def checkpoint_bytes(shape: Shape, batch: int) -> int:
    """About how many bytes a shard's checkpoint moves between nodes: float32 latents (16 channels at
    an eighth of the resolution, the video families' layout; image families have fewer) and the
    encoded prompts (up to a few MB for a video family's text encoder), per sample."""
    latents = 16 * (shape.width // 8) * (shape.height // 8) * shape.profile.latent_frames(shape.frames) * 4
    return batch * (latents + PROMPT_BYTES)


def last_segment_modes(shape: Shape, batch: int, steps: int,
                       needs: tuple[tuple[str, float], ...]) -> tuple[tuple[str, float], ...]:
    """`needs` (mode, peak GiB), cheapest in time first, for a shard's last segment of `steps` steps:
    that segment decodes, and a tiled decode of a video can cost more than moving the weights of a
    model offload (the denoising segments before it keep `MODES` order, where tiling costs nothing).
    Timed on the reference card; the order, not the seconds, is what counts."""

    def seconds(mode_need: tuple[str, float]) -> float:
        mode = MemoryMode(mode_need[0])
        denoise = reference_step_seconds(shape, batch) + (streamed_step_seconds(shape) if mode.streamed else 0.0)
        moved = 0.0
        if mode.offload and not mode.streamed:
            kept = (c.weights_gib for c in shape.profile.components if c.role not in ENCODE_ROLES)  # it does not encode
            moved = sum(kept) / OFFLOAD_GIB_PER_S
        return steps * denoise + reference_decode_seconds(shape, batch, mode.tiled) + moved

    return tuple(sorted(needs, key=seconds))


def load_seconds(shape: Shape) -> float:
    """Seconds to load a model onto a node that does not hold it (disk speed, not GPU speed)."""
    return LOAD_FIXED_S + shape.profile.weights_gib / LOAD_GIB_PER_S


@dataclass(frozen=True)
class SpeedBook:
    """Learned seconds per reference-second, per (node, family). Immutable: `observe` returns a new book."""

    factors: dict[tuple[str, str], float] = field(default_factory=dict)

    def factor(self, node: NodeInfo, family: str) -> float:
        """Node seconds per reference-second: learned for the family, else the node's calibration, else
        1 / its declared speed (an owner's guess, often off by a quarter or more)."""
        return self.factors.get((node.name, family), self.factors.get((node.name, CALIBRATED), 1.0 / node.speed))

    def calibrate(self, node: str, factor: float) -> SpeedBook:
        """Seed the node's speed from a calibration it measured when it joined (seconds per
        reference-second over a few steps): every family not learned yet is timed by it, until the
        node's first segment of that family measures the family itself (`observe`). Ignored unless a
        positive finite number."""
        if not factor > 0 or not math.isfinite(factor):
            return self
        return SpeedBook({**self.factors, (node, CALIBRATED): factor})

    def relative_speed(self, node: NodeInfo, family: str) -> float:
        return 1.0 / self.factor(node, family)

    def step_seconds(self, node: NodeInfo, shape: Shape, batch: int) -> float:
        """Expected seconds of one denoising step of a batch on this node."""
        return reference_step_seconds(shape, batch) * self.factor(node, shape.family)

    def seconds_per_sample_step(self, node: NodeInfo, shape: Shape, batch: int) -> float:
        return self.step_seconds(node, shape, batch) / batch

    def observe(self, node: str, shape: Shape, batch: int, steps: int, seconds: float) -> SpeedBook:
        """Learn from a node having run `steps` denoising steps of a batch in `seconds`.

        Pass denoising time only (not model loading or decoding), e.g. the time between the first and
        the last step event of a segment, so a cold start does not make a fast card look slow.
        """
        if steps <= 0 or batch <= 0 or not seconds > 0 or not math.isfinite(seconds):
            return self
        measured = seconds / (reference_step_seconds(shape, batch) * steps)
        key = (node, shape.family)
        old = self.factors.get(key)  # the first segment of a family replaces the calibration proxy
        new = measured if old is None else math.exp(
            (1 - LEARNING_RATE) * math.log(old) + LEARNING_RATE * math.log(measured))
        return SpeedBook({**self.factors, key: new})
