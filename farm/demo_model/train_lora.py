"""Trains `demo-shapes-outline`: a LoRA for demo-shapes that draws each shape as an outline, not filled.

    python -m farm.demo_model.train_lora --out farm/models/loras

The images are demo-shapes' own training images with the shape drawn as a band `OUTLINE_WIDTH`
pixels wide inside its edge (`farm.demo_model.data`), in the colours the prompt names; the prompts
are unchanged. Only low-rank adapters on the UNet's attention, feed-forward and ResNet layers learn
(peft, through diffusers' `add_adapter`); the base model, its text encoder and its VAE stay frozen, so
the file holds the difference alone (about 200 KB). It is saved with peft's key names under the
pipeline's `unet.` prefix, which `pipe.load_lora_weights(path, adapter_name=...)` reads,
with the base model and the recipe in the safetensors metadata. Everything is seeded and runs on one
CPU thread: the same command on the same machine and torch build gives the same bytes.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, StableDiffusionPipeline
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from safetensors.torch import save_file

from farm.demo_model import data
from farm.demo_model.train import SCHEDULE, log, to_tensor, tokenize
from farm.jobs.loras import LORA_SUFFIX, METADATA_BASE, METADATA_FAMILY
from farm.pipelines.loader import builtin_folder

NAME = "demo-shapes-outline"
BASE = "demo-shapes"
# An outline is a change of form, not of what the prompt means: the ResNet convolutions (the only
# layers at full latent resolution) and the attention's queries and outputs learn; the keys and values
# of the prompt, the feed-forward layers and the timestep projections stay as they are (a third of
# the parameters for no visible gain).
TARGETS = ["conv1", "conv2", "conv_shortcut", "to_q", "to_out.0", "proj_in", "proj_out"]


@dataclass(frozen=True)
class Config:
    seed: int = 0
    rank: int = 4
    latents: int = 2048
    steps: int = 1000
    batch: int = 32
    lr: float = 2e-3
    uncond_rate: float = 0.1
    min_snr: float = 5.0
    log_every: int = 100


@torch.no_grad()
def encode_dataset(cfg: Config, pipe: StableDiffusionPipeline) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Latents of `cfg.latents` outline images (scaled as the pipeline scales them), each image's
    prompt index, and the frozen text encoder's embeddings of every distinct prompt (0: "")."""
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    lat, prompt_ids = [], []
    table: dict[str, int] = {"": 0}
    for start in range(0, cfg.latents, 256):
        images, prompts, _ = data.make_batch(rng, min(256, cfg.latents - start), outline=True)
        lat.append(pipe.vae.encode(to_tensor(images)).latent_dist.sample(generator=gen))
        prompt_ids += [table.setdefault(p, len(table)) for p in prompts]
    embeds = torch.cat([pipe.text_encoder(tokenize(pipe.tokenizer, list(table)[i : i + 256])).last_hidden_state
                        for i in range(0, len(table), 256)])
    return torch.cat(lat) * pipe.vae.config.scaling_factor, torch.tensor(prompt_ids), embeds


