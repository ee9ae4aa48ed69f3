"""An `Executor` that tells a `WorkObserver` what each segment did, around any other executor.

The facts the metrics need per segment (its seconds, its family, the checkpoint bytes it was handed
from another node, the steps a failure throws away) all pass through the executor port, so metering
it keeps them out of the coordinator's state machine: the head wraps its Ray executor in this one.
"""

from __future__ import annotations

from dataclasses import dataclass

from farm.contracts.control import WorkObserver
from farm.contracts.domain import NodeInfo, SegmentResult, SegmentTask, StepEvent
from farm.contracts.ports import Executor
from farm.jobs.catalog import get_model


@dataclass
class _Running:
    node: str
    shard_id: str
    family: str
    batch: int
    start: int
    end: int
    handoff_bytes: int
    reached: int  # the last step the node reported


class MeteredExecutor:
    """`inner`, with every finished or failed segment reported to `observer`."""

    def __init__(self, inner: Executor, observer: WorkObserver) -> None:
        self.inner = inner
        self.observer = observer
        self._running: dict[object, _Running] = {}
        self._made_by: dict[str, str] = {}  # shard id -> the node that made its latest checkpoint

    def nodes(self) -> list[NodeInfo]:
        return self.inner.nodes()

    def submit(self, node: str, task: SegmentTask) -> object:
        maker = self._made_by.get(task.shard_id)
        handed = len(task.checkpoint) if task.checkpoint and maker is not None and maker != node else 0
        handle = self.inner.submit(node, task)
        self._running[handle] = _Running(node, task.shard_id, get_model(task.job.model).family, len(task.samples),
                                         task.start, task.end, handed, task.start)
        return handle

    def wait(self, timeout: float) -> list[tuple[object, SegmentResult | BaseException]]:
        finished = self.inner.wait(timeout)
        for handle, outcome in finished:
            run = self._running.pop(handle, None)
            if run is None:
                continue
            if isinstance(outcome, BaseException):
                self.observer.work_redone(run.node, (run.reached - run.start) * run.batch)
            else:  # a paused segment rendered up to where it stopped
                self._made_by[run.shard_id] = run.node
                end = run.end if outcome.stopped_at is None else outcome.stopped_at
                self.observer.segment_finished(run.node, run.family, outcome.seconds, (end - run.start) * run.batch,
                                               run.handoff_bytes)
        return finished

    def step_events(self) -> list[StepEvent]:
        events = self.inner.step_events()
        for event in events:
            for run in self._running.values():
                if run.node == event.node and run.shard_id == event.shard_id:
                    run.reached = max(run.reached, event.step)
        return events

    def probe(self, node: str) -> object:
        return self.inner.probe(node)

    def interrupt(self, node: str) -> None:
        self.inner.interrupt(node)

    def wake(self) -> None:
        """Pass the coordinator's wake-up on, where the inner executor blocks in `wait` (Ray's)."""
        wake = getattr(self.inner, "wake", None)
        if wake is not None:
            wake()

    def shutdown(self) -> None:
        self.inner.shutdown()
