"""Writes a video sample once: an H.264 MP4 at the model's frame rate, a sidecar JSON, a preview.

The MP4 carries its parameters in the container's metadata (`comment`: the one-line parameters
form, `description`: the provenance JSON), which players and `ffprobe` show; the sidecar JSON holds
the same provenance for tools that cannot read MP4 tags. The preview is an animated WebP at most
`PREVIEW_SIDE` pixels on its long side, small enough for a dashboard. Every file is written under a
temporary name and renamed, so a crash never leaves half a video under the real name.

PyAV's wheels bundle FFmpeg with libx264, so no system FFmpeg is needed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import av
import numpy as np
from PIL import Image

from farm.contracts.domain import JobSpec

PREVIEW_SIDE = 320
CRF = 18  # x264's constant quality: visually lossless for generated video


def _replace(tmp: Path, path: Path) -> Path:
    os.replace(tmp, path)
    return path


def write_mp4(path: Path, frames: np.ndarray, fps: int, tags: dict[str, str]) -> Path:
    """(F, H, W, 3) uint8 frames as H.264 (yuv420p, which every player decodes) with `tags`."""
    tmp = path.with_name(path.name + ".tmp")
    with av.open(str(tmp), mode="w", format="mp4") as container:
        container.metadata.update(tags)
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(CRF)}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return _replace(tmp, path)


def write_preview(path: Path, frames: np.ndarray, fps: int) -> Path:
    """An endlessly looping animated WebP of the frames, shrunk to `PREVIEW_SIDE` on its long side."""
    images = [Image.fromarray(f, "RGB") for f in frames]
    height, width = frames.shape[1:3]
    scale = PREVIEW_SIDE / max(height, width)
    if scale < 1:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        images = [im.resize(size, Image.LANCZOS) for im in images]
    tmp = path.with_name(path.name + ".tmp")
    images[0].save(tmp, format="WEBP", save_all=True, append_images=images[1:], duration=round(1000 / fps),
                   loop=0, quality=80)
    return _replace(tmp, path)


def write_video(folder: Path, stem: str, job: JobSpec, rgb: bytes, meta: dict[str, object],
                parameters: str, fps: int) -> Path:
    """`<stem>.mp4`, `<stem>.json` and `<stem>.webp` in `folder`; returns the MP4's path."""
    frames = np.frombuffer(rgb, dtype=np.uint8).reshape(job.frames, job.height, job.width, 3)
    meta = {**meta, "frames": job.frames, "fps": fps}
    provenance_json = json.dumps(meta, sort_keys=True)
    sidecar = folder / f"{stem}.json"
    tmp = sidecar.with_name(sidecar.name + ".tmp")
    tmp.write_text(provenance_json, encoding="utf-8")
    _replace(tmp, sidecar)
    write_preview(folder / f"{stem}.webp", frames, fps)
    tags = {"comment": f"{parameters}, Frames: {job.frames}, FPS: {fps}", "description": provenance_json}
    return write_mp4(folder / f"{stem}.mp4", frames, fps, tags)


def read_video_provenance(path: Path) -> dict[str, object]:
    """The provenance JSON of an MP4 this module wrote (its `description` tag)."""
    with av.open(str(path)) as container:
        return json.loads(container.metadata["description"])

