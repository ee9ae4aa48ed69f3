"""Flux.1: CLIP (pooled) and T5 text encoders, a flow-matching transformer over packed 2x2 latent
patches with a guidance embedding instead of classifier-free guidance, and a 16-channel VAE
(`FluxPipeline`).

The schedule shifts with the image size (`mu` from the packed sequence length), so timesteps are set
after the latents are drawn, as the pipeline does. Latents travel packed, (B, tokens, C*4), together
with the positional ids of the text and image tokens.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import torch
from diffusers import (
    AutoencoderKL,
    DiffusionPipeline,
    FlowMatchEulerDiscreteScheduler,
    FluxImg2ImgPipeline,
    FluxPipeline,
    FluxTransformer2DModel,
)
from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import get_module_execution_device
from PIL import Image
from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

from farm.contracts.domain import JobSpec, Sample
from farm.pipelines import schedulers
from farm.pipelines.families.base import Family, Live, begin_at, cpu_generators, plain_call, to_uint8
from farm.pipelines.tiny import MAX_TOKENS, build_t5_tokenizer, build_tokenizer

MAX_SEQUENCE_LENGTH = 512  # T5 tokens; the pipeline's default (Flux.1-dev)


def build_tiny_flux(seed: int = 0) -> FluxPipeline:
    """Flux.1's architecture at a few hundred k parameters (diffusers' own test config), seeded, with
    Flux.1-dev's scheduler config so the resolution-dependent shift is exercised."""
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = build_tokenizer(Path(tmp))
    tokenizer_2 = build_t5_tokenizer()
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8], guidance_embeds=True,
    )
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=3,
        max_position_embeddings=MAX_TOKENS, hidden_act="gelu", layer_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))
    torch.manual_seed(seed)
    text_encoder_2 = T5EncoderModel(T5Config(
        vocab_size=len(tokenizer_2), d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, dropout_rate=0.0, pad_token_id=tokenizer_2.pad_token_id,
        eos_token_id=tokenizer_2.eos_token_id,
    ))
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1, latent_channels=1,
        norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    pipe = FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                        text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


