"""VRAM cost model (pure): how much GPU memory a shard needs on a node.

A model's stages (text encode, denoise, VAE decode) run one after another with every component's
weights resident, so a shard's peak is the resident weights plus the largest stage's activations.
Activations grow linearly with batch and with pixel count. The figures come from
../shared/data/gpu_backbones_h100.json and gpu_stages_h100.json (fp16/bf16, measured on an H100 with
torch.cuda.max_memory_allocated), fitted as `fixed + per_sample * batch` at a reference size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from farm.errors import DoesNotFit

# What a node's budget loses before any model loads: the CUDA context and allocator slack are not in
# max_memory_allocated, and a card that drives a desktop keeps some for itself.
RESERVE_GIB = 0.5
MARGIN = 0.10


@dataclass(frozen=True)
class StageCost:
    weights_gib: float
    fixed_gib: float
    per_sample_gib: float


@dataclass(frozen=True)
class ModelProfile:
    """Memory profile of a full-size model at its reference resolution."""

    name: str
    reference_width: int
    reference_height: int
    stages: dict[str, StageCost]

    @property
    def weights_gib(self) -> float:
        return sum(s.weights_gib for s in self.stages.values())


PROFILES: dict[str, ModelProfile] = {
    # SD 1.5 at 512x512: UNet rows sd15_unet_512 (batch 1..32), VAE rows sd_vae_decode_512_b{1,4,8},
    # CLIP-L row clip_l_text_b16.
    "sd15": ModelProfile(
        name="sd15",
        reference_width=512,
        reference_height=512,
        stages={
            "encode": StageCost(weights_gib=0.229, fixed_gib=0.0, per_sample_gib=0.0018),
            "denoise": StageCost(weights_gib=1.601, fixed_gib=0.054, per_sample_gib=0.1272),
            "decode": StageCost(weights_gib=0.156, fixed_gib=0.146, per_sample_gib=0.4819),
        },
    ),
}


def usable_gib(vram_gib: float) -> float:
    """The part of a node's budget that model weights and activations may use."""
    return vram_gib * (1.0 - MARGIN) - RESERVE_GIB


def shard_peak_gib(profile: ModelProfile, batch: int, width: int, height: int) -> float:
    """Peak VRAM of a shard of `batch` samples at `width`x`height` (full-size pixels)."""
    area = (width * height) / (profile.reference_width * profile.reference_height)
    activations = max(s.fixed_gib + s.per_sample_gib * batch * area for s in profile.stages.values())
    return profile.weights_gib + activations


def max_batch(profile: ModelProfile, vram_gib: float, width: int, height: int, limit: int = 1024) -> int:
    """The largest batch whose peak fits the node's usable budget (0 when not even one sample fits)."""
    budget = usable_gib(vram_gib)
    lo, hi = 0, limit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if shard_peak_gib(profile, mid, width, height) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


def min_vram_gib(profile: ModelProfile, width: int, height: int) -> float:
    """The smallest node budget that holds one sample, rounded up to a tenth of a GiB."""
    need = (shard_peak_gib(profile, 1, width, height) + RESERVE_GIB) / (1.0 - MARGIN)
    return math.ceil(need * 10) / 10


def check_fits(profile: ModelProfile, width: int, height: int, budgets: list[float]) -> None:
    """Refuse a job that fits no node, naming the VRAM it would need."""
    if not any(max_batch(profile, b, width, height) > 0 for b in budgets):
        need = min_vram_gib(profile, width, height)
        largest = max(budgets, default=0.0)
        raise DoesNotFit(
            f"job needs a node with at least {need:.1f} GiB of VRAM at {width}x{height}; "
            f"the largest node has {largest:.1f} GiB"
        )
