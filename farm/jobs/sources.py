"""Real models: a local diffusers folder, or a Hugging Face id already in the local cache.

The farm never downloads weights by itself (each PC pulling tens of GB at the first segment would be
a surprise): fetch a model once per PC with `huggingface-cli download ID`, or copy a folder. The
family comes from the folder's `model_index.json` (its pipeline class), and with it the sampler list,
the default guidance and the size and frame limits. The model is costed from its own files: each
component's parameter count is read from its safetensors headers (a few KB; no weights are read), so
Wan 2.1 14B is not planned as the 1.3B, nor an LTX-Video 13B as the 2B. Loading goes through the same
`from_pretrained` call as the built-in models.
"""

from __future__ import annotations

import json
import os
import re
import struct
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

from farm.contracts.errors import InvalidInput
from farm.core.costmodel import PROFILES, Activation, Component, ModelProfile, Role, register, sized
from farm.jobs.catalog import ModelInfo

# pipeline class -> (family, memory profile)
PIPELINES: dict[str, tuple[str, str]] = {
    "StableDiffusionPipeline": ("sd15", "sd15"),
    "StableDiffusionXLPipeline": ("sdxl", "sdxl"),
    "StableDiffusionXLRefinedPipeline": ("sdxl_refiner", "sdxl_refiner"),
    "FluxPipeline": ("flux", "flux"),
    "LTXPipeline": ("ltxv", "ltxv"),
    "WanPipeline": ("wan21", "wan21"),
    # Wan 2.1 I2V's transformer is Wan 2.1 14B's (its CLIP image encoder: `catalog.IMAGE_ENCODER`); Wan 2.2 below.
    "WanImageToVideoPipeline": ("wan21_i2v", "wan21"),
    "HunyuanVideo15Pipeline": ("hunyuanvideo15", "hunyuanvideo15"),
    "HunyuanVideo15ImageToVideoPipeline": ("hunyuanvideo15_i2v", "hunyuanvideo15"),
}


@dataclass(frozen=True)
class Limits:
    """A family's defaults and limits for real models; guidance is the pipeline's documented default
    (Flux.1-dev 3.5, Wan 2.1 5.0, Wan 2.2 4.0, Wan 2.2 I2V 3.5, LTX-Video 3.0, HunyuanVideo-1.5 6.0)."""

    default_size: int
    max_size: int
    default_steps: int
    max_frames: int
    fps: int
    sampler: str
    guidance: float


LIMITS: dict[str, Limits] = {
    "sd15": Limits(512, 1024, 30, 1, 0, "dpmpp_2m", 7.5),
    "sdxl": Limits(1024, 2048, 30, 1, 0, "dpmpp_2m", 5.0),
    "sdxl_refiner": Limits(1024, 2048, 40, 1, 0, "euler", 5.0),
    "flux": Limits(1024, 2048, 28, 1, 0, "flow_euler", 3.5),
    "ltxv": Limits(512, 1280, 40, 257, 25, "flow_euler", 3.0),
    "wan21": Limits(480, 1280, 30, 81, 16, "unipc", 5.0),
    "wan22": Limits(480, 1280, 40, 81, 16, "unipc", 4.0),
    "wan21_i2v": Limits(480, 1280, 30, 81, 16, "unipc", 5.0),
    "wan22_i2v": Limits(480, 1280, 40, 81, 16, "unipc", 3.5),
    "hunyuanvideo15": Limits(480, 1280, 30, 121, 24, "flow_euler", 6.0),
    "hunyuanvideo15_i2v": Limits(480, 1280, 30, 121, 24, "flow_euler", 6.0),
}

# Pipeline component -> cost-model component, where the names differ. A component the measured
# profile lacks (Wan 2.2's second expert) is costed like the one named in TEMPLATES.
COST_NAMES: dict[str, dict[str, str]] = {
    "sd15": {"text_encoder": "clip_l"},
    "sdxl": {"text_encoder": "clip_l", "text_encoder_2": "clip_g"},
    "sdxl_refiner": {"text_encoder": "clip_l", "text_encoder_2": "clip_g"},
    "flux": {"text_encoder": "clip_l", "text_encoder_2": "t5xxl"},
    "ltxv": {"text_encoder": "t5xxl"},
    "wan21": {"text_encoder": "umt5xxl"},
    "wan22": {"text_encoder": "umt5xxl"},
    "wan21_i2v": {"text_encoder": "umt5xxl"},
    "wan22_i2v": {"text_encoder": "umt5xxl"},
    "hunyuanvideo15": {"text_encoder": "qwen25vl", "text_encoder_2": "byt5"},
    "hunyuanvideo15_i2v": {"text_encoder": "qwen25vl", "text_encoder_2": "byt5"},
}
TEMPLATES = {"transformer_2": "transformer"}
# Hidden width of each measured profile's denoiser: a denoiser's activations scale with its width
# (tokens x width per layer; layers run one after another), its step time with its parameters.
REFERENCE_WIDTH = {"sd15": 1280, "sdxl": 1280, "sdxl_refiner": 1280, "flux": 3072, "ltxv": 2048, "wan21": 1536,
                   "hunyuanvideo15": 2048}
# Bytes per value of each safetensors dtype.
SAFETENSORS_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                     "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
# diffusers' and transformers' weight file names: optional shard number, optional variant.
WEIGHT_FILE = re.compile(r"^(?:diffusion_pytorch_model|model)(?:-\d+-of-\d+)?(?:\.(\w+))?\.safetensors$")
MAX_HEADER = 100 * 2**20
COST_BYTES = 2  # the cost model's figures are at 16 bits per weight


@dataclass(frozen=True)
class WeightSize:
    """One component's weights as its files hold them."""

    params: int
    file_bytes: int


def farm_home() -> Path:
    """Per-user state on this PC: built-in model folders and adapters live here (override with FARM_HOME)."""
    return Path(os.environ.get("FARM_HOME") or Path.home() / ".cache" / "farm")


def read_header(path: Path) -> dict[str, dict]:
    """The tensor table of a safetensors file (name -> dtype, shape, offsets); only the header is read."""
    with path.open("rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        if length > MAX_HEADER:
            raise InvalidInput("model", f"{path}: a {length}-byte safetensors header is not plausible")
        table = json.loads(f.read(length))
    table.pop("__metadata__", None)
    return table


def weight_files(component: Path) -> dict[str | None, list[Path]]:
    """A component folder's safetensors files by variant (None: the plain files)."""
    out: dict[str | None, list[Path]] = {}
    for path in sorted(component.glob("*.safetensors")):
        match = WEIGHT_FILE.match(path.name)
        if match:
            out.setdefault(match.group(1), []).append(path)
    return out


def weight_size(component: Path) -> WeightSize | None:
    """Parameters and bytes of a component from one variant's headers (every variant holds the same
    parameters); None without safetensors files."""
    files = weight_files(component)
    if not files:
        return None
    chosen = files.get(None) or files[sorted(k for k in files if k)[0]]
    params = size = 0
    for path in chosen:
        for tensor in read_header(path).values():
            count = 1
            for d in tensor["shape"]:
                count *= d
            params += count
            size += count * SAFETENSORS_BYTES.get(tensor["dtype"], 4)
    return WeightSize(params, size)


def model_sizes(folder: Path) -> dict[str, WeightSize]:
    """Each pipeline component's weight size, read from the files of a diffusers folder."""
    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    out = {}
    for name, spec in index.items():
        if name.startswith("_") or not isinstance(spec, list) or spec[0] is None:
            continue
        size = weight_size(folder / name)
        if size is not None:
            out[name] = size
    return out


def denoiser_width(config: dict) -> int:
    """A denoiser's hidden width from its config: attention heads x head size, or a UNet's widest block."""
    if config.get("num_attention_heads") and isinstance(config.get("attention_head_dim"), int):
        return config["num_attention_heads"] * config["attention_head_dim"]
    return max(config.get("block_out_channels") or [0])


def _scaled(act: Activation | None, ratio: float) -> Activation | None:
    if act is None:
        return None
    return replace(act, fixed_gib=act.fixed_gib * ratio, per_sample_gib=act.per_sample_gib * ratio)


def sized_profile(name: str, family: str, profile: str, folder: Path) -> ModelProfile:
    """The measured profile of `family`, with each component's weights from `folder`'s files.

    Weights are costed at 16 bits (a component that runs in fp32, like Wan's VAE, is scaled by the cost
    model); a denoiser's activations scale with its width, its step time with its parameters.
    """
    base = PROFILES[profile]
    names = COST_NAMES.get(family, {})
    components: dict[str, Component] = {c.name: c for c in base.components}
    compute: list[float] = []  # each denoiser's parameters relative to the measured one's
    for part, size in model_sizes(folder).items():
        cost_name = names.get(part, part)
        template = components.get(cost_name) or components.get(TEMPLATES.get(part, ""))
        if template is None:
            continue  # a part the cost model does not price (a safety checker, an image encoder)
        comp = replace(template, name=cost_name, weights_gib=size.params * COST_BYTES / 2**30)
        if comp.role is Role.DENOISER:
            config_path = folder / part / "config.json"
            width = denoiser_width(json.loads(config_path.read_text(encoding="utf-8"))) if config_path.exists() else 0
            ratio = width / REFERENCE_WIDTH[profile] if width else 1.0
            comp = replace(comp, activation=_scaled(comp.activation, ratio), tiled=_scaled(comp.tiled, ratio))
            compute.append(comp.weights_gib / template.weights_gib)
        components[cost_name] = comp
    return sized(base, f"{profile}:{name}", tuple(components.values()), max(compute, default=1.0))


# The libraries a model folder's components may come from. diffusers imports the module a
# model_index.json names for each component, so a folder naming any other module would make the farm
# import (run) it: such a folder is refused before anything loads it.
COMPONENT_LIBRARIES = ("diffusers", "transformers")
# A Hugging Face id: owner/name of letters, digits, '-', '_' and '.', not starting with '.' or '-'.
HF_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}")
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,99}")


