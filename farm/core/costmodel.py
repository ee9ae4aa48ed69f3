"""VRAM cost model (pure): how much GPU memory a shard of a model needs, in each memory mode.

A model is a handful of components that run one after another: text encoders (encode), a denoiser
(every step) and a VAE decoder (after the last step). A job with an init image also encodes it in its
first segment (`Shape.init_frames`): an image encoder where the family has one (`IMAGE_ENCODERS`) and
the VAE's encoder, which runs on the VAE's weights (`Component.shares`). While a component runs, the GPU holds
resident weights plus that component's activations, so a shard's peak is the largest of those sums:

* full          every component's weights stay on the GPU (fastest: nothing moves between stages)
* offload       model CPU offload: only the running component is on the GPU
* group_offload the running component streams its blocks to the GPU two at a time (one running, one
                prefetched on a CUDA stream), everything else stays in CPU memory: the lowest peak,
                the slowest (every step moves the denoiser's weights over PCIe)
* *_tiled       the VAE decodes in tiles, which bounds its activations at a tile's worth

A node that runs only some of a shard's components (its decode or encode runs on another node: `roles`) needs
only the peaks of those.

Activations are `fixed + per_sample * batch * scale`, where `scale` is the latent token count
relative to the measured reference shape (pixels times latent frames). Every figure comes from
../shared/data/gpu_backbones_h100.json and gpu_stages_h100.json (fp16/bf16 on an H100, read with
torch.cuda.max_memory_allocated), except the text encoders marked "estimate", which were not
measured and are sized from their parameter count (2 bytes each) with the nearest measured encoder's
activations. tests/test_costmodel.py checks the predictions against every measured row.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from functools import lru_cache

from farm.contracts.errors import DoesNotFit

# What a node's budget loses before any model loads: the CUDA context and allocator slack are not in
# max_memory_allocated, and a card that drives a desktop keeps some for itself.
RESERVE_GIB = 0.5
MARGIN = 0.10
# Bounds on a node's learned correction: one odd reading must not make a card unusable or reckless.
MIN_CORRECTION = 0.9
MAX_CORRECTION = 2.0

# (weight bytes, activation bytes) per value; fp8 stores weights in 8 bits and computes in 16.
DTYPE_BYTES: dict[str, tuple[int, int]] = {"fp16": (2, 2), "bf16": (2, 2), "fp8": (1, 2), "fp32": (4, 4)}
# Group offload keeps two groups of one block each on the GPU (the running one and the one a CUDA
# stream prefetches), plus the weights outside the blocks (embeddings, norms, projections), which
# onload as one group: at most this share of a component's weights for the big encoders and
# denoisers (T5's shared embedding is 3% of its weights, Qwen2.5-VL's 8%).
STREAMED_GROUPS = 2
OUTSIDE_BLOCKS_SHARE = 0.10


class Role(StrEnum):
    TEXT = "text"
    IMAGE = "image"  # an init image's vision encoder (CLIP, SigLIP): a fixed-size input, like text
    LATENT = "latent"  # the VAE encoding an init image into latents: grows with its pixels and frames
    DENOISER = "denoiser"
    DECODER = "decoder"


# The components a segment runs: a whole shard on one node runs them all; a shard whose decode or
# encode fits no memory mode of its node runs the rest there and that stage as a segment of its own on
# a node it fits (`farm.core.planner`).
ALL_ROLES = frozenset(Role)
ENCODE_ROLES = frozenset({Role.TEXT, Role.IMAGE, Role.LATENT})  # what a shard's first segment runs before its steps
DENOISER_ROLES = frozenset({Role.DENOISER})
DENOISE_ROLES = ENCODE_ROLES | DENOISER_ROLES  # a home whose decode runs elsewhere
DECODE_ROLES = frozenset({Role.DECODER})
# The units a shard splits into at most: a job fits the farm when each fits some node.
STAGES = (ENCODE_ROLES, DENOISER_ROLES, DECODE_ROLES)
# Roles whose input does not grow with the output's resolution (a prompt; an image resized to the encoder's side).
FIXED_INPUT = frozenset({Role.TEXT, Role.IMAGE})


class MemoryMode(StrEnum):
    """How a node holds a model, cheapest in time first: `MODES` is tried in this order."""

    FULL = "full"
    FULL_TILED = "full_tiled"
    OFFLOAD = "offload"
    OFFLOAD_TILED = "offload_tiled"
    GROUP_OFFLOAD = "group_offload"
    GROUP_OFFLOAD_TILED = "group_offload_tiled"

    @property
    def offload(self) -> bool:
        """Weights leave the GPU between uses (model offload or group offload)."""
        return self is not MemoryMode.FULL and self is not MemoryMode.FULL_TILED

    @property
    def streamed(self) -> bool:
        """Group offload: the running component's blocks stream in, not the whole component."""
        return self in (MemoryMode.GROUP_OFFLOAD, MemoryMode.GROUP_OFFLOAD_TILED)

    @property
    def tiled(self) -> bool:
        return self.value.endswith("_tiled")