def train(cfg: Config, pipe: StableDiffusionPipeline) -> dict[str, torch.Tensor]:
    """Train the adapter on the pipeline's UNet; returns its weights in diffusers' LoRA format, stored
    as float16 (half the bytes; the pipeline casts them to its own dtype when it loads them)."""
    torch.set_num_threads(1)  # reproducible, and polite on a shared 2-core machine
    latents, prompt_ids, embeds = encode_dataset(cfg, pipe)
    log(f"data  {len(latents)} outline latents, {len(embeds)} distinct prompts")
    unet = pipe.unet
    unet.requires_grad_(False)
    torch.manual_seed(cfg.seed + 1)
    # lora_alpha = rank: the weights load at scale 1 without any metadata.
    unet.add_adapter(LoraConfig(r=cfg.rank, lora_alpha=cfg.rank, init_lora_weights="gaussian", target_modules=TARGETS))
    params = [p for p in unet.parameters() if p.requires_grad]
    log(f"lora  rank {cfg.rank}: {sum(p.numel() for p in params)} parameters")
    noise_schedule = DDPMScheduler(**SCHEDULE)
    alphas = noise_schedule.alphas_cumprod
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=max(cfg.steps, 1), pct_start=0.05)
    gen = torch.Generator().manual_seed(cfg.seed + 2)
    began = time.perf_counter()
    running = None
    for step in range(1, cfg.steps + 1):
        idx = torch.randint(len(latents), (cfg.batch,), generator=gen)
        cond = prompt_ids[idx].clone()
        cond[torch.rand(cfg.batch, generator=gen) < cfg.uncond_rate] = 0
        noise = torch.randn(latents[idx].shape, generator=gen)
        t = torch.randint(0, noise_schedule.config.num_train_timesteps, (cfg.batch,), generator=gen)
        pred = unet(noise_schedule.add_noise(latents[idx], noise, t), t, encoder_hidden_states=embeds[cond]).sample
        snr = alphas[t] / (1 - alphas[t])
        weight = snr.clamp(max=cfg.min_snr) / snr  # min-SNR weighting, as the base model was trained
        loss = (weight * F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % cfg.log_every == 0 or step == cfg.steps:
            log(f"lora  {step:5d}/{cfg.steps}  loss {running:.4f}  {time.perf_counter() - began:6.0f}s")
    # peft's own key names (`...to_q.lora_A.weight`), which the loader maps back one to one;
    # diffusers' older names for attention layers (`...to_q.lora.down.weight`) it would drop.
    layers = get_peft_model_state_dict(unet)
    return {f"unet.{k}": v.detach().to(torch.float16).contiguous() for k, v in sorted(layers.items())}


def save(weights: dict[str, torch.Tensor], path: Path, cfg: Config, argv: list[str]) -> None:
    """The adapter file, with what it is for and how it was made in its metadata (no clock, no
    machine: the bytes depend only on the recipe)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {
        "format": "pt",
        METADATA_BASE: BASE,
        METADATA_FAMILY: "sd15",
        "farm.style": "shapes drawn as outlines in their prompt's colours, not filled",
        "farm.recipe": "python -m farm.demo_model.train_lora " + " ".join(argv),
        "farm.settings": json.dumps(asdict(cfg)),
    }
    tmp = path.with_suffix(".tmp")
    save_file(weights, str(tmp), metadata=metadata)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    defaults = Config()
    parser = argparse.ArgumentParser(prog="python -m farm.demo_model.train_lora", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help=f"folder to write {NAME}{LORA_SUFFIX} into")
    parser.add_argument("--no-evaluate", action="store_true", help="skip scoring the check prompts afterwards")
    for name, value in asdict(defaults).items():
        parser.add_argument("--" + name.replace("_", "-"), type=type(value), default=value)
    args = parser.parse_args(argv)
    cfg = Config(**{k: getattr(args, k) for k in asdict(defaults)})
    began = time.perf_counter()
    pipe = StableDiffusionPipeline.from_pretrained(str(builtin_folder(BASE)))
    weights = train(cfg, pipe)
    path = args.out / f"{NAME}{LORA_SUFFIX}"
    save(weights, path, cfg, argv)
    log(f"saved {path} ({path.stat().st_size / 1024:.0f} KB) in {time.perf_counter() - began:.0f} s on "
        f"{platform.machine()}, torch {torch.__version__}")
    if not args.no_evaluate:
        from farm.demo_model import evaluate

        seeds = [0, 1]
        prompts, sample_seeds = evaluate.samples_of(evaluate.CHECK_PROMPTS, seeds)
        images = evaluate.render_plain(builtin_folder(BASE), evaluate.CHECK_PROMPTS, seeds, lora=path)
        log(evaluate.report(evaluate.judge(prompts, sample_seeds, images)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
