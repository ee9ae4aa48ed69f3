"""LTX-Video: T5 text encoder, a transformer over packed (token-sequence) latents, a causal video VAE
(`LTXPipeline`), and image-to-video from the same checkpoint (`LTXImageToVideoPipeline`).

The transformer needs the latent grid (frames, height, width) to place its rotary embeddings, and
the preview needs it to unpack the token sequence; it travels in the conditioning as `latent_grid`
so a node that resumes a checkpoint has it without the VAE's config arithmetic.

Image-to-video keeps the VAE-encoded init image as the first latent frame: its tokens are marked by
`conditioning_mask` (1 on the first frame's tokens), which gives every token its own timestep
(`t * (1 - mask)`: 0 for the kept frame) and leaves those tokens out of the scheduler step. The mask
travels in the conditioning too, so a later segment on another node needs neither the image nor a VAE.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import (
    AutoencoderKLLTXVideo,
    DiffusionPipeline,
    FlowMatchEulerDiscreteScheduler,
    LTXImageToVideoPipeline,
    LTXPipeline,
    LTXVideoTransformer3DModel,
)
from diffusers.pipelines.ltx.pipeline_ltx import calculate_shift, retrieve_timesteps
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor
from diffusers.video_processor import VideoProcessor
from PIL import Image
from transformers import T5Config, T5EncoderModel

from farm.contracts.domain import JobSpec, Sample
from farm.jobs.catalog import get_model
from farm.pipelines import schedulers
from farm.pipelines.families.base import Family, Live, cpu_generators, plain_call, to_uint8
from farm.pipelines.tiny import build_t5_tokenizer


class LTX(Family):
    name = "ltxv"
    pipeline_class = LTXPipeline
    stages = {"encode": ("text_encoder", "tokenizer"), "denoise": ("transformer",), "decode": ("vae",)}

    def build_tiny(self, seed: int = 0) -> DiffusionPipeline:
        """LTX-Video's architecture at toy width; the VAE compresses 8x in space and time like the
        real one, so frame counts follow the real 8k+1 rule."""
        tokenizer = build_t5_tokenizer()
        torch.manual_seed(seed)
        transformer = LTXVideoTransformer3DModel(
            in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, num_attention_heads=4,
            attention_head_dim=8, cross_attention_dim=32, num_layers=1, caption_channels=32,
        )
        torch.manual_seed(seed)
        vae = AutoencoderKLLTXVideo(
            latent_channels=8, block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
            spatio_temporal_scaling=(True, True, True, False),
            decoder_spatio_temporal_scaling=(True, True, True, False),
            layers_per_block=(1, 1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1, 1), patch_size=1, patch_size_t=1,
            encoder_causal=True, decoder_causal=False, timestep_conditioning=True,
        )
        torch.manual_seed(seed)
        text_encoder = T5EncoderModel(T5Config(
            vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
            relative_attention_num_buckets=8, is_encoder_decoder=False, use_cache=False,
        ))
        # LTX-Video's own schedule: resolution-dependent shift (mu), stretched to a terminal sigma.
        scheduler = FlowMatchEulerDiscreteScheduler(
            use_dynamic_shifting=True, base_image_seq_len=1024, max_image_seq_len=4096,
            base_shift=0.95, max_shift=2.05, shift_terminal=0.1,
        )
        pipe = LTXPipeline(scheduler=scheduler, vae=vae.eval(), text_encoder=text_encoder.eval(),
                           tokenizer=tokenizer, transformer=transformer.eval())
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def latent_dtype(self, model_dtype: torch.dtype) -> torch.dtype:
        return torch.float32  # the pipeline draws and steps latents in float32, casting per model call

    def prepare_stage(self, pipe: DiffusionPipeline, stage: str, configs: dict[str, dict]) -> None:
        # Loaded without its VAE or transformer, the pipeline falls back to the full-size model's
        # factors; the stage's latent shapes must come from this model's configs.
        vae, transformer = configs["vae"], configs["transformer"]
        scaling = 2 ** sum(vae["spatio_temporal_scaling"])
        pipe.vae_spatial_compression_ratio = vae.get("spatial_compression_ratio") or vae["patch_size"] * scaling
        pipe.vae_temporal_compression_ratio = vae.get("temporal_compression_ratio") or vae["patch_size_t"] * scaling
        pipe.transformer_spatial_patch_size = transformer["patch_size"]
        pipe.transformer_temporal_patch_size = transformer["patch_size_t"]
        pipe.video_processor = VideoProcessor(vae_scale_factor=pipe.vae_spatial_compression_ratio)

    @staticmethod
    def grid(pipe: DiffusionPipeline, job: JobSpec) -> tuple[int, int, int]:
        """Latent frames, height and width of a job, as `__call__` computes them."""
        return ((job.frames - 1) // pipe.vae_temporal_compression_ratio + 1,
                job.height // pipe.vae_spatial_compression_ratio, job.width // pipe.vae_spatial_compression_ratio)

    @torch.no_grad()
    def encode(self, pipe: DiffusionPipeline, job: JobSpec, samples: tuple[Sample, ...]) -> dict[str, torch.Tensor]:
        cfg = job.guidance > 1
        positive, mask, negative, negative_mask = pipe.encode_prompt(
            prompt=[s.prompt for s in samples], negative_prompt=[job.negative_prompt] * len(samples),
            do_classifier_free_guidance=cfg, device=pipe._execution_device,
        )
        return {
            "prompt_embeds": torch.cat([negative, positive]) if cfg else positive,
            "prompt_attention_mask": torch.cat([negative_mask, mask]) if cfg else mask,
            "latent_grid": torch.tensor(self.grid(pipe, job)),
        }

    @torch.no_grad()
    def init_latents(self, pipe: DiffusionPipeline, job: JobSpec, cond: dict[str, torch.Tensor],
                     generators: list[torch.Generator], scheduler: SchedulerMixin,
                     configs: dict[str, dict]) -> torch.Tensor:
        return pipe.prepare_latents(len(generators), configs["transformer"]["in_channels"], job.height, job.width,
                                    job.frames, torch.float32, pipe._execution_device, generators)

    def set_timesteps(self, pipe: DiffusionPipeline, job: JobSpec, scheduler: SchedulerMixin,
                      latents_shape: tuple[int, ...]) -> None:
        # The shift grows with the video's latent size, as in `__call__`.
        steps, config = job.steps, scheduler.config
        mu = calculate_shift(int(np.prod(self.grid(pipe, job))), config.get("base_image_seq_len", 256),
                             config.get("max_image_seq_len", 4096), config.get("base_shift", 0.5),
                             config.get("max_shift", 1.15))
        sigmas = np.linspace(1.0, 1 / steps, steps)
        retrieve_timesteps(scheduler, steps, pipe._execution_device, sigmas=sigmas, mu=mu)

    @torch.no_grad()
    def step(self, pipe: DiffusionPipeline, live: Live, i: int) -> torch.Tensor:
        job, scheduler, cond = live.job, live.scheduler, live.cond
        cfg = job.guidance > 1
        frames, height, width = (int(n) for n in cond["latent_grid"])
        t = scheduler.timesteps[i]
        model_input = (torch.cat([live.latents] * 2) if cfg else live.latents).to(cond["prompt_embeds"].dtype)
        timestep = t.expand(model_input.shape[0])
        mask = cond.get("conditioning_mask")
        if mask is not None:  # image-to-video: the kept first frame's tokens are at timestep 0
            mask = mask.to(torch.float32)
            timestep = timestep.unsqueeze(-1) * (1 - (torch.cat([mask, mask]) if cfg else mask))
        rope_scale = (pipe.vae_temporal_compression_ratio / get_model(job.model).fps,
                      pipe.vae_spatial_compression_ratio, pipe.vae_spatial_compression_ratio)
        with pipe.transformer.cache_context("cond_uncond"):
            noise = pipe.transformer(
                hidden_states=model_input, encoder_hidden_states=cond["prompt_embeds"],
                timestep=timestep, encoder_attention_mask=cond["prompt_attention_mask"],
                num_frames=frames, height=height, width=width, rope_interpolation_scale=rope_scale, return_dict=False,
            )[0].float()
        if cfg:
            uncond, text = noise.chunk(2)
            noise = uncond + job.guidance * (text - uncond)
        if mask is None:
            return scheduler.step(noise, t, live.latents, return_dict=False)[0]
        # `LTXImageToVideoPipeline`: only the frames after the first are stepped; the first is kept as it is.
        patch, patch_t = pipe.transformer_spatial_patch_size, pipe.transformer_temporal_patch_size
        noise = pipe._unpack_latents(noise, frames, height, width, patch, patch_t)
        latents = pipe._unpack_latents(live.latents, frames, height, width, patch, patch_t)
        stepped = scheduler.step(noise[:, :, 1:], t, latents[:, :, 1:], return_dict=False)[0]
        return pipe._pack_latents(torch.cat([latents[:, :, :1], stepped], dim=2), patch, patch_t)

    def spatial_latents(self, live: Live) -> torch.Tensor:
        frames, height, width = (int(n) for n in live.cond["latent_grid"])
        latents = LTXPipeline._unpack_latents(live.latents, frames, height, width)  # LTX-Video patches 1x1x1
        return latents[:, :, frames // 2]

    @torch.no_grad()
    def decode(self, pipe: DiffusionPipeline, live: Live) -> list[np.ndarray]:
        frames, height, width = (int(n) for n in live.cond["latent_grid"])
        vae = pipe.vae
        latents = pipe._unpack_latents(live.latents, frames, height, width, pipe.transformer_spatial_patch_size,
                                       pipe.transformer_temporal_patch_size)
        latents = pipe._denormalize_latents(latents, vae.latents_mean, vae.latents_std, vae.config.scaling_factor)
        latents = latents.to(live.cond["prompt_embeds"].dtype)
        timestep = None
        if vae.config.timestep_conditioning:
            # The pipeline's defaults: decode at timestep 0 with noise scale 0 (the noise is drawn all the same).
            noise = randn_tensor(latents.shape, generator=live.generators, device=latents.device, dtype=latents.dtype)
            timestep = torch.zeros(latents.shape[0], device=latents.device, dtype=latents.dtype)
            scale = timestep[:, None, None, None, None]
            latents = (1 - scale) * latents + scale * noise
        video = vae.decode(latents.to(vae.dtype), timestep, return_dict=False)[0]
        return [to_uint8(v) for v in pipe.video_processor.postprocess_video(video, output_type="np")]

    @torch.no_grad()
    def plain(self, pipe: DiffusionPipeline, job: JobSpec, samples: tuple[Sample, ...]) -> list[np.ndarray]:
        pipe.scheduler = schedulers.make(job.sampler, pipe.scheduler.config)
        out = plain_call(pipe, job, samples, guidance_scale=job.guidance,
                         negative_prompt=[job.negative_prompt] * len(samples), num_frames=job.frames,
                         frame_rate=get_model(job.model).fps)
        return [to_uint8(v) for v in out.frames]

    @torch.no_grad()
    def image_latents(self, pipe: DiffusionPipeline, job: JobSpec, cond: dict[str, torch.Tensor],
                      image: Image.Image, generators: list[torch.Generator], scheduler: SchedulerMixin,
                      configs: dict[str, dict]) -> torch.Tensor:
        # `LTXImageToVideoPipeline.__call__`: the image at the job's size, VAE-encoded with each sample's
        # generator, repeated over the frames under the mask, each sample's noise elsewhere; packed.
        # Image-to-video runs every step (strength does not apply), with the text-to-video schedule.
        view = LTXImageToVideoPipeline.from_pipe(pipe)
        self.prepare_stage(view, "decode", configs)
        n, device = len(generators), pipe._execution_device
        pixels = view.video_processor.preprocess([image] * n, height=job.height, width=job.width)
        pixels = pixels.to(device=device, dtype=cond["prompt_embeds"].dtype)
        latents, mask = view.prepare_latents(pixels, n, configs["transformer"]["in_channels"], job.height, job.width,
                                             job.frames, torch.float32, device, generators)
        cond["conditioning_mask"] = mask
        self.set_timesteps(pipe, job, scheduler, tuple(latents.shape))
        return latents

    @torch.no_grad()
    def plain_image(self, pipe: DiffusionPipeline, job: JobSpec, samples: tuple[Sample, ...],
                    image: Image.Image) -> list[np.ndarray]:
        # One call per sample: diffusers 0.42.1's `LTXImageToVideoPipeline` draws its decode noise with
        # `torch.randn`, which takes no list of generators, so a batch cannot have one generator per sample.
        view = LTXImageToVideoPipeline.from_pipe(pipe)
        view.set_progress_bar_config(disable=True)
        videos = []
        for sample, generator in zip(samples, cpu_generators(samples)):
            view.scheduler = schedulers.make(job.sampler, pipe.scheduler.config)
            out = view(image=image, prompt=sample.prompt, negative_prompt=job.negative_prompt, generator=generator,
                       num_inference_steps=job.steps, height=job.height, width=job.width, num_frames=job.frames,
                       frame_rate=get_model(job.model).fps, guidance_scale=job.guidance, output_type="np")
            videos.append(to_uint8(out.frames[0]))
        return videos
