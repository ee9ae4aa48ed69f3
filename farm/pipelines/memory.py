"""Memory modes: how a node holds a model when its VRAM is tight.

The planner picks a mode per shard from the cost model (`farm.core.costmodel.MemoryMode`); the node
applies it to each stage's pipeline and reports the mode it really used, which goes into the
output's provenance:

    full            every loaded component on the GPU
    offload         diffusers' model CPU offload: only the running component on the GPU
    group_offload   the denoiser's blocks stream to the GPU group by group (lowest VRAM, slowest)
    *_tiled         the VAE decodes in tiles, bounding its activations

Offloading means nothing without a GPU: on a CPU device the placement is `full`, and that is what
is reported. Tiling changes the decoded pixels slightly (tiles are blended), never the latents.
"""

from __future__ import annotations

import torch
from diffusers import DiffusionPipeline

from farm.contracts.errors import InvalidInput

PLACEMENTS = ("full", "offload", "group_offload")


def parse(mode: str) -> tuple[str, bool]:
    """'offload_tiled' -> ('offload', True)."""
    placement, _, tiled = mode.partition("_tiled")
    if placement not in PLACEMENTS or (tiled or mode.count("_tiled") > 1):
        raise InvalidInput("memory_mode", f"must be one of {', '.join(PLACEMENTS)}, optionally with _tiled, got {mode!r}")
    return placement, mode.endswith("_tiled")


def effective(mode: str, device: torch.device) -> str:
    """The mode that really applies on `device` (offloading needs a GPU to offload from)."""
    placement, tiled = parse(mode)
    if device.type != "cuda":
        placement = "full"
    return f"{placement}_tiled" if tiled else placement


def apply(pipe: DiffusionPipeline, mode: str, device: torch.device, denoisers: tuple[str, ...]) -> None:
    """Place `pipe` on `device` as `mode` asks (see `effective` for what a CPU does)."""
    placement, tiled = parse(effective(mode, device))
    if placement == "offload":
        pipe.enable_model_cpu_offload(device=device)
    elif placement == "group_offload":
        for name in denoisers:
            module = getattr(pipe, name, None)
            if module is not None:
                module.enable_group_offload(onload_device=device, offload_device=torch.device("cpu"),
                                            offload_type="block_level", num_blocks_per_group=1)
        others = [c for c, m in pipe.components.items() if isinstance(m, torch.nn.Module) and c not in denoisers]
        for name in others:
            getattr(pipe, name).to(device)
    else:
        pipe.to(device)
    vae = getattr(pipe, "vae", None)
    if tiled and vae is not None and hasattr(vae, "enable_tiling"):
        vae.enable_tiling()