def check_index(name: str, index: object) -> dict:
    """`index` (a folder's model_index.json) if every component it names is a class of an allowed
    library; else InvalidInput naming `model`. Called before any `from_pretrained` reads the folder."""
    if not isinstance(index, dict):
        raise InvalidInput("model", f"{name}: model_index.json is not a JSON object")
    for key, spec in index.items():
        if key.startswith("_") or not isinstance(spec, list):
            continue
        if spec == [None, None]:
            continue  # a component the folder leaves out
        if (len(spec) != 2 or spec[0] not in COMPONENT_LIBRARIES or not isinstance(spec[1], str)
                or not IDENTIFIER.fullmatch(spec[1])):
            raise InvalidInput("model", f"{name}: component {key!r} is {str(spec)[:80]}; allowed: a class of "
                               f"{' or '.join(COMPONENT_LIBRARIES)}")
    if not isinstance(index.get("_class_name"), str):
        raise InvalidInput("model", f"{name}: model_index.json names no pipeline class; "
                           f"allowed: {', '.join(PIPELINES)}")
    return index


def read_index(name: str, folder: Path) -> dict:
    """A model folder's model_index.json, checked by `check_index`."""
    try:
        index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InvalidInput("model", f"{name}: model_index.json cannot be read ({type(e).__name__})") from None
    return check_index(name, index)


def locate(name: str) -> Path | None:
    """The folder of `name`: a local diffusers folder, or the cached snapshot of a Hugging Face id."""
    folder = Path(name).expanduser()
    if (folder / "model_index.json").is_file():
        return folder.resolve()
    if not HF_ID.fullmatch(name) or ".." in name or folder.exists():
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
    index = read_index(name, folder)
    cls = index["_class_name"]
    if cls not in PIPELINES:
        raise InvalidInput("model", f"{name}: pipeline {cls!r} is not supported; supported: {', '.join(PIPELINES)}")
    family, profile = PIPELINES[cls]
    if family in ("wan21", "wan21_i2v") and (index.get("transformer_2") or [None])[0]:
        family = family.replace("wan21", "wan22")  # Wan 2.2 (A14B): high- and low-noise experts
    if family in ("wan21_i2v", "wan22_i2v") and index.get("expand_timesteps"):
        raise InvalidInput("model", f"{name}: Wan image-to-video with expand_timesteps (Wan 2.2 TI2V 5B) is not "
                           "supported; supported: Wan 2.1 I2V, Wan 2.2 I2V A14B")
    limits = LIMITS[family]
    key = register(sized_profile(name, family, profile, folder))
    return ModelInfo(name=name, family=family, profile=key, cost_scale=1, max_size=limits.max_size,
                     default_size=limits.default_size, default_steps=limits.default_steps,
                     description=f"{cls} from {folder}", max_frames=limits.max_frames, fps=limits.fps,
                     default_sampler=limits.sampler, default_guidance=limits.guidance, source=str(folder),
                     image_target_size=image_target_size(family, folder))


def image_target_size(family: str, folder: Path) -> int:
    """HunyuanVideo-1.5 I2V's `target_size` (its transformer's config), which with the init image's
    aspect ratio sets the video's size; 0 for models whose size is the job's."""
    if family != "hunyuanvideo15_i2v":
        return 0
    try:
        return int(json.loads((folder / "transformer" / "config.json").read_text(encoding="utf-8"))["target_size"])
    except (OSError, ValueError, KeyError, TypeError):
        raise InvalidInput("model", f"{folder}: transformer/config.json names no target_size") from None
