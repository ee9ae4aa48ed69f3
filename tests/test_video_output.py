"""Video outputs: a job of more than one frame is written as an H.264 MP4 at the model's frame rate
that decodes back to its frames, tagged with its parameters, beside a provenance JSON and an
animated WebP preview."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from farm.contracts.domain import StepRun
from farm.jobs.catalog import get_model
from farm.jobs.jobspec import make_job
from farm.runtime.outputs import PngWriter, provenance
from farm.runtime.video_output import PREVIEW_SIDE, read_video_provenance, write_preview

RUNS = [StepRun("node-a", "RTX 3060", 0, 2), StepRun("node-b", "RTX 4090", 2, 4, "offload")]


def moving_square(frames: int, height: int, width: int) -> np.ndarray:
    """A smooth background with a bright square that moves one step per frame (order matters)."""
    y, x = np.mgrid[0:height, 0:width]
    video = np.empty((frames, height, width, 3), dtype=np.uint8)
    for f in range(frames):
        video[f] = np.stack([x * 255 // width, y * 255 // height, np.full_like(x, 64)], axis=-1)
        video[f, 8:16, 2 * f:2 * f + 8] = 255
    return video


@pytest.mark.parametrize("model", ["tiny-ltx", "tiny-wan21", "tiny-hunyuan15"])
def test_video_job_writes_mp4_sidecar_and_preview(model: str, tmp_path: Path) -> None:
    job = make_job(model=model, prompts=["a red circle"], seed=7, steps=4, frames=9, width=32, height=32)
    sample = job.samples()[0]
    video = moving_square(job.frames, job.height, job.width)
    path = PngWriter(tmp_path).write("job-1", job, sample, video.tobytes(), RUNS)
    fps = get_model(model).fps

    assert path == tmp_path / "job-1" / "0000-seed7.mp4"
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert stream.average_rate == fps
        decoded = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])
        tags = dict(container.metadata)
    assert decoded.shape == video.shape
    # Lossy but faithful: each frame is closest to the frame it was made from.
    errors = np.abs(decoded.astype(int)[:, None] - video.astype(int)[None]).mean(axis=(2, 3, 4))
    assert (errors.argmin(axis=1) == np.arange(job.frames)).all() and errors.diagonal().max() < 8

    expected = {**provenance("job-1", job, sample, RUNS), "frames": 9, "fps": fps}
    assert tags["comment"].startswith("a red circle\nNegative prompt: \nSteps: 4")
    assert f"Seed: 7, Size: 32x32, Model: {model}, Frames: 9, FPS: {fps}" in tags["comment"]
    assert read_video_provenance(path) == expected
    assert json.loads(path.with_suffix(".json").read_text(encoding="utf-8")) == expected

    with Image.open(path.with_suffix(".webp")) as preview:
        assert preview.format == "WEBP" and preview.n_frames == job.frames and preview.size == (32, 32)
        preview.load()
        assert preview.info["duration"] == round(1000 / fps) and preview.info["loop"] == 0
    assert sorted(p.name for p in path.parent.iterdir()) == ["0000-seed7.json", "0000-seed7.mp4", "0000-seed7.webp"]


def test_single_frame_job_of_a_video_model_is_a_png(tmp_path: Path) -> None:
    job = make_job(model="tiny-ltx", prompts=["a"], frames=1, width=32, height=32)
    path = PngWriter(tmp_path).write("job-2", job, job.samples()[0], bytes(32 * 32 * 3), RUNS)
    assert path.suffix == ".png" and Image.open(path).size == (32, 32)


def test_preview_shrinks_large_videos_to_dashboard_size(tmp_path: Path) -> None:
    path = write_preview(tmp_path / "p.webp", moving_square(3, 64, 400), fps=16)
    with Image.open(path) as preview:
        assert preview.size == (PREVIEW_SIDE, 51) and preview.n_frames == 3