MODES = tuple(MemoryMode)


@dataclass(frozen=True)
class Activation:
    """Activation memory at the reference shape: `fixed + per_sample * batch`.

    `cap` bounds the token scale (tiled VAE decoding never holds more than a tile), in units of the
    reference shape; the measured `per_sample` is the value at scale min(1, cap).
    """

    fixed_gib: float
    per_sample_gib: float
    cap: float = math.inf

    def gib(self, batch: int, scale: float) -> float:
        return self.fixed_gib + self.per_sample_gib * batch * min(scale, self.cap) / min(1.0, self.cap)


@dataclass(frozen=True)
class Component:
    """One part of a pipeline. `tiled` is its activation when tiled (decoders), `activation` untiled;
    None where it cannot run that way at all (HunyuanVideo's VAE runs out of 80 GB untiled)."""

    name: str
    role: Role
    weights_gib: float
    activation: Activation | None
    tiled: Activation | None = None
    # Repeated blocks group offload streams one by one (0: none, the whole component onloads).
    blocks: int = 0
    # A component that always runs in this dtype whatever the model's (Wan's VAE runs in fp32);
    # None: the model's dtype. Figures above are at 16 bits either way.
    dtype: str | None = None
    # The component whose weights this one runs on (the VAE encodes with the module it decodes with):
    # its `weights_gib` are that one's, resident once, so a profile counts them once.
    shares: str = ""

    def streamed_gib(self) -> float:
        """Weights on the GPU while this component runs under group offload."""
        if self.blocks <= 0:
            return self.weights_gib
        return self.weights_gib * min(1.0, STREAMED_GROUPS / self.blocks + OUTSIDE_BLOCKS_SHARE)

    def activation_gib(self, batch: int, scale: float, tiled: bool) -> float:
        act = self.tiled if tiled and self.tiled is not None else self.activation
        if act is None:
            return math.inf
        # Text and image encoders see a prompt or a resized image, not the output's pixels: their
        # activations do not grow with resolution.
        return act.gib(batch, 1.0 if self.role in FIXED_INPUT else scale)


@dataclass(frozen=True)
class ModelProfile:
    """Memory profile of a full-size model family at its reference shape (the measured one)."""

    name: str
    reference_width: int
    reference_height: int
    components: tuple[Component, ...]
    reference_frames: int = 1
    temporal_compression: int = 1
    # A profile sized from a real model's files (`sized`) keeps the measured profile's timings
    # (`timing`) and scales them by its denoiser's parameters relative to the measured one's.
    base: str = ""
    compute_scale: float = 1.0

    @property
    def timing(self) -> str:
        """The measured profile whose step and decode times apply."""
        return self.base or self.name

    @property
    def weights_gib(self) -> float:
        return sum(c.weights_gib for c in self.components if not c.shares)

    def component(self, name: str) -> Component:
        for c in self.components:
            if c.name == name:
                return c
        raise KeyError(f"{self.name} has no component {name!r}; it has {', '.join(c.name for c in self.components)}")

    def role(self, role: Role) -> tuple[Component, ...]:
        return tuple(c for c in self.components if c.role is role)

    def latent_frames(self, frames: int) -> int:
        return (frames - 1) // self.temporal_compression + 1

    def scale(self, width: int, height: int, frames: int = 1) -> float:
        """Latent tokens of one sample relative to the reference shape."""
        pixels = (width * height) / (self.reference_width * self.reference_height)
        return pixels * self.latent_frames(frames) / self.latent_frames(self.reference_frames)


