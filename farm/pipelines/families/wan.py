"""Wan 2.1 and Wan 2.2: umT5 text encoder, a video transformer, the Wan VAE (`WanPipeline`).

Wan 2.2 (A14B) has two experts: `transformer` denoises while the timestep is at or above the
boundary (`boundary_ratio * num_train_timesteps`), `transformer_2` below it. They are two stages,
so a node that runs only low-noise segments loads only `transformer_2`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from diffusers import (
    AutoencoderKLWan,
    DiffusionPipeline,
    UniPCMultistepScheduler,
    WanPipeline,
    WanTransformer3DModel,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.video_processor import VideoProcessor
from transformers import UMT5Config, UMT5EncoderModel

from farm.contracts.domain import JobSpec, Sample
from farm.pipelines import schedulers
from farm.pipelines.families.base import Family, Live, plain_call, to_uint8
from farm.pipelines.tiny import build_t5_tokenizer


def share_flow_shift(scheduler: SchedulerMixin) -> None:
    """Let both flow samplers read the model's shift from this scheduler's config.

    Wan ships UniPC configured for flow matching (`flow_shift`); FlowMatch Euler calls the same
    number `shift` and UniPC needs `use_flow_sigmas` and `prediction_type` to be a flow sampler at
    all. Registering every spelling makes `schedulers.make` build either sampler as the model wants.
    """
    config = scheduler.config
    shift = config.get("flow_shift", config.get("shift", 1.0))
    scheduler.register_to_config(shift=shift, flow_shift=shift, use_flow_sigmas=True, prediction_type="flow_prediction")


def tiny_transformer(seed: int, in_channels: int = 16, image_dim: int | None = None) -> WanTransformer3DModel:
    """Wan's transformer at toy width. Image-to-video takes the image condition as 20 more input
    channels; Wan 2.1 I2V also attends to CLIP image embeds of width `image_dim` (its own key/value
    projections, `added_kv_proj_dim`, at the model's width as in the real one)."""
    torch.manual_seed(seed)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=in_channels, out_channels=16,
        text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=32, image_dim=image_dim,
        added_kv_proj_dim=None if image_dim is None else 2 * 12,
    ).eval()


def tiny_shared(seed: int) -> dict[str, object]:
    """The components every tiny Wan pipeline shares, seeded: umT5 tokenizer and text encoder, the VAE
    (which compresses 4x in time like the real one: 4k+1 frames) and the flow UniPC scheduler."""
    tokenizer = build_t5_tokenizer()
    torch.manual_seed(seed)
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True])
    torch.manual_seed(seed)
    text_encoder = UMT5EncoderModel(UMT5Config(
        vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, is_encoder_decoder=False, use_cache=False,
    ))
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    return {"tokenizer": tokenizer, "text_encoder": text_encoder.eval(), "vae": vae.eval(), "scheduler": scheduler}


@torch.no_grad()
def wan_call(pipe: DiffusionPipeline, job: JobSpec, samples: tuple[Sample, ...], **extra: object) -> list[np.ndarray]:
    """One ordinary call of a Wan pipeline (text- or image-to-video, `extra` its image) with the job's
    sampler, as 8-bit frames: the baseline a cut run must equal."""
    share_flow_shift(pipe.scheduler)
    pipe.scheduler = schedulers.make(job.sampler, pipe.scheduler.config)
    out = plain_call(pipe, job, samples, guidance_scale=job.guidance,
                     negative_prompt=[job.negative_prompt] * len(samples), num_frames=job.frames, **extra)
    return [to_uint8(v) for v in out.frames]


