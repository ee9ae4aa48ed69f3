"""Memory modes are applied and recorded as used; previews come back after middle segments."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from farm.contracts.domain import NodeInfo, SegmentTask
from farm.contracts.errors import InvalidInput
from farm.jobs.jobspec import make_job
from farm.pipelines import memory
from farm.pipelines.runner import SegmentRunner


def test_modes_parse_and_offload_needs_a_gpu() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert memory.parse("offload_tiled") == ("offload", True)
    assert memory.effective("offload", cpu) == "full"
    assert memory.effective("group_offload_tiled", cpu) == "full_tiled"
    assert memory.effective("offload", cuda) == "offload"
    for bad in ("fast", "full_tiled_tiled", "offload_tiledx"):
        with pytest.raises(InvalidInput, match="memory_mode"):
            memory.parse(bad)


def run_shard(runner: SegmentRunner, mode: str, size: int = 64):
    job = make_job(prompts=["a red circle", "a blue square"], steps=4, width=size, height=size)
    samples = job.samples()
    first = runner.run(SegmentTask(job, "s0", samples, 0, 0, 2, None, mode))
    last = runner.run(SegmentTask(job, "s0", samples, 1, 2, 4, first.checkpoint, mode))
    return first, last


def test_previews_after_a_middle_segment(farm_home: Path) -> None:
    runner = SegmentRunner(NodeInfo("n", 8.0), farm_home)
    first, last = run_shard(runner, "full")
    assert len(first.previews) == 2 and last.previews == ()
    with Image.open(io.BytesIO(first.previews[0])) as im:
        assert im.format == "PNG" and im.mode == "RGB" and max(im.size) <= 128
    assert first.previews[0] != first.previews[1]


def test_vae_tiling_is_recorded_and_changes_only_the_decode(farm_home: Path) -> None:
    runner = SegmentRunner(NodeInfo("n", 8.0), farm_home, max_models=2)
    plain_first, plain_last = run_shard(runner, "full", size=128)
    tiled_first, tiled_last = run_shard(runner, "offload_tiled", size=128)
    assert (plain_last.memory_mode, tiled_last.memory_mode) == ("full", "full_tiled")  # no GPU to offload from
    assert plain_first.checkpoint == tiled_first.checkpoint  # latents do not depend on the mode
    a = np.frombuffer(plain_last.images[0], np.uint8).astype(int)
    b = np.frombuffer(tiled_last.images[0], np.uint8).astype(int)
    assert a.shape == b.shape and not np.array_equal(a, b)  # 128 px is two tiles of this VAE: blended seams