def _clip_l() -> Component:
    # clip_l_text_b16: 16 sequences = 8 samples with classifier-free guidance.
    return Component("clip_l", Role.TEXT, 0.229, Activation(0.0, (0.306 - 0.229) / 8))


def _sd_vae(fixed: float, per_sample: float, tiled_per_sample: float, tile_cap: float) -> Component:
    return Component("vae", Role.DECODER, 0.156, Activation(fixed, per_sample),
                     Activation(0.0, tiled_per_sample, tile_cap))


PROFILES: dict[str, ModelProfile] = {
    "sd15": ModelProfile(
        "sd15", 512, 512,
        (
            _clip_l(),
            # sd15_unet_512, batch 1..32 (least squares on peak minus weights).
            Component("unet", Role.DENOISER, 1.601, Activation(0.0527, 0.1272)),
            # sd_vae_decode_512_b{1,4,8}; a 512 px image is one tile (SDXL's tiled row: ~1.06 of
            # a 512 px sample's activations per tile), so tiling only helps above 512 px.
            _sd_vae(0.1495, 0.4866, 0.5155, 1.06),
        ),
    ),
    "sdxl": ModelProfile(
        "sdxl", 1024, 1024,
        (
            _clip_l(),
            # estimate: OpenCLIP bigG text encoder, 694.7 M parameters.
            Component("clip_g", Role.TEXT, 1.294, Activation(0.0, 0.02)),
            # sdxl_unet_1024, batch 1..8.
            Component("unet", Role.DENOISER, 4.782, Activation(0.1400, 0.3134)),
            # sdxl_vae_decode_1024_b{1,4} and _b4_tiled.
            _sd_vae(2.574 - 0.156 - 1.8747, 1.8747, (2.218 - 0.156) / 4, (2.218 - 0.156) / 4 / 1.8747),
        ),
    ),
    "ltxv": ModelProfile(
        "ltxv", 768, 512,
        (
            # t5xxl_encoder_seq128_b2 (LTX-Video encodes 128 tokens; batch 2 = one sample with CFG).
            Component("t5xxl", Role.TEXT, 8.87, Activation(0.0, 8.953 - 8.87), blocks=24),
            # ltxv_2b_768x512x121, batch 1..4.
            Component("transformer", Role.DENOISER, 3.583, Activation(0.0330, 0.7557), blocks=28),
            # ltxv_vae_decode_768x512x121 and _tiled.
            Component("vae", Role.DECODER, 0.781, Activation(0.0, 5.308 - 0.781),
                      Activation(0.0, 3.817 - 0.781, (3.817 - 0.781) / (5.308 - 0.781))),
        ),
        reference_frames=121, temporal_compression=8,
    ),
    "wan21": ModelProfile(
        "wan21", 832, 480,
        (
            # estimate: umT5-XXL encoder = T5-XXL's 8.87 GiB plus its 256k-token embedding (+0.92 B
            # parameters); activations of t5xxl_encoder_seq512_b2 (Wan encodes 512 tokens).
            Component("umt5xxl", Role.TEXT, 10.58, Activation(0.0, 9.325 - 8.87), blocks=24),
            # wan21_1.3b_832x480x81, batch 1..2.
            Component("transformer", Role.DENOISER, 2.643, Activation(0.0500, 2.9560), blocks=30),
            # wan_vae_decode_832x480x81 and _tiled (measured in bf16; diffusers runs Wan's VAE in fp32).
            Component("vae", Role.DECODER, 0.236, Activation(0.0, 4.662 - 0.236),
                      Activation(0.0, 1.228 - 0.236, (1.228 - 0.236) / (4.662 - 0.236)), dtype="fp32"),
        ),
        reference_frames=81, temporal_compression=4,
    ),
    "hunyuanvideo15": ModelProfile(
        "hunyuanvideo15", 848, 480,
        (
            # estimate: Qwen2.5-VL-7B language model without its LM head (7.07 B parameters) and
            # the ByT5 glyph encoder (0.22 B); activations as T5-XXL at 512 tokens.
            Component("qwen25vl", Role.TEXT, 13.17, Activation(0.0, 9.325 - 8.87), blocks=28),
            Component("byt5", Role.TEXT, 0.41, Activation(0.0, 0.05), blocks=12),
            # hunyuanvideo15_8.3b_848x480x121, batch 1.
            Component("transformer", Role.DENOISER, 15.51, Activation(0.0, 36.846 - 15.51), blocks=54),
            # hunyuanvideo15_vae_decode_848x480x121 ran out of 80 GB untiled; _tiled measured.
            # The tile's share of the reference shape is not measured; 0.5 keeps smaller videos costed
            # at least at half the measured tiled peak.
            Component("vae", Role.DECODER, 2.348, None, Activation(0.0, 16.07 - 2.348, 0.5)),
        ),
        reference_frames=121, temporal_compression=4,
    ),
}

