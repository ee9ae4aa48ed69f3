"""Real models: a local diffusers folder, or a Hugging Face id already in the local cache.

The farm never downloads weights by itself (each PC pulling tens of GB at the first segment would be
a surprise): fetch a model once per PC with `huggingface-cli download ID`, or copy a folder. The
family comes from the folder's `model_index.json` (its pipeline class), and with it the sampler list,
the memory profile the scheduler plans with, and the size and frame limits. Loading goes through the
same `from_pretrained` call as the built-in models.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from farm.contracts.errors import InvalidInput
from farm.jobs.catalog import ModelInfo

# pipeline class -> (family, memory profile)
PIPELINES: dict[str, tuple[str, str]] = {
    "StableDiffusionPipeline": ("sd15", "sd15"),
    "StableDiffusionXLPipeline": ("sdxl", "sdxl"),
    "StableDiffusionXLRefinedPipeline": ("sdxl_refiner", "sdxl_refiner"),
    "FluxPipeline": ("flux", "flux"),
    "LTXPipeline": ("ltxv", "ltxv"),
    "WanPipeline": ("wan21", "wan21"),
    "HunyuanVideo15Pipeline": ("hunyuanvideo15", "hunyuanvideo15"),
}
# family -> (default size, max size, default steps, max frames, fps, default sampler)
LIMITS: dict[str, tuple[int, int, int, int, int, str]] = {
    "sd15": (512, 1024, 30, 1, 0, "dpmpp_2m"),
    "sdxl": (1024, 2048, 30, 1, 0, "dpmpp_2m"),
    "sdxl_refiner": (1024, 2048, 40, 1, 0, "euler"),
    "flux": (1024, 2048, 28, 1, 0, "flow_euler"),
    "ltxv": (512, 1280, 40, 257, 25, "flow_euler"),
    "wan21": (480, 1280, 30, 81, 16, "unipc"),
    "wan22": (480, 1280, 40, 81, 16, "unipc"),
    "hunyuanvideo15": (480, 1280, 30, 121, 24, "flow_euler"),
}


def locate(name: str) -> Path | None:
    """The folder of `name`: a local diffusers folder, or the cached snapshot of a Hugging Face id."""
    folder = Path(name).expanduser()
    if (folder / "model_index.json").is_file():
        return folder.resolve()
    if name.count("/") != 1 or folder.exists():
        return None
    from huggingface_hub import try_to_load_from_cache  # reads the local cache only, never the network

    cached = try_to_load_from_cache(name, "model_index.json")
    return Path(cached).parent if isinstance(cached, str) else None


@lru_cache(maxsize=64)
def external_model(name: str) -> ModelInfo | None:
    """A ModelInfo for a real model found on this PC, or None when there is none by that name."""
    folder = locate(name)
    if folder is None:
        return None
    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    cls = index.get("_class_name", "")
    if cls not in PIPELINES:
        raise InvalidInput("model", f"{name}: pipeline {cls!r} is not supported; supported: {', '.join(PIPELINES)}")
    family, profile = PIPELINES[cls]
    if family == "wan21" and (index.get("transformer_2") or [None])[0]:
        family = "wan22"  # Wan 2.2: high- and low-noise experts
    size, max_size, steps, frames, fps, sampler = LIMITS[family]
    return ModelInfo(name=name, family=family, profile=profile, cost_scale=1, max_size=max_size, default_size=size,
                     default_steps=steps, description=f"{cls} from {folder}", max_frames=frames, fps=fps,
                     default_sampler=sampler, source=str(folder))
