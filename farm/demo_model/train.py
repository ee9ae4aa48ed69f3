"""Trains `demo-shapes`: a toy text-to-image diffusion model that draws "a red circle on a blue background".

    python -m farm.demo_model.train --out farm/models/demo-shapes

It generates its own images (`farm.demo_model.data`: flat shapes on flat backgrounds, 64x64) and
trains, on one CPU thread, the parts of a Stable Diffusion pipeline at toy size:

1. the VAE (AutoencoderKL, 64x64 pixels <-> 16x16x4 latents): flat colours reconstruct easily;
2. the text encoder (CLIPTextModel over the character-level tokenizer of `farm.pipelines.tiny`),
   taught to name the prompt's shape, shape colour and background colour from its last positions
   (the ones that see the whole prompt), so its embeddings carry exactly what the UNet needs;
3. the UNet (UNet2DConditionModel, with a pooled text embedding added to the timestep embedding as
   well as cross-attention), epsilon prediction on SD 1.5's noise schedule with min-SNR loss
   weighting, the text encoder frozen, 10% of prompts dropped to "" so classifier-free guidance
   works; the saved weights are an exponential moving average.

The result is an ordinary diffusers `StableDiffusionPipeline` folder (safetensors), loaded by the
farm with `from_pretrained` like any real model. Everything is seeded: the same command on the same
machine and torch build gives the same weights.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import shlex
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextModel, CLIPTokenizer

from farm.demo_model import data
from farm.pipelines.tiny import build_tokenizer, char_clip_encoder

MAX_PROMPT_TOKENS = 48  # "a yellow triangle on a purple background" is 36 character tokens with BOS/EOS
TEXT_WIDTH = 64
# SD 1.5's noise schedule, so every sampler the farm offers (built with from_config) fits the model.
SCHEDULE = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}


@dataclass(frozen=True)
class Config:
    seed: int = 0
    vae_steps: int = 1000
    vae_batch: int = 16
    vae_lr: float = 2e-3
    vae_kl: float = 1e-5
    text_steps: int = 300
    text_batch: int = 64
    text_lr: float = 1e-3
    latents: int = 8192
    unet_steps: int = 2000
    unet_batch: int = 48
    unet_lr: float = 2e-3
    uncond_rate: float = 0.1
    min_snr: float = 5.0
    ema: float = 0.999
    log_every: int = 100


def build_vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 32, 64),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        layers_per_block=1,
        latent_channels=4,
        # Few groups: a group of one channel would normalise a flat colour away.
        norm_num_groups=4,
        sample_size=data.SIZE,
    )


def build_text_encoder(tokenizer: CLIPTokenizer) -> CLIPTextModel:
    return char_clip_encoder(tokenizer, hidden=TEXT_WIDTH, intermediate=4 * TEXT_WIDTH, layers=3,
                             positions=MAX_PROMPT_TOKENS)


def build_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=data.SIZE // 4,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64, 96),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=4,
        norm_num_groups=8,
        # A pooled summary of the prompt joins the timestep embedding, so every ResNet block knows
        # the colours (a global fact); cross-attention is left to place them.
        addition_embed_type="text",
        addition_embed_type_num_heads=4,
    )


def build_scheduler() -> DDIMScheduler:
    """The scheduler whose config every sampler of the farm is built from (`from_config`).

    No sample clipping (latents are not in [-1, 1]), as SD 1.5's own config says; "trailing" spacing
    starts every sampler at the last training step (pure noise), which matters at a demo's few steps.
    """
    return DDIMScheduler(**SCHEDULE, clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                         timestep_spacing="trailing")


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [-1, 1], the range the pipeline's image processor uses."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def log(msg: str) -> None:
    print(msg, flush=True)


def train_vae(cfg: Config, rng: np.random.Generator) -> AutoencoderKL:
    torch.manual_seed(cfg.seed)
    vae = build_vae()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.vae_lr, total_steps=max(cfg.vae_steps, 1), pct_start=0.05)
    began = time.perf_counter()
    for step in range(1, cfg.vae_steps + 1):
        images, _, _ = data.make_batch(rng, cfg.vae_batch)
        x = to_tensor(images)
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        mse = F.mse_loss(recon, x)
        kl = posterior.kl().mean() / posterior.mean[0].numel()
        loss = mse + cfg.vae_kl * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % cfg.log_every == 0 or step == cfg.vae_steps:
            log(f"vae   {step:5d}/{cfg.vae_steps}  mse {mse.item():.5f}  kl {kl.item():.3f}  "
                f"{time.perf_counter() - began:6.0f}s")
    return vae.eval().requires_grad_(False)


def prompt_labels(prompt: str) -> tuple[int, int, int]:
    """(shape, colour, background) class indices of a generated prompt."""
    words = prompt.replace(",", " ").split()
    colours = [w for w in words if w in data.COLOURS]
    shape = next(w for w in words if w in data.SHAPES)
    names = list(data.COLOURS)
    return data.SHAPES.index(shape), names.index(colours[0]), names.index(colours[1])


def tokenize(tokenizer: CLIPTokenizer, prompts: list[str]) -> torch.Tensor:
    return tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def train_text_encoder(cfg: Config, rng: np.random.Generator, tokenizer: CLIPTokenizer) -> CLIPTextModel:
    """Teach the encoder to name the scene from every position at or after the end-of-text token.

    CLIP's text encoder is causal, so only those positions have seen the whole prompt; the pipeline
    hands all positions to the UNet's cross-attention (no attention mask), as for a real SD model.
    """
    torch.manual_seed(cfg.seed + 1)
    encoder = build_text_encoder(tokenizer)
    heads = torch.nn.ModuleList([torch.nn.Linear(TEXT_WIDTH, len(data.SHAPES))]
                                + [torch.nn.Linear(TEXT_WIDTH, len(data.COLOURS)) for _ in range(2)])
    params = list(encoder.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.text_lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.text_lr, total_steps=max(cfg.text_steps, 1), pct_start=0.1)
    began = time.perf_counter()
    for step in range(1, cfg.text_steps + 1):
        _, prompts, _ = data.make_batch(rng, cfg.text_batch)
        ids = tokenize(tokenizer, prompts)
        hidden = encoder(ids).last_hidden_state
        eos = (ids == tokenizer.eos_token_id).int().argmax(-1)
        seen = torch.arange(ids.shape[1])[None, :] >= eos[:, None]
        labels = torch.tensor([prompt_labels(p) for p in prompts])
        loss = 0.0
        correct = 0.0
        for k, head in enumerate(heads):
            logits = head(hidden)  # (batch, tokens, classes)
            target = labels[:, k, None].expand(-1, ids.shape[1])
            ce = F.cross_entropy(logits.transpose(1, 2), target, reduction="none")
            loss = loss + (ce * seen).sum() / seen.sum()
            correct += ((logits.argmax(-1) == target) | ~seen).all(-1).float().mean().item() / len(heads)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % cfg.log_every == 0 or step == cfg.text_steps:
            log(f"text  {step:5d}/{cfg.text_steps}  loss {loss.item():.4f}  named {correct:.3f}  "
                f"{time.perf_counter() - began:6.0f}s")
    return encoder.eval().requires_grad_(False)


@torch.no_grad()
def encode_dataset(cfg: Config, rng: np.random.Generator, vae: AutoencoderKL, encoder: CLIPTextModel,
                   tokenizer: CLIPTokenizer) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Latents of `cfg.latents` images (scaled to unit variance), each image's prompt index, and the
    embeddings of every distinct prompt (index 0 is the empty prompt); returns the VAE scaling factor."""
    lat, prompt_ids = [], []
    table: dict[str, int] = {"": 0}
    for start in range(0, cfg.latents, 256):
        images, prompts, _ = data.make_batch(rng, min(256, cfg.latents - start))
        lat.append(vae.encode(to_tensor(images)).latent_dist.sample())
        prompt_ids += [table.setdefault(p, len(table)) for p in prompts]
    latents = torch.cat(lat)
    scaling = 1.0 / latents.std().item()
    embeds = torch.cat([encoder(tokenize(tokenizer, list(table)[i : i + 256])).last_hidden_state
                        for i in range(0, len(table), 256)])
    return latents * scaling, torch.tensor(prompt_ids), embeds, scaling


