"""The models a farm knows by name, with the limits validation checks against (pure data).

A built-in model is made in code (no download). It declares the full-size model whose memory
profile it stands in for, and the pixel scale between them: the demo model renders 64x64 images
that the scheduler costs as SD 1.5 at 512x512, so shard sizes are what real cards would get.
"""

from __future__ import annotations

from dataclasses import dataclass

from farm.contracts.errors import InvalidInput
from farm.core.costmodel import PROFILES, ModelProfile

# Samplers each family can run. Heun and DPM2 are second-order: cut only at whole steps.
EPS_SAMPLERS = ("ddim", "euler", "euler_a", "dpmpp_2m", "unipc", "heun", "dpm2")
FLOW_SAMPLERS = ("flow_euler", "unipc")
# diffusers' base + refiner split repeats the base's last evaluation when a second-order sampler is
# cut, so an SDXL run with its refiner takes first-order samplers only.
FIRST_ORDER_EPS_SAMPLERS = ("ddim", "euler", "euler_a", "dpmpp_2m", "unipc")
FAMILY_SAMPLERS: dict[str, tuple[str, ...]] = {
    "sd15": EPS_SAMPLERS,
    "sdxl": EPS_SAMPLERS,
    "sdxl_refiner": FIRST_ORDER_EPS_SAMPLERS,
    "flux": ("flow_euler",),
    "ltxv": ("flow_euler",),
    "wan21": FLOW_SAMPLERS,
    "wan22": FLOW_SAMPLERS,
    "wan21_i2v": FLOW_SAMPLERS,
    "wan22_i2v": FLOW_SAMPLERS,
    "hunyuanvideo15": ("flow_euler",),
    "hunyuanvideo15_i2v": ("flow_euler",),
}

# The dtype each family runs in on a GPU, as diffusers runs it: fp16 for the SD family (SDXL's VAE
# upcasts itself to fp32 to decode: `force_upcast`), bf16 for the flow transformers, and the
# components that differ (Wan's VAE runs in fp32). A GPU without bf16 runs the bf16 families in fp16;
# a CPU runs everything in fp32 unless told otherwise.
PRECISION: dict[str, tuple[str, dict[str, str]]] = {
    "sd15": ("fp16", {}),
    "sdxl": ("fp16", {}),
    "sdxl_refiner": ("fp16", {}),
    "flux": ("bf16", {}),
    "ltxv": ("bf16", {}),
    "wan21": ("bf16", {"vae": "fp32"}),
    "wan22": ("bf16", {"vae": "fp32"}),
    "wan21_i2v": ("bf16", {"vae": "fp32", "image_encoder": "fp32"}),  # the CLIP encoder too, as diffusers' example
    "wan22_i2v": ("bf16", {"vae": "fp32"}),
    "hunyuanvideo15": ("bf16", {}),
    "hunyuanvideo15_i2v": ("bf16", {}),
}

# What an init image costs beyond the text-only run (`costmodel.Shape`): the vision encoder each
# image-to-video family runs on it (Wan 2.2 I2V A14B has none; img2img families have none), and the
# families whose pipeline VAE-encodes it as the first frame of a blank video of the job's length
# (diffusers' `WanImageToVideoPipeline.prepare_latents`), not the image alone.
IMAGE_ENCODER: dict[str, str] = {"wan21_i2v": "clip_vit_h14", "hunyuanvideo15_i2v": "siglip_so400m"}
VIDEO_CONDITION = frozenset({"wan21_i2v", "wan22_i2v"})


@dataclass(frozen=True)
class ModelInfo:
    name: str
    family: str
    profile: str
    cost_scale: int
    max_size: int
    default_size: int
    default_steps: int
    description: str
    # A diffusers-format folder shipped inside the farm package (relative to farm/), for models whose
    # weights are committed; None for models built in code on first use.
    bundled: str | None = None
    max_frames: int = 1  # 1: an image model
    fps: int = 0  # a video model's frame rate
    default_sampler: str = "euler_a"
    default_guidance: float = 7.5
    # A real model's folder on this PC (a local diffusers folder or a cached Hugging Face snapshot).
    source: str | None = None
    # HunyuanVideo-1.5 I2V sizes its video from the init image: about this side squared in pixels, at
    # the image's aspect ratio (the transformer's `target_size`); 0: width and height are the job's.
    image_target_size: int = 0

    @property
    def samplers(self) -> tuple[str, ...]:
        return FAMILY_SAMPLERS[self.family]

    @property
    def memory(self) -> ModelProfile:
        return PROFILES[self.profile]

    @property
    def image_encoder(self) -> str:
        """The vision encoder (a `costmodel.IMAGE_ENCODERS` name) its first segment runs on an init
        image; "" for none."""
        return IMAGE_ENCODER.get(self.family, "")

    def init_frames(self, frames: int) -> int:
        """The frames its VAE encodes of an init image in a render of `frames` frames."""
        return frames if self.family in VIDEO_CONDITION else 1

    def costed_size(self, width: int, height: int) -> tuple[int, int]:
        """The full-size resolution whose VRAM this render is costed at."""
        return width * self.cost_scale, height * self.cost_scale


