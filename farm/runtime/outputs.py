"""Writes each sample once, as a PNG whose text chunks carry its parameters and provenance.

Two chunks: `parameters`, the one-line form image tools already read (prompt, negative prompt,
steps, sampler, guidance, seed, size, model), and `farm`, JSON with the same fields plus which
node and GPU rendered which steps. The file is written under a temporary name and renamed, so a
crash never leaves half an image under the real name. Videos (jobs of more than one frame) are
written by `farm.runtime.video_output` with the same parameters and provenance.
"""

from __future__ import annotations

import json
import os
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
        "segments": [asdict(r) for r in runs],
        "farm_version": __version__,
    }


def parameters_line(meta: dict[str, object]) -> str:
    return (
        f"{meta['prompt']}\nNegative prompt: {meta['negative_prompt']}\n"
        f"Steps: {meta['steps']}, Sampler: {meta['sampler']}, CFG scale: {meta['guidance']}, "
        f"Seed: {meta['seed']}, Size: {meta['width']}x{meta['height']}, Model: {meta['model']}"
    )


class PngWriter:
    """`OutputSink` that writes `<root>/<job id>/<sample>-seed<seed>.png`, or for a video (more than
    one frame) `.mp4` with a `.json` sidecar and a `.webp` preview (`farm.runtime.video_output`)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def write(self, job_id: str, job: JobSpec, sample: Sample, rgb: bytes, runs: Sequence[StepRun]) -> Path:
        folder = self.root / job_id
        folder.mkdir(parents=True, exist_ok=True)
        meta = provenance(job_id, job, sample, runs)
        stem = f"{sample.index:04d}-seed{sample.seed}"
        if job.frames > 1:
            return write_video(folder, stem, job, rgb, meta, parameters_line(meta), get_model(job.model).fps)
        info = PngInfo()
        info.add_text("parameters", parameters_line(meta))
        info.add_text("farm", json.dumps(meta, sort_keys=True))
        path = folder / f"{stem}.png"
        if path.exists():  # written before a crash that came before its record: written once, kept
            return path
        image = Image.frombytes("RGB", (job.width, job.height), rgb)
        tmp = path.with_suffix(".png.tmp")
        image.save(tmp, format="PNG", pnginfo=info)
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