def train_unet(cfg: Config, latents: torch.Tensor, prompt_ids: torch.Tensor,
               embeds: torch.Tensor) -> UNet2DConditionModel:
    torch.manual_seed(cfg.seed + 2)
    unet = build_unet()
    ema = copy.deepcopy(unet).requires_grad_(False)
    noise_schedule = DDPMScheduler(**SCHEDULE)
    alphas = noise_schedule.alphas_cumprod
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.unet_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.unet_lr, total_steps=max(cfg.unet_steps, 1), pct_start=0.05)
    gen = torch.Generator().manual_seed(cfg.seed + 3)
    began = time.perf_counter()
    running = None
    for step in range(1, cfg.unet_steps + 1):
        idx = torch.randint(len(latents), (cfg.unet_batch,), generator=gen)
        x0 = latents[idx]
        cond = prompt_ids[idx].clone()
        cond[torch.rand(cfg.unet_batch, generator=gen) < cfg.uncond_rate] = 0
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, noise_schedule.config.num_train_timesteps, (cfg.unet_batch,), generator=gen)
        xt = noise_schedule.add_noise(x0, noise, t)
        pred = unet(xt, t, encoder_hidden_states=embeds[cond]).sample
        snr = (alphas[t] / (1 - alphas[t]))
        weight = snr.clamp(max=cfg.min_snr) / snr  # min-SNR weighting: no step dominates the loss
        loss = (weight * F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        sched.step()
        decay = min(cfg.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema.parameters(), unet.parameters()):
                e.lerp_(p, 1 - decay)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % cfg.log_every == 0 or step == cfg.unet_steps:
            log(f"unet  {step:5d}/{cfg.unet_steps}  loss {running:.4f}  {time.perf_counter() - began:6.0f}s")
    return ema.eval()


def assemble(vae: AutoencoderKL, encoder: CLIPTextModel, tokenizer: CLIPTokenizer, unet: UNet2DConditionModel,
             scaling: float) -> StableDiffusionPipeline:
    vae.register_to_config(scaling_factor=scaling)
    pipe = StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=encoder, tokenizer=tokenizer, scheduler=build_scheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def train(cfg: Config) -> tuple[StableDiffusionPipeline, dict[str, float]]:
    """Run every stage; returns the pipeline and the seconds each stage took."""
    torch.set_num_threads(1)  # reproducible, and polite on a shared 2-core machine
    rng = np.random.default_rng(cfg.seed)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = build_tokenizer(Path(tmp))
    tokenizer.model_max_length = MAX_PROMPT_TOKENS
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    vae = train_vae(cfg, rng)
    times["vae"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    encoder = train_text_encoder(cfg, rng, tokenizer)
    times["text_encoder"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    latents, prompt_ids, embeds, scaling = encode_dataset(cfg, rng, vae, encoder, tokenizer)
    times["encode"] = time.perf_counter() - t0
    log(f"data  {len(latents)} latents, {len(embeds)} distinct prompts, scaling factor {scaling:.4f}")
    t0 = time.perf_counter()
    unet = train_unet(cfg, latents, prompt_ids, embeds)
    times["unet"] = time.perf_counter() - t0
    return assemble(vae, encoder, tokenizer, unet, scaling), times


README = """# demo-shapes

A **toy** text-to-image diffusion model for demos and tests of `farm`, not a model for real work. It
knows one kind of picture: one flat-coloured circle, square or triangle on a flat background, 64x64,
in {colours}. Prompts look like "a red circle on a blue background". It has the parts and the format
of Stable Diffusion 1.5 (CLIP text encoder over a character-level tokenizer, conditional UNet, KL VAE
with a 4x smaller latent, epsilon prediction on SD 1.5's noise schedule), loads with
`StableDiffusionPipeline.from_pretrained`, and runs with every sampler the farm offers. For real
pictures, point the farm at a real model (a Hugging Face id or a local diffusers folder).

What it understands: "a|an COLOUR SHAPE on a|an COLOUR background" (also "COLOUR SHAPE on COLOUR
background" and "a COLOUR SHAPE, COLOUR background"), SHAPE one of {shapes}, at 64x64. Guidance
about 3 gives clean shapes; the usual 7.5 still gets the colours right but overshoots (squares grow
dents). Other words or sizes give unspecified pictures.

Check it (renders a fixed set of prompts and reads the colours back from the pixels):

    python -m farm.demo_model.evaluate            # plain diffusers pipeline calls
    python -m farm.demo_model.evaluate --farm     # through the embedded farm of simulated nodes

## How it was made

Trained from scratch on images the training script generates itself (nothing downloaded):

    {command}

- seed: {seed}
- training time: {total:.0f} s wall on one CPU thread ({stages})
- machine: {machine}; torch {torch}, diffusers {diffusers}, transformers {transformers}
- settings: `{settings}`
- parameters: {params}; weights {size_mb:.1f} MB (safetensors, float32)

The same command on the same machine and library versions gives the same weights; another CPU or
torch build may differ in the last bits.
{evaluation}"""


def evaluation_section(out: Path) -> str:
    """How the fresh weights do on the check prompts (plain pipeline calls, the demo's settings)."""
    from farm.demo_model import evaluate

    seeds = [0, 1]
    prompts, sample_seeds = evaluate.samples_of(evaluate.CHECK_PROMPTS, seeds)
    images = evaluate.render_plain(out, evaluate.CHECK_PROMPTS, seeds)
    verdicts = evaluate.judge(prompts, sample_seeds, images)
    return (
        f"\n## How well it draws\n\n`python -m farm.demo_model.evaluate --model {out} --seeds 2` "
        f"({evaluate.CHECK_SAMPLER}, {evaluate.CHECK_STEPS} steps, guidance {evaluate.CHECK_GUIDANCE}) "
        f"right after training:\n\n    {evaluate.report(verdicts).splitlines()[-1]}\n"
    )


def write_readme(out: Path, cfg: Config, pipe: StableDiffusionPipeline, times: dict[str, float], argv: list[str],
                 evaluation: str = "") -> None:
    import diffusers
    import transformers

    size = sum(p.stat().st_size for p in out.rglob("*.safetensors"))
    params = ", ".join(f"{name} {sum(p.numel() for p in getattr(pipe, name).parameters()) / 1e6:.2f} M"
                       for name in ("unet", "vae", "text_encoder"))
    (out / "README.md").write_text(README.format(
        colours=", ".join(data.COLOURS),
        shapes=", ".join(data.SHAPES),
        command="python -m farm.demo_model.train " + " ".join(shlex.quote(a) for a in argv),
        seed=cfg.seed,
        total=sum(times.values()),
        stages=", ".join(f"{k} {v:.0f} s" for k, v in times.items()),
        machine=f"{platform.processor() or platform.machine()} ({platform.system()})",
        torch=torch.__version__,
        diffusers=diffusers.__version__,
        transformers=transformers.__version__,
        settings=json.dumps(asdict(cfg)),
        params=params,
        size_mb=size / 1e6,
        evaluation=evaluation,
    ), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    defaults = Config()
    parser = argparse.ArgumentParser(prog="python -m farm.demo_model.train", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write the diffusers pipeline into")
    parser.add_argument("--no-evaluate", action="store_true", help="skip scoring the check prompts afterwards")
    for name, value in asdict(defaults).items():
        parser.add_argument("--" + name.replace("_", "-"), type=type(value), default=value)
    args = parser.parse_args(argv)
    cfg = Config(**{k: getattr(args, k) for k in asdict(defaults)})
    pipe, times = train(cfg)
    args.out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(args.out, safe_serialization=True)
    write_readme(args.out, cfg, pipe, times, argv, "" if args.no_evaluate else evaluation_section(args.out))
    log(f"saved {args.out} in {sum(times.values()):.0f} s ({', '.join(f'{k} {v:.0f} s' for k, v in times.items())})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
