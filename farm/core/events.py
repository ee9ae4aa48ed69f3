"""What happens to a farm, as plain data: the only inputs of `farm.core.apply.apply`.

Commands (from the control API) and facts (from nodes, agents and the clock) are both events; each
carries the time the runner saw it (`at`), so applying a logged event again gives the same state.
An event names things by id only; what they mean is looked up in the state it is applied to.
"""

from __future__ import annotations

from dataclasses import dataclass

from farm.contracts.control import Pause
from farm.contracts.domain import JobSpec, NodeInfo, Shard
from farm.core.costmodel import Shape

# ----- jobs (commands) ------------------------------------------------------------------------


@dataclass(frozen=True)
class JobSubmitted:
    at: float
    job_id: str
    spec: JobSpec
    shape: Shape  # what the catalog costs it as (the core does not read the catalog)


@dataclass(frozen=True)
class JobCancelled:
    at: float
    job_id: str


@dataclass(frozen=True)
class JobForgotten:
    """An ended job removed from the queue (`farm jobs rm`): its output files stay where they are."""

    at: float
    job_id: str


@dataclass(frozen=True)
class JobPaused:
    at: float
    job_id: str


@dataclass(frozen=True)
class JobResumed:
    at: float
    job_id: str


@dataclass(frozen=True)
class JobRetried:
    at: float
    job_id: str


@dataclass(frozen=True)
class JobReprioritised:
    at: float
    job_id: str
    priority: int


@dataclass(frozen=True)
class JobMoved:
    at: float
    job_id: str
    offset: int  # places among waiting jobs of its priority; negative: earlier


@dataclass(frozen=True)
class JobFailed:
    at: float
    job_id: str
    reason: str


# ----- decisions recorded ---------------------------------------------------------------------


@dataclass(frozen=True)
class ShardsPlanned:
    """The planner's placement of unstarted work: per job, the shards it replaces and the new ones."""

    at: float
    plans: tuple[tuple[str, tuple[str, ...], tuple[Shard, ...]], ...]


@dataclass(frozen=True)
class ShardMoved:
    """The planner moved a shard's remaining segments to another node at a segment boundary (its
    checkpoint goes there): `node` is its new home; `reason` gives the predicted finishes."""

    at: float
    shard_id: str
    node: str
    reason: str


# ----- nodes ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeJoined:
    """A node (re)joins with a fresh worker: it holds no model and runs nothing."""

    at: float
    info: NodeInfo


@dataclass(frozen=True)
class NodeModels:
    """What a node holds on disk of the models the head serves (as its PC reported), the owner's model
    lists, and the link speed its last transfer measured."""

    at: float
    node: str
    stored: frozenset[str]
    allow: tuple[str, ...]
    deny: tuple[str, ...]
    link_bytes_per_s: float


@dataclass(frozen=True)
class ModelServed:
    """A model only the head holds (`size` bytes of files): nodes without it fetch it before they run
    it; `holders` already have it (the head's own nodes)."""

    at: float
    model: str
    size: int
    holders: tuple[str, ...]


@dataclass(frozen=True)
class NodeLeft:
    """A node is unreachable (its worker, agent or PC is gone); `reason` says what was seen."""

    at: float
    node: str
    reason: str


@dataclass(frozen=True)
class NodePaused:
    at: float
    node: str
    pause: Pause


@dataclass(frozen=True)
class NodeDrained:
    at: float
    node: str


@dataclass(frozen=True)
class NodeResumed:
    at: float
    node: str


@dataclass(frozen=True)
class NodeRemoved:
    at: float
    node: str


@dataclass(frozen=True)
class NodeProbed:
    """A health probe went to the node's worker."""

    at: float
    node: str


@dataclass(frozen=True)
class NodeReady:
    """The node's worker answered a probe: it takes work (an offline node is back). `calibration`, when
    its worker measured one, is its seconds per reference-second on a few denoising steps (the seed
    of its learned speed, `SpeedBook.calibrate`); 0: none measured."""

    at: float
    node: str
    calibration: float = 0.0


@dataclass(frozen=True)
class NodeInterrupted:
    """The node was asked to stop its running segment at the next step boundary."""

    at: float
    node: str


# ----- segments -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SegmentStarted:
    at: float
    shard_id: str
    index: int
    node: str
    start: int
    end: int
    mode: str


@dataclass(frozen=True)
class SegmentProgressed:
    at: float
    shard_id: str
    node: str
    step: int


@dataclass(frozen=True)
class SegmentFinished:
    """A node's result, already checked by the runner. `reached` is the step its checkpoint is at
    (below the segment's end when the node was asked to stop early); `checkpoint` and `result` name
    the blobs the runner stored; `loaded` is what the node holds now."""

    at: float
    shard_id: str
    index: int
    node: str
    start: int
    reached: int
    stopped: bool
    checkpoint: str | None
    result: str | None
    seconds: float
    denoise_seconds: float
    gpu: str
    memory_mode: str
    loaded: tuple[str, ...]
    peak_gib: float = 0.0
    precision: str = ""


@dataclass(frozen=True)
class SegmentFailed:
    """The segment raised or sent back something unusable; `charged` counts it against the job
    and the node (a node that vanished is not charged)."""

    at: float
    shard_id: str
    node: str
    reason: str
    charged: bool = True


@dataclass(frozen=True)
class SegmentLost:
    """The segment's work is gone with its node's worker (not the segment's fault: not charged); it
    resumes from its last checkpoint wherever it fits."""

    at: float
    shard_id: str
    node: str
    reason: str


@dataclass(frozen=True)
class OutputsWritten:
    at: float
    shard_id: str
    paths: tuple[tuple[int, str], ...]  # (sample index, path)


@dataclass(frozen=True)
class OutputsFailed:
    at: float
    shard_id: str
    reason: str


@dataclass(frozen=True)
class TimePassed:
    at: float


Event = (
    JobSubmitted | JobCancelled | JobForgotten | JobPaused | JobResumed | JobRetried | JobReprioritised | JobMoved
    | JobFailed
    | ShardsPlanned | ShardMoved
    | NodeJoined | NodeLeft | NodePaused | NodeDrained | NodeResumed | NodeRemoved | NodeInterrupted
    | NodeProbed | NodeReady | NodeModels | ModelServed
    | SegmentStarted | SegmentProgressed | SegmentFinished | SegmentFailed | SegmentLost | OutputsWritten
    | OutputsFailed
    | TimePassed
)
EVENT_TYPES: tuple[type, ...] = Event.__args__  # type: ignore[attr-defined]
