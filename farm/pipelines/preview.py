"""A cheap look at a sample mid-way: latents projected straight to RGB, no VAE.

After each segment the node sends one small PNG per sample so the dashboard can show how a sample
is coming along. A linear map from latent channels to RGB (a few multiply-adds per pixel) costs
nothing next to a step, and needs no VAE on a node that runs middle segments. SD 1.x and SDXL use
their published 4-channel factors; other latent spaces show their first three channels, each
normalised to its own range: a rough picture, honestly labelled as a preview.
"""

from __future__ import annotations

import io

import torch
from PIL import Image

RGB_FACTORS: dict[str, list[list[float]]] = {
    "sd15": [[0.3512, 0.2297, 0.3227], [0.3250, 0.4974, 0.2350],
             [-0.2829, 0.1762, 0.2721], [-0.2120, -0.2616, -0.7177]],
    "sdxl": [[0.3920, 0.4054, 0.4549], [-0.2634, -0.0196, 0.0653],
             [0.0568, 0.1687, -0.0755], [-0.3112, -0.2359, -0.2076]],
}
RGB_FACTORS["sdxl_refiner"] = RGB_FACTORS["sdxl"]  # the refiner shares SDXL's VAE and latent space
MAX_SIDE = 128


def project(latents: torch.Tensor, family: str) -> torch.Tensor:
    """(C, H, W) latents of one sample to (H, W, 3) floats in [0, 1]."""
    x = latents.detach().float().cpu()
    factors = RGB_FACTORS.get(family)
    if factors is not None and x.shape[0] == len(factors):
        rgb = torch.einsum("chw,cr->hwr", x, torch.tensor(factors))
        return ((rgb + 1) / 2).clamp(0, 1)
    rgb = x[:3] if x.shape[0] >= 3 else x[:1].expand(3, -1, -1)
    lo = rgb.amin(dim=(1, 2), keepdim=True)
    hi = rgb.amax(dim=(1, 2), keepdim=True)
    return ((rgb - lo) / (hi - lo).clamp_min(1e-6)).permute(1, 2, 0)


def preview_pngs(latents: torch.Tensor, family: str) -> tuple[bytes, ...]:
    """One small PNG per sample from (B, C, H, W) latents (videos: pass their middle frame)."""
    out = []
    for sample in latents:
        rgb = (project(sample, family) * 255).round().to(torch.uint8).numpy()
        image = Image.fromarray(rgb, "RGB")
        scale = max(1, MAX_SIDE // max(image.size))
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        out.append(buf.getvalue())
    return tuple(out)
