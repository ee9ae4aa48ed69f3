"""Integration: the embedded farm (real Ray actors, msgpack checkpoints, diffusers) renders jobs whose
images equal plain diffusers pipeline calls."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from waiting import ready

from farm.cli.demo import demo_job
from farm.contracts.control import JobView
from farm.contracts.domain import JobSpec, SegmentResult, SegmentTask
from farm.jobs.jobspec import make_job
from farm.runtime.coordinator import Coordinator
from farm.runtime.executor import RayExecutor
from farm.runtime.outputs import PngWriter, read_provenance

pytestmark = pytest.mark.slow


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(int)


@pytest.fixture(scope="module")
def planned(embedded: RayExecutor, tmp_path_factory: pytest.TempPathFactory) -> tuple[JobSpec, JobView, dict]:
    """The demo job rendered, and each shard's home as first planned (a shard may move to a faster
    card at a segment boundary later, when the speeds the nodes measure say so)."""
    job = demo_job(steps=6)
    coordinator = Coordinator(embedded, PngWriter(tmp_path_factory.mktemp("renders")), max_segment_steps=3)
    ready(coordinator)
    homes: dict[str, str] = {}

    def first_plan(c: Coordinator, job_id: str) -> None:
        if not homes:
            homes.update({s.id: s.home for s in c.get_job(job_id).shards})

    return job, coordinator.render(job, on_tick=first_plan), homes


@pytest.fixture(scope="module")
def demo_run(planned: tuple[JobSpec, JobView, dict]) -> tuple[JobSpec, JobView]:
    return planned[0], planned[1]


@pytest.fixture(scope="module")
def plain(farm_home: Path):
    """Renders samples with one plain diffusers pipeline call, in this process.

    Run with one thread like the farm's workers: CPU kernels sum in a thread-count dependent order,
    which moves the odd pixel by 1/255, as a different batch composition does.
    """
    import torch

    from farm.pipelines.engine import Engine
    from farm.pipelines.families import get_family
    from farm.pipelines.loader import builtin_folder

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    engine = Engine(get_family("sd15"), builtin_folder("demo-shapes", farm_home), "demo-shapes", torch.device("cpu"))
    yield engine.plain
    torch.set_num_threads(threads)


def test_demo_writes_one_png_per_sample(demo_run: tuple[JobSpec, JobView]) -> None:
    job, result = demo_run
    assert len(job.samples()) == 12
    assert result.status == "done"
    expected = sorted(f"{s.index:04d}-seed{s.seed}.png" for s in job.samples())
    assert sorted(Path(p).name for p in result.outputs) == expected
    assert all(Path(p).parent.name == result.id for p in result.outputs)


def test_work_is_split_by_vram_across_nodes(planned: tuple[JobSpec, JobView, dict]) -> None:
    _, result, homes = planned
    batch = {homes.get(s.id, s.home): len(s.samples) for s in result.shards}
    assert batch["sim-24gb"] > batch["sim-8gb"]
    assert sum(1 for t in result.shares if t.samples) >= 2
    assert sum(t.samples for t in result.shares) == 12
    assert all(len(s.bounds) >= 2 for s in result.shards)


def test_png_carries_parameters_and_provenance(demo_run: tuple[JobSpec, JobView]) -> None:
    job, result = demo_run
    for path in result.outputs:
        meta = read_provenance(path)
        sample = job.samples()[meta["sample"]]
        assert (meta["prompt"], meta["seed"], meta["steps"], meta["guidance"]) == (sample.prompt, sample.seed, 6, 3.0)
        assert (meta["width"], meta["height"], meta["sampler"], meta["model"]) == (64, 64, "euler_a", "demo-shapes")
        assert "negative_prompt" in meta
        segments = meta["segments"]
        assert len(segments) >= 2 and segments[0]["start"] == 0 and segments[-1]["end"] == 6
        assert all(a["end"] == b["start"] for a, b in zip(segments, segments[1:]))
        assert all(s["node"].startswith("sim-") for s in segments)
        with Image.open(path) as im:
            assert f"Seed: {sample.seed}" in im.text["parameters"]


def test_farm_images_equal_plain_diffusers(demo_run: tuple[JobSpec, JobView], plain) -> None:
    """Same batch composition: pixel-identical. Any batch composition (here: one at a time): within 1/255."""

    job, result = demo_run
    by_index = {read_provenance(p)["sample"]: Path(p) for p in result.outputs}
    samples = job.samples()
    for shard in result.shards:
        group = tuple(samples[i] for i in shard.samples)
        for sample, expected in zip(group, plain(job, group)):
            assert np.array_equal(pixels(by_index[sample.index]), expected), f"sample {sample.index} differs"
    for sample in samples[:4]:
        (alone,) = plain(job, (sample,))
        assert np.abs(pixels(by_index[sample.index]) - alone).max() <= 1


class KillAfterFirstSegment:
    """An Executor wrapper that kills a node's worker process right after its first finished segment,
    as a PC that crashes between two segments would."""

    def __init__(self, inner: RayExecutor, victim: str) -> None:
        self.inner, self.victim, self.killed = inner, victim, False

    def nodes(self):
        return self.inner.nodes()

    def submit(self, node: str, task: SegmentTask) -> object:
        return self.inner.submit(node, task)

    def wait(self, timeout: float) -> list[tuple[object, SegmentResult | BaseException]]:
        out = self.inner.wait(timeout)
        for _, outcome in out:
            if not self.killed and isinstance(outcome, SegmentResult) and outcome.node == self.victim:
                self.inner.kill(self.victim)
                self.killed = True
        return out

    def step_events(self):
        return self.inner.step_events()

    def probe(self, node: str) -> object:
        return self.inner.probe(node)

    def interrupt(self, node: str) -> None:
        self.inner.interrupt(node)

    def shutdown(self) -> None:
        self.inner.shutdown()


def test_lost_node_resumes_elsewhere_from_its_checkpoint(embedded: RayExecutor, farm_home: Path, tmp_path: Path,
                                                         plain) -> None:
    from node.simulated import simulated_nodes

    job = make_job(model="demo-shapes",
                   prompts=["a red circle on a blue background", "a white triangle on a black background"],
                   seeds=2, steps=6, sampler="dpmpp_2m")
    executor = RayExecutor(simulated_nodes(), farm_home)  # its own actors: killing one spares the shared farm
    try:
        chaos = KillAfterFirstSegment(executor, "sim-24gb")
        coordinator = Coordinator(chaos, PngWriter(tmp_path), max_segment_steps=2)
        ready(coordinator)
        result = coordinator.render(job)
    finally:
        executor.shutdown()
    assert chaos.killed
    assert len(result.outputs) == 4
    assert result.status == "done"
    moved = [read_provenance(p)["segments"] for p in result.outputs]
    assert any(s[0]["node"] == "sim-24gb" and s[-1]["node"] != "sim-24gb" for s in moved)
    samples = job.samples()
    by_index = {read_provenance(p)["sample"]: Path(p) for p in result.outputs}
    for shard in result.shards:
        group = tuple(samples[i] for i in shard.samples)
        for sample, expected in zip(group, plain(job, group)):
            assert np.array_equal(pixels(by_index[sample.index]), expected)
