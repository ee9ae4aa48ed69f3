"""Ray executor: one `SegmentWorker` actor per node, pinned to that node by a custom resource.

A segment runs as a Ray streaming generator: the actor yields `(step, batch)` after every step and
then the result's msgpack bytes, so progress reaches the head on the call itself, with no queue actor
and no polling. On the head one thread per running segment blocks on its generator and puts what
comes into one local queue that `wait` blocks on (health probes answer there too, by callback), so an
idle farm makes no Ray calls and wakes no thread. A crashed actor (its process or its PC died) comes
back as `NodeLost`; an exception inside a segment as `SegmentFailed`; the coordinator decides what next.

An actor with nothing to do for `park_s` is parked (killed): an idle Ray worker process still wakes
every 10 ms, and on a gamer's PC its CUDA context holds VRAM. The node stays ready; while parked, its
liveness is its Ray node's resource in the cluster view, and its next segment starts a fresh actor.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, RayTaskError

from farm.contracts.domain import NodeInfo, SegmentResult, SegmentTask, StepEvent
from farm.contracts.errors import NodeLost, SegmentFailed
from farm.wire import result_codec
from farm.wire.result_codec import NodeError, ResultError

NODE_RESOURCE = "farm_node:"
# Each node's resource has room for several actors so that a second executor (a test, a restarted
# coordinator) can attach to a running cluster; one executor still runs one actor per node.
NODE_SLOTS = 16.0
# An actor idle this long is parked (killed); the next segment on its node starts a new one (a few
# seconds, beside a model load that a parked actor has to redo anyway).
IDLE_PARK_S = 60.0


class SegmentWorker:
    """Ray actor body: keeps its node's pipelines loaded between segments."""

    def __init__(self, node: NodeInfo, home: str | None, models: Callable[[], object | None] | None = None) -> None:
        from farm.pipelines.runner import SegmentRunner  # torch and diffusers load in the worker only

        fetcher = models() if models is not None else None  # made here, on the node's PC, from its FARM_HOME
        self.runner = SegmentRunner(node, Path(home) if home else None, threads=1,
                                    fetch=fetcher.ensure if fetcher is not None else None,  # type: ignore[attr-defined]
                                    fetch_loras=fetcher.ensure_loras if fetcher is not None else None)  # type: ignore[attr-defined]
        self.stopping = threading.Event()
        self.running = threading.Lock()  # held by `run`: `release` waits for the segment to end

    def run(self, task: SegmentTask) -> Iterator[tuple[int, int] | bytes]:
        """A streaming generator: `(step, batch)` after each step, then the segment's result as msgpack
        bytes (`farm.wire.result_codec`): the head decodes them as data, so nothing of this process's
        making is unpickled there but plain ints and `bytes`. The segment runs on a thread of its own
        because the runner reports steps by callback; this one hands them on as they come."""
        batch = len(task.samples)
        steps: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        reply: list[bytes] = []

        def work() -> None:
            try:
                result = self.runner.run(task, steps.put, self.stopping.is_set)
                reply.append(result_codec.encode(result, result_codec.image_shape(task.job)))
            except Exception as e:  # a plain code and message, not an exception object, goes back
                reply.append(result_codec.encode_error(type(e).__name__, str(e)))
            finally:
                self.stopping.clear()
                steps.put(None)

        with self.running:
            worker = threading.Thread(target=work, name=f"segment {task.shard_id}#{task.index}", daemon=True)
            worker.start()
            while (step := steps.get()) is not None:
                yield (step, batch)
            worker.join()
        yield reply[0]

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


def segment_outcome(node: str, reply: object, shape: tuple[int, ...]) -> SegmentResult | SegmentFailed:
    """A node's reply decoded by the head's code: its result, or a failed segment charged to it (the
    error it reported, or a reply that is not a well-formed result)."""
    try:
        decoded = result_codec.decode(reply, shape)
    except ResultError as e:
        return SegmentFailed(f"bad result from {node}: {e}")
    if isinstance(decoded, NodeError):
        return SegmentFailed(f"segment failed on {node}: {decoded.code}: {decoded.message}")
    return decoded


def ray_outcome(node: str, e: Exception) -> BaseException:
    """What a Ray error on a node's call means to the coordinator: the actor is gone (`NodeLost`), or
    the call failed there (`SegmentFailed`)."""
    if isinstance(e, (ActorDiedError, ActorUnavailableError)):
        return NodeLost(node, type(e).__name__)
    if isinstance(e, RayTaskError):
        return SegmentFailed(f"segment failed on {node}: {type(e.cause).__name__}")
    if isinstance(e, RayActorError):
        return NodeLost(node, type(e).__name__)
    return SegmentFailed(f"segment failed on {node}: {type(e).__name__}")


def is_step(item: object) -> bool:
    return isinstance(item, tuple) and len(item) == 2 and all(type(v) is int for v in item)