MODELS: dict[str, ModelInfo] = {
    # Tiny image models: 64x64 images costed as the full-size model at 1024x1024.
    "tiny-sdxl": ModelInfo(
        name="tiny-sdxl", family="sdxl", profile="sdxl", cost_scale=16, max_size=128, default_size=64,
        default_steps=20, description="tiny SDXL-architecture pipeline (two text encoders) built in code",
        default_sampler="euler",
    ),
    "tiny-sdxl-refiner": ModelInfo(
        name="tiny-sdxl-refiner", family="sdxl_refiner", profile="sdxl_refiner", cost_scale=16, max_size=128,
        default_size=64, default_steps=20, default_sampler="euler",
        description="tiny SDXL base + refiner pipeline built in code (the refiner takes the second half)",
    ),
    "tiny-flux": ModelInfo(
        name="tiny-flux", family="flux", profile="flux", cost_scale=16, max_size=128, default_size=64,
        default_steps=20, description="tiny Flux.1-architecture pipeline (CLIP + T5, guidance embedding) built in code",
        default_sampler="flow_euler",
    ),
    "demo-tiny": ModelInfo(
        name="demo-tiny",
        family="sd15",
        profile="sd15",
        cost_scale=8,
        max_size=128,
        default_size=64,
        default_steps=20,
        description="tiny SD-1.5-architecture pipeline built in code with seeded random weights",
    ),
    # A toy trained on coloured shapes (farm/demo_model/train.py); its weights ship in the package.
    "demo-shapes": ModelInfo(
        name="demo-shapes",
        family="sd15",
        profile="sd15",
        cost_scale=8,
        max_size=64,
        default_size=64,
        default_steps=20,
        description="toy SD-1.5-format model trained on coloured shapes: 'a red circle on a blue background'",
        bundled="models/demo-shapes",
        default_guidance=3.0,
    ),
    # Tiny video models: 32x32 frames costed as the full-size model's resolution.
    "tiny-ltx": ModelInfo(
        name="tiny-ltx", family="ltxv", profile="ltxv", cost_scale=24, max_size=64, default_size=32,
        default_steps=8, description="tiny LTX-Video-architecture pipeline built in code (8k+1 frames)",
        max_frames=33, fps=25, default_sampler="flow_euler",
    ),
    "tiny-wan21": ModelInfo(
        name="tiny-wan21", family="wan21", profile="wan21", cost_scale=26, max_size=64, default_size=32,
        default_steps=8, description="tiny Wan-2.1-architecture pipeline built in code (4k+1 frames)",
        max_frames=33, fps=16, default_sampler="unipc",
    ),
    "tiny-wan22": ModelInfo(
        name="tiny-wan22", family="wan22", profile="wan21", cost_scale=26, max_size=64, default_size=32,
        default_steps=8, description="tiny Wan-2.2-architecture pipeline (high- and low-noise experts) built in code",
        max_frames=33, fps=16, default_sampler="unipc",
    ),
    # Image-to-video: the Wan checkpoints that start from an init image (one is required), costed as
    # Wan 2.1 (the same transformer size) plus what encodes the image (`IMAGE_ENCODER`, `VIDEO_CONDITION`).
    "tiny-wan21-i2v": ModelInfo(
        name="tiny-wan21-i2v", family="wan21_i2v", profile="wan21", cost_scale=26, max_size=64, default_size=32,
        default_steps=8, description="tiny Wan-2.1-I2V-architecture pipeline (CLIP image encoder) built in code",
        max_frames=33, fps=16, default_sampler="unipc",
    ),
    "tiny-wan22-i2v": ModelInfo(
        name="tiny-wan22-i2v", family="wan22_i2v", profile="wan21", cost_scale=26, max_size=64, default_size=32,
        default_steps=8, description="tiny Wan-2.2-I2V-A14B-architecture pipeline (two experts) built in code",
        max_frames=33, fps=16, default_sampler="unipc",
    ),
    "tiny-hunyuan15": ModelInfo(
        name="tiny-hunyuan15", family="hunyuanvideo15", profile="hunyuanvideo15", cost_scale=26, max_size=64,
        default_size=32, default_steps=8, description="tiny HunyuanVideo-1.5-architecture pipeline built in code",
        max_frames=33, fps=24, default_sampler="flow_euler",
    ),
    "tiny-hunyuan15-i2v": ModelInfo(
        name="tiny-hunyuan15-i2v", family="hunyuanvideo15_i2v", profile="hunyuanvideo15", cost_scale=26,
        max_size=64, default_size=32, default_steps=8, max_frames=33, fps=24, default_sampler="flow_euler",
        description="tiny HunyuanVideo-1.5 I2V-architecture pipeline (SigLIP image encoder) built in code; "
                    "needs an init image", image_target_size=32,
    ),
}


def get_model(name: str) -> ModelInfo:
    """A built-in model by name, or a real one: a local diffusers folder or a cached Hugging Face id."""
    if name in MODELS:
        return MODELS[name]
    from farm.jobs.sources import external_model  # reads model_index.json: only for names that are not built in

    info = external_model(name)
    if info is None:
        raise InvalidInput(
            "model", f"unknown model {name!r}: give a built-in name ({', '.join(sorted(MODELS))}), a diffusers "
            "folder, or a Hugging Face id downloaded on this PC (huggingface-cli download ID)"
        )
    return info
