"""What `decide` asks the runner to do: effects on the world, and decisions to record as events."""

from __future__ import annotations

from dataclasses import dataclass

from farm.core.events import Event


@dataclass(frozen=True)
class StartSegment:
    """Run steps [start, end) of a shard on a node, from the checkpoint blob (None: the first)."""

    node: str
    shard_id: str
    index: int
    start: int
    end: int
    mode: str
    checkpoint: str | None


@dataclass(frozen=True)
class InterruptNode:
    """Ask a node to checkpoint at its next step boundary and hand its segment back."""

    node: str


@dataclass(frozen=True)
class ProbeNode:
    """Ask the node's worker to answer (it counts as up only once it has)."""

    node: str


@dataclass(frozen=True)
class WriteOutputs:
    """Write a rendered shard's samples (the `result` blob) as files, each once."""

    shard_id: str
    result: str


@dataclass(frozen=True)
class Record:
    """A decision that is itself a fact (a placement, a job given up): applied and logged as is."""

    event: Event


Action = StartSegment | InterruptNode | ProbeNode | WriteOutputs | Record