# Estimates (no measured rows), built from measured components.
PROFILES["sdxl_refiner"] = ModelProfile(
    "sdxl_refiner", 1024, 1024,
    (
        *PROFILES["sdxl"].components,
        # estimate: SDXL 1.0 refiner UNet, about 2.3 B parameters; activations as the base UNet's.
        Component("refiner", Role.DENOISER, 4.28, Activation(0.1400, 0.3134)),
    ),
)
PROFILES["flux"] = ModelProfile(
    "flux", 1024, 1024,
    (
        _clip_l(),
        # t5xxl_encoder_seq512_b2 (Flux encodes 512 tokens, one sequence per sample: no CFG).
        Component("t5xxl", Role.TEXT, 8.87, Activation(0.0, (9.325 - 8.87) / 2), blocks=24),
        # estimate: Flux.1-dev transformer, 11.9 B parameters in bf16. Activations at ~64 bytes per
        # token and hidden unit, as measured for Wan 2.1 and LTX-Video: 4096 image + 512 text tokens, 3072 wide.
        Component("transformer", Role.DENOISER, 22.2, Activation(0.05, 0.84), blocks=57),
        # estimate: decodes like SDXL's VAE at 1024 px (same decoder, 16 latent channels).
        PROFILES["sdxl"].component("vae"),
    ),
)


# The vision encoders an image-to-video job's first segment runs on its init image, by name
# (`farm.jobs.catalog.ModelInfo.image_encoder`). Weights: parameter count x 2 bytes, the count of
# transformers' model class built (on the meta device) at the checkpoint's architecture. Activations:
# estimate (not measured), one image of a few hundred tokens, about ByT5's 0.05 GiB, once per shard.
IMAGE_ENCODERS: dict[str, Component] = {
    # Wan 2.1 I2V's `image_encoder`: CLIPVisionModel at open-CLIP ViT-H/14 (hidden 1280, 32 layers,
    # MLP 5120, 224 px, patch 14): 630.8 M parameters; diffusers' Wan I2V example runs it in fp32
    # (catalog.PRECISION), 2.35 GiB resident.
    "clip_vit_h14": Component("clip_vit_h14", Role.IMAGE, 630_766_080 * 2 / 2**30, Activation(0.05, 0.0),
                              blocks=32, dtype="fp32"),
    # HunyuanVideo-1.5 I2V's `image_encoder`: SiglipVisionModel at siglip-so400m-patch14-384 (hidden
    # 1152, 27 layers, MLP 4304, 384 px, patch 14, with its pooling head): 428.2 M parameters, bf16.
    "siglip_so400m": Component("siglip_so400m", Role.IMAGE, 428_225_600 * 2 / 2**30, Activation(0.05, 0.0),
                               blocks=27),
}


def vae_encoder(profile: ModelProfile) -> Component:
    """The VAE encoding an init image, on the VAE's own weights. estimate: no encode was measured, so
    its activations are the decode's (gpu_stages_h100.json's *_vae_decode_* rows, untiled and tiled),
    an upper bound: the encoder is the smaller half and keeps no upsampled activations. A VAE that was
    not measured untiled (HunyuanVideo-1.5's) encodes only in the tiled modes."""
    vae = profile.role(Role.DECODER)[0]
    return replace(vae, name="vae_encode", role=Role.LATENT, shares=vae.name)


