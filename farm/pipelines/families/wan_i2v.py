"""Wan 2.1 and Wan 2.2 image-to-video (`WanImageToVideoPipeline`): the video starts from the init image.

These are checkpoints of their own, beside the text-to-video ones, with the same umT5 text encoder,
VAE and flow scheduler. The init image is VAE-encoded as the first frame of an otherwise black video,
and the denoiser takes that latent condition beside the noisy latents, with a mask that says which
latent frames are given (16 + 4 + 16 = 36 input channels). Wan 2.1 I2V also attends to the image's
CLIP vision embeds (`image_encoder`, loaded by the encode stage); Wan 2.2 I2V A14B has no image encoder,
and its high- and low-noise experts are two stages, as in text-to-video.

The latent condition and the image embeds are conditioning: the checkpoint carries them, so only a
shard's first segment, the one that encodes, needs the image. Every step runs (strength does not
apply): the latents start as pure noise, the image enters only through the condition.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import DiffusionPipeline, WanImageToVideoPipeline
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from PIL import Image
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

from farm.contracts.domain import JobSpec, Sample
from farm.pipelines.conditioning import resized
from farm.pipelines.families.base import ImageRequired, Live
from farm.pipelines.families.wan import Wan21, Wan22, tiny_shared, tiny_transformer, wan_call

TINY_IMAGE_SIZE = 16  # the tiny CLIP vision model's input side: 16 patches of 4x4 and a class token
TINY_IMAGE_WIDTH = 8  # its hidden width, the width of the image embeds the transformer takes (`image_dim`)


def tiny_image_encoder(seed: int) -> tuple[CLIPVisionModel, CLIPImageProcessor]:
    """A CLIP vision model at toy size and its image processor (resize the short side, centre crop)."""
    torch.manual_seed(seed)
    model = CLIPVisionModel(CLIPVisionConfig(
        hidden_size=TINY_IMAGE_WIDTH, intermediate_size=16, projection_dim=TINY_IMAGE_WIDTH, num_hidden_layers=2,
        num_attention_heads=2, image_size=TINY_IMAGE_SIZE, patch_size=4,
    ))
    processor = CLIPImageProcessor(size={"shortest_edge": TINY_IMAGE_SIZE},
                                   crop_size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE})
    return model.eval(), processor


class Wan21I2V(ImageRequired, Wan21):
    name = "wan21_i2v"
    pipeline_class = WanImageToVideoPipeline
    stages = {"encode": ("text_encoder", "tokenizer", "image_encoder", "image_processor"), "denoise": ("transformer",),
              "decode": ("vae",)}

    def build_tiny(self, seed: int = 0) -> DiffusionPipeline:
        """Wan 2.1 I2V's layout at toy width: a CLIP vision encoder, a 36-channel transformer that attends
        to the image embeds."""
        image_encoder, image_processor = tiny_image_encoder(seed)
        pipe = WanImageToVideoPipeline(
            **tiny_shared(seed), image_encoder=image_encoder, image_processor=image_processor,
            transformer=tiny_transformer(seed, in_channels=36, image_dim=TINY_IMAGE_WIDTH),
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    @torch.no_grad()
    def encode_image(self, pipe: DiffusionPipeline, job: JobSpec, image: Image.Image) -> dict[str, torch.Tensor]:
        # `__call__`: CLIP's penultimate hidden states, for a transformer that takes them (Wan 2.1 I2V's);
        # kept once per shard, repeated per sample where the transformer runs (`model_inputs`).
        if pipe.image_encoder is None:
            return {}
        return {"image_embeds": pipe.encode_image(resized(image, job.width, job.height), pipe._execution_device)}

    @torch.no_grad()
    def image_latents(self, pipe: DiffusionPipeline, job: JobSpec, cond: dict[str, torch.Tensor],
                      image: Image.Image, generators: list[torch.Generator], scheduler: SchedulerMixin,
                      configs: dict[str, dict]) -> torch.Tensor:
        # `__call__`: timesteps, the image as the video's first frame, then `prepare_latents` (noise from
        # each sample's generator, the frame encoded once per sample, the mask of given frames).
        self.set_timesteps(pipe, job, scheduler, ())
        device = pipe._execution_device
        frame = pipe.video_processor.preprocess(resized(image, job.width, job.height), height=job.height,
                                                width=job.width).to(device, dtype=torch.float32)
        latents, condition = pipe.prepare_latents(frame, len(generators), pipe.vae.config.z_dim, job.height,
                                                  job.width, job.frames, torch.float32, device, generators)
        cond["condition"] = condition
        return latents

    def model_inputs(self, live: Live, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        cond = live.cond
        inputs = {"hidden_states": torch.cat([live.latents, cond["condition"]], dim=1).to(dtype)}
        if "image_embeds" in cond:
            inputs["encoder_hidden_states_image"] = cond["image_embeds"].to(dtype).repeat(live.latents.shape[0], 1, 1)
        return inputs

    @torch.no_grad()
    def plain_image(self, pipe: DiffusionPipeline, job: JobSpec, samples: tuple[Sample, ...],
                    image: Image.Image) -> list[np.ndarray]:
        return wan_call(pipe, job, samples, image=resized(image, job.width, job.height))


class Wan22I2V(Wan21I2V, Wan22):
    """Wan 2.2 I2V A14B: no image encoder; the experts' split is Wan 2.2's (`Wan22.denoiser_stage`)."""

    name = "wan22_i2v"
    stages = {"encode": ("text_encoder", "tokenizer"), "denoise_high": ("transformer",),
              "denoise_low": ("transformer_2",), "decode": ("vae",)}

    def build_tiny(self, seed: int = 0) -> DiffusionPipeline:
        """Wan 2.2 I2V A14B's layout at toy width: two 36-channel experts split at boundary ratio 0.875."""
        pipe = WanImageToVideoPipeline(
            **tiny_shared(seed), transformer=tiny_transformer(seed, in_channels=36),
            transformer_2=tiny_transformer(seed + 1, in_channels=36), boundary_ratio=0.875,
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe
