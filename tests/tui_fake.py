"""The dashboard's scene: fixed nodes, jobs, events and pictures (every time counted from T0), and
`scene_farm`, the shared `FakeFarm` holding them."""

from __future__ import annotations

import itertools
from io import BytesIO

from fake_farm import FakeFarm
from PIL import Image

from farm.contracts.control import Event, JobView, NodeShare, NodeStatus, NodeView, OwnerPolicy, ShardView
from farm.contracts.domain import JobSpec, JobStatus, NodeInfo
from farm.jobs.jobspec import make_job

T0 = 1_764_072_000.0  # 2025-11-25 12:00:00 UTC: every time in the fake counts from here


def spec(owner: str = "ana", priority: int = 0, prompts: int = 2, seeds: int = 2, steps: int = 20) -> JobSpec:
    return make_job(prompts=[f"prompt {i}" for i in range(prompts)], seeds=seeds, steps=steps, owner=owner,
                    priority=priority, sampler="euler_a")


def job(job_id: str, status: JobStatus = JobStatus.QUEUED, *, owner: str = "ana", priority: int = 0,
        done: int = 0, steps_done: int = 0, position: int = 0, eta_s: float | None = None, error: str = "",
        shards: tuple[ShardView, ...] = (), shares: tuple[NodeShare, ...] = (), at: float = 0.0) -> JobView:
    s = spec(owner, priority)
    n = len(s.samples())
    return JobView(job_id, s, status, done, n, steps_done, n * s.steps, T0 + at, position=position, eta_s=eta_s,
                   error=error, shards=shards, shares=shares)


def gradient_png(size: int = 32) -> bytes:
    """A fixed picture (red across, green down) so a thumbnail's colours are known."""
    image = Image.new("RGB", (size, size))
    image.putdata([(x * 255 // size, y * 255 // size, 96) for y in range(size) for x in range(size)])
    out = BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def sample_nodes() -> list[NodeView]:
    return [
        NodeView(NodeInfo("pc-anna", 24.0, 2.0, "RTX 4090"), NodeStatus.BUSY, "j1/s0#1 steps 10-20", 14, 20,
                 vram_used_gib=17.5, utilization=0.97, temperature_c=71.0, power_w=402.0, loaded=("demo-tiny",),
                 policy=OwnerPolicy(active_hours="22:00-08:00", pause_programs=("eldenring.exe", "cs2.exe")),
                 stored=("studio/sd15-inked",), allow_models=("sd*", "studio/*"), deny_models=("sdxl*",)),
        NodeView(NodeInfo("pc-ben", 12.0, 1.0, "RTX 3060"), NodeStatus.IDLE, vram_used_gib=0.4, utilization=0.02,
                 temperature_c=38.0, policy=OwnerPolicy(vram_cap_gib=10.0)),
        NodeView(NodeInfo("pc-cleo", 8.0, 0.6, "RTX 3070"), NodeStatus.PAUSED, vram_used_gib=6.1,
                 utilization=0.88, temperature_c=66.0, pause_reason="game started: cs2.exe"),
        NodeView(NodeInfo("pc-dan", 16.0, 1.2, "RX 7800 XT"), NodeStatus.OFFLINE),
    ]


def sample_jobs() -> list[JobView]:
    running = (ShardView("j1/s0", "pc-anna", (0, 1), ((0, 10), (10, 20)), 14, node="pc-anna"),
               ShardView("j1/s1", "pc-ben", (2, 3), ((0, 7), (7, 14), (14, 20)), 7))
    return [
        job("j1", JobStatus.RUNNING, steps_done=42, position=1, eta_s=95, shards=running,
            shares=(NodeShare("pc-anna", steps=28), NodeShare("pc-ben", steps=14))),
        job("j2", JobStatus.QUEUED, owner="ben", position=2, eta_s=400, at=10),
        job("j3", JobStatus.QUEUED, owner="ana", priority=5, position=3, eta_s=700, at=20),
        job("j4", JobStatus.PAUSED, owner="cleo", done=1, steps_done=30, at=30),
        job("j5", JobStatus.FAILED, owner="ben", done=2, steps_done=45, at=40,
            error="segment failed 3 times on pc-dan"),
        job("j6", JobStatus.DONE, owner="ana", done=4, steps_done=80, at=50),
    ]


def sample_events() -> list[Event]:
    return [
        Event(1, T0 + 1, "node_joined", node="pc-anna"),
        Event(2, T0 + 2, "job_submitted", job_id="j1"),
        Event(3, T0 + 3, "segment_started", job_id="j1", node="pc-anna", message="j1/s0#0 steps 0-10"),
        Event(4, T0 + 9, "segment_finished", job_id="j1", node="pc-anna", message="j1/s0#0 steps 0-10"),
        Event(5, T0 + 12, "node_paused", node="pc-cleo", message="game started: cs2.exe"),
        Event(6, T0 + 15, "job_failed", job_id="j5", message="segment failed 3 times on pc-dan"),
    ]


def scene_farm(nodes: list[NodeView] | None = None, jobs: list[JobView] | None = None,
               events: list[Event] | None = None) -> FakeFarm:
    """The shared fake holding the dashboard's scene (the samples above unless given), with previews
    of j1's two samples rendering and a clock that counts on from T0, so every time shown is fixed."""
    fake = FakeFarm(sample_nodes() if nodes is None else nodes, sample_jobs() if jobs is None else jobs,
                    sample_events() if events is None else events, clock=itertools.count(T0 + 100).__next__)
    fake.previews.update({("j1", 0): gradient_png(), ("j1", 1): gradient_png(16)})
    return fake