def pinned_env(info: NodeInfo) -> dict[str, object] | None:
    """The actor's runtime environment: a node on a real GPU sees only that device (as cuda:0), so
    the nodes of a multi-GPU PC never share one; a simulated node gets none."""
    if info.gpu_index is None:
        return None
    return {"env_vars": {"CUDA_VISIBLE_DEVICES": str(info.gpu_index)}}


class RayExecutor:
    """`Executor` over a Ray cluster with one actor per farm node (none while the node is parked)."""

    def __init__(self, nodes: Sequence[NodeInfo], home: Path | None = None,
                 models: Callable[[], object | None] | None = None, park_s: float = IDLE_PARK_S) -> None:
        self._nodes = list(nodes)
        # Made in each actor, on its PC: the model sync of a joined PC (`node.model_fetch.from_environment`).
        self.models = models
        self.park_s = park_s
        # `home` is this PC's FARM_HOME, for the nodes given here (this PC's GPUs); a joined PC's actor
        # runs on that PC and uses its own (None: `farm_home()` of the PC's environment).
        self.home = home
        self._local = frozenset(n.name for n in nodes)
        self.actors: dict[str, ray.actor.ActorHandle] = {}  # a parked node has none
        self.pending: dict[object, str] = {}  # a call's handle -> its node
        self.callee: dict[object, ray.actor.ActorHandle] = {}  # a call's handle -> the actor it went to
        # Nodes whose actor died under a call (its worker or PC went away): their probes ping a new
        # actor, never Ray's view of the cluster, which lists a killed PC for a while after.
        self.lost: set[str] = set()
        self.idle_since: dict[str, float] = {}  # a node with an actor and no call -> since when (monotonic)
        # What wait() hands out: StepEvents, (handle, outcome) from segment readers, probe refs, None (wake).
        self._inbox: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._steps: list[StepEvent] = []
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
            old = self.actors.pop(info.name, None)
            self._nodes = [n for n in self._nodes if n.name != info.name] + [info]
            self.lost.discard(info.name)
        if old is not None:
            self._kill(old)
        with self._lock:
            self._spawn(info)

    def _spawn(self, info: NodeInfo) -> ray.actor.ActorHandle:
        """Start `info`'s actor (with the lock held). max_concurrency=3: `stop` (and a health probe)
        must run while `run` and a `release` waiting for it are busy."""
        remote = ray.remote(max_restarts=0, max_task_retries=0, max_concurrency=3)(SegmentWorker)
        actor = remote.options(num_cpus=0, resources={NODE_RESOURCE + info.name: 1},
                               runtime_env=pinned_env(info)).remote(
            info, str(self.home) if self.home and info.name in self._local else None, self.models)
        self.actors[info.name] = actor
        self.idle_since[info.name] = time.monotonic()
        return actor

    def _actor(self, node: str) -> ray.actor.ActorHandle:
        """`node`'s actor, a new one if it was parked (with the lock held). Raises `NodeLost` where its
        Ray node has left the cluster: a new actor there would wait for it forever."""
        actor = self.actors.get(node)
        if actor is not None:
            return actor
        info = next((n for n in self._nodes if n.name == node), None)
        if info is None:
            raise KeyError(node)
        if not self._present(node):
            raise NodeLost(node, "its Ray node is not in the cluster")
        return self._spawn(info)

    @staticmethod
    def _present(node: str) -> bool:
        """Whether the Ray node that carries `node`'s resource is in the cluster (one GCS call)."""
        return NODE_RESOURCE + node in ray.cluster_resources()

    def submit(self, node: str, task: SegmentTask) -> object:
        shape = result_codec.image_shape(task.job)
        with self._lock:
            actor = self._actor(node)
            gen = actor.run.options(num_returns="streaming").remote(task)
            self.pending[gen] = node
            self.callee[gen] = actor
            self.idle_since.pop(node, None)
        threading.Thread(target=self._read, args=(gen, node, task.shard_id, shape),
                         name=f"farm-segment-{node}", daemon=True).start()
        return gen

    def _read(self, gen: ray.ObjectRefGenerator, node: str, shard_id: str, shape: tuple[int, ...]) -> None:
        """One segment's stream into the inbox: its steps as they come, then its outcome (blocks on Ray
        all along; ends with the segment)."""
        outcome: SegmentResult | BaseException | None = None
        try:
            for ref in gen:
                item = ray.get(ref)
                if is_step(item):
                    self._inbox.put(StepEvent(node, shard_id, item[0], item[1]))
                elif outcome is None:
                    outcome = segment_outcome(node, item, shape)
        except Exception as e:  # the actor died (after its result, that result stands), or the call failed
            outcome = ray_outcome(node, e) if outcome is None else outcome
        self._inbox.put((gen, SegmentFailed(f"segment failed on {node}: no result") if outcome is None else outcome))

    def wake(self) -> None:
        """End a `wait` blocked on another thread now (the coordinator stops)."""
        self._inbox.put(None)

    def wait(self, timeout: float) -> list[tuple[object, SegmentResult | BaseException]]:
        """Segments and probes that ended, waiting up to `timeout` for the first one or for step events
        (which `step_events` then returns). Blocks for the whole `timeout` when nothing happens (but for
        an actor's parking time running out): a loop calling this does not spin on an idle farm."""
        park = self._park_due()
        try:
            items = [self._inbox.get(timeout=max(0.0, min(timeout, park)))]
        except queue.Empty:
            items = []
        while True:  # whatever else came by now, without waiting longer
            try:
                items.append(self._inbox.get_nowait())
            except queue.Empty:
                break
        out: list[tuple[object, SegmentResult | BaseException]] = []
        for item in items:
            if isinstance(item, StepEvent):
                self._steps.append(item)
            elif isinstance(item, tuple):
                handle, outcome = item
                if self._ended(handle, outcome):
                    out.append((handle, outcome))
            elif item is not None:  # a probe's ref, answered
                node = self.pending.get(item)
                try:
                    answer: object = ray.get(item)
                except Exception as e:
                    answer = ray_outcome(node, e) if node is not None else e
                if node is not None and self._ended(item, answer):
                    out.append((item, answer))  # type: ignore[arg-type]
        self._park_due()
        return out

    def _ended(self, handle: object, outcome: object) -> bool:
        """Forget a call that ended; False for one no longer waited for (its node was removed). An actor
        that died under it is dropped (not parked later as if idle) and its node is `lost`, unless the
        node has a newer actor (it joined again); a node that answered is not lost."""
        dead = None
        with self._lock:
            node = self.pending.pop(handle, None)
            actor = self.callee.pop(handle, None)
            if node is not None and isinstance(outcome, NodeLost):
                if actor is not None and self.actors.get(node) is actor:
                    dead = self.actors.pop(node)
                    self.idle_since.pop(node, None)
                    self.lost.add(node)
            elif node is not None:
                self.lost.discard(node)
                if node in self.actors and node not in self.pending.values():
                    self.idle_since[node] = time.monotonic()
        if dead is not None:
            self._kill(dead)
        return node is not None

    def _park_due(self) -> float:
        """Park the actors idle for `park_s`; the seconds until the next one is due (inf: none)."""
        now, parked, nxt = time.monotonic(), [], float("inf")
        with self._lock:
            for node, since in list(self.idle_since.items()):
                if now - since < self.park_s:
                    nxt = min(nxt, since + self.park_s - now)
                elif node in self.actors and node not in self.pending.values():
                    parked.append(self.actors.pop(node))
                    del self.idle_since[node]
        for actor in parked:
            self._kill(actor)
        return nxt

    def probe(self, node: str) -> object:
        """A health probe: the actor answers with its process id once it runs. A parked node answers at
        once from the cluster view: present (0) or `NodeLost` (its Ray node left). A lost node (its actor
        died) gets a new actor to answer where its Ray node is still listed: a PC killed a moment ago
        is, and only an actor that runs there says it is back."""
        with self._lock:
            actor = self.actors.get(node)
            if actor is None and node in self.lost and self._present(node):
                actor = self._actor(node)
            if actor is None:
                handle = object()
                self.pending[handle] = node
                answer = 0 if self._present(node) else NodeLost(node, "its Ray node is not in the cluster")
                self._inbox.put((handle, answer))
                return handle
            ref = actor.pid.remote()
            self.pending[ref] = node
            self.callee[ref] = actor
            self.idle_since.pop(node, None)
        ref.future().add_done_callback(lambda _: self._inbox.put(ref))
        return ref

    def step_events(self) -> list[StepEvent]:
        """The step events that `wait` collected (no Ray call)."""
        out, self._steps = self._steps, []
        return out

    def release(self, node: str) -> None:
        """Ask a node's actor to drop its models and free its GPU memory (after its segment stops); a
        parked node holds none."""
        with self._lock:
            actor = self.actors.get(node)
        if actor is not None:
            actor.release.remote()

    def interrupt(self, node: str) -> None:
        """Ask a node to checkpoint at its next step boundary and return (pause); a parked node runs nothing."""
        with self._lock:
            actor = self.actors.get(node)
        if actor is not None:
            actor.stop.remote()

    def remove_node(self, node: str) -> None:
        """Forget a node: its actor is killed (its PC was removed from the farm)."""
        with self._lock:
            actor = self.actors.pop(node, None)
            self.pending = {ref: n for ref, n in self.pending.items() if n != node}
            self.callee = {ref: a for ref, a in self.callee.items() if ref in self.pending}
            self.idle_since.pop(node, None)
            self.lost.discard(node)
            self._nodes = [n for n in self._nodes if n.name != node]
        if actor is not None:
            self._kill(actor)

    def kill(self, node: str) -> None:
        """Kill a node's worker process, as a crashed PC would (used by fault tests)."""
        ray.kill(self.actors[node], no_restart=True)

    @staticmethod
    def _kill(actor: ray.actor.ActorHandle) -> None:
        try:
            ray.kill(actor, no_restart=True)
        except RayActorError:  # already gone with its worker
            pass

    def shutdown(self) -> None:
        with self._lock:
            actors, self.actors = list(self.actors.values()), {}
            self.idle_since.clear()
        for actor in actors:
            self._kill(actor)
        self.wake()


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
