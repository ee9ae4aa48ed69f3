"""What a model family must say so the generic engine can run it as segments.

The engine (farm/pipelines/engine.py) owns the segment mechanics: stage-wise loading, checkpoints,
RNG and scheduler state. A family owns what differs between pipelines: how prompts are encoded,
how initial latents are drawn, what one loop iteration does, how latents become pixels. Each
method mirrors the corresponding part of the diffusers pipeline's `__call__`, calling the
pipeline's own helpers where it has them, so a cut run equals the uncut pipeline call.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from farm.contracts.domain import JobSpec, Sample
from farm.contracts.errors import InvalidInput

if TYPE_CHECKING:
    from PIL import Image


@dataclass
class Live:
    """A shard between loop iterations, in torch form on one node."""

    job: JobSpec
    seeds: tuple[int, ...]
    latents: torch.Tensor
    cond: dict[str, torch.Tensor]
    scheduler: SchedulerMixin
    generators: list[torch.Generator]
    step: int = 0
    extras: dict[str, object] = field(default_factory=dict)


class Family(ABC):
    """A model family (SD 1.5, SDXL, Flux, LTX-Video, Wan, HunyuanVideo-1.5)."""

    name: str
    pipeline_class: type[DiffusionPipeline]
    # Pipeline components each stage loads; everything else is passed as None to from_pretrained.
    stages: dict[str, tuple[str, ...]]

    @abstractmethod
    def build_tiny(self, seed: int = 0) -> DiffusionPipeline:
        """A tiny pipeline of this family built in code (tests, demo): seeded, no download."""

    @abstractmethod
    def encode(self, pipe: DiffusionPipeline, job: JobSpec, samples: tuple[Sample, ...]) -> dict[str, torch.Tensor]:
        """Prompt conditioning, arranged as the denoiser consumes it (guidance halves included)."""

    @abstractmethod
    def init_latents(self, pipe: DiffusionPipeline, job: JobSpec, cond: dict[str, torch.Tensor],
                     generators: list[torch.Generator], scheduler: SchedulerMixin,
                     configs: dict[str, dict]) -> torch.Tensor:
        """Initial noise from one generator per sample, drawn as the pipeline draws it.

        `configs` holds every component's config (read from disk, weights not loaded): the encode
        stage has no denoiser or VAE, but the latent shape depends on both.
        """

    @abstractmethod
    def set_timesteps(self, pipe: DiffusionPipeline, job: JobSpec, scheduler: SchedulerMixin,
                      latents_shape: tuple[int, ...]) -> None:
        """Prepare `scheduler` for `job.steps` steps exactly as the pipeline does (shift, mu, sigmas)."""

    @abstractmethod
    def step(self, pipe: DiffusionPipeline, live: Live, i: int) -> torch.Tensor:
        """Loop iteration `i`: model evaluation, guidance, scheduler step; returns the new latents."""

    @abstractmethod
    def decode(self, pipe: DiffusionPipeline, live: Live) -> list[np.ndarray]:
        """8-bit RGB per sample: (H, W, 3) for images, (F, H, W, 3) for videos."""

    @abstractmethod
    def plain(self, pipe: DiffusionPipeline, job: JobSpec, samples: tuple[Sample, ...]) -> list[np.ndarray]:
        """The baseline: one ordinary pipeline call for these samples, as 8-bit RGB like `decode`."""

    def image_latents(self, pipe: DiffusionPipeline, job: JobSpec, cond: dict[str, torch.Tensor],
                      image: Image.Image, generators: list[torch.Generator], scheduler: SchedulerMixin,
                      configs: dict[str, dict]) -> torch.Tensor:
        """img2img: set `scheduler` up for `job.steps` begun at `job.first_step`, encode `image` with
        the VAE of `pipe` (the decode stage's) and noise it to that step, drawing from `generators`
        as the family's img2img pipeline does. Families without img2img refuse the init image.

        Image-to-video families draw their noise here and put the VAE-encoded image the denoiser takes
        beside the latents into `cond` (which the checkpoint carries), so later segments need no image."""
        raise InvalidInput("init_image", f"not supported by {self.name} models (img2img: sd15, sdxl, flux)")

    def encode_image(self, pipe: DiffusionPipeline, job: JobSpec, image: Image.Image) -> dict[str, torch.Tensor]:
        """Conditioning the encode stage makes from the init image with an image encoder of its own
        (Wan 2.1 I2V's CLIP vision embeds), added to the prompt conditioning; none by default."""
        return {}

    def plain_image(self, pipe: DiffusionPipeline, job: JobSpec, samples: tuple[Sample, ...],
                    image: Image.Image) -> list[np.ndarray]:
        """The img2img baseline: one call of the family's diffusers img2img pipeline, made from `pipe`."""
        raise InvalidInput("init_image", f"not supported by {self.name} models (img2img: sd15, sdxl, flux)")

    def spatial_latents(self, live: Live) -> torch.Tensor:
        """(B, C, H, W) latents for a preview: as they are for images, the middle frame for videos.
        Families with packed latents (token sequences) unpack them here."""
        latents = live.latents
        return latents[:, :, latents.shape[2] // 2] if latents.ndim == 5 else latents

    def denoiser_stage(self, index: Mapping[str, object], live: Live, i: int) -> str:
        """The stage whose denoiser runs loop iteration `i`. One-denoiser models: always "denoise".
        Two-stage models (SDXL base then refiner, Wan 2.2 high- then low-noise expert) name another
        stage for the later iterations; `index` is the model's model_index.json (their split point)."""
        return "denoise"

    def prepare_stage(self, pipe: DiffusionPipeline, stage: str, configs: dict[str, dict]) -> None:  # noqa: B027 optional hook, no-op by default
        """Fix up a pipeline loaded without some components (e.g. its VAE scale factor)."""

    def latent_dtype(self, model_dtype: torch.dtype) -> torch.dtype:
        """The dtype the pipeline keeps latents in between steps: the model's, unless the family's
        pipeline keeps them in float32 (LTX-Video, Wan)."""
        return model_dtype


class ImageRequired:
    """A family whose checkpoints are image-to-video only (Wan I2V, HunyuanVideo-1.5 I2V): without an
    init image there is neither noise to start from nor a plain call to compare with. The head refuses
    such a job first (`farm.jobs.init_image.image_required`); this is the node's own guard. Listed
    before the text-to-video family it extends."""

    def init_latents(self, pipe: DiffusionPipeline, job: JobSpec, cond: dict[str, torch.Tensor],
                     generators: list[torch.Generator], scheduler: SchedulerMixin,
                     configs: dict[str, dict]) -> torch.Tensor:
        raise needs_image(job)

    def plain(self, pipe: DiffusionPipeline, job: JobSpec, samples: tuple[Sample, ...]) -> list[np.ndarray]:
        raise needs_image(job)


def needs_image(job: JobSpec) -> InvalidInput:
    return InvalidInput("init_image", f"{job.model} is an image-to-video model: it needs an init image")


def plain_call(pipe: DiffusionPipeline, job: JobSpec, samples: tuple[Sample, ...], **extra: object) -> object:
    """One ordinary pipeline call for `samples` (the baseline a cut run must equal), with the
    arguments every family passes the same way: one generator per sample, as the farm draws them."""
    return pipe(
        prompt=[s.prompt for s in samples],
        generator=cpu_generators(samples),
        num_inference_steps=job.steps,
        height=job.height,
        width=job.width,
        output_type="np",
        **extra,
    )


def begin_at(scheduler: SchedulerMixin, job: JobSpec) -> torch.Tensor:
    """Start a set-up scheduler at the job's first step, as the img2img pipelines' `get_timesteps`
    does; returns the first timestep that runs (the one the init latents are noised to), as (1,)."""
    start = job.first_step * scheduler.order
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start)
    return scheduler.timesteps[start:start + 1]


def cpu_generators(samples: tuple[Sample, ...]) -> list[torch.Generator]:
    """One CPU generator per sample, as the engine draws noise (the same numbers on any device)."""
    return [torch.Generator(device="cpu").manual_seed(s.seed) for s in samples]


def to_uint8(image: np.ndarray) -> np.ndarray:
    """diffusers' float-to-8-bit rule (`numpy_to_pil`): scale by 255 and round."""
    return (image * 255).round().astype("uint8")