class Flux(Family):
    name = "flux"
    pipeline_class = FluxPipeline
    stages = {
        "encode": ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"),
        "denoise": ("transformer",),
        "decode": ("vae",),
    }

    def build_tiny(self, seed: int = 0) -> DiffusionPipeline:
        return build_tiny_flux(seed)

    def prepare_stage(self, pipe: DiffusionPipeline, stage: str, configs: dict[str, dict]) -> None:
        # Without its VAE the pipeline assumes a factor of 8; the latent shape needs the real one.
        pipe.vae_scale_factor = 2 ** (len(configs["vae"]["block_out_channels"]) - 1)

    @torch.no_grad()
    def encode(self, pipe: DiffusionPipeline, job: JobSpec, samples: tuple[Sample, ...]) -> dict[str, torch.Tensor]:
        embeds, pooled, text_ids = pipe.encode_prompt(
            prompt=[s.prompt for s in samples], device=pipe._execution_device, num_images_per_prompt=1,
            max_sequence_length=MAX_SEQUENCE_LENGTH,
        )
        return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled, "text_ids": text_ids}

    @torch.no_grad()
    def init_latents(self, pipe: DiffusionPipeline, job: JobSpec, cond: dict[str, torch.Tensor],
                     generators: list[torch.Generator], scheduler: SchedulerMixin,
                     configs: dict[str, dict]) -> torch.Tensor:
        channels = configs["transformer"]["in_channels"] // 4
        embeds = cond["prompt_embeds"]
        latents, image_ids = pipe.prepare_latents(len(generators), channels, job.height, job.width, embeds.dtype,
                                                  pipe._execution_device, generators)
        cond["latent_image_ids"] = image_ids  # the image tokens' positions travel with the prompt's
        return latents

    def set_timesteps(self, pipe: DiffusionPipeline, job: JobSpec, scheduler: SchedulerMixin,
                      latents_shape: tuple[int, ...]) -> None:
        steps, config = job.steps, scheduler.config
        sigmas = None if getattr(config, "use_flow_sigmas", False) else np.linspace(1.0, 1 / steps, steps)
        mu = calculate_shift(latents_shape[1], config.get("base_image_seq_len", 256),
                             config.get("max_image_seq_len", 4096), config.get("base_shift", 0.5),
                             config.get("max_shift", 1.15))
        retrieve_timesteps(scheduler, steps, pipe._execution_device, sigmas=sigmas, mu=mu)
        scheduler.set_begin_index(0)

    @torch.no_grad()
    def step(self, pipe: DiffusionPipeline, live: Live, i: int) -> torch.Tensor:
        scheduler, cond, latents = live.scheduler, live.cond, live.latents
        transformer = pipe.transformer
        t = scheduler.timesteps[i]
        guidance = None
        if transformer.config.guidance_embeds:
            guidance = torch.full([1], live.job.guidance, device=latents.device, dtype=torch.float32)
            guidance = guidance.expand(latents.shape[0])
        timestep = t.expand(latents.shape[0]).to(latents.dtype)
        with transformer.cache_context("cond"):
            noise = transformer(
                hidden_states=latents, timestep=timestep / 1000, guidance=guidance,
                pooled_projections=cond["pooled_prompt_embeds"], encoder_hidden_states=cond["prompt_embeds"],
                txt_ids=cond["text_ids"], img_ids=cond["latent_image_ids"], joint_attention_kwargs={},
                return_dict=False,
            )[0]
        return scheduler.step(noise, t, latents, return_dict=False)[0]

    @torch.no_grad()
    def decode(self, pipe: DiffusionPipeline, live: Live) -> list[np.ndarray]:
        vae = pipe.vae
        latents = pipe._unpack_latents(live.latents, live.job.height, live.job.width, pipe.vae_scale_factor)
        latents = latents / vae.config.scaling_factor + vae.config.shift_factor
        image = vae.decode(latents.to(get_module_execution_device(vae)), return_dict=False)[0]
        return [to_uint8(a) for a in pipe.image_processor.postprocess(image, output_type="np")]

    def spatial_latents(self, live: Live) -> torch.Tensor:
        # Packed (B, tokens, C*4) back to (B, C, H, W); the VAE's factor follows from the token count.
        height, width = live.job.height, live.job.width
        factor = round(math.sqrt(height * width / (4 * live.latents.shape[1])))
        return FluxPipeline._unpack_latents(live.latents, height, width, factor)

    @torch.no_grad()
    def plain(self, pipe: DiffusionPipeline, job: JobSpec, samples: tuple[Sample, ...]) -> list[np.ndarray]:
        pipe.scheduler = schedulers.make(job.sampler, pipe.scheduler.config)
        out = plain_call(pipe, job, samples, guidance_scale=job.guidance)
        return [to_uint8(a) for a in out.images]

    @torch.no_grad()
    def image_latents(self, pipe: DiffusionPipeline, job: JobSpec, cond: dict[str, torch.Tensor],
                      image: Image.Image, generators: list[torch.Generator], scheduler: SchedulerMixin,
                      configs: dict[str, dict]) -> torch.Tensor:
        # `FluxImg2ImgPipeline.__call__`: the shift from the packed size, `get_timesteps`, then
        # `prepare_latents` (the image encoded with the first generator, each sample's noise drawn,
        # the image latents scaled toward it by the flow-matching `scale_noise`, packed).
        factor = pipe.vae_scale_factor
        self.set_timesteps(pipe, job, scheduler, (0, (job.height // factor // 2) * (job.width // factor // 2)))
        timestep = begin_at(scheduler, job).repeat(len(generators))
        view = FluxImg2ImgPipeline.from_pipe(pipe)
        view.scheduler = scheduler  # after __init__, which would rewrite its config (clip_sample)
        pixels = view.image_processor.preprocess(image, height=job.height, width=job.width).to(torch.float32)
        latents, image_ids = view.prepare_latents(pixels, timestep, len(generators),
                                                  configs["transformer"]["in_channels"] // 4, job.height, job.width,
                                                  cond["prompt_embeds"].dtype, pipe._execution_device, generators)
        cond["latent_image_ids"] = image_ids
        return latents

    @torch.no_grad()
    def plain_image(self, pipe: DiffusionPipeline, job: JobSpec, samples: tuple[Sample, ...],
                    image: Image.Image) -> list[np.ndarray]:
        view = FluxImg2ImgPipeline.from_pipe(pipe)
        view.scheduler = schedulers.make(job.sampler, pipe.scheduler.config)  # as a user swaps samplers
        view.set_progress_bar_config(disable=True)
        out = view(prompt=[s.prompt for s in samples], image=image, strength=job.strength, height=job.height,
                   width=job.width, num_inference_steps=job.steps, guidance_scale=job.guidance,
                   generator=cpu_generators(samples), output_type="np", max_sequence_length=MAX_SEQUENCE_LENGTH)
        return [to_uint8(a) for a in out.images]
