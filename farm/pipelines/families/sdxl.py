"""Stable Diffusion XL: two CLIP text encoders (the second also pooled), a UNet conditioned on the
pooled text and on size ids, a KL VAE (`StableDiffusionXLPipeline`); and SDXL with its refiner.

The refiner is a second stage, split the way diffusers splits it: the base runs the iterations whose
timestep is at or above the cut (`denoising_end=refiner_start`), the refiner UNet the rest
(`StableDiffusionXLImg2ImgPipeline` with `denoising_start=refiner_start`, fed the base's latents).
The refiner pipeline starts a fresh scheduler at the cut, so multistep samplers (DPM++ 2M, UniPC)
restart their history there, here as in the plain two-call run. Both UNets live in one folder
(`StableDiffusionXLRefinedPipeline`): the base's components plus `refiner`; the refiner shares the
base's second text encoder and VAE, as SDXL 1.0's refiner does.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from diffusers import (
    AutoencoderKL,
    DiffusionPipeline,
    EulerDiscreteScheduler,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from diffusers.schedulers import KarrasDiffusionSchedulers
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import get_module_execution_device
from PIL import Image
from transformers import (
    CLIPImageProcessor,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionModelWithProjection,
)

from farm.contracts.domain import JobSpec, Sample
from farm.pipelines import schedulers
from farm.pipelines.conditioning import resized
from farm.pipelines.families.base import Family, Live, begin_at, cpu_generators, to_uint8
from farm.pipelines.tiny import MAX_TOKENS, build_tokenizer

# The img2img pipeline's defaults, which the plain refiner call uses (the aesthetic-score time ids).
AESTHETIC_SCORE = 6.0
NEGATIVE_AESTHETIC_SCORE = 2.5


class StableDiffusionXLRefinedPipeline(StableDiffusionXLPipeline):
    """SDXL base plus its refiner UNet in one folder, so one `from_pretrained` call (and one model
    name) loads either stage. `refiner_start` is the fraction of the schedule where the refiner
    takes over (diffusers' `denoising_end` / `denoising_start`; 0.8 in SDXL's documentation)."""

    model_cpu_offload_seq = "text_encoder->text_encoder_2->image_encoder->unet->refiner->vae"

    def __init__(self, vae: AutoencoderKL, text_encoder: CLIPTextModel, text_encoder_2: CLIPTextModelWithProjection,
                 tokenizer: CLIPTokenizer, tokenizer_2: CLIPTokenizer, unet: UNet2DConditionModel,
                 scheduler: KarrasDiffusionSchedulers, refiner: UNet2DConditionModel,
                 image_encoder: CLIPVisionModelWithProjection = None, feature_extractor: CLIPImageProcessor = None,
                 force_zeros_for_empty_prompt: bool = True, add_watermarker: bool | None = None,
                 refiner_start: float = 0.8) -> None:
        super().__init__(vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, unet, scheduler, image_encoder,
                         feature_extractor, force_zeros_for_empty_prompt, add_watermarker)
        self.register_modules(refiner=refiner)
        self.register_to_config(refiner_start=refiner_start)


def refiner_view(pipe: DiffusionPipeline, scheduler: SchedulerMixin | None = None) -> StableDiffusionXLImg2ImgPipeline:
    """The refiner as diffusers runs it: an img2img pipeline over the refiner UNet with only the second
    text encoder, aesthetic-score time ids and no zeroed negative prompt (SDXL 1.0 refiner's config)."""
    return StableDiffusionXLImg2ImgPipeline(
        vae=pipe.vae, text_encoder=None, text_encoder_2=pipe.text_encoder_2, tokenizer=None,
        tokenizer_2=pipe.tokenizer_2, unet=pipe.refiner, scheduler=scheduler or pipe.scheduler,
        requires_aesthetics_score=True, force_zeros_for_empty_prompt=False, add_watermarker=pipe.watermark is not None,
    )


def refiner_from(refiner_start: float, scheduler: SchedulerMixin) -> int:
    """The first loop iteration the refiner runs: the base keeps every timestep at or above the cut."""
    train = scheduler.config.num_train_timesteps
    cutoff = int(round(train - refiner_start * train))
    return int((scheduler.timesteps >= cutoff).sum())


def _tiny_unet(cross_attention_dim: int, time_ids: int) -> UNet2DConditionModel:
    # diffusers' own SDXL test UNet at one layer per block: 8 dims per time id plus the 32-dim pooled text.
    return UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=1,
        projection_class_embeddings_input_dim=time_ids * 8 + 32, cross_attention_dim=cross_attention_dim,
    )


