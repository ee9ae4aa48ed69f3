"""The seams between the coordinator and its adapters (Protocols: wired in the entry points)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from farm.contracts.domain import JobSpec, NodeInfo, Sample, SegmentResult, SegmentTask, StepEvent, StepRun


class Executor(Protocol):
    """Runs segments on nodes (Ray actors in a farm; anything with this shape in tests)."""

    def nodes(self) -> list[NodeInfo]: ...

    def submit(self, node: str, task: SegmentTask) -> object:
        """Start a segment on `node`; returns a handle that `wait` reports on."""

    def wait(self, timeout: float) -> list[tuple[object, SegmentResult | BaseException]]:
        """Segments finished within `timeout` seconds, each with its result or the error it raised."""

    def step_events(self) -> list[StepEvent]:
        """Step progress reported by the nodes since the last call."""

    def probe(self, node: str) -> object:
        """Ask the node's worker to answer; `wait` reports the handle with any value once it has, or
        with the error (NodeLost) when it cannot."""

    def interrupt(self, node: str) -> None:
        """Ask `node` to end its running segment at the next step boundary (pause)."""

    def shutdown(self) -> None: ...


class OutputSink(Protocol):
    """Writes finished samples once, with their provenance."""

    def write(self, job_id: str, job: JobSpec, sample: Sample, rgb: bytes, runs: Sequence[StepRun]) -> Path: ...
