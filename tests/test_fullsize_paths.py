"""Real-size code paths on a CPU: SD 1.5's full-size text encoder, UNet and VAE, and Wan 2.1 1.3B's
full-size transformer and VAE (with a two-layer umT5 of the real 4096 width: umT5-XXL does not fit
this machine's memory), as written in farm/pipelines/fullsize.py, with seeded random weights.

Each model is saved as a diffusers folder (safetensors) and named by that folder in the job, so it
takes the path of a real model on disk: `get_model` reads its sizes from the headers and
`from_pretrained` loads it. One short job runs through the farm's engine uncut, then cut after the
first step: the checkpoint goes through the msgpack codec into a fresh engine (another node) that
loads only the denoiser, finishes the run bit for bit equal to the uncut latents, and decodes them
with the full-size VAE. The first engine is closed before the fresh one loads, so only one copy of
the weights is ever held (Wan's transformer alone is 5.7 GB in fp32).

Building the components costs seconds (torch's default init: ~5 s for SD 1.5, ~8 s for Wan on this
machine), so the weights are the modules' own random init after `torch.manual_seed`.
"""

from __future__ import annotations

import gc
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from farm.jobs.catalog import get_model
from farm.jobs.jobspec import make_job
from farm.pipelines import fullsize, schedulers
from farm.pipelines.engine import Engine
from farm.pipelines.families import get_family
from farm.wire import checkpoint_codec as wire

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def two_threads() -> Iterator[None]:
    """Two threads, as on a small CPU node; the same count for both runs (a different count may
    sum in another order)."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)
    gc.collect()


@pytest.fixture
def folder(tmp_path: Path) -> Iterator[Path]:
    """The model's folder, removed after the test: pytest keeps the last three sessions' tmp folders,
    and these hold 4.3 GB (SD 1.5) and 6.9 GB (Wan) of weights."""
    yield tmp_path / "model"
    shutil.rmtree(tmp_path / "model", ignore_errors=True)


def params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def save_fullsize(family: str, components: dict[str, torch.nn.Module], folder: Path) -> dict[str, int]:
    """A diffusers folder of the full-size components, with the tiny model's tokenizer (character
    level: no vocabulary download) and scheduler. The modules are freed once written; returns their
    parameter counts."""
    sizes = {name: params(module) for name, module in components.items()}
    pipe = get_family(family).build_tiny()
    pipe.register_modules(**{name: module.eval() for name, module in components.items()})
    pipe.save_pretrained(folder, safe_serialization=True)
    del pipe
    components.clear()
    gc.collect()
    return sizes


def engine_for(folder: Path) -> Engine:
    """The engine a node makes for a model folder named in a job (as SegmentRunner does)."""
    info = get_model(str(folder))
    return Engine(get_family(info.family), Path(info.source), info.name, torch.device("cpu"))


def cut_equals_uncut(folder: Path, sizes: dict[str, int], defaults: tuple[str, float], job_fields: dict,
                     cut_step: int = 1) -> tuple[torch.Tensor, list[np.ndarray]]:
    """Run the job uncut, then cut after `cut_step` whole steps into a fresh engine; assert the
    latents are equal bit for bit (the tiny models' tests assert the same: one machine, the same
    thread count, the same weights and inputs). Returns the latents and the fresh engine's decoded
    output, after checking that the modules it ran are the full-size ones (`sizes`). `defaults`: the
    sampler and guidance the job runs with (the farm's defaults for the family's real models, unless
    `job_fields` sets them)."""
    job = make_job(model=str(folder), prompts=["a red fox in the snow"], **job_fields)
    assert (job.sampler, job.guidance) == defaults
    total = schedulers.evaluations(job.sampler, job.steps)
    cut = schedulers.whole_step_ends(job.sampler, job.steps)[cut_step]
    assert 0 < cut < total

    first = engine_for(folder)
    try:
        uncut = first.denoise(first.encode(job, job.samples()), total).latents.clone()
        live = first.denoise(first.encode(job, job.samples()), cut)
        payload = wire.encode(first.to_checkpoint(live))
        assert first.loaded_components() == set(first.family.stages["encode"] + first.family.stages["denoise"])
        assert params(first.pipes["encode"].text_encoder) == sizes["text_encoder"]
    finally:
        first.close()
    del first, live
    gc.collect()

    node = engine_for(folder)  # another node: holds nothing yet
    try:
        resumed = node.denoise(node.from_checkpoint(wire.decode(payload), job), total)
        assert node.loaded_components() == set(node.family.stages["denoise"]), "a middle segment loaded more"
        assert torch.isfinite(uncut).all() and uncut.std() > 0
        assert torch.equal(resumed.latents, uncut), "the cut run's latents differ from the uncut run's"
        images = node.decode(resumed)  # the last segment decodes on the node that finished it
        ran = {name: params(getattr(node.pipes[stage], name)) for stage in ("denoise", "decode")
               for name in node.family.stages[stage]}
        assert ran == {name: sizes[name] for name in ran}, "the engine did not run the full-size modules"
    finally:
        node.close()
    return uncut, images


def test_sd15_fullsize_cut_equals_uncut(folder: Path) -> None:
    torch.manual_seed(0)
    components = fullsize.sd15()
    assert params(components["unet"]) == pytest.approx(859.5e6, rel=1e-3)
    sizes = save_fullsize("sd15", components, folder)
    # 64x64: 8x8 latents, the least the UNet's three downsamplings take. The model's defaults
    # (external SD 1.5: dpmpp_2m; guidance 7.5). Three steps, so the resumed segment's first step is
    # a second-order one that reads the first segment's model output from the scheduler's history
    # (with two, the last step falls back to first order: `lower_order_final`).
    latents, images = cut_equals_uncut(folder, sizes, ("dpmpp_2m", 7.5), {"width": 64, "height": 64, "steps": 3})
    assert latents.shape == (1, 4, 8, 8)
    assert len(images) == 1 and images[0].shape == (64, 64, 3) and images[0].dtype == np.uint8


def test_wan21_1_3b_fullsize_cut_equals_uncut(folder: Path) -> None:
    torch.manual_seed(0)
    components = fullsize.wan21_1_3b(small_text=True)
    assert params(components["transformer"]) == pytest.approx(1.419e9, rel=1e-3)
    sizes = save_fullsize("wan21", components, folder)
    # The smallest legal job: 16x16 (the VAE's 8x and the patch's 2x), 5 frames (4k+1: 2 latent
    # frames), 2 steps (the least a job takes) of UniPC, the model's sampler. The second step's
    # corrector reads the first step's model output and sample: the scheduler's history crosses the
    # cut. Guidance 1 (one forward per step over 512 text tokens, ~10 s each here, instead of two):
    # what this test checks is the full-size weights' path; guidance crosses cuts in the tiny models'.
    job = {"width": 16, "height": 16, "frames": 5, "steps": 2, "guidance": 1.0}
    latents, images = cut_equals_uncut(folder, sizes, ("unipc", 1.0), job)
    assert latents.shape == (1, 16, 2, 2, 2)
    assert len(images) == 1 and images[0].shape == (5, 16, 16, 3) and images[0].dtype == np.uint8
