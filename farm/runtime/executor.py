"""Ray executor: one `SegmentWorker` actor per node, pinned to that node by a custom resource.

The actor wraps the Ray-free `SegmentRunner` and reports every finished step to a `Progress` actor
on the coordinator's node. The executor keeps one long call to that actor outstanding and waits on it
together with the segments in flight, so progress and results wake the coordinator as they come, and
an idle farm makes no Ray calls at all (no polling). A crashed actor (its process or its PC died) comes back
as `NodeLost`; an exception inside a segment as `SegmentFailed`; the coordinator decides what next.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, RayError, RayTaskError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from farm.contracts.domain import NodeInfo, SegmentResult, SegmentTask, StepEvent
from farm.contracts.errors import NodeLost, SegmentFailed

NODE_RESOURCE = "farm_node:"
# Each node's resource has room for several actors so that a second executor (a test, a restarted
# coordinator) can attach to a running cluster; one executor still runs one actor per node.
NODE_SLOTS = 16.0
# How long one outstanding `Progress.take` waits before it returns empty and is asked again.
TAKE_S = 60.0


class Progress:
    """Ray actor body (async): step events from the workers, handed out in batches. `take` waits
    until there is something (or `timeout`), so the reader blocks instead of polling."""

    def __init__(self) -> None:
        self.items: list[StepEvent] = []
        self.ready = asyncio.Event()

    def put(self, event: StepEvent) -> None:
        self.items.append(event)
        self.ready.set()

    async def take(self, timeout: float) -> list[StepEvent]:
        if not self.items:
            try:
                await asyncio.wait_for(self.ready.wait(), timeout)
            except TimeoutError:
                pass
        out, self.items = self.items, []
        self.ready.clear()
        return out


class SegmentWorker:
    """Ray actor body: keeps its node's pipelines loaded between segments."""

    def __init__(self, node: NodeInfo, home: str | None, events: ray.actor.ActorHandle | None) -> None:
        from farm.pipelines.runner import SegmentRunner  # torch and diffusers load in the worker only

        self.runner = SegmentRunner(node, Path(home) if home else None, threads=1)
        self.events = events  # a `Progress` actor
        self.stopping = threading.Event()
        self.running = threading.Lock()  # held by `run`: `release` waits for the segment to end

    def run(self, task: SegmentTask) -> SegmentResult:
        def on_step(step: int) -> None:
            if self.events is not None:
                self.events.put.remote(StepEvent(self.runner.node.name, task.shard_id, step, len(task.samples)))

        with self.running:
            try:
                return self.runner.run(task, on_step, self.stopping.is_set)
            finally:
                self.stopping.clear()

    def stop(self) -> None:
        """End the running segment at its next step boundary (runs beside `run`: two threads)."""
        self.stopping.set()

    def pid(self) -> int:
        return os.getpid()

    def visible_devices(self) -> str:
        """The CUDA devices this actor's process may use ("" where Ray did not pin it)."""
        return os.environ.get("CUDA_VISIBLE_DEVICES", "")

    def release(self) -> None:
        """Free the GPU (its owner paused the node): once the running segment has stopped, drop the
        loaded models and return the memory to the driver. The next segment loads again."""
        with self.running:
            self.runner.release()


def pinned_env(info: NodeInfo) -> dict[str, object] | None:
    """The actor's runtime environment: a node on a real GPU sees only that device (as cuda:0), so
    the nodes of a multi-GPU PC never share one; a simulated node gets none."""
    if info.gpu_index is None:
        return None
    return {"env_vars": {"CUDA_VISIBLE_DEVICES": str(info.gpu_index)}}


