"""Reading the service, in worker threads: every call here may wait on the network, so none of it
runs on the UI thread. Each function returns an `Update` for `FarmStore.apply`."""

from __future__ import annotations

from collections.abc import Callable

from farm.contracts.control import Event, FarmService, JobView
from farm.contracts.errors import InvalidInput
from tui.store import Update

# Past this many distinct jobs in one batch of events, one list_jobs is cheaper than many get_job.
MAX_JOB_READS = 32


def read_all(service: FarmService, clock: Callable[[], float]) -> Update:
    """Nodes and the whole job list: the periodic reconciliation (telemetry has no events)."""
    nodes = tuple(service.list_nodes())
    jobs = tuple(service.list_jobs())
    return Update(nodes=nodes, jobs=jobs, at=clock())


def read_after_events(service: FarmService, events: list[Event]) -> Update:
    """The jobs and nodes that `events` are about, re-read so the screens follow them at once."""
    job_ids = list(dict.fromkeys(e.job_id for e in events if e.job_id))
    nodes = tuple(service.list_nodes()) if any(e.node for e in events) else None
    if len(job_ids) > MAX_JOB_READS:
        return Update(nodes=nodes, jobs=tuple(service.list_jobs()), events=tuple(events))
    return Update(nodes=nodes, changed_jobs=read_jobs(service, job_ids), events=tuple(events))


def read_jobs(service: FarmService, job_ids: list[str]) -> tuple[JobView, ...]:
    """Those jobs that still exist (a job may be gone between its event and this read)."""
    jobs = []
    for job_id in job_ids:
        try:
            jobs.append(service.get_job(job_id))
        except InvalidInput:
            continue
    return tuple(jobs)
