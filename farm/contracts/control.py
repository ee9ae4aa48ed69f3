"""The farm's control surface as a Protocol: what a CLI, the dashboard or a remote client may ask.

One contract, several implementations: the in-process coordinator (embedded farm, head), and the
gRPC `FarmControl` client, which forwards each call to a head. The TUI and the CLI are written
against this Protocol, so they work the same on an embedded farm and over the network, and tests
can drive them with a fake.

Unknown job ids or node names raise `InvalidInput` naming the field; illegal status changes (e.g.
resuming a finished job) raise `InvalidInput` too, with the current status.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from farm.contracts.domain import JobSpec, JobStatus, NodeInfo


class NodeStatus(StrEnum):
    STARTING = "starting"  # joined; takes work once its worker answers a health probe
    IDLE = "idle"
    BUSY = "busy"
    PAUSED = "paused"  # by its owner (a game started, outside hours) or an operator: takes no work
    DRAINING = "draining"  # finishes its current segment, then takes no work
    OFFLINE = "offline"


class PauseBy(StrEnum):
    """Who paused a node: the text a user sees says so."""

    OPERATOR = "operator"
    OWNER = "owner"  # the PC owner's rules (detail: which one: a game running, hours, VRAM cap)
    AGENT = "agent"  # the PC's agent does not answer


@dataclass(frozen=True)
class Pause:
    by: PauseBy
    detail: str = ""

    @property
    def text(self) -> str:
        what = {
            PauseBy.OPERATOR: "paused by an operator",
            PauseBy.OWNER: "paused by the owner's rules",
            PauseBy.AGENT: "the PC's agent does not answer",
        }[self.by]
        return f"{what}: {self.detail}" if self.detail else what



OPERATOR_PAUSE = Pause(PauseBy.OPERATOR)


@dataclass(frozen=True)
class OwnerPolicy:
    """The rules a PC's owner sets for their GPU."""

    vram_cap_gib: float | None = None
    active_hours: str = ""  # e.g. "22:00-08:00"; empty: always
    pause_programs: tuple[str, ...] = ()  # process names (games) whose start pauses the node
    pause_on_other_gpu_process: bool = True


@dataclass(frozen=True)
class NodeView:
    info: NodeInfo
    status: NodeStatus
    segment: str = ""  # "shard-id#index steps a-b" while busy
    segment_step: int = 0
    segment_total: int = 0
    vram_used_gib: float = 0.0
    utilization: float = 0.0  # 0..1
    temperature_c: float | None = None
    power_w: float | None = None
    loaded: tuple[str, ...] = ()
    policy: OwnerPolicy = field(default_factory=OwnerPolicy)
    pause_reason: str = ""
    stored: tuple[str, ...] = ()  # models only the head holds that its PC has on disk
    allow_models: tuple[str, ...] = ()  # the owner's model lists (fnmatch patterns; empty allow: every model)
    deny_models: tuple[str, ...] = ()


@dataclass(frozen=True)
class ShardView:
    """A shard as the dashboard shows it: which samples, whose, and how far along."""

    id: str
    home: str
    samples: tuple[int, ...]
    bounds: tuple[tuple[int, int], ...]
    step: int  # the next step to run (bounds[-1][1] when finished)
    node: str = ""  # the node running it now
    memory_mode: str = "full"


@dataclass(frozen=True)
class NodeShare:
    """What one node did for one job."""

    node: str
    samples: int = 0  # samples it finished (ran the last segment and decoded)
    shards: int = 0  # distinct shards it ran at least one segment of
    segments: int = 0
    steps: int = 0  # sample-steps rendered
    seconds: float = 0.0


@dataclass(frozen=True)
class JobView:
    id: str
    spec: JobSpec
    status: JobStatus
    samples_done: int
    samples_total: int
    steps_done: int  # sample-steps
    steps_total: int
    submitted_at: float
    position: int = 0  # place in the queue (0: not queued)
    started_at: float | None = None
    finished_at: float | None = None
    eta_s: float | None = None
    error: str = ""
    outputs: tuple[str, ...] = ()
    shards: tuple[ShardView, ...] = ()
    shares: tuple[NodeShare, ...] = ()

    @property
    def progress(self) -> float:
        return self.steps_done / self.steps_total if self.steps_total else 0.0


@dataclass(frozen=True)
class Event:
    """Something that happened, in order: `seq` grows by one per event."""

    seq: int
    time: float
    kind: str  # job_submitted, job_started, job_done, job_failed, job_cancelled, job_paused, job_resumed,
    #            job_moved, segment_started, segment_progress, segment_finished, segment_failed,
    #            node_joined, node_paused, node_draining, node_resumed, node_lost
    job_id: str = ""
    node: str = ""
    message: str = ""


class FarmService(Protocol):
    def submit(self, spec: JobSpec, init_image: bytes | None = None) -> str:
        """Queue `spec`; an img2img job brings its init image's bytes (`spec.init_image` is their hash)."""

    def list_jobs(self, after: str = "", limit: int | None = None) -> list[JobView]:
        """Every job in queue order; with `after` or `limit`, a page: up to `limit` jobs whose ids
        sort after `after`, in id order (what the control API's paginated ListJobs serves)."""

    def get_job(self, job_id: str) -> JobView: ...

    def cancel_job(self, job_id: str) -> None: ...

    def forget_job(self, job_id: str) -> None:
        """Remove a done, failed or cancelled job from the queue; its output files stay."""

    def pause_job(self, job_id: str) -> None: ...

    def resume_job(self, job_id: str) -> None: ...

    def retry_job(self, job_id: str) -> None: ...

    def set_priority(self, job_id: str, priority: int) -> None: ...

    def move_job(self, job_id: str, offset: int) -> None:
        """Move a queued job `offset` places (negative: earlier) among jobs of its priority."""

    def list_nodes(self) -> list[NodeView]: ...

    def pause_node(self, name: str, pause: Pause = OPERATOR_PAUSE) -> None:
        """No new work on the node; its running segment checkpoints and comes back. `pause` says who."""

    def drain_node(self, name: str) -> None: ...

    def resume_node(self, name: str) -> None: ...

    def events(self, after: int, timeout: float = 0.0) -> list[Event]:
        """Events with seq > `after`, waiting up to `timeout` seconds for the first one."""

    def preview(self, job_id: str, sample: int) -> bytes | None:
        """The latest preview PNG of a sample still rendering."""

    def read_output(self, job_id: str, index: int) -> bytes:
        """The bytes of the job's output `index` (its place in `JobView.outputs`), read where they
        were written, so a client on another PC (the CLI, the HTTP API, the dashboard) can have them."""


class WorkObserver(Protocol):
    """Told about each segment's facts as they happen, for counters no view can rebuild at scrape
    time (the metrics): how long segments take, the work a failure throws away, the bytes handed over."""

    def segment_finished(self, node: str, family: str, seconds: float, sample_steps: int,
                         handoff_bytes: int) -> None:
        """A segment ended on `node` after `seconds`, having rendered `sample_steps` (steps x batch);
        `handoff_bytes`: the checkpoint it started from, when an earlier segment ran on another node."""

    def work_redone(self, node: str, sample_steps: int) -> None:
        """A segment on `node` failed or lost its node: its `sample_steps` since its checkpoint run again."""