class RayExecutor:
    """`Executor` over a Ray cluster with one actor per farm node."""

    def __init__(self, nodes: Sequence[NodeInfo], home: Path | None = None) -> None:
        self._nodes = list(nodes)
        # The progress queue lives on the coordinator's own Ray node: a worker PC that dies must not
        # take it along.
        here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
        # Async methods make it an async actor: a `take` waiting does not keep `put` out.
        # Restarted if it dies; a `take` that dies with it is not retried (progress is display only:
        # the next `wait` asks again), so stopping the farm leaves no retry behind.
        self.events = ray.remote(Progress).options(num_cpus=0, scheduling_strategy=here, max_restarts=-1,
                                                   max_task_retries=0).remote()
        self._take: ray.ObjectRef | None = None
        self._steps: list[StepEvent] = []
        self.home = home
        self.actors: dict[str, ray.actor.ActorHandle] = {}
        self.pending: dict[ray.ObjectRef, str] = {}
        # add_node runs on a gRPC thread (a PC joins) while the coordinator's loop submits and waits.
        self._lock = threading.Lock()
        for n in self._nodes:
            self.add_node(n)

    def nodes(self) -> list[NodeInfo]:
        return list(self._nodes)

    def add_node(self, info: NodeInfo) -> None:
        """A `SegmentWorker` for `info` (a PC that joined, or whose Ray worker restarted), replacing
        the old one if there was one. A call still pending on the old actor comes back from `wait`
        (as `NodeLost` when the actor died): the coordinator must tell it from the new actor's."""
        with self._lock:
            old = self.actors.get(info.name)
        if old is not None:
            try:
                ray.kill(old, no_restart=True)
            except RayActorError:  # already gone with its worker
                pass
        # max_concurrency=3: `stop` (and a health probe) must run while `run` and a `release` waiting
        # for it are busy.
        remote = ray.remote(max_restarts=0, max_task_retries=0, max_concurrency=3)(SegmentWorker)
        actor = remote.options(num_cpus=0, resources={NODE_RESOURCE + info.name: 1},
                               runtime_env=pinned_env(info)).remote(
            info, str(self.home) if self.home else None, self.events)
        with self._lock:
            self.actors[info.name] = actor
            self._nodes = [n for n in self._nodes if n.name != info.name] + [info]

    def submit(self, node: str, task: SegmentTask) -> ray.ObjectRef:
        with self._lock:
            ref = self.actors[node].run.remote(task)
            self.pending[ref] = node
        return ref

    def wait(self, timeout: float) -> list[tuple[object, SegmentResult | BaseException]]:
        """Segments that ended, waiting up to `timeout` for the first one or for step events (which
        `step_events` then returns). Blocks for the whole `timeout` when nothing happens: a loop
        calling this does not spin on an idle farm."""
        with self._lock:
            refs = list(self.pending)
        if self._take is None:
            self._take = self.events.take.remote(TAKE_S)
        take, began = self._take, time.monotonic()
        done, _ = ray.wait([*refs, take], num_returns=1, timeout=timeout)
        if done and refs:  # whatever else ended by now, without waiting longer
            done, _ = ray.wait([*refs, take], num_returns=len(refs) + 1, timeout=0)
        out: list[tuple[object, SegmentResult | BaseException]] = []
        for ref in done:
            if ref == take:
                self._take = None
                try:
                    self._steps.extend(ray.get(take))
                except RayError:  # the progress actor restarts: progress is display only, results still come
                    time.sleep(max(0.0, min(timeout, 1.0) - (time.monotonic() - began)))
                continue
            with self._lock:
                node = self.pending.pop(ref, None)
            if node is None:
                continue
            try:
                out.append((ref, ray.get(ref)))
            except (ActorDiedError, ActorUnavailableError) as e:
                out.append((ref, NodeLost(node, type(e).__name__)))
            except RayTaskError as e:
                out.append((ref, SegmentFailed(f"segment failed on {node}: {e.cause!r}")))
            except RayActorError as e:
                out.append((ref, NodeLost(node, type(e).__name__)))
        return out

    def probe(self, node: str) -> ray.ObjectRef:
        """A health probe: the actor answers with its process id once it runs."""
        with self._lock:
            ref = self.actors[node].pid.remote()
            self.pending[ref] = node
        return ref

    def step_events(self) -> list[StepEvent]:
        """The step events that `wait` collected (no Ray call)."""
        out, self._steps = self._steps, []
        return out

    def release(self, node: str) -> None:
        """Ask a node's actor to drop its models and free its GPU memory (after its segment stops)."""
        with self._lock:
            actor = self.actors.get(node)
        if actor is not None:
            actor.release.remote()

    def interrupt(self, node: str) -> None:
        """Ask a node to checkpoint at its next step boundary and return (pause)."""
        self.actors[node].stop.remote()

    def remove_node(self, node: str) -> None:
        """Forget a node: its actor is killed (its PC was removed from the farm)."""
        with self._lock:
            actor = self.actors.pop(node, None)
            self.pending = {ref: n for ref, n in self.pending.items() if n != node}
            self._nodes = [n for n in self._nodes if n.name != node]
        if actor is not None:
            try:
                ray.kill(actor, no_restart=True)
            except RayActorError:
                pass

    def kill(self, node: str) -> None:
        """Kill a node's worker process, as a crashed PC would (used by fault tests)."""
        ray.kill(self.actors[node], no_restart=True)

    def shutdown(self) -> None:
        for actor in self.actors.values():
            ray.kill(actor, no_restart=True)
        ray.kill(self.events, no_restart=True)


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