@lru_cache(maxsize=256)
def with_encode(profile: ModelProfile, image_encoder: str, init_image: bool) -> ModelProfile:
    """`profile` with what a job's first segment also runs on its init image: the image encoder (by
    name; "" for none) and, with an init image, the VAE encode."""
    extra = (IMAGE_ENCODERS[image_encoder],) if image_encoder else ()
    extra += (vae_encoder(profile),) if init_image else ()
    return replace(profile, components=extra + profile.components) if extra else profile


@dataclass(frozen=True)
class Shape:
    """What one sample of a job costs: the full-size family, the resolution it is costed at, dtype,
    and its init image: the frames the VAE encodes of it (0: no init image; an image-to-video
    pipeline that encodes the image as the first frame of a blank video encodes the video's frames)
    and the image encoder its family runs on it (`IMAGE_ENCODERS`; "" for none)."""

    family: str
    width: int
    height: int
    frames: int = 1
    dtype: str = "fp16"
    init_frames: int = 0
    image_encoder: str = ""

    @property
    def profile(self) -> ModelProfile:
        return with_encode(PROFILES[self.family], self.image_encoder, self.init_frames > 0)

    @property
    def scale(self) -> float:
        return self.profile.scale(self.width, self.height, self.frames)

    def role_scale(self, role: Role) -> float:
        """Latent tokens a component of `role` sees, relative to the reference shape: the VAE encode
        sees the init image's frames, everything else the output's."""
        if role is Role.LATENT:
            return self.profile.scale(self.width, self.height, self.init_frames)
        return self.scale


@dataclass(frozen=True)
class Fit:
    """How a node runs a shard: memory mode, batch, and the predicted peak (GiB). `decodes` False: the
    node holds the shard's denoise but not its decode, which runs on another node; `encodes` False:
    nor its encode (text encoders, an init image's encoders), which runs on another node first."""

    mode: MemoryMode
    batch: int
    need_gib: float
    decodes: bool = True
    encodes: bool = True


def sized(base: ModelProfile, name: str, components: Sequence[Component], compute_scale: float) -> ModelProfile:
    """`base` (a measured family) with the components of one real model, as sized from its files."""
    return ModelProfile(name, base.reference_width, base.reference_height, tuple(components),
                        base.reference_frames, base.temporal_compression, base=base.timing,
                        compute_scale=compute_scale)


def register(profile: ModelProfile) -> str:
    """Make a sized profile known by name, so shapes (which name their profile) can price it; a real
    model's profile is derived from its files the same way in every process that resolves it."""
    PROFILES[profile.name] = profile
    return profile.name


def _dtype(dtype: str) -> tuple[float, float]:
    try:
        weights, acts = DTYPE_BYTES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; known: {', '.join(DTYPE_BYTES)}") from None
    return weights / 2, acts / 2


def component_peak_gib(shape: Shape, name: str, batch: int, mode: MemoryMode = MemoryMode.FULL) -> float:
    """Peak VRAM while component `name` runs on a batch: resident weights plus its activations.

    In full mode every component's weights are resident; with offload only this one's; with group
    offload only this one's streamed blocks. math.inf when the component cannot run in this mode.
    """
    profile = shape.profile
    comp = profile.component(name)
    w_scale, a_scale = _dtype(comp.dtype or shape.dtype)
    if mode.streamed:
        resident = comp.streamed_gib() * w_scale
    elif mode.offload:
        resident = comp.weights_gib * w_scale
    else:
        resident = sum(c.weights_gib * _dtype(c.dtype or shape.dtype)[0] for c in profile.components if not c.shares)
    return resident + comp.activation_gib(batch, shape.role_scale(comp.role), mode.tiled) * a_scale


def shard_peak_gib(shape: Shape, batch: int, mode: MemoryMode = MemoryMode.FULL,
                   roles: frozenset[Role] = ALL_ROLES) -> float:
    """Peak VRAM of a shard of `batch` samples on a node that runs the components of `roles` (all of
    them unless its decode runs elsewhere): the largest of their peaks. Full mode still counts every
    component's weights resident (a node that decoded before may hold the VAE)."""
    return max(component_peak_gib(shape, c.name, batch, mode) for c in shape.profile.components if c.role in roles)


def usable_gib(vram_gib: float) -> float:
    """The part of a node's budget that model weights and activations may use."""
    return vram_gib * (1.0 - MARGIN) - RESERVE_GIB


