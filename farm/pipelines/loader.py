"""Where pipelines come from: built-in models are made once into a folder (or shipped in the
package), then everything loads through `from_pretrained`, the same call a Hugging Face id or a
local folder of real weights takes."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch

from farm.jobs.catalog import get_model
from farm.jobs.sources import farm_home, weight_files
from farm.pipelines.families import get_family
from farm.pipelines.quiet import quiet_libraries


def builtin_folder(name: str, home: Path | None = None) -> Path:
    """The folder of a built-in model: shipped in the package, or built and saved on first use.

    Built in a temporary folder and renamed into place, so nodes that start together never see half
    a model; the weights come from a fixed seed, so every PC builds the same bytes.
    """
    info = get_model(name)
    if info.source:
        return Path(info.source)
    if info.bundled:
        return Path(__file__).resolve().parent.parent / info.bundled
    target = (home or farm_home()) / "models" / name
    if (target / "model_index.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        quiet_libraries()
        get_family(info.family).build_tiny().save_pretrained(tmp)
        try:
            tmp.rename(target)
        except OSError:
            if not (target / "model_index.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


VARIANTS = {torch.float16: "fp16", torch.bfloat16: "bf16"}


def variant_for(folder: Path, components: set[str], dtype: torch.dtype) -> str | None:
    """The weight variant to load in `dtype` ("fp16" or "bf16"): used where every component loaded
    that has weight files has that variant (half the bytes to read, no cast on load); else None."""
    variant = VARIANTS.get(dtype)
    if variant is None:
        return None
    found = [weight_files(folder / c) for c in components if (folder / c).is_dir()]
    found = [f for f in found if f]
    return variant if found and all(variant in f for f in found) else None


def pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