def tiny_components(seed: int, refiner: bool) -> dict[str, object]:
    """SDXL's architecture at a few M parameters, seeded (each module from its own seed, so the base
    and the refiner UNets differ, as do the two text encoders)."""
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = build_tokenizer(Path(tmp) / "1")
        tokenizer_2 = build_tokenizer(Path(tmp) / "2")
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=3,
        max_position_embeddings=MAX_TOKENS, projection_dim=32, hidden_act="gelu", layer_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(text_config)
    torch.manual_seed(seed + 1)
    text_encoder_2 = CLIPTextModelWithProjection(text_config)
    torch.manual_seed(seed)
    unet = _tiny_unet(cross_attention_dim=64, time_ids=6)  # both encoders' hidden states; size ids
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4, sample_size=128,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
    )
    # SDXL 1.0's scheduler config.
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading")
    components: dict[str, object] = dict(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                         tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler,
                                         add_watermarker=False)
    if refiner:
        torch.manual_seed(seed + 1)
        # The second encoder's hidden states only; original size, crop and aesthetic score.
        components["refiner"] = _tiny_unet(cross_attention_dim=32, time_ids=5)
        # Half-way, so a 4-step test cuts inside both stages and at the hand-over.
        components["refiner_start"] = 0.5
    return components


