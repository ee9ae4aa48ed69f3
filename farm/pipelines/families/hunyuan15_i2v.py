"""HunyuanVideo-1.5 image-to-video (`HunyuanVideo15ImageToVideoPipeline`): a checkpoint of its own,
with a SigLIP image encoder beside the text encoders of text-to-video (families/hunyuan15.py).

The pipeline sizes the video from the image (the bucket of the transformer's `target_size` nearest
the image's aspect ratio; the job was given that size at validation, `farm.jobs.init_image`), crops
the image to it, and conditions every step on two things made once from the image:
- `image_embeds`: SigLIP's last hidden state, which the transformer attends to beside the prompt;
- `image_latents`: the image's VAE latent (the mode, no noise), given as the first frame of the
  image-condition channels, with a mask channel that marks that frame.
Both travel in the checkpoint (one copy each, repeated per sample at every step, as the pipeline
repeats them), so a later segment on another node needs neither the image nor its encoders.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import (
    AutoencoderKLHunyuanVideo15,
    DiffusionPipeline,
    FlowMatchEulerDiscreteScheduler,
    HunyuanVideo15ImageToVideoPipeline,
    HunyuanVideo15Transformer3DModel,
)
from diffusers.guiders import ClassifierFreeGuidance
from diffusers.pipelines.hunyuan_video1_5.image_processor import HunyuanVideo15ImageProcessor
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from PIL import Image
from transformers import (
    ByT5Tokenizer,
    Qwen2_5_VLTextModel,
    Qwen2Tokenizer,
    SiglipImageProcessor,
    SiglipVisionConfig,
    SiglipVisionModel,
    T5EncoderModel,
)

from farm.contracts.domain import JobSpec, Sample
from farm.pipelines import schedulers
from farm.pipelines.families.base import ImageRequired, Live, cpu_generators, to_uint8
from farm.pipelines.families.hunyuan15 import (
    TINY_IMAGE_EMBED_DIM,
    HunyuanVideo15,
    VaeStandIn,
    decode_one_by_one,
    tiny_text_components,
    tiny_transformer,
)

TINY_IMAGE_SIZE = 32  # the tiny SigLIP's input side: 16 patches of 8 pixels, 16 image tokens


class HunyuanVideo15I2VStages(HunyuanVideo15ImageToVideoPipeline):
    """`HunyuanVideo15ImageToVideoPipeline` that can be loaded without its VAE (the encode and denoise
    stages), as `HunyuanVideo15Stages` is for text-to-video: diffusers 0.42.1's `__init__` reads
    `vae.config.latent_channels` whenever the attribute exists, even when it is None."""

    def __init__(self, text_encoder: Qwen2_5_VLTextModel, tokenizer: Qwen2Tokenizer,
                 transformer: HunyuanVideo15Transformer3DModel, vae: AutoencoderKLHunyuanVideo15 | None,
                 scheduler: FlowMatchEulerDiscreteScheduler, text_encoder_2: T5EncoderModel,
                 tokenizer_2: ByT5Tokenizer, guider: ClassifierFreeGuidance, image_encoder: SiglipVisionModel,
                 feature_extractor: SiglipImageProcessor) -> None:
        stand_in = vae if vae is not None else VaeStandIn()
        super().__init__(text_encoder, tokenizer, transformer, stand_in, scheduler, text_encoder_2, tokenizer_2, guider,
                         image_encoder, feature_extractor)
        if vae is None:
            self.register_modules(vae=None)


class HunyuanVideo15I2V(ImageRequired, HunyuanVideo15):
    name = "hunyuanvideo15_i2v"
    pipeline_class = HunyuanVideo15I2VStages
    stages = {
        "encode": ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "guider", "image_encoder",
                   "feature_extractor"),
        "denoise": ("transformer", "guider"),
        "decode": ("vae",),
    }

    def build_tiny(self, seed: int = 0) -> DiffusionPipeline:
        """The I2V architecture at toy width: the text side of tiny text-to-video, a SigLIP vision model
        as wide as the transformer's image embedding, and a VAE that compresses 16x in space and 4x in
        time like the real one (so sizes follow the real 16-pixel buckets; `target_size` 32 makes
        buckets of 4 patches: 32x32, 16x32, 16x48...)."""
        torch.manual_seed(seed)
        vae = AutoencoderKLHunyuanVideo15(
            in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
            spatial_compression_ratio=16, temporal_compression_ratio=4, downsample_match_channel=False,
            upsample_match_channel=False,
        )
        torch.manual_seed(seed)
        image_encoder = SiglipVisionModel(SiglipVisionConfig(
            hidden_size=TINY_IMAGE_EMBED_DIM, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
            image_size=TINY_IMAGE_SIZE, patch_size=8,
        ))
        feature_extractor = SiglipImageProcessor(size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE})
        pipe = HunyuanVideo15ImageToVideoPipeline(
            transformer=tiny_transformer(seed, "i2v", 32), vae=vae.eval(), image_encoder=image_encoder.eval(),
            feature_extractor=feature_extractor, **tiny_text_components(seed),
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def prepare_stage(self, pipe: DiffusionPipeline, stage: str, configs: dict[str, dict]) -> None:
        super().prepare_stage(pipe, stage, configs)
        # The I2V pipeline's processor: the image is resized by `resize` (cropped to the bucket), never again.
        pipe.video_processor = HunyuanVideo15ImageProcessor(
            vae_scale_factor=pipe.vae_scale_factor_spatial, do_resize=False, do_convert_rgb=True)

    @staticmethod
    def cropped(pipe: DiffusionPipeline, job: JobSpec, image: Image.Image) -> Image.Image:
        """The image cropped and resized to the job's size (the bucket validation computed), as `__call__` does."""
        return pipe.video_processor.resize(image, height=job.height, width=job.width, resize_mode="crop")

    @torch.no_grad()
    def encode_image(self, pipe: DiffusionPipeline, job: JobSpec, image: Image.Image) -> dict[str, torch.Tensor]:
        # `encode_image`: SigLIP's last hidden state of the cropped image (the feature extractor
        # resizes it to SigLIP's own input size); kept once, in the image encoder's dtype.
        embeds = pipe._get_image_embeds(pipe.image_encoder, pipe.feature_extractor, self.cropped(pipe, job, image),
                                        pipe._execution_device)
        return {"image_embeds": embeds}

    @torch.no_grad()
    def image_latents(self, pipe: DiffusionPipeline, job: JobSpec, cond: dict[str, torch.Tensor],
                      image: Image.Image, generators: list[torch.Generator], scheduler: SchedulerMixin,
                      configs: dict[str, dict]) -> torch.Tensor:
        # `__call__`: timesteps, then the noise (every step runs: no strength), then the image's latent.
        self.set_timesteps(pipe, job, scheduler, ())
        device = pipe._execution_device
        latents = pipe.prepare_latents(len(generators), configs["vae"]["latent_channels"], job.height, job.width,
                                       job.frames, cond["prompt_embeds"].dtype, device, generators)
        cond["image_latents"] = pipe._get_image_latents(pipe.vae, pipe.video_processor, self.cropped(pipe, job, image),
                                                        job.height, job.width, device)
        return latents

    def model_inputs(self, pipe: DiffusionPipeline, live: Live, i: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        # `prepare_cond_latents_and_mask`: the image latent as the first frame of the condition
        # channels (zeros after it), a mask channel of ones on that frame; the embeds per sample.
        latents, cond = live.latents, live.cond
        batch, _, frames, height, width = latents.shape
        condition = cond["image_latents"].repeat(batch, 1, frames, 1, 1)
        condition[:, :, 1:] = 0
        mask = torch.zeros(batch, 1, frames, height, width, dtype=dtype, device=latents.device)
        mask[:, :, 0] = 1.0
        inputs = {
            "hidden_states": torch.cat([latents, condition.to(dtype), mask], dim=1),
            "image_embeds": cond["image_embeds"].repeat(batch, 1, 1).to(dtype),
        }
        if pipe.transformer.config.use_meanflow:  # distilled models take the next timestep too
            timesteps = live.scheduler.timesteps
            following = timesteps[i + 1] if i + 1 < len(timesteps) else torch.tensor([0.0], device=latents.device)
            inputs["timestep_r"] = following.expand(batch).to(latents.dtype)
        return inputs

    @torch.no_grad()
    def plain_image(self, pipe: DiffusionPipeline, job: JobSpec, samples: tuple[Sample, ...],
                    image: Image.Image) -> list[np.ndarray]:
        pipe.scheduler = schedulers.make(job.sampler, pipe.scheduler.config)
        pipe.guider = self.guider(pipe, job)
        decode_one_by_one(pipe)
        out = pipe(image=image, prompt=[s.prompt for s in samples],
                   negative_prompt=[job.negative_prompt] * len(samples), generator=cpu_generators(samples),
                   num_inference_steps=job.steps, num_frames=job.frames, output_type="np")
        return [to_uint8(v) for v in out.frames]
