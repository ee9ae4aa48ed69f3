"""Stable Diffusion's denoising loop, cut into segments that can run on different nodes.

The loop is the one `StableDiffusionPipeline.__call__` runs (same calls, same order), opened up so
it can stop after any step and resume elsewhere from a `Checkpoint`:

    encode   prompt embeddings (with the unconditional half for classifier-free guidance),
             initial latents from one torch.Generator per sample (so a sample does not depend on
             which batch it lands in)
    denoise  steps [start, end): UNet, guidance, scheduler step (ancestral samplers draw from the
             per-sample generators, whose states travel in the checkpoint)
    decode   VAE decode and the pipeline's own post-processing, then rounding to 8-bit RGB
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from farm.checkpoint import Checkpoint, RawTensor, StateValue
from farm.model import JobSpec, Sample
from farm.pipelines.tensors import from_raw, to_raw

SCHEDULERS: dict[str, type[SchedulerMixin]] = {
    "ddim": DDIMScheduler,
    "euler": EulerDiscreteScheduler,
    "euler_a": EulerAncestralDiscreteScheduler,
    "dpmpp_2m": DPMSolverMultistepScheduler,
    "unipc": UniPCMultistepScheduler,
}
SCHEDULER_OPTIONS: dict[str, dict[str, object]] = {
    "dpmpp_2m": {"algorithm_type": "dpmsolver++", "solver_order": 2},
}
# Scheduler attributes that are configuration, not state: rebuilt by from_config.
_NOT_STATE = {"_internal_dict"}


def make_scheduler(pipe: StableDiffusionPipeline, sampler: str) -> SchedulerMixin:
    """A fresh scheduler of the job's sampler, configured like the model's own."""
    return SCHEDULERS[sampler].from_config(pipe.scheduler.config, **SCHEDULER_OPTIONS.get(sampler, {}))


def _state_out(value: object, name: str) -> StateValue:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, torch.Tensor):
        return to_raw(value)
    if isinstance(value, np.ndarray):
        return to_raw(torch.from_numpy(value))
    if isinstance(value, (list, tuple)):
        return [_state_out(v, name) for v in value]
    raise TypeError(f"scheduler attribute {name!r} of type {type(value).__name__} cannot travel in a checkpoint")


def _state_in(value: StateValue, device: torch.device) -> object:
    if isinstance(value, RawTensor):
        return from_raw(value, device)
    if isinstance(value, list):
        return [_state_in(v, device) for v in value]
    return value


def scheduler_state(scheduler: SchedulerMixin) -> dict[str, StateValue]:
    """Every mutable attribute of a scheduler (step index, multistep history, sigmas...)."""
    return {k: _state_out(v, k) for k, v in vars(scheduler).items() if k not in _NOT_STATE}


def restore_scheduler(scheduler: SchedulerMixin, state: dict[str, StateValue], device: torch.device) -> None:
    for key, value in state.items():
        setattr(scheduler, key, _state_in(value, device))


@dataclass
class LiveShard:
    """A shard between steps, in torch form on one node."""

    latents: torch.Tensor
    prompt_embeds: torch.Tensor
    scheduler: SchedulerMixin
    generators: list[torch.Generator]
    step: int
    job: JobSpec
    seeds: tuple[int, ...]


class SDSegments:
    """Runs encode / denoise / decode for one loaded Stable Diffusion pipeline."""

    def __init__(self, pipe: StableDiffusionPipeline, model_name: str) -> None:
        self.pipe = pipe
        self.model_name = model_name
        self.device = pipe.device

    def _cfg(self, job: JobSpec) -> bool:
        # The pipeline's own rule: guidance only above 1, and never for guidance-distilled UNets.
        return job.guidance > 1 and self.pipe.unet.config.time_cond_proj_dim is None

    def _generators(self, seeds: tuple[int, ...]) -> list[torch.Generator]:
        return [torch.Generator(device=self.device).manual_seed(s) for s in seeds]

    @torch.no_grad()
    def encode(self, job: JobSpec, samples: tuple[Sample, ...]) -> LiveShard:
        pipe = self.pipe
        prompts = [s.prompt for s in samples]
        cfg = self._cfg(job)
        positive, negative = pipe.encode_prompt(
            prompts, self.device, 1, cfg, [job.negative_prompt] * len(prompts) if cfg else None
        )
        embeds = torch.cat([negative, positive]) if cfg else positive
        scheduler = make_scheduler(pipe, job.sampler)
        scheduler.set_timesteps(job.steps, device=self.device)
        seeds = tuple(s.seed for s in samples)
        generators = self._generators(seeds)
        pipe.scheduler = scheduler  # prepare_latents scales by this scheduler's init_noise_sigma
        latents = pipe.prepare_latents(
            len(samples), pipe.unet.config.in_channels, job.height, job.width, embeds.dtype, self.device, generators
        )
        return LiveShard(latents, embeds, scheduler, generators, 0, job, seeds)

    @torch.no_grad()
    def denoise(self, live: LiveShard, end: int, on_step: Callable[[int], None] | None = None) -> LiveShard:
        pipe, job = self.pipe, live.job
        cfg = self._cfg(job)
        extra = pipe.prepare_extra_step_kwargs(live.generators, 0.0)
        timesteps = live.scheduler.timesteps
        latents = live.latents
        for i in range(live.step, end):
            t = timesteps[i]
            model_input = torch.cat([latents] * 2) if cfg else latents
            model_input = live.scheduler.scale_model_input(model_input, t)
            noise = pipe.unet(model_input, t, encoder_hidden_states=live.prompt_embeds, return_dict=False)[0]
            if cfg:
                uncond, text = noise.chunk(2)
                noise = uncond + job.guidance * (text - uncond)
            latents = live.scheduler.step(noise, t, latents, **extra, return_dict=False)[0]
            if on_step is not None:
                on_step(i + 1)
        live.latents, live.step = latents, end
        return live

    @torch.no_grad()
    def decode(self, live: LiveShard) -> list[bytes]:
        """8-bit RGB rows of each image, rounded exactly as diffusers' `numpy_to_pil` does."""
        pipe = self.pipe
        image = pipe.vae.decode(live.latents / pipe.vae.config.scaling_factor, return_dict=False, generator=live.generators)[0]
        arrays = pipe.image_processor.postprocess(image, output_type="np", do_denormalize=[True] * image.shape[0])
        return [to_uint8(a).tobytes() for a in arrays]

    def to_checkpoint(self, live: LiveShard) -> Checkpoint:
        job = live.job
        return Checkpoint(
            model=self.model_name,
            sampler=job.sampler,
            step=live.step,
            steps=job.steps,
            guidance=job.guidance,
            width=job.width,
            height=job.height,
            seeds=live.seeds,
            latents=to_raw(live.latents),
            prompt_embeds=to_raw(live.prompt_embeds),
            scheduler_state=scheduler_state(live.scheduler),
            rng_states=tuple(g.get_state().numpy().tobytes() for g in live.generators),
        )

    def from_checkpoint(self, cp: Checkpoint, job: JobSpec) -> LiveShard:
        scheduler = make_scheduler(self.pipe, job.sampler)
        scheduler.set_timesteps(job.steps, device=self.device)
        restore_scheduler(scheduler, cp.scheduler_state, self.device)
        generators = self._generators(cp.seeds)
        for g, state in zip(generators, cp.rng_states):
            g.set_state(torch.frombuffer(bytearray(state), dtype=torch.uint8))
        return LiveShard(
            latents=from_raw(cp.latents, self.device),
            prompt_embeds=from_raw(cp.prompt_embeds, self.device),
            scheduler=scheduler,
            generators=generators,
            step=cp.step,
            job=job,
            seeds=cp.seeds,
        )


def to_uint8(image: np.ndarray) -> np.ndarray:
    """diffusers' float-to-8-bit rule (`numpy_to_pil`): scale by 255 and round."""
    return (image * 255).round().astype("uint8")


def plain_render(pipe: StableDiffusionPipeline, job: JobSpec, samples: tuple[Sample, ...]) -> list[np.ndarray]:
    """The baseline the farm must match: one ordinary diffusers pipeline call for these samples."""
    pipe.scheduler = make_scheduler(pipe, job.sampler)
    cfg = job.guidance > 1
    out = pipe(
        prompt=[s.prompt for s in samples],
        negative_prompt=[job.negative_prompt] * len(samples) if cfg else None,
        generator=[torch.Generator(device=pipe.device).manual_seed(s.seed) for s in samples],
        num_inference_steps=job.steps,
        guidance_scale=job.guidance,
        height=job.height,
        width=job.width,
        output_type="np",
    )
    return [to_uint8(a) for a in out.images]
