"""The farm's state: one immutable value that `apply` folds events into and `decide` reads.

Every fact has one owner here. A job's status lives in `JobState.status` and changes only through
`farm.core.transitions`; which node runs a shard lives in `ShardState.node` (the node's `running` is
the same fact seen from the node, kept consistent by `apply`); what a node holds in memory is what
the node last reported (`NodeRecord.loaded`); why a node takes no work is one `Pause` or one offline
reason. Collections are `immutables.Map` (a persistent hash map): an event changes one job in O(log n)
while every earlier state stays valid, so the live state and a replay can be compared whole.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from immutables import Map

from farm.contracts.control import NodeStatus, Pause
from farm.contracts.domain import JobSpec, JobStatus, NodeInfo, Shard, StepRun
from farm.contracts.ids import job_of_shard
from farm.core import costmodel
from farm.core.costmodel import Shape
from farm.core.speed import SpeedBook
from farm.core.transitions import FINAL

# Observed (predicted, measured) peaks a node keeps for its cost-model correction.
PEAKS_KEPT = 8


@dataclass(frozen=True)
class Settings:
    """Configuration the decisions depend on (not facts: a restarted head may change them)."""

    max_failures: int = 5  # failed segments before a job fails
    blocklist_after: int = 3  # failures of one job on one node before that node gets none of it
    max_segment_steps: int | None = None  # cap on steps per segment; None: about `segment_seconds`
    segment_seconds: float = 30.0
    max_unfinished_per_user: int | None = 100  # a user's queued, running and paused jobs (None: no cap)
    place_stages: bool = True  # a decode that fits no mode of a shard's node runs elsewhere (`planner.PlanContext`)


@dataclass(frozen=True)
class ShardState:
    """A shard's progress. `step` is the next step to run (a paused segment resumes mid-way) and
    `checkpoint` names the blob holding the state at that step; after the last step `result` names
    the blob of decoded samples until they are written."""

    shard: Shard
    next_index: int = 0
    step: int = 0
    checkpoint: str | None = None
    result: str | None = None
    runs: tuple[StepRun, ...] = ()
    node: str = ""  # the node running its next segment now
    progress: int = 0  # the last step that node reported
    heard_at: float = 0.0  # when that node last said something of it (started, a step): its lease
    written: bool = False

    @property
    def rendered(self) -> bool:
        """Every step ran (its samples may still wait to be written)."""
        return self.next_index >= len(self.shard.bounds)

    @property
    def unstarted(self) -> bool:
        return self.next_index == 0 and self.step == 0 and not self.node and self.checkpoint is None

    @property
    def steps_done(self) -> int:
        return max(self.step, self.progress if self.node else 0) * self.shard.batch


@dataclass(frozen=True)
class JobState:
    id: str
    spec: JobSpec
    shape: Shape  # the full-size shape its VRAM and time are costed at
    seq: int  # queue position among jobs of one priority (first in, first out)
    submitted_at: float
    status: JobStatus = JobStatus.QUEUED
    shards: Map[str, ShardState] = field(default_factory=Map)
    unplanned: tuple[int, ...] = ()  # samples not in any shard yet
    outputs: Map[int, str] = field(default_factory=Map)  # sample index -> written path
    started_at: float | None = None
    finished_at: float | None = None
    error: str = ""
    failures: int = 0
    node_failures: Map[str, int] = field(default_factory=Map)
    next_shard: int = 0  # index of the next shard id: planned-again shards get new, unique ids

    def blocked(self, after: int) -> frozenset[str]:
        return frozenset(n for n, count in self.node_failures.items() if count >= after)

    @property
    def adapters(self) -> tuple[str, ...]:
        """The names of the job's LoRA adapters (an owner's deny list may refuse them)."""
        return tuple(lora.name for lora in self.spec.loras)

    @property
    def samples_total(self) -> int:
        return len(self.spec.prompts) * len(self.spec.seeds)


@dataclass(frozen=True)
class NodeRecord:
    """A node as the head knows it. `offline` says why it is unreachable (empty: online)."""

    info: NodeInfo
    running: str = ""  # shard id
    pause: Pause | None = None
    draining: bool = False
    offline: str = ""
    loaded: frozenset[str] = frozenset()  # models it reported holding after its last segment
    peaks: tuple[tuple[float, float], ...] = ()  # (predicted, measured) GiB of its last segments
    interrupting: bool = False  # asked to stop its running segment at the next step
    order: int = 0  # join order: lists show nodes in it
    ready: bool = False  # its worker answered a health probe since it (re)joined
    probed_at: float | None = None  # when the last probe went out (None: none since it joined)
    probing: bool = False  # a probe is out, not answered yet
    # Models on its disk that only the head serves (as its PC reported them), the owner's model lists
    # (fnmatch patterns, `farm.core.model_lists`) and the bytes per second its last transfer measured.
    stored: frozenset[str] = frozenset()
    allow_models: tuple[str, ...] = ()
    deny_models: tuple[str, ...] = ()
    link_bytes_per_s: float = 0.0

    @property
    def status(self) -> NodeStatus:
        if self.offline:
            return NodeStatus.OFFLINE
        if self.pause is not None:
            return NodeStatus.PAUSED
        if self.draining:
            return NodeStatus.DRAINING
        if not self.ready:
            return NodeStatus.STARTING
        return NodeStatus.BUSY if self.running else NodeStatus.IDLE

    @property
    def takes_work(self) -> bool:
        return self.ready and not self.offline and self.pause is None and not self.draining

    @property
    def peak_factor(self) -> float:
        return costmodel.peak_correction(self.peaks)

    @property
    def reason(self) -> str:
        """Why it takes no work, in words ("" when it does)."""
        if self.offline:
            return self.offline
        if self.pause is not None:
            return self.pause.text
        if self.draining:
            return "draining: finishes its segment, then takes no work"
        return "" if self.ready else "waiting for its worker to answer"


@dataclass(frozen=True)
class FarmState:
    jobs: Map[str, JobState] = field(default_factory=Map)
    nodes: Map[str, NodeRecord] = field(default_factory=Map)
    speeds: SpeedBook = field(default_factory=SpeedBook)
    usage: Map[str, float] = field(default_factory=Map)  # GPU-seconds each owner used (fair share)
    synced: Map[str, int] = field(default_factory=Map)  # models only the head holds -> their bytes
    seq: int = 0  # the last job's seq
    replan: bool = False  # unstarted work should be placed again (a job came, a node ran dry)
    now: float = 0.0  # the time of the latest event
    settings: Settings = field(default_factory=Settings)

    def blobs(self) -> frozenset[str]:
        """Every checkpoint and result blob some shard still needs, and every unfinished job's init
        image (a retried first segment encodes it again): anything else may be deleted."""
        out = set()
        for job in self.jobs.values():
            if job.status in FINAL:
                continue
            if job.spec.init_image:
                out.add(job.spec.init_image)
            for s in job.shards.values():
                out.update(b for b in (s.checkpoint, s.result) if b is not None)
        return frozenset(out)

    def shard(self, shard_id: str) -> tuple[JobState, ShardState] | None:
        job = self.jobs.get(job_of_shard(shard_id))
        if job is None or shard_id not in job.shards:
            return None
        return job, job.shards[shard_id]
