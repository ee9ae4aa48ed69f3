"""AUTOMATIC1111's web API in the farm's words: its request and answer shapes (as in its
`modules/api/models.py`), its sampler names, and the translation of a txt2img request into one job.

Front ends and scripts written for A1111 (or Forge, or the `webuiapi` client) send dozens of fields;
the farm uses the ones that decide the image and lists the others in the answer's `info` as ignored,
so nothing is dropped silently. A field with a bad value is refused with its A1111 name, the way
A1111's own FastAPI validation names it. LoRA adapters come as A1111 writes them, `<lora:NAME:WEIGHT>`
in the prompt: the tags are taken out of the prompt and become the job's `loras`.
"""

from __future__ import annotations

import base64
import json
import random
import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from farm import __version__
from farm.contracts.control import JobView
from farm.contracts.domain import JobSpec
from farm.contracts.errors import InvalidInput
from farm.jobs.catalog import MODELS, get_model
from farm.jobs.jobspec import MAX_SEED_VALUE, MAX_SEEDS, make_job
from farm.jobs.loras import LORA_SUFFIX, MAX_WEIGHT, MIN_WEIGHT, available_loras, find_lora, lora_metadata
from farm.runtime.outputs import png_text

DEFAULT_MODEL = "demo-shapes"
# A1111's sampler names -> the farm's. A flow-matching model (Flux) runs "Euler" as flow_euler.
SAMPLERS: dict[str, str] = {"Euler a": "euler_a", "Euler": "euler", "DPM++ 2M": "dpmpp_2m", "DDIM": "ddim",
                            "UniPC": "unipc", "Heun": "heun", "DPM2": "dpm2"}
FLOW_SAMPLERS: dict[str, str] = {"Euler": "flow_euler"}
A1111_NAME = {**{v: k for k, v in SAMPLERS.items()}, "flow_euler": "Euler"}
# Each farm sampler runs on its model's own noise schedule: A1111's "automatic".
SCHEDULERS = ("automatic",)
# The request fields a job is made from; every other field is reported back as ignored.
USED_FIELDS = {"prompt", "negative_prompt", "seed", "steps", "cfg_scale", "width", "height", "sampler_name",
               "sampler_index", "scheduler", "batch_size", "n_iter", "override_settings", "send_images"}
# A1111's extra-network syntax for a LoRA in a prompt: <lora:NAME> or <lora:NAME:WEIGHT>.
LORA_TAG = re.compile(r"<lora:([^>]*)>")
# make_job's field -> the A1111 field a user wrote.
FIELD_NAMES = {"prompts": "prompt", "prompts[0]": "prompt", "seeds": "n_iter", "guidance": "cfg_scale",
               "sampler": "sampler_name", "model": "sd_model_checkpoint", "init_image": "init_images",
               "strength": "denoising_strength"}


class Txt2ImgRequest(BaseModel):
    """A1111's StableDiffusionProcessingTxt2Img as its API takes it; absent fields take the model's
    defaults (A1111's 512x512 would not fit the farm's small demo models)."""

    model_config = ConfigDict(extra="allow")

    prompt: str = ""
    negative_prompt: str = ""
    seed: int = Field(-1, ge=-1, le=MAX_SEED_VALUE)
    steps: int | None = None
    cfg_scale: float | None = None
    width: int | None = None
    height: int | None = None
    sampler_name: str | None = None
    sampler_index: str | None = None  # A1111's older name for sampler_name
    scheduler: str | None = None
    batch_size: int = Field(1, ge=1, le=MAX_SEEDS)
    n_iter: int = Field(1, ge=1, le=MAX_SEEDS)
    override_settings: dict[str, Any] = Field(default_factory=dict)
    send_images: bool = True


class Img2ImgRequest(Txt2ImgRequest):
    """A1111's StableDiffusionProcessingImg2Img as its API takes it: the txt2img fields, one init image
    (base64, or a `data:image/...;base64,` URL) and the denoising strength. The image is resized to
    width x height ("just resize"); resize_mode, masks and inpainting fields are reported as ignored."""

    init_images: list[str] = Field(default_factory=list)
    denoising_strength: float = 0.75
    include_init_images: bool = False


class TextToImageResponse(BaseModel):
    images: list[str] | None = None
    parameters: dict[str, Any]
    info: str


class ProgressResponse(BaseModel):
    progress: float
    eta_relative: float
    state: dict[str, Any]
    current_image: str | None = None
    textinfo: str | None = None


class SamplerItem(BaseModel):
    name: str
    aliases: list[str]
    options: dict[str, Any]


