"""The embedded farm: a local Ray cluster of simulated nodes and an in-process coordinator.

This is what `farm demo`, `farm render` and `farm run` use, and what the integration tests start.
It listens on loopback only.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from farm import planner
from farm.catalog import get_model
from farm.coordinator import Coordinator
from farm.executor import RayExecutor, start_embedded_cluster, stop_embedded_cluster
from farm.ids import new_job_id
from farm.model import JobSpec, NodeInfo
from farm.outputs import PngWriter
from farm.progress import JobProgress
from farm.service import JobView


def admit(job: JobSpec, nodes: Sequence[NodeInfo]) -> None:
    """Refuse a job that fits no node before any process starts (raises DoesNotFit)."""
    planner.shard_job("admission", job, get_model(job.model), list(nodes))


@contextmanager
def embedded_farm(nodes: Sequence[NodeInfo], home: Path | None = None) -> Iterator[RayExecutor]:
    start_embedded_cluster(nodes)
    executor = None
    try:
        executor = RayExecutor(nodes, home)
        yield executor
    finally:
        if executor is not None:
            executor.shutdown()
        stop_embedded_cluster()


def render_embedded(job: JobSpec, nodes: Sequence[NodeInfo], out: Path, progress: JobProgress | None = None,
                    home: Path | None = None, job_id: str | None = None) -> JobView:
    """Validate, start the embedded farm, render `job` into `out/<job id>/`, stop the farm."""
    admit(job, nodes)
    with embedded_farm(nodes, home) as executor:
        coordinator = Coordinator(executor, PngWriter(out))
        on_tick = (lambda c, j: progress.update(c, j)) if progress else None
        return coordinator.render(job, job_id or new_job_id(), on_tick=on_tick)
