"""The one owner of job statuses (pure): which statuses exist in which group, and which changes are
legal. `farm.core.apply` sends every status change through `transition`, which refuses edges that
make no sense (a finished job cannot be paused, a cancelled one cannot run)."""

from __future__ import annotations

from farm.contracts.domain import JobStatus
from farm.contracts.errors import InvalidInput

Q, R, P, D, F, C = (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.PAUSED, JobStatus.DONE, JobStatus.FAILED,
                    JobStatus.CANCELLED)
LEGAL: dict[JobStatus, frozenset[JobStatus]] = {
    Q: frozenset({R, P, C, F, D}),  # D: a job whose every sample was already written (restart)
    R: frozenset({D, F, C, P}),
    P: frozenset({Q, R, C}),  # resume goes back to queued or running, by whether work started
    F: frozenset({Q, R, C}),  # retry, or give up for good
    D: frozenset(),
    C: frozenset(),
}
# Statuses in which a job's work may start.
WAITING = frozenset({Q, R})
# Statuses a job never leaves (a failed job may still be retried or cancelled).
FINAL = frozenset({D, C})
# Statuses after which nothing happens unless someone acts: what a CLI waits for.
ENDED = frozenset({D, C, F})


def transition(job_id: str, current: JobStatus, new: JobStatus) -> JobStatus:
    """`new` if the edge is legal; the same status is a no-op (applying an event twice is harmless)."""
    if new == current or new in LEGAL[current]:
        return new
    raise InvalidInput("job", f"{job_id} is {current}; it cannot become {new}")