class SchedulerItem(BaseModel):
    name: str
    label: str
    aliases: list[str] | None
    default_rho: float | None
    need_inner_model: bool | None


class SDModelItem(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    title: str
    model_name: str
    hash: str | None
    sha256: str | None
    filename: str
    config: str | None


class LoraItem(BaseModel):
    """One adapter as A1111's `GET /sdapi/v1/loras` lists it (extensions-builtin/Lora)."""

    name: str
    alias: str
    path: str
    metadata: dict[str, Any]


class BadField(InvalidInput):
    """A request field with a bad value, named as A1111 names it (the API answers 422)."""


def model_title(value: object, field: str = "sd_model_checkpoint") -> str:
    """An A1111 checkpoint title ("name" or "name [hash]") -> a farm image model's name."""
    if not isinstance(value, str) or not value.strip():
        raise BadField(field, f"must be one of {', '.join(image_models())}, got {value!r}")
    name = value.strip()
    if name.endswith("]") and " [" in name:
        name = name[:name.rindex(" [")]
    try:
        info = get_model(name)
    except InvalidInput as e:
        raise BadField(field, str(e).partition(": ")[2]) from None
    if info.max_frames > 1:
        raise BadField(field, f"{name} is a video model; txt2img takes an image model: {', '.join(image_models())}")
    return name


def image_models() -> list[str]:
    return sorted(name for name, info in MODELS.items() if info.max_frames == 1)


def farm_sampler(name: str | None, model: str) -> str | None:
    """An A1111 sampler name (or the farm's own) -> the farm's, for `model`; None: the model's default."""
    if name is None or name == "":
        return None
    samplers = get_model(model).samplers
    if name in samplers:
        return name
    for table in (SAMPLERS, FLOW_SAMPLERS):
        if table.get(name) in samplers:
            return table[name]
    offered = ", ".join(A1111_NAME.get(s, s) for s in samplers)
    raise BadField("sampler_name", f"must be one of {offered} for {model}, got {name!r}")


@dataclass(frozen=True)
class Txt2Img:
    """A request made into a job, with what the answer needs to say about it."""

    spec: JobSpec
    batch_size: int
    n_iter: int
    ignored: tuple[str, ...]


def split_loras(prompt: str) -> tuple[str, list[dict[str, object]]]:
    """The prompt without its `<lora:NAME:WEIGHT>` tags, and the adapters they name, as A1111 reads
    them: the tags are taken out before the text is encoded, a missing weight is 1."""
    loras: list[dict[str, object]] = []
    for tag in LORA_TAG.finditer(prompt):
        parts = tag.group(1).split(":")
        try:
            weight = float(parts[1]) if len(parts) == 2 else 1.0 if len(parts) == 1 else None
        except ValueError:
            weight = None
        if weight is None or not parts[0].strip():
            raise BadField("prompt", f"{tag.group(0)[:80]} must be <lora:NAME:WEIGHT> with WEIGHT a number from "
                                     f"{MIN_WEIGHT:g} to {MAX_WEIGHT:g}")
        loras.append({"name": parts[0].strip(), "weight": weight})
    if not loras:
        return prompt, loras  # untouched: its spacing is part of what the text encoder sees
    return " ".join(LORA_TAG.sub(" ", prompt).split()), loras


def ignored_fields(request: Txt2ImgRequest) -> tuple[str, ...]:
    extra = sorted(request.model_extra or {})
    settings = sorted(f"override_settings.{k}" for k in request.override_settings if k != "sd_model_checkpoint")
    return tuple(extra + settings)


def init_image(request: Img2ImgRequest) -> bytes:
    """The one init image of an img2img request, decoded (its form is checked by `make_job`)."""
    if len(request.init_images) != 1:
        raise BadField("init_images", f"must hold exactly 1 base64 image, got {len(request.init_images)}")
    text = request.init_images[0]
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise BadField("init_images", "must hold a base64-encoded image (PNG, JPEG or WebP)") from None


def to_job(request: Txt2ImgRequest, default_model: str, owner: str, image: bytes | None = None) -> Txt2Img:
    """One job whose batch_size x n_iter samples have seeds seed..seed+n-1 (a random first seed for -1);
    an img2img request's job starts from its init image (`image`, its bytes)."""
    checkpoint = request.override_settings.get("sd_model_checkpoint")
    model = (model_title(checkpoint, "override_settings.sd_model_checkpoint") if checkpoint is not None
             else default_model)
    if request.scheduler not in (None, "", *SCHEDULERS, *(s.title() for s in SCHEDULERS)):
        raise BadField("scheduler", f"must be one of {', '.join(SCHEDULERS)} (each sampler runs on its model's "
                                    f"own schedule), got {request.scheduler!r}")
    n = request.batch_size * request.n_iter
    seed = random.randrange(2**32) if request.seed == -1 else request.seed
    prompt, loras = split_loras(request.prompt)
    try:
        spec = make_job(model=model, prompts=[prompt], seeds=n, seed=seed, steps=request.steps,
                        width=request.width, height=request.height, guidance=request.cfg_scale,
                        sampler=farm_sampler(request.sampler_name or request.sampler_index, model),
                        negative_prompt=request.negative_prompt, owner=owner, loras=loras, init_image=image,
                        strength=request.denoising_strength if isinstance(request, Img2ImgRequest) else None)
    except BadField:
        raise
    except InvalidInput as e:
        message = str(e).partition(": ")[2]
        if e.field == "seeds":
            message = f"batch_size x n_iter must be from 1 to {MAX_SEEDS}, got {n}"
        raise BadField(FIELD_NAMES.get(e.field, e.field), message) from None
    return Txt2Img(spec, request.batch_size, request.n_iter, ignored_fields(request))


def sample_index(png: bytes) -> int:
    """The sample an output PNG holds (its `farm` chunk), to answer in A1111's seed order."""
    return int(json.loads(png_text(png).get("farm", "{}")).get("sample", 0))


def answer(request: Txt2ImgRequest, job: Txt2Img, view: JobView, pngs: list[bytes],
           started: str) -> TextToImageResponse:
    """A1111's txt2img answer: the PNGs as written (in sample order), the request, and `info`."""
    pngs = sorted(pngs, key=sample_index)
    spec = job.spec
    n = len(spec.seeds)
    info = {
        "prompt": request.prompt, "all_prompts": [request.prompt] * n,  # with their <lora:...> tags, as A1111
        "negative_prompt": spec.negative_prompt, "all_negative_prompts": [spec.negative_prompt] * n,
        "seed": spec.seeds[0], "all_seeds": list(spec.seeds), "subseed": -1, "all_subseeds": [-1] * n,
        "subseed_strength": 0, "width": spec.width, "height": spec.height,
        "sampler_name": A1111_NAME.get(spec.sampler, spec.sampler), "scheduler": SCHEDULERS[0],
        "cfg_scale": spec.guidance, "steps": spec.steps, "batch_size": job.batch_size, "n_iter": job.n_iter,
        "sd_model_name": spec.model, "sd_model_hash": None, "restore_faces": False, "styles": [],
        "infotexts": [png_text(p).get("parameters", "") for p in pngs], "index_of_first_image": 0,
        "job_timestamp": started, "clip_skip": 1, "version": f"farm {__version__}",
        "job_id": view.id, "status": str(view.status), "ignored_fields": list(job.ignored),
    }
    if job.spec.init_image:
        info["denoising_strength"] = job.spec.strength
    images = [base64.b64encode(p).decode() for p in pngs] if request.send_images else []
    parameters = request.model_dump()
    if isinstance(request, Img2ImgRequest) and not request.include_init_images:
        parameters["init_images"] = None  # as A1111 answers: the caller has them
    return TextToImageResponse(images=images, parameters=parameters, info=json.dumps(info))


def sampler_items() -> list[SamplerItem]:
    return [SamplerItem(name=a1111, aliases=[farm], options={}) for a1111, farm in SAMPLERS.items()]


def scheduler_items() -> list[SchedulerItem]:
    return [SchedulerItem(name=s, label=s.title(), aliases=None, default_rho=-1, need_inner_model=False)
            for s in SCHEDULERS]


def lora_items() -> list[LoraItem]:
    """The adapters a prompt's `<lora:NAME:WEIGHT>` may name here (this head's, then the bundled ones).
    The alias is the name (the tag takes names only, where A1111 also takes `ss_output_name`); the
    path is the file's name, not where the head keeps it; a file that is not safetensors is left out."""
    items = []
    for name in available_loras():
        try:
            found = find_lora(name)
            if found is not None:
                items.append(LoraItem(name=name, alias=name, path=f"{name}{LORA_SUFFIX}",
                                      metadata=lora_metadata(found.path)))
        except InvalidInput:
            continue
    return items


def model_items(extra: list[str]) -> list[SDModelItem]:
    """The built-in image models, and any other model in use (a folder or a Hugging Face id)."""
    names = image_models() + sorted(set(extra) - set(image_models()))
    return [SDModelItem(title=n, model_name=n, hash=None, sha256=None, filename=n, config=None) for n in names]
