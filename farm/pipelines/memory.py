"""Memory modes: how a node holds a model when its VRAM is tight.

The planner picks a mode per shard from the cost model (`farm.core.costmodel.MemoryMode`); the node
applies it to each stage's pipeline and reports the mode it really used, which goes into the
output's provenance:

    full            every loaded component on the GPU
    offload         diffusers' model CPU offload: only the running component on the GPU
    group_offload   every component streams to the GPU one block at a time, the next block copied
                    on a CUDA stream while the current one runs (lowest VRAM, slowest)
    *_tiled         the VAE decodes in tiles, bounding its activations

Offloading means nothing without a GPU: on a CPU device the placement is `full`, and that is what
is reported. Tiling changes the decoded pixels slightly (tiles are blended), never the latents, and
is switched on a loaded VAE: changing it never reloads a weight.
"""

from __future__ import annotations

import torch
from diffusers import DiffusionPipeline
from diffusers.hooks.group_offloading import _GROUP_OFFLOADING

from farm.contracts.errors import InvalidInput

PLACEMENTS = ("full", "offload", "group_offload")


def parse(mode: str) -> tuple[str, bool]:
    """'offload_tiled' -> ('offload', True)."""
    placement, _, tiled = mode.partition("_tiled")
    if placement not in PLACEMENTS or (tiled or mode.count("_tiled") > 1):
        raise InvalidInput("memory_mode",
                           f"must be one of {', '.join(PLACEMENTS)}, optionally with _tiled, got {mode!r}")
    return placement, mode.endswith("_tiled")


def effective(mode: str, device: torch.device) -> str:
    """The mode that really applies on `device` (offloading needs a GPU to offload from)."""
    placement, tiled = parse(mode)
    if device.type != "cuda":
        placement = "full"
    return f"{placement}_tiled" if tiled else placement


def modules(pipe: DiffusionPipeline) -> dict[str, torch.nn.Module]:
    return {name: m for name, m in pipe.components.items() if isinstance(m, torch.nn.Module)}


def place(pipe: DiffusionPipeline, placement: str, device: torch.device) -> None:
    """Put `pipe`'s loaded components where `placement` says (a placement of `PLACEMENTS`)."""
    if placement == "offload":
        pipe.enable_model_cpu_offload(device=device)
    elif placement == "group_offload":
        # Streams overlap the next block's copy with this block's compute; they need CUDA.
        pipe.enable_group_offload(onload_device=device, offload_device=torch.device("cpu"), offload_type="block_level",
                                  num_blocks_per_group=1, use_stream=device.type == "cuda")
    else:
        pipe.to(device)


def unplace(pipe: DiffusionPipeline) -> None:
    """Remove every offload hook (accelerate's and diffusers' group offload), so the modules hold no
    references through hooks and can be placed afresh or freed."""
    pipe.remove_all_hooks()
    for module in modules(pipe).values():
        registry = getattr(module, "_diffusers_hook", None)
        if registry is not None:
            registry.remove_hook(_GROUP_OFFLOADING, recurse=True)


def release(pipe: DiffusionPipeline) -> None:
    """After a stage: model offload's hooks put the last model back in CPU memory (diffusers calls
    this at the end of every pipeline call; without it the last model stays on the GPU)."""
    pipe.maybe_free_model_hooks()


def set_tiling(pipe: DiffusionPipeline, tiled: bool) -> None:
    vae = getattr(pipe, "vae", None)
    if vae is None or not hasattr(vae, "enable_tiling"):
        return
    if tiled:
        vae.enable_tiling()
    else:
        vae.disable_tiling()
