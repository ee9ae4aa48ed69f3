"""Ray executor: one `SegmentWorker` actor per node, pinned to that node by a custom resource.

The actor wraps the Ray-free `SegmentRunner` and reports every finished step to a Ray queue the
coordinator drains for its progress bars. A crashed actor (its process or its PC died) comes back
as `NodeLost`; an exception inside a segment as `SegmentFailed`; the coordinator decides what next.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, RayTaskError
from ray.util.queue import Empty, Queue
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from farm.contracts.domain import NodeInfo, SegmentResult, SegmentTask, StepEvent
from farm.contracts.errors import NodeLost, SegmentFailed

NODE_RESOURCE = "farm_node:"
# Each node's resource has room for several actors so that a second executor (a test, a restarted
# coordinator) can attach to a running cluster; one executor still runs one actor per node.
NODE_SLOTS = 16.0


class SegmentWorker:
    """Ray actor body: keeps its node's pipelines loaded between segments."""

    def __init__(self, node: NodeInfo, home: str | None, events: Queue | None) -> None:
        from farm.pipelines.runner import SegmentRunner  # torch and diffusers load in the worker only

        self.runner = SegmentRunner(node, Path(home) if home else None, threads=1)
        self.events = events
        self.stopping = threading.Event()

    def run(self, task: SegmentTask) -> SegmentResult:
        def on_step(step: int) -> None:
            if self.events is not None:
                self.events.actor.put_nowait.remote(StepEvent(self.runner.node.name, task.shard_id, step, len(task.samples)))

        try:
            return self.runner.run(task, on_step, self.stopping.is_set)
        finally:
            self.stopping.clear()

    def stop(self) -> None:
        """End the running segment at its next step boundary (runs beside `run`: two threads)."""
        self.stopping.set()

    def pid(self) -> int:
        return os.getpid()


class RayExecutor:
    """`Executor` over a Ray cluster with one actor per farm node."""

    def __init__(self, nodes: Sequence[NodeInfo], home: Path | None = None) -> None:
        self._nodes = list(nodes)
        # The progress queue lives on the coordinator's own Ray node: a worker PC that dies must not
        # take it along.
        here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
        self.events = Queue(maxsize=0, actor_options={"num_cpus": 0, "scheduling_strategy": here})
        self.home = home
        self.actors: dict[str, ray.actor.ActorHandle] = {}
        for n in self._nodes:
            self.add_node(n)
        self.pending: dict[ray.ObjectRef, str] = {}

    def nodes(self) -> list[NodeInfo]:
        return list(self._nodes)

    def add_node(self, info: NodeInfo) -> None:
        """A `SegmentWorker` for `info` (a PC that joined, or whose Ray worker restarted), replacing
        the old one if there was one."""
        old = self.actors.get(info.name)
        if old is not None:
            try:
                ray.kill(old, no_restart=True)
            except RayActorError:  # already gone with its worker
                pass
        # max_concurrency=2: `stop` must run while `run` is busy.
        remote = ray.remote(max_restarts=0, max_task_retries=0, max_concurrency=2)(SegmentWorker)
        self.actors[info.name] = remote.options(num_cpus=0, resources={NODE_RESOURCE + info.name: 1}).remote(
            info, str(self.home) if self.home else None, self.events)
        self._nodes = [n for n in self._nodes if n.name != info.name] + [info]

    def submit(self, node: str, task: SegmentTask) -> ray.ObjectRef:
        ref = self.actors[node].run.remote(task)
        self.pending[ref] = node
        return ref

    def wait(self, timeout: float) -> list[tuple[object, SegmentResult | BaseException]]:
        if not self.pending:
            return []
        done, _ = ray.wait(list(self.pending), num_returns=len(self.pending), timeout=timeout)
        out: list[tuple[object, SegmentResult | BaseException]] = []
        for ref in done:
            node = self.pending.pop(ref)
            try:
                out.append((ref, ray.get(ref)))
            except (ActorDiedError, ActorUnavailableError) as e:
                out.append((ref, NodeLost(node, type(e).__name__)))
            except RayTaskError as e:
                out.append((ref, SegmentFailed(f"segment failed on {node}: {e.cause!r}")))
            except RayActorError as e:
                out.append((ref, NodeLost(node, type(e).__name__)))
        return out

    def step_events(self) -> list[StepEvent]:
        try:
            return list(self.events.get_nowait_batch(self.events.qsize()))
        except Empty:
            return []

    def interrupt(self, node: str) -> None:
        """Ask a node to checkpoint at its next step boundary and return (pause)."""
        self.actors[node].stop.remote()

    def kill(self, node: str) -> None:
        """Kill a node's worker process, as a crashed PC would (used by fault tests)."""
        ray.kill(self.actors[node], no_restart=True)

    def shutdown(self) -> None:
        for actor in self.actors.values():
            ray.kill(actor, no_restart=True)
        ray.kill(self.events.actor, no_restart=True)


def start_embedded_cluster(nodes: Sequence[NodeInfo]) -> None:
    """A local Ray cluster whose custom resources stand for the simulated nodes (loopback only)."""
    resources = {NODE_RESOURCE + n.name: NODE_SLOTS for n in nodes}
    ray.init(
        address="local",  # always a new cluster: never attach to another Ray running on this machine
        num_cpus=len(nodes),
        resources=resources,
        include_dashboard=False,
        logging_level="ERROR",
        log_to_driver=False,
        configure_logging=True,
        _node_ip_address="127.0.0.1",
    )


def stop_embedded_cluster() -> None:
    ray.shutdown()