def max_batch(shape: Shape, vram_gib: float, mode: MemoryMode = MemoryMode.FULL, limit: int = 1024,
              correction: float = 1.0, roles: frozenset[Role] = ALL_ROLES) -> int:
    """The largest batch whose peak (times the node's correction) fits its usable budget; 0 if none."""
    budget = usable_gib(vram_gib)
    lo, hi = 0, limit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if shard_peak_gib(shape, mid, mode, roles) * correction <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


def fits(shape: Shape, vram_gib: float, want: int, correction: float = 1.0,
         roles: frozenset[Role] = ALL_ROLES) -> list[Fit]:
    """For each batch from 1 up to the largest the node holds (at most `want`), the cheapest mode
    that holds it; empty when not even one sample fits."""
    caps = {mode: max_batch(shape, vram_gib, mode, want, correction, roles) for mode in MODES}
    out = []
    for batch in range(1, max(caps.values()) + 1):
        mode = next(m for m in MODES if caps[m] >= batch)
        out.append(Fit(mode, batch, shard_peak_gib(shape, batch, mode, roles), Role.DECODER in roles,
                       Role.TEXT in roles))
    return out


def best_fit(shape: Shape, vram_gib: float, want: int, correction: float = 1.0,
             roles: frozenset[Role] = ALL_ROLES) -> Fit | None:
    """The largest batch up to `want` that the node holds in any mode, in the cheapest mode that holds
    it; None when not even one sample fits."""
    caps = {mode: max_batch(shape, vram_gib, mode, want, correction, roles) for mode in MODES}
    batch = max(caps.values())
    if batch == 0:
        return None
    mode = next(m for m in MODES if caps[m] == batch)
    return Fit(mode, batch, shard_peak_gib(shape, batch, mode, roles), Role.DECODER in roles, Role.TEXT in roles)


def mode_needs(shape: Shape, batch: int, roles: frozenset[Role] = ALL_ROLES) -> tuple[tuple[str, float], ...]:
    """(mode, peak GiB) of a batch in every mode that can run it at all, cheapest in time first."""
    peaks = ((str(mode), shard_peak_gib(shape, batch, mode, roles)) for mode in MODES)
    return tuple((mode, peak) for mode, peak in peaks if math.isfinite(peak))


def min_vram_gib(shape: Shape) -> float:
    """The smallest node budget that holds one sample in some mode, rounded up to a tenth of a GiB."""
    peak = min(shard_peak_gib(shape, 1, mode) for mode in MODES)
    return math.ceil((peak + RESERVE_GIB) / (1.0 - MARGIN) * 10) / 10


def does_not_fit(shape: Shape, budgets: Sequence[float]) -> DoesNotFit:
    """The refusal of a job that fits none of `budgets`: names the smallest VRAM it would need."""
    frames = f"x{shape.frames} frames" if shape.frames > 1 else ""
    return DoesNotFit(
        f"job needs a node with at least {min_vram_gib(shape):.1f} GiB of VRAM for {shape.family} at "
        f"{shape.width}x{shape.height}{frames}; the largest node has {max(budgets, default=0.0):.1f} GiB"
    )


def check_fits(shape: Shape, budgets: Sequence[float]) -> None:
    """Refuse a job that fits no node in any memory mode, naming the VRAM it would need. A job whose
    encode, denoise and decode each fit some node fits: the planner runs its encode or decode apart."""
    if any(best_fit(shape, b, 1) for b in budgets):
        return
    if not all(any(best_fit(shape, b, 1, roles=roles) for b in budgets) for roles in STAGES):
        raise does_not_fit(shape, budgets)


def peak_correction(observed: Sequence[tuple[float, float]]) -> float:
    """A node's correction factor from its observed (predicted, measured) peaks in GiB.

    Drivers, allocators and attention kernels differ between cards, so a node that measures above
    the prediction gets its predictions scaled up by the worst ratio seen (an out-of-memory costs a
    whole segment); one that measures below earns at most a 10% discount. 1.0 without observations.
    """
    ratios = [m / p for p, m in observed if p > 0 and m > 0]
    if not ratios:
        return 1.0
    return min(MAX_CORRECTION, max(MIN_CORRECTION, max(ratios)))