class Wan21(Family):
    name = "wan21"
    pipeline_class = WanPipeline
    stages = {"encode": ("text_encoder", "tokenizer"), "denoise": ("transformer",), "decode": ("vae",)}

    def build_tiny(self, seed: int = 0) -> DiffusionPipeline:
        """Wan's architecture at toy width; the VAE compresses 4x in time like the real one (4k+1 frames)."""
        return self._tiny(seed, two_experts=False)

    @staticmethod
    def _tiny(seed: int, two_experts: bool) -> WanPipeline:
        pipe = WanPipeline(
            **tiny_shared(seed),
            transformer=tiny_transformer(seed), transformer_2=tiny_transformer(seed + 1) if two_experts else None,
            boundary_ratio=0.875 if two_experts else None,
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def latent_dtype(self, model_dtype: torch.dtype) -> torch.dtype:
        return torch.float32  # the pipeline draws and steps latents in float32, casting per model call

    def prepare_stage(self, pipe: DiffusionPipeline, stage: str, configs: dict[str, dict]) -> None:
        vae = configs["vae"]
        pipe.vae_scale_factor_temporal = vae.get("scale_factor_temporal", 4)
        pipe.vae_scale_factor_spatial = vae.get("scale_factor_spatial", 8)
        pipe.video_processor = VideoProcessor(vae_scale_factor=pipe.vae_scale_factor_spatial)
        share_flow_shift(pipe.scheduler)

    @staticmethod
    def boundary(pipe_config: Mapping[str, object], scheduler: SchedulerMixin) -> float | None:
        """The timestep where the low-noise expert takes over (None: one transformer throughout)."""
        ratio = pipe_config.get("boundary_ratio")
        return None if ratio is None else ratio * scheduler.config.num_train_timesteps

    @torch.no_grad()
    def encode(self, pipe: DiffusionPipeline, job: JobSpec, samples: tuple[Sample, ...]) -> dict[str, torch.Tensor]:
        cfg = job.guidance > 1
        positive, negative = pipe.encode_prompt(
            prompt=[s.prompt for s in samples], negative_prompt=[job.negative_prompt] * len(samples),
            do_classifier_free_guidance=cfg, max_sequence_length=512, device=pipe._execution_device,
        )
        return {"prompt_embeds": positive, "negative_prompt_embeds": negative} if cfg else {"prompt_embeds": positive}

    @torch.no_grad()
    def init_latents(self, pipe: DiffusionPipeline, job: JobSpec, cond: dict[str, torch.Tensor],
                     generators: list[torch.Generator], scheduler: SchedulerMixin,
                     configs: dict[str, dict]) -> torch.Tensor:
        transformer = configs.get("transformer") or configs["transformer_2"]
        return pipe.prepare_latents(len(generators), transformer["in_channels"], job.height, job.width, job.frames,
                                    torch.float32, pipe._execution_device, generators)

    def set_timesteps(self, pipe: DiffusionPipeline, job: JobSpec, scheduler: SchedulerMixin,
                      latents_shape: tuple[int, ...]) -> None:
        scheduler.set_timesteps(job.steps, device=pipe._execution_device)
        scheduler.set_begin_index(0)

    def model_inputs(self, live: Live, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """The transformer's inputs besides timestep and prompt, in its dtype: the latents (image-to-video
        adds its image condition, farm/pipelines/families/wan_i2v.py)."""
        return {"hidden_states": live.latents.to(dtype)}

    @torch.no_grad()
    def step(self, pipe: DiffusionPipeline, live: Live, i: int) -> torch.Tensor:
        job, scheduler, cond = live.job, live.scheduler, live.cond
        t = scheduler.timesteps[i]
        boundary = self.boundary(pipe.config, scheduler)
        model = pipe.transformer if boundary is None or t >= boundary else pipe.transformer_2
        # The pipeline casts prompts to the dtype of `transformer`, or of `transformer_2` without it.
        dtype = (pipe.transformer if pipe.transformer is not None else pipe.transformer_2).dtype
        inputs = self.model_inputs(live, dtype)
        timestep = t.expand(live.latents.shape[0])
        context = {"step_index": i, "sigma": float(scheduler.sigmas[i]),
                   "num_inference_steps": len(scheduler.timesteps)}
        with model.cache_context("cond", **context):
            noise = model(**inputs, timestep=timestep, encoder_hidden_states=cond["prompt_embeds"].to(dtype),
                          return_dict=False)[0]
        if job.guidance > 1:
            with model.cache_context("uncond", **context):
                uncond = model(**inputs, timestep=timestep,
                               encoder_hidden_states=cond["negative_prompt_embeds"].to(dtype), return_dict=False)[0]
            noise = uncond + job.guidance * (noise - uncond)
        return scheduler.step(noise, t, live.latents, return_dict=False)[0]

    @torch.no_grad()
    def decode(self, pipe: DiffusionPipeline, live: Live) -> list[np.ndarray]:
        vae = pipe.vae
        latents = live.latents.to(vae.dtype)
        shape = (1, vae.config.z_dim, 1, 1, 1)
        mean = torch.tensor(vae.config.latents_mean).view(shape).to(latents.device, latents.dtype)
        inverse_std = 1.0 / torch.tensor(vae.config.latents_std).view(shape).to(latents.device, latents.dtype)
        video = vae.decode(latents / inverse_std + mean, return_dict=False)[0]
        return [to_uint8(v) for v in pipe.video_processor.postprocess_video(video, output_type="np")]

    @torch.no_grad()
    def plain(self, pipe: DiffusionPipeline, job: JobSpec, samples: tuple[Sample, ...]) -> list[np.ndarray]:
        return wan_call(pipe, job, samples)


class Wan22(Wan21):
    name = "wan22"
    stages = {"encode": ("text_encoder", "tokenizer"), "denoise_high": ("transformer",),
              "denoise_low": ("transformer_2",), "decode": ("vae",)}

    def build_tiny(self, seed: int = 0) -> DiffusionPipeline:
        """Wan 2.2 A14B's layout at toy width: two experts split at boundary ratio 0.875."""
        return self._tiny(seed, two_experts=True)

    def denoiser_stage(self, index: Mapping[str, object], live: Live, i: int) -> str:
        boundary = self.boundary(index, live.scheduler)
        low = boundary is not None and live.scheduler.timesteps[i] < boundary
        return "denoise_low" if low else "denoise_high"
