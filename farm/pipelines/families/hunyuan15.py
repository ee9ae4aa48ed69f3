"""HunyuanVideo-1.5: Qwen2.5-VL and ByT5 text encoders, a video transformer, its causal video VAE
(`HunyuanVideo15Pipeline`).

Guidance is a pipeline component here (a diffusers guider); the job's guidance scale replaces the
guider's own, in the segments and in the plain call alike.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch
from diffusers import (
    AutoencoderKLHunyuanVideo15,
    DiffusionPipeline,
    FlowMatchEulerDiscreteScheduler,
    HunyuanVideo15Pipeline,
    HunyuanVideo15Transformer3DModel,
)
from diffusers.guiders import ClassifierFreeGuidance
from diffusers.pipelines.hunyuan_video1_5.image_processor import (
    HunyuanVideo15ImageProcessor,
)
from diffusers.pipelines.hunyuan_video1_5.pipeline_hunyuan_video1_5 import (
    retrieve_timesteps,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from transformers import (
    ByT5Tokenizer,
    Qwen2_5_VLTextConfig,
    Qwen2_5_VLTextModel,
    Qwen2Tokenizer,
    T5Config,
    T5EncoderModel,
)

from farm.contracts.domain import JobSpec, Sample
from farm.pipelines import schedulers
from farm.pipelines.families.base import Family, Live, plain_call, to_uint8
from farm.pipelines.tiny import build_qwen_tokenizer

PROMPT_PARTS = ("prompt_embeds", "prompt_embeds_mask", "prompt_embeds_2", "prompt_embeds_mask_2")
# The transformer's conditioning inputs, in the order of PROMPT_PARTS.
MODEL_INPUTS = ("encoder_hidden_states", "encoder_attention_mask",
                "encoder_hidden_states_2", "encoder_attention_mask_2")
TINY_IMAGE_EMBED_DIM = 12  # the tiny transformer's vision-embedding width (the tiny I2V SigLIP's)


class HunyuanVideo15Stages(HunyuanVideo15Pipeline):
    """`HunyuanVideo15Pipeline` that can be loaded without its VAE, as the encode and denoise stages are.

    diffusers 0.42.1 reads `vae.config.latent_channels` in `__init__` whenever the attribute exists,
    even when it is None; a placeholder answers that read (and the scale factors, full-size values
    that `prepare_stage` then replaces from the model's config), then the VAE is None again.
    """

    def __init__(self, text_encoder: Qwen2_5_VLTextModel, tokenizer: Qwen2Tokenizer,
                 transformer: HunyuanVideo15Transformer3DModel, vae: AutoencoderKLHunyuanVideo15 | None,
                 scheduler: FlowMatchEulerDiscreteScheduler, text_encoder_2: T5EncoderModel,
                 tokenizer_2: ByT5Tokenizer, guider: ClassifierFreeGuidance) -> None:
        stand_in = vae if vae is not None else VaeStandIn()
        super().__init__(text_encoder, tokenizer, transformer, stand_in, scheduler, text_encoder_2, tokenizer_2, guider)
        if vae is None:
            self.register_modules(vae=None)


class VaeStandIn:
    """Answers the reads `HunyuanVideo15Pipeline.__init__` makes of its VAE (full-size values)."""

    config = SimpleNamespace(latent_channels=32)
    temporal_compression_ratio = 4
    spatial_compression_ratio = 16


class HunyuanVideo15(Family):
    name = "hunyuanvideo15"
    pipeline_class = HunyuanVideo15Stages
    stages = {
        "encode": ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "guider"),
        "denoise": ("transformer", "guider"),
        "decode": ("vae",),
    }

    def build_tiny(self, seed: int = 0) -> DiffusionPipeline:
        """HunyuanVideo-1.5's architecture at toy width; the VAE compresses 4x in time like the real one."""
        torch.manual_seed(seed)
        vae = AutoencoderKLHunyuanVideo15(
            in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 16, 16), layers_per_block=1,
            spatial_compression_ratio=4, temporal_compression_ratio=4, downsample_match_channel=False,
            upsample_match_channel=False,
        )
        pipe = HunyuanVideo15Pipeline(transformer=tiny_transformer(seed, "t2v", 16), vae=vae.eval(),
                                      **tiny_text_components(seed))
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def prepare_stage(self, pipe: DiffusionPipeline, stage: str, configs: dict[str, dict]) -> None:
        vae, transformer = configs["vae"], configs["transformer"]
        pipe.vae_scale_factor_temporal = vae["temporal_compression_ratio"]
        pipe.vae_scale_factor_spatial = vae["spatial_compression_ratio"]
        pipe.num_channels_latents = vae["latent_channels"]
        pipe.target_size = transformer["target_size"]
        pipe.vision_states_dim = transformer["image_embed_dim"]
        pipe.video_processor = HunyuanVideo15ImageProcessor(vae_scale_factor=pipe.vae_scale_factor_spatial)
        if pipe.vae is not None:
            decode_one_by_one(pipe)

    @staticmethod
    def guider(pipe: DiffusionPipeline, job: JobSpec) -> ClassifierFreeGuidance:
        return pipe.guider.new(guidance_scale=job.guidance)

    @torch.no_grad()
    def encode(self, pipe: DiffusionPipeline, job: JobSpec, samples: tuple[Sample, ...]) -> dict[str, torch.Tensor]:
        n, device = len(samples), pipe._execution_device
        # Kept in the text encoders' dtype; `step` casts to the transformer's as `__call__` does.
        positive = pipe.encode_prompt(prompt=[s.prompt for s in samples], device=device, batch_size=n)
        cond = dict(zip(PROMPT_PARTS, positive))
        guider = self.guider(pipe, job)
        if guider._enabled and guider.num_conditions > 1:
            negative = pipe.encode_prompt(prompt=[job.negative_prompt] * n, device=device, batch_size=n)
            cond.update(zip((f"negative_{p}" for p in PROMPT_PARTS), negative))
        return cond

    @torch.no_grad()
    def init_latents(self, pipe: DiffusionPipeline, job: JobSpec, cond: dict[str, torch.Tensor],
                     generators: list[torch.Generator], scheduler: SchedulerMixin,
                     configs: dict[str, dict]) -> torch.Tensor:
        # Drawn in the transformer's dtype; every component loads in the engine's one dtype.
        dtype = cond["prompt_embeds"].dtype
        return pipe.prepare_latents(len(generators), configs["vae"]["latent_channels"], job.height, job.width,
                                    job.frames, dtype, pipe._execution_device, generators)

    def set_timesteps(self, pipe: DiffusionPipeline, job: JobSpec, scheduler: SchedulerMixin,
                      latents_shape: tuple[int, ...]) -> None:
        sigmas = np.linspace(1.0, 0.0, job.steps + 1)[:-1]
        retrieve_timesteps(scheduler, job.steps, pipe._execution_device, sigmas=sigmas)

    def model_inputs(self, pipe: DiffusionPipeline, live: Live, i: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """The transformer's inputs besides prompts and timestep. Text-to-video: the image-conditioning
        channels and the vision embeddings are zeros (image-to-video fills them: hunyuan15_i2v.py)."""
        latents = live.latents
        batch, _, frames, height, width = latents.shape
        zeros = torch.zeros(batch, 1, frames, height, width, dtype=dtype, device=latents.device)
        return {
            "hidden_states": torch.cat([latents, torch.zeros_like(latents, dtype=dtype), zeros], dim=1),
            "image_embeds": torch.zeros(batch, pipe.vision_num_semantic_tokens, pipe.vision_states_dim, dtype=dtype,
                                        device=latents.device),
        }

    @torch.no_grad()
    def step(self, pipe: DiffusionPipeline, live: Live, i: int) -> torch.Tensor:
        job, scheduler, cond, latents = live.job, live.scheduler, live.cond, live.latents
        transformer = pipe.transformer
        if "guider" not in live.extras:
            live.extras["guider"] = self.guider(pipe, job)
        guider = live.extras["guider"]
        t = scheduler.timesteps[i]
        dtype = transformer.dtype
        model_inputs = self.model_inputs(pipe, live, i, dtype)
        inputs = {
            name: (cond[part].to(dtype), cond[f"negative_{part}"].to(dtype) if f"negative_{part}" in cond else None)
            for name, part in zip(MODEL_INPUTS, PROMPT_PARTS)
        }
        guider.set_state(step=i, num_inference_steps=len(scheduler.timesteps), timestep=t)
        batches = guider.prepare_inputs(inputs)
        for state in batches:
            guider.prepare_models(transformer)
            with transformer.cache_context(getattr(state, guider._identifier_key)):
                state.noise_pred = transformer(
                    **model_inputs, timestep=t.expand(latents.shape[0]).to(model_inputs["hidden_states"].dtype),
                    return_dict=False, **{name: getattr(state, name) for name in MODEL_INPUTS},
                )[0]
            guider.cleanup_models(transformer)
        return scheduler.step(guider(batches)[0], t, latents, return_dict=False)[0]

    @torch.no_grad()
    def decode(self, pipe: DiffusionPipeline, live: Live) -> list[np.ndarray]:
        latents = live.latents.to(pipe.vae.dtype) / pipe.vae.config.scaling_factor
        video = pipe.vae.decode(latents, return_dict=False)[0]
        return [to_uint8(v) for v in pipe.video_processor.postprocess_video(video, output_type="np")]

    @torch.no_grad()
    def plain(self, pipe: DiffusionPipeline, job: JobSpec, samples: tuple[Sample, ...]) -> list[np.ndarray]:
        pipe.scheduler = schedulers.make(job.sampler, pipe.scheduler.config)
        pipe.guider = self.guider(pipe, job)
        decode_one_by_one(pipe)
        out = plain_call(pipe, job, samples, negative_prompt=[job.negative_prompt] * len(samples),
                         num_frames=job.frames)
        return [to_uint8(v) for v in out.frames]


def tiny_transformer(seed: int, task_type: str, target_size: int) -> HunyuanVideo15Transformer3DModel:
    """HunyuanVideo-1.5's transformer at toy width, seeded: 4 latent channels, twice over plus a mask
    channel at its input (the image condition, zeros for text-to-video)."""
    torch.manual_seed(seed)
    return HunyuanVideo15Transformer3DModel(
        in_channels=9, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=1,
        num_refiner_layers=1, mlp_ratio=2.0, patch_size=1, patch_size_t=1, text_embed_dim=16,
        text_embed_2_dim=32, image_embed_dim=TINY_IMAGE_EMBED_DIM, rope_axes_dim=(2, 2, 4), target_size=target_size,
        task_type=task_type,
    ).eval()


def tiny_text_components(seed: int) -> dict[str, object]:
    """The prompt side every tiny HunyuanVideo-1.5 pipeline shares, seeded: Qwen2.5-VL and ByT5 text
    encoders with their tokenizers, the flow scheduler and the guider."""
    tokenizer = build_qwen_tokenizer()
    torch.manual_seed(seed)
    text_encoder = Qwen2_5_VLTextModel(Qwen2_5_VLTextConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=16, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, rope_theta=1000000.0, bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        rope_scaling={"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
    ))
    tokenizer_2 = ByT5Tokenizer()
    torch.manual_seed(seed)
    text_encoder_2 = T5EncoderModel(T5Config(
        vocab_size=len(tokenizer_2), d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, is_encoder_decoder=False, use_cache=False,
    ))
    return {"text_encoder": text_encoder.eval(), "tokenizer": tokenizer, "text_encoder_2": text_encoder_2.eval(),
            "tokenizer_2": tokenizer_2, "scheduler": FlowMatchEulerDiscreteScheduler(shift=7.0),
            "guider": ClassifierFreeGuidance(guidance_scale=6.0)}


def decode_one_by_one(pipe: DiffusionPipeline) -> None:
    """Decode a batch one sample at a time: in diffusers 0.42.1 the VAE's causal attention mask has
    the wrong shape for more than one sample (and one at a time also bounds the decode's memory)."""
    pipe.vae.enable_slicing()
