"""Stable Diffusion 1.x/2.x: CLIP text encoder, conditional UNet, KL VAE (`StableDiffusionPipeline`)."""

from __future__ import annotations

import numpy as np
import torch
from diffusers import DiffusionPipeline, StableDiffusionImg2ImgPipeline, StableDiffusionPipeline
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from PIL import Image

from farm.contracts.domain import JobSpec, Sample
from farm.pipelines import schedulers
from farm.pipelines.conditioning import resized
from farm.pipelines.families.base import Family, Live, begin_at, cpu_generators, plain_call, to_uint8
from farm.pipelines.tiny import build_demo_pipeline


class SD15(Family):
    name = "sd15"
    pipeline_class = StableDiffusionPipeline
    stages = {"encode": ("text_encoder", "tokenizer"), "denoise": ("unet",), "decode": ("vae",)}

    def build_tiny(self, seed: int = 0) -> DiffusionPipeline:
        return build_demo_pipeline(seed)

    def prepare_stage(self, pipe: DiffusionPipeline, stage: str, configs: dict[str, dict]) -> None:
        pipe.vae_scale_factor = 2 ** (len(configs["vae"]["block_out_channels"]) - 1)

    @staticmethod
    def cfg(pipe: DiffusionPipeline, job: JobSpec) -> bool:
        # The pipeline's own rule: guidance only above 1, never for guidance-distilled UNets.
        unet = getattr(pipe, "unet", None)
        return job.guidance > 1 and (unet is None or unet.config.time_cond_proj_dim is None)

    @torch.no_grad()
    def encode(self, pipe: DiffusionPipeline, job: JobSpec, samples: tuple[Sample, ...]) -> dict[str, torch.Tensor]:
        prompts = [s.prompt for s in samples]
        cfg = self.cfg(pipe, job)
        positive, negative = pipe.encode_prompt(
            prompts, pipe._execution_device, 1, cfg, [job.negative_prompt] * len(prompts) if cfg else None
        )
        return {"prompt_embeds": torch.cat([negative, positive]) if cfg else positive}

    def set_timesteps(self, pipe: DiffusionPipeline, job: JobSpec, scheduler: SchedulerMixin,
                      latents_shape: tuple[int, ...]) -> None:
        scheduler.set_timesteps(job.steps, device=pipe._execution_device)

    @torch.no_grad()
    def init_latents(self, pipe: DiffusionPipeline, job: JobSpec, cond: dict[str, torch.Tensor],
                     generators: list[torch.Generator], scheduler: SchedulerMixin,
                     configs: dict[str, dict]) -> torch.Tensor:
        # As the pipeline does: timesteps first, since init_noise_sigma depends on them ("leading" spacing).
        self.set_timesteps(pipe, job, scheduler, ())
        pipe.scheduler = scheduler  # prepare_latents scales by this scheduler's init_noise_sigma
        embeds = cond["prompt_embeds"]
        channels = configs["unet"]["in_channels"]
        return pipe.prepare_latents(len(generators), channels, job.height, job.width, embeds.dtype,
                                    pipe._execution_device, generators)

    @torch.no_grad()
    def step(self, pipe: DiffusionPipeline, live: Live, i: int) -> torch.Tensor:
        job, scheduler = live.job, live.scheduler
        cfg = self.cfg(pipe, job)
        t = scheduler.timesteps[i]
        model_input = torch.cat([live.latents] * 2) if cfg else live.latents
        model_input = scheduler.scale_model_input(model_input, t)
        noise = pipe.unet(model_input, t, encoder_hidden_states=live.cond["prompt_embeds"], return_dict=False)[0]
        if cfg:
            uncond, text = noise.chunk(2)
            noise = uncond + job.guidance * (text - uncond)
        extra = pipe.prepare_extra_step_kwargs(live.generators, 0.0)
        return scheduler.step(noise, t, live.latents, **extra, return_dict=False)[0]

    @torch.no_grad()
    def decode(self, pipe: DiffusionPipeline, live: Live) -> list[np.ndarray]:
        latents = live.latents.to(pipe.vae.dtype)
        scaled = latents / pipe.vae.config.scaling_factor
        image = pipe.vae.decode(scaled, return_dict=False, generator=live.generators)[0]
        arrays = pipe.image_processor.postprocess(image, output_type="np", do_denormalize=[True] * image.shape[0])
        return [to_uint8(a) for a in arrays]

    @torch.no_grad()
    def plain(self, pipe: DiffusionPipeline, job: JobSpec, samples: tuple[Sample, ...]) -> list[np.ndarray]:
        pipe.scheduler = schedulers.make(job.sampler, pipe.scheduler.config)
        cfg = job.guidance > 1
        out = plain_call(pipe, job, samples, guidance_scale=job.guidance,
                         negative_prompt=[job.negative_prompt] * len(samples) if cfg else None)
        return [to_uint8(a) for a in out.images]

    @torch.no_grad()
    def image_latents(self, pipe: DiffusionPipeline, job: JobSpec, cond: dict[str, torch.Tensor],
                      image: Image.Image, generators: list[torch.Generator], scheduler: SchedulerMixin,
                      configs: dict[str, dict]) -> torch.Tensor:
        # `StableDiffusionImg2ImgPipeline.__call__`: timesteps, `get_timesteps`, then `prepare_latents`
        # (each sample's image encoded with its own generator, then its noise drawn).
        self.set_timesteps(pipe, job, scheduler, ())
        timestep = begin_at(scheduler, job).repeat(len(generators))
        view = StableDiffusionImg2ImgPipeline.from_pipe(pipe)
        view.scheduler = scheduler  # after __init__, which would rewrite its config (clip_sample)
        pixels = view.image_processor.preprocess(resized(image, job.width, job.height))
        return view.prepare_latents(pixels, timestep, len(generators), 1, cond["prompt_embeds"].dtype,
                                    pipe._execution_device, generators)

    @torch.no_grad()
    def plain_image(self, pipe: DiffusionPipeline, job: JobSpec, samples: tuple[Sample, ...],
                    image: Image.Image) -> list[np.ndarray]:
        view = StableDiffusionImg2ImgPipeline.from_pipe(pipe)
        view.scheduler = schedulers.make(job.sampler, pipe.scheduler.config)  # as a user swaps samplers
        view.set_progress_bar_config(disable=True)
        cfg = job.guidance > 1
        out = view(prompt=[s.prompt for s in samples], image=resized(image, job.width, job.height),
                   strength=job.strength, num_inference_steps=job.steps, guidance_scale=job.guidance,
                   negative_prompt=[job.negative_prompt] * len(samples) if cfg else None,
                   generator=cpu_generators(samples), output_type="np")
        return [to_uint8(a) for a in out.images]
