"""Writes each sample once, as a PNG whose text chunks carry its parameters and provenance.

Two chunks: `parameters`, the one-line form image tools already read (prompt, negative prompt,
steps, sampler, guidance, seed, size, model), and `farm`, JSON with the same fields plus which
node and GPU rendered which steps. The file is written under a temporary name and renamed, so a
crash never leaves half an image under the real name. Videos (jobs of more than one frame) are
written by `farm.runtime.video_output` with the same parameters and provenance.

Outputs are private to the user the head runs as: each job's folder is 0700 and its files 0600 (a
prompt or an image may be confidential on a shared PC). `FARM_OUTPUTS_GROUP=1` in the head's
environment shares them with that user's group instead (0750 and 0640), e.g. for a file server.
Free text never reaches the `parameters` chunk with a line break or a control character in it: a
prompt could otherwise forge the lines image tools read ("Steps: 999").
"""

from __future__ import annotations

import json
import os
import unicodedata
from collections.abc import Sequence
from dataclasses import asdict
from io import BytesIO
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from PIL.PngImagePlugin import PngInfo

from farm import __version__
from farm.contracts.domain import JobSpec, Sample, StepRun
from farm.jobs.catalog import get_model
from farm.runtime.video_output import write_video


def provenance(job_id: str, job: JobSpec, sample: Sample, runs: Sequence[StepRun]) -> dict[str, object]:
    return {
        "job_id": job_id,
        "sample": sample.index,
        "prompt": sample.prompt,
        "negative_prompt": job.negative_prompt,
        "seed": sample.seed,
        "steps": job.steps,
        "guidance": job.guidance,
        "width": job.width,
        "height": job.height,
        "sampler": job.sampler,
        "model": job.model,
        "loras": [asdict(lora) for lora in job.loras],
        "segments": [asdict(r) for r in runs],
        "farm_version": __version__,
        # img2img: the init image by its SHA-256 and the denoising strength (text jobs: neither)
        **({"init_image": job.init_image, "strength": job.strength} if job.init_image else {}),
    }


def one_line(value: object) -> str:
    """`value` as text with no line break or other control character (each becomes a space)."""
    return "".join(" " if unicodedata.category(c) in ("Cc", "Zl", "Zp") else c for c in str(value))


def lora_parts(loras: Sequence[dict]) -> tuple[str, str]:
    """A1111's way of naming LoRA adapters: `<lora:NAME:WEIGHT>` tags at the end of the prompt, and
    `, Lora hashes: "NAME: HASH, NAME2: HASH2"` (names without ':' or ',', the value quoted as its
    `infotext_utils.quote` quotes text holding ':'); both empty without adapters."""
    if not loras:
        return "", ""
    tags = "".join(f" <lora:{lora['name']}:{lora['weight']:g}>" for lora in loras)
    hashes = ", ".join(f"{str(lora['name']).replace(':', '').replace(',', '')}: {lora['short_hash']}"
                       for lora in loras)
    return tags, f", Lora hashes: {json.dumps(hashes, ensure_ascii=False)}"


def parameters_line(meta: dict[str, object]) -> str:
    """The A1111 `parameters` text: its three lines are the farm's, whatever the fields hold."""
    m = {k: one_line(v) for k, v in meta.items()}
    tags, hashes = lora_parts(meta.get("loras") or [])  # type: ignore[arg-type]
    strength = f", Denoising strength: {m['strength']}" if "strength" in m else ""  # img2img, as A1111 writes it
    return (
        f"{m['prompt']}{one_line(tags)}\nNegative prompt: {m['negative_prompt']}\n"
        f"Steps: {m['steps']}, Sampler: {m['sampler']}, CFG scale: {m['guidance']}, "
        f"Seed: {m['seed']}, Size: {m['width']}x{m['height']}, Model: {m['model']}{strength}{one_line(hashes)}"
    )


def output_modes(group: bool) -> tuple[int, int]:
    """(folder mode, file mode) of outputs: private, or readable by the owner's group."""
    return (0o750, 0o640) if group else (0o700, 0o600)


class PngWriter:
    """`OutputSink` that writes `<root>/<job id>/<sample>-seed<seed>.png`, or for a video (more than
    one frame) `.mp4` with a `.json` sidecar and a `.webp` preview (`farm.runtime.video_output`)."""

    def __init__(self, root: Path, group: bool | None = None) -> None:
        self.root = root
        if group is None:
            group = os.environ.get("FARM_OUTPUTS_GROUP", "") == "1"
        self.dir_mode, self.file_mode = output_modes(group)

    def write(self, job_id: str, job: JobSpec, sample: Sample, rgb: bytes, runs: Sequence[StepRun]) -> Path:
        self.root.mkdir(parents=True, exist_ok=True, mode=self.dir_mode)  # a folder made here is private
        folder = self.root / job_id
        folder.mkdir(exist_ok=True, mode=self.dir_mode)
        os.chmod(folder, self.dir_mode)
        meta = provenance(job_id, job, sample, runs)
        stem = f"{sample.index:04d}-seed{sample.seed}"
        if job.frames > 1:
            path = write_video(folder, stem, job, rgb, meta, parameters_line(meta), get_model(job.model).fps)
            for written in folder.glob(f"{stem}.*"):
                os.chmod(written, self.file_mode)
            return path
        info = PngInfo()
        info.add_text("parameters", parameters_line(meta))
        info.add_text("farm", json.dumps(meta, sort_keys=True))
        path = folder / f"{stem}.png"
        if path.exists():  # written before a crash that came before its record: written once, kept
            return path
        image = Image.frombytes("RGB", (job.width, job.height), rgb)
        tmp = path.with_suffix(".png.tmp")
        image.save(tmp, format="PNG", pnginfo=info)
        os.chmod(tmp, self.file_mode)
        os.replace(tmp, path)
        return path


def read_provenance(path: Path) -> dict[str, object]:
    """The `farm` chunk of a PNG this module wrote."""
    with Image.open(path) as im:
        return json.loads(im.text["farm"])


def png_text(data: bytes) -> dict[str, str]:
    """The text chunks of PNG bytes by keyword ({} for bytes that are not a PNG). Reading them does
    not decode the pixels: this module writes them before the image data."""
    try:
        with Image.open(BytesIO(data)) as im:
            return dict(getattr(im, "text", {}))
    except (UnidentifiedImageError, OSError):
        return {}
