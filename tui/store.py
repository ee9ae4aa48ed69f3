"""What the dashboard knows about the farm, owned by the UI thread and fed by `Update`s.

Workers read the service in threads and hand over plain `Update`s; `FarmStore.apply` merges them
and says what changed, so a screen touches only the widgets whose data moved. Each job is also kept
as a `JobRow` (what its table row shows): an unchanged job keeps the very same row object, which
lets the jobs table skip it by identity, and that keeps a queue of 10,000 jobs cheap to follow.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from typing import NamedTuple

from farm.contracts.control import Event, JobView, NodeView
from farm.contracts.domain import JobStatus
from tui.format import duration

ACTIVE = (JobStatus.RUNNING, JobStatus.QUEUED, JobStatus.PAUSED)
MAX_EVENTS = 5000
THROUGHPUT_POINTS = 60


class JobRow(NamedTuple):
    """A job as one row of the jobs table; `progress` in thousandths so the bar redraws only when it
    moves visibly."""

    owner: str
    model: str
    priority: int
    progress: int
    samples: str
    eta: str
    status: str


def job_row(job: JobView) -> JobRow:
    active = job.status in ACTIVE
    return JobRow(
        owner=job.spec.owner,
        model=job.spec.model,
        priority=job.spec.priority,
        progress=round(job.progress * 1000),
        samples=f"{job.samples_done}/{job.samples_total}",
        eta=duration(job.eta_s) if active else "",
        status=str(job.status),
    )


def order_key(job: JobView) -> tuple[float, ...]:
    """Running jobs first, then the queue in its order, then finished jobs, newest first."""
    if job.status == JobStatus.RUNNING:
        return (0, job.position, job.submitted_at)
    if job.status in ACTIVE:
        return (1, job.position or float("inf"), job.submitted_at)
    return (2, -(job.finished_at or job.submitted_at), 0)


@dataclass(frozen=True)
class Update:
    """What one worker read from the service.

    `jobs` is the whole list (it replaces the known jobs); `changed_jobs` are single jobs re-read
    after events about them; `at` is the clock when `jobs` was read, for throughput.
    """

    nodes: tuple[NodeView, ...] | None = None
    jobs: tuple[JobView, ...] | None = None
    changed_jobs: tuple[JobView, ...] = ()
    events: tuple[Event, ...] = ()
    at: float | None = None


@dataclass(frozen=True)
class Changes:
    """What `FarmStore.apply` changed, so screens redraw only that."""

    nodes: bool = False
    jobs: frozenset[str] = frozenset()  # ids added, changed or removed
    order: bool = False
    events: tuple[Event, ...] = ()
    throughput: bool = False


@dataclass(frozen=True)
class QueueSummary:
    counts: dict[str, int]
    samples_left: int
    eta_s: float | None


@dataclass
class FarmStore:
    nodes: dict[str, NodeView] = field(default_factory=dict)
    jobs: dict[str, JobView] = field(default_factory=dict)
    rows: dict[str, JobRow] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    events: deque[Event] = field(default_factory=lambda: deque(maxlen=MAX_EVENTS))
    throughput: deque[float] = field(default_factory=lambda: deque(maxlen=THROUGHPUT_POINTS))
    _last_total: tuple[float, int] | None = None  # (clock, sample-steps done) at the last full read

    def apply(self, update: Update) -> Changes:
        nodes = False
        if update.nodes is not None:
            fresh = {n.info.name: n for n in sorted(update.nodes, key=lambda n: n.info.name)}
            nodes = fresh != self.nodes
            self.nodes = fresh
        changed: set[str] = set()
        moved = False
        if update.jobs is not None:
            gone = self.jobs.keys() - {j.id for j in update.jobs}
            for job_id in gone:
                del self.jobs[job_id], self.rows[job_id]
            changed |= gone
            moved = bool(gone)
        for job in (*(update.jobs or ()), *update.changed_jobs):
            moved |= self._merge(job, changed)
        order = False
        if moved:
            fresh_order = sorted(self.jobs, key=lambda i: order_key(self.jobs[i]))
            order = fresh_order != self.order
            self.order = fresh_order
        throughput = False
        if update.jobs is not None and update.at is not None:
            throughput = self._sample_throughput(update.at)
        new_events = tuple(e for e in update.events if not self.events or e.seq > self.events[-1].seq)
        self.events.extend(new_events)
        return Changes(nodes, frozenset(changed), order, new_events, throughput)

    def _merge(self, job: JobView, changed: set[str]) -> bool:
        """Take `job`, adding its id to `changed` if anything about it moved; True if its place in the
        order may have (sorting 10,000 jobs on every progress event would be wasted work)."""
        old = self.jobs.get(job.id)
        if old == job:
            return False
        self.jobs[job.id] = job
        changed.add(job.id)
        row = job_row(job)
        if self.rows.get(job.id) != row:
            self.rows[job.id] = row
        return old is None or order_key(old) != order_key(job)

    def _sample_throughput(self, at: float) -> bool:
        """Append sample-steps per second since the previous full read (never negative: jobs that
        leave the list take their steps with them)."""
        total = sum(j.steps_done for j in self.jobs.values())
        last, self._last_total = self._last_total, (at, total)
        if last is None or at <= last[0]:
            return False
        self.throughput.append(max(total - last[1], 0) / (at - last[0]))
        return True

    def summary(self) -> QueueSummary:
        counts = Counter(str(j.status) for j in self.jobs.values())
        active = [j for j in self.jobs.values() if j.status in ACTIVE]
        etas = [j.eta_s for j in active if j.eta_s is not None]
        return QueueSummary(
            counts=dict(counts),
            samples_left=sum(j.samples_total - j.samples_done for j in active),
            eta_s=max(etas) if etas else None,
        )
