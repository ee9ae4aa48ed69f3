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
from farm.core.costmodel import Role, Shape

# An H100 relative to the reference card (speed 1.0, an 8 GB RTX 3060 Ti class card): about 7 times
# its dense fp16 tensor throughput. Only the prior depends on it; learned factors replace it.
H100_SPEED = 7.0
# Weight of the newest observation in the running average of a node's factor.
LEARNING_RATE = 0.3
# Reading a model's weights into GPU memory (page cache or NVMe, then PCIe) and building the pipeline.
LOAD_GIB_PER_S = 2.0
LOAD_FIXED_S = 3.0
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


def load_seconds(shape: Shape) -> float:
    """Seconds to load a model onto a node that does not hold it (disk speed, not GPU speed)."""
    return LOAD_FIXED_S + shape.profile.weights_gib / LOAD_GIB_PER_S


@dataclass(frozen=True)
class SpeedBook:
    """Learned seconds per reference-second, per (node, family). Immutable: `observe` returns a new book."""

    factors: dict[tuple[str, str], float] = field(default_factory=dict)

    def factor(self, node: NodeInfo, family: str) -> float:
        """Node seconds per reference-second: learned, or 1 / the node's declared speed."""
        return self.factors.get((node.name, family), 1.0 / node.speed)

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
        old = self.factors.get(key)
        new = measured if old is None else math.exp(
            (1 - LEARNING_RATE) * math.log(old) + LEARNING_RATE * math.log(measured))
        return SpeedBook({**self.factors, key: new})