class SDXL(Family):
    name = "sdxl"
    pipeline_class: type[DiffusionPipeline] = StableDiffusionXLPipeline
    stages = {
        "encode": ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"),
        "denoise": ("unet",),
        "decode": ("vae",),
    }

    def build_tiny(self, seed: int = 0) -> DiffusionPipeline:
        return StableDiffusionXLPipeline(**tiny_components(seed, refiner=False))

    def prepare_stage(self, pipe: DiffusionPipeline, stage: str, configs: dict[str, dict]) -> None:
        pipe.vae_scale_factor = 2 ** (len(configs["vae"]["block_out_channels"]) - 1)

    @staticmethod
    def cfg(unet: UNet2DConditionModel | None, job: JobSpec) -> bool:
        # The pipelines' rule: guidance only above 1, never for guidance-distilled UNets.
        return job.guidance > 1 and (unet is None or unet.config.time_cond_proj_dim is None)

    @staticmethod
    def negative(job: JobSpec, samples: tuple[Sample, ...]) -> list[str] | None:
        """None without a negative prompt: the base then uses zeros (`force_zeros_for_empty_prompt`)."""
        return [job.negative_prompt] * len(samples) if job.negative_prompt else None

    @torch.no_grad()
    def encode(self, pipe: DiffusionPipeline, job: JobSpec, samples: tuple[Sample, ...]) -> dict[str, torch.Tensor]:
        cfg = self.cfg(None, job)
        embeds, neg_embeds, pooled, neg_pooled = pipe.encode_prompt(
            prompt=[s.prompt for s in samples], device=pipe._execution_device, num_images_per_prompt=1,
            do_classifier_free_guidance=cfg, negative_prompt=self.negative(job, samples),
        )
        # `_get_add_time_ids` (it checks the ids against the UNet, which this stage does not load):
        # original size, crop top-left, target size; the negative ids are the same.
        time_ids = torch.tensor([[job.height, job.width, 0, 0, job.height, job.width]], dtype=embeds.dtype)
        if cfg:
            embeds, pooled = torch.cat([neg_embeds, embeds]), torch.cat([neg_pooled, pooled])
            time_ids = torch.cat([time_ids, time_ids])
        return {"prompt_embeds": embeds.to(pipe._execution_device), "text_embeds": pooled.to(pipe._execution_device),
                "time_ids": time_ids.to(pipe._execution_device).repeat(len(samples), 1)}

    def set_timesteps(self, pipe: DiffusionPipeline, job: JobSpec, scheduler: SchedulerMixin,
                      latents_shape: tuple[int, ...]) -> None:
        scheduler.set_timesteps(job.steps, device=pipe._execution_device)
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(0)

    @torch.no_grad()
    def init_latents(self, pipe: DiffusionPipeline, job: JobSpec, cond: dict[str, torch.Tensor],
                     generators: list[torch.Generator], scheduler: SchedulerMixin,
                     configs: dict[str, dict]) -> torch.Tensor:
        # The pipeline sets timesteps first: with "leading" spacing the initial noise scale depends on them.
        self.set_timesteps(pipe, job, scheduler, ())
        pipe.scheduler = scheduler
        channels = configs["unet"]["in_channels"]
        embeds = cond["prompt_embeds"]
        return pipe.prepare_latents(len(generators), channels, job.height, job.width, embeds.dtype,
                                    pipe._execution_device, generators)

    @torch.no_grad()
    def unet_step(self, pipe: DiffusionPipeline, unet: UNet2DConditionModel, live: Live, i: int,
                  prefix: str = "") -> torch.Tensor:
        """One iteration of the base's (or, with prefix "refiner_", the refiner's) denoising loop."""
        job, scheduler, cond = live.job, live.scheduler, live.cond
        cfg = self.cfg(unet, job)
        t = scheduler.timesteps[i]
        model_input = torch.cat([live.latents] * 2) if cfg else live.latents
        model_input = scheduler.scale_model_input(model_input, t)
        added = {"text_embeds": cond[prefix + "text_embeds"], "time_ids": cond[prefix + "time_ids"]}
        noise = unet(model_input, t, encoder_hidden_states=cond[prefix + "prompt_embeds"], timestep_cond=None,
                     cross_attention_kwargs=None, added_cond_kwargs=added, return_dict=False)[0]
        if cfg:
            uncond, text = noise.chunk(2)
            noise = uncond + job.guidance * (text - uncond)
        extra = pipe.prepare_extra_step_kwargs(live.generators, 0.0)
        return scheduler.step(noise, t, live.latents, **extra, return_dict=False)[0]

    def step(self, pipe: DiffusionPipeline, live: Live, i: int) -> torch.Tensor:
        return self.unet_step(pipe, pipe.unet, live, i)

    @torch.no_grad()
    def decode(self, pipe: DiffusionPipeline, live: Live) -> list[np.ndarray]:
        vae = pipe.vae
        latents = live.latents
        # The pipeline decodes in float32 where fp16 would overflow (SDXL's VAE), then casts back.
        upcast = vae.dtype == torch.float16 and vae.config.force_upcast
        if upcast:
            vae.to(dtype=torch.float32)
            latents = latents.to(next(iter(vae.post_quant_conv.parameters())).dtype)
        mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
        if mean is not None and std is not None:
            mean = torch.tensor(mean).view(1, 4, 1, 1).to(latents.device, latents.dtype)
            std = torch.tensor(std).view(1, 4, 1, 1).to(latents.device, latents.dtype)
            latents = latents * std / vae.config.scaling_factor + mean
        else:
            latents = latents / vae.config.scaling_factor
        image = vae.decode(latents.to(get_module_execution_device(vae)), return_dict=False)[0]
        if upcast:
            vae.to(dtype=torch.float16)
        if pipe.watermark is not None:
            image = pipe.watermark.apply_watermark(image)
        return [to_uint8(a) for a in pipe.image_processor.postprocess(image, output_type="np")]

    def _call_args(self, job: JobSpec, samples: tuple[Sample, ...]) -> dict[str, object]:
        return dict(prompt=[s.prompt for s in samples], negative_prompt=self.negative(job, samples),
                    num_inference_steps=job.steps, guidance_scale=job.guidance)

    @torch.no_grad()
    def plain(self, pipe: DiffusionPipeline, job: JobSpec, samples: tuple[Sample, ...]) -> list[np.ndarray]:
        pipe.scheduler = schedulers.make(job.sampler, pipe.scheduler.config)
        out = pipe(**self._call_args(job, samples), generator=cpu_generators(samples),
                   height=job.height, width=job.width, output_type="np")
        return [to_uint8(a) for a in out.images]


    @torch.no_grad()
    def image_latents(self, pipe: DiffusionPipeline, job: JobSpec, cond: dict[str, torch.Tensor],
                      image: Image.Image, generators: list[torch.Generator], scheduler: SchedulerMixin,
                      configs: dict[str, dict]) -> torch.Tensor:
        # `StableDiffusionXLImg2ImgPipeline.__call__` without `denoising_start`: timesteps,
        # `get_timesteps`, `prepare_latents(add_noise=True)`. Its size ids for the base (no aesthetic
        # score) are the text-to-image ones the encode stage made.
        scheduler.set_timesteps(job.steps, device=pipe._execution_device)
        timestep = begin_at(scheduler, job).repeat(len(generators))
        view = StableDiffusionXLImg2ImgPipeline.from_pipe(pipe)
        view.scheduler = scheduler  # after __init__, which would rewrite its config (clip_sample)
        pixels = view.image_processor.preprocess(resized(image, job.width, job.height))
        return view.prepare_latents(pixels, timestep, len(generators), 1, cond["prompt_embeds"].dtype,
                                    pipe._execution_device, generators, add_noise=True)

    @torch.no_grad()
    def plain_image(self, pipe: DiffusionPipeline, job: JobSpec, samples: tuple[Sample, ...],
                    image: Image.Image) -> list[np.ndarray]:
        view = StableDiffusionXLImg2ImgPipeline.from_pipe(pipe)
        view.scheduler = schedulers.make(job.sampler, pipe.scheduler.config)  # as a user swaps samplers
        view.set_progress_bar_config(disable=True)
        out = view(**self._call_args(job, samples), image=resized(image, job.width, job.height),
                   strength=job.strength, generator=cpu_generators(samples), output_type="np")
        return [to_uint8(a) for a in out.images]


