"""The embedded farm: a local Ray cluster of simulated nodes and an in-process coordinator.

This is what `farm demo`, `farm render` and `farm run` use, and what the integration tests start.
It listens on loopback only.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from farm.cli.progress import JobProgress
from farm.contracts.control import JobView
from farm.contracts.domain import JobSpec, NodeInfo
from farm.core.transitions import WAITING
from farm.jobs import demand
from farm.jobs.catalog import get_model
from farm.runtime.coordinator import Coordinator
from farm.runtime.executor import RayExecutor, start_embedded_cluster, stop_embedded_cluster
from farm.runtime.outputs import PngWriter
from farm.runtime.store import Store


def admit(job: JobSpec, nodes: Sequence[NodeInfo]) -> None:
    """Refuse a job that fits no node before any process starts (raises DoesNotFit)."""
    demand.shard_job("admission", job, get_model(job.model), list(nodes))


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


@contextmanager
def embedded_coordinator(nodes: Sequence[NodeInfo], out: Path, home: Path | None = None,
                         state: Path | None = None) -> Iterator[Coordinator]:
    """A coordinator over a fresh embedded farm, its queue in a store under `state` if given."""
    store = Store(state) if state is not None else None
    try:
        with embedded_farm(nodes, home) as executor:
            yield Coordinator(executor, PngWriter(out), store=store)
    finally:
        if store is not None:
            store.close()


def render_embedded(job: JobSpec | None, nodes: Sequence[NodeInfo], out: Path, progress: JobProgress | None = None,
                    home: Path | None = None, job_id: str | None = None, state: Path | None = None,
                    init_image: bytes | None = None) -> list[JobView]:
    """Start the embedded farm, render `job` into `out/<job id>/`, stop the farm.

    With `state`, the queue lives in a store there: jobs a stopped run left unfinished are rendered
    too (from their last checkpoints), and `job` may be None to only finish those. A job no node can
    hold is refused before any process starts. An img2img job brings its init image's bytes.
    """
    if job is not None:
        admit(job, nodes)
    with embedded_coordinator(nodes, out, home, state) as coordinator:
        ids = [j.id for j in coordinator.list_jobs() if j.status in WAITING]
        if job is not None:
            ids.append(coordinator.submit(job, job_id, init_image=init_image))
        for current in ids:
            on_tick = (lambda c, j=current: progress.update(c, j)) if progress else None
            coordinator.finish(current, on_tick)
        return [coordinator.get_job(i) for i in ids]


def dashboard_embedded(job: JobSpec, nodes: Sequence[NodeInfo], out: Path, home: Path | None = None,
                       state: Path | None = None, init_image: bytes | None = None) -> list[JobView]:
    """The embedded farm with the Textual dashboard in front: the loop runs on a thread while the
    dashboard shows it and steers it; quitting the dashboard stops the farm (with `state`, unfinished
    work resumes with `farm resume`)."""
    from tui.app import make_app  # textual loads only for the dashboard

    admit(job, nodes)
    with embedded_coordinator(nodes, out, home, state) as coordinator:
        job_id = coordinator.submit(job, init_image=init_image)
        coordinator.start()
        try:
            make_app(coordinator, head="embedded farm").run()
        finally:
            coordinator.stop()
        return [coordinator.get_job(job_id)]