class SDXLRefined(SDXL):
    """SDXL base then refiner: stage "denoise" runs the base UNet before the cut, "refine" the refiner
    after it. The encode stage conditions both, so the checkpoint carries both."""

    name = "sdxl_refiner"
    pipeline_class = StableDiffusionXLRefinedPipeline
    stages = {**SDXL.stages, "refine": ("refiner",)}
    # The refiner is already an img2img pass over the base's latents: no init image on top of it.
    image_latents = Family.image_latents
    plain_image = Family.plain_image

    def build_tiny(self, seed: int = 0) -> DiffusionPipeline:
        return StableDiffusionXLRefinedPipeline(**tiny_components(seed, refiner=True))

    def denoiser_stage(self, index: Mapping[str, object], live: Live, i: int) -> str:
        return "refine" if i >= refiner_from(float(index["refiner_start"]), live.scheduler) else "denoise"

    @torch.no_grad()
    def encode(self, pipe: DiffusionPipeline, job: JobSpec, samples: tuple[Sample, ...]) -> dict[str, torch.Tensor]:
        cond = super().encode(pipe, job, samples)
        cfg = self.cfg(None, job)
        embeds, neg_embeds, pooled, neg_pooled = refiner_view(pipe).encode_prompt(
            prompt=[s.prompt for s in samples], device=pipe._execution_device, num_images_per_prompt=1,
            do_classifier_free_guidance=cfg, negative_prompt=self.negative(job, samples),
        )
        # The img2img pipeline's `_get_add_time_ids` with `requires_aesthetics_score`: original size
        # (the latents' size in pixels), crop top-left, aesthetic score.
        size = [job.height, job.width, 0, 0]
        time_ids = torch.tensor([size + [AESTHETIC_SCORE]], dtype=embeds.dtype).repeat(len(samples), 1)
        if cfg:
            neg_ids = torch.tensor([size + [NEGATIVE_AESTHETIC_SCORE]], dtype=embeds.dtype).repeat(len(samples), 1)
            embeds, pooled = torch.cat([neg_embeds, embeds]), torch.cat([neg_pooled, pooled])
            time_ids = torch.cat([neg_ids, time_ids])
        device = pipe._execution_device
        cond.update(refiner_prompt_embeds=embeds.to(device), refiner_text_embeds=pooled.to(device),
                    refiner_time_ids=time_ids.to(device))
        return cond

    def step(self, pipe: DiffusionPipeline, live: Live, i: int) -> torch.Tensor:
        start = refiner_from(float(pipe.config.refiner_start), live.scheduler)
        if i < start:
            return super().step(pipe, live, i)
        if i == start:
            # The refiner pipeline's own scheduler: set up afresh and begun at the cut (`get_timesteps`).
            fresh = schedulers.make(live.job.sampler, live.scheduler.config)
            fresh.set_timesteps(live.job.steps, device=live.latents.device)
            if hasattr(fresh, "set_begin_index"):
                fresh.set_begin_index(start)
            live.scheduler = pipe.scheduler = fresh
        return self.unet_step(pipe, pipe.refiner, live, i, prefix="refiner_")

    @torch.no_grad()
    def plain(self, pipe: DiffusionPipeline, job: JobSpec, samples: tuple[Sample, ...]) -> list[np.ndarray]:
        """diffusers' documented base + refiner run: two calls handing latents over at `refiner_start`."""
        generators = cpu_generators(samples)
        start = float(pipe.config.refiner_start)
        pipe.scheduler = schedulers.make(job.sampler, pipe.scheduler.config)
        latents = pipe(**self._call_args(job, samples), generator=generators, height=job.height, width=job.width,
                       denoising_end=start, output_type="latent").images
        refiner = refiner_view(pipe, schedulers.make(job.sampler, pipe.scheduler.config))
        refiner.set_progress_bar_config(disable=True)
        out = refiner(**self._call_args(job, samples), image=latents, generator=generators, denoising_start=start,
                      output_type="np")
        return [to_uint8(a) for a in out.images]
