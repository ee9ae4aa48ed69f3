"""The coordinator: the runner around the pure core. It turns RPCs, node results and agent reports
into events (`farm.core.events`), folds them into the state with `apply`, asks `decide` what to do,
and carries the actions out: segments started on nodes through the `Executor`, interrupts, outputs
written through the `OutputSink`, blobs kept, every event journaled in the `Store`.

It is the `FarmService` of the CLI, the dashboard and the gRPC API, and imports no Ray and no torch.

Nothing one node or one job does can stop it. A node's reply is checked before it becomes an event
(right segment, a checkpoint that decodes, images of the job's size) and a bad one is a failed
segment charged to the node it was sent to; an exception while handling one result or action is
logged with its job and node, that segment goes back to the queue with the reason, and the loop
goes on. If the loop itself stops, `serving` turns False and `on_health` says so.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace

from farm.contracts.control import OPERATOR_PAUSE, Event, JobView, NodeView, Pause
from farm.contracts.domain import JobSpec, NodeInfo, SegmentResult, SegmentTask
from farm.contracts.errors import CheckpointError, FarmError, InvalidInput, NodeLost, NotFound
from farm.contracts.ids import job_of_shard, new_job_id
from farm.contracts.ports import Executor, OutputSink
from farm.core import costmodel, limits, views
from farm.core import events as ev
from farm.core.actions import Action, InterruptNode, ProbeNode, Record, StartSegment, WriteOutputs
from farm.core.apply import apply
from farm.core.decide import Decide, decide, next_check
from farm.core.state import FarmState, NodeRecord, Settings
from farm.core.transitions import ENDED, FINAL
from farm.jobs.catalog import get_model
from farm.jobs.demand import job_shape
from farm.runtime.blobs import MemoryBlobs, digest_of
from farm.runtime.output_files import read_output
from farm.runtime.store import Store
from farm.wire import checkpoint_codec

log = logging.getLogger(__name__)
EVENTS_KEPT = 10_000
# Consecutive failed ticks after which the loop gives up and health says NOT_SERVING.
MAX_BROKEN_TICKS = 5
# The loop sleeps until a result, a step of progress or the executor's wake-up (new work handed out)
# comes, or until `decide` has something due on the clock alone (`next_check`: a lease or a probe
# running out); commands are acted on by the thread that got them. With nothing due at all it still
# looks once a minute, and never sooner than MIN_WAIT_S after the last look.
IDLE_WAIT_S = 60.0
MIN_WAIT_S = 0.05


@dataclass(frozen=True)
class InFlight:
    """A segment handed to the executor: what was asked of whom, and when."""

    task: SegmentTask
    node: str
    started: float


def sample_bytes(job: JobSpec) -> int:
    """Bytes of one decoded sample as nodes send it: RGB, 8 bits, every frame."""
    return job.width * job.height * 3 * job.frames


class BadResult(FarmError):
    """A node's reply that cannot be used; charged to the node the segment was sent to."""


class Coordinator:
    """The farm's queue and scheduler loop (a `FarmService`)."""

    def __init__(self, executor: Executor, sink: OutputSink, *, max_failures: int = 5,
                 max_segment_steps: int | None = None, segment_seconds: float = 30.0,
                 clock: Callable[[], float] = time.time, store: Store | None = None, decide: Decide = decide,
                 on_health: Callable[[bool], None] | None = None,
                 max_unfinished_per_user: int | None = Settings.max_unfinished_per_user) -> None:
        self.executor = executor
        self.sink = sink
        self.clock = clock
        self.store = store
        self.blobs = store.blobs if store is not None else MemoryBlobs()
        self._decide = decide
        self.on_health = on_health
        self.serving = True
        self.inflight: dict[object, InFlight] = {}
        self.probes: dict[object, str] = {}  # handle -> node: health probes out
        # The latest preview PNG of each (job id, sample index) still rendering: display only.
        self.previews: dict[tuple[str, int], bytes] = {}
        self._activity: deque[Event] = deque(maxlen=EVENTS_KEPT)
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._collect = True
        settings = Settings(max_failures=max_failures, max_segment_steps=max_segment_steps,
                            segment_seconds=segment_seconds, max_unfinished_per_user=max_unfinished_per_user)
        self.state = FarmState(settings=settings)
        if store is not None:
            self._activity.extend(store.load_activity(EVENTS_KEPT))
            self.state = replace(store.restore(self.state), settings=settings)
            for job in self.state.jobs.values():  # a real model's cost profile is read from its files again
                if job.status not in FINAL:
                    try:
                        get_model(job.spec.model)
                    except FarmError as e:
                        log.warning("job %s: %s", job.id, e)
        now = self.clock()
        infos = executor.nodes()
        here = {n.name for n in infos}
        for node in [n for n in self.state.nodes.values() if n.info.name not in here and not n.offline]:
            self._handle(ev.NodeLeft(now, node.info.name, "the head restarted; its worker has not reconnected yet"))
        for info in infos:  # a fresh worker: whatever ran before a restart runs no more
            self._handle(ev.NodeJoined(now, info))
        self._act()  # the first probes go out: a node takes work once its worker answers

    # ----- events in ----------------------------------------------------------------------------

    def _handle(self, event: ev.Event) -> FarmState:
        """Apply, journal, describe, notify. Raises (and changes nothing) for a refused command."""
        with self._changed:
            before = self.state
            self.state = apply(before, event)
            if self.store is not None:
                try:
                    self.store.append(event, self.state)
                except Exception:  # the farm goes on in memory; the next snapshot catches up
                    log.exception("could not journal %s", type(event).__name__)
            for kind, job_id, node, message in views.activity(before, self.state, event):
                self._emit(kind, job_id, node, message)
            if isinstance(event, (ev.SegmentFinished, ev.OutputsWritten, ev.JobCancelled, ev.JobForgotten,
                                  ev.NodeLeft)):
                self._collect = True
            self._changed.notify_all()
            return self.state

    def _emit(self, kind: str, job_id: str = "", node: str = "", message: str = "") -> None:
        seq = self._activity[-1].seq + 1 if self._activity else 1
        event = Event(seq, self.clock(), kind, job_id, node, message)
        self._activity.append(event)
        if self.store is not None:
            try:
                self.store.add_activity(event)
            except Exception:
                log.exception("could not store the activity log")

    def events(self, after: int, timeout: float = 0.0) -> list[Event]:
        with self._changed:
            self._changed.wait_for(lambda: bool(self._activity) and self._activity[-1].seq > after, timeout)
            return [e for e in self._activity if e.seq > after]

    # ----- jobs ---------------------------------------------------------------------------------

    def submit(self, spec: JobSpec, job_id: str | None = None, shape: costmodel.Shape | None = None,
               init_image: bytes | None = None) -> str:
        """Queue a validated job; refuses (DoesNotFit) one no node can hold, storing nothing. `shape`
        overrides what the catalog costs the model as (the simulator's full-size jobs). An img2img
        job brings its init image's bytes, stored once under their hash (`spec.init_image`)."""
        shape = shape or job_shape(spec)
        if (digest_of(init_image) if init_image is not None else "") != spec.init_image:
            raise InvalidInput("init_image", "the image bytes given do not match the job's init image hash")
        with self._lock:
            limits.check_queue(self.state, spec.owner)
            budgets = [n.info.vram_gib for n in self.state.nodes.values() if not n.offline]
            costmodel.check_fits(shape, budgets)
            now = self.clock()
            if job_id is None:
                job_id = new_job_id(now)
                while job_id in self.state.jobs:  # 16 random bits per second: rare, but a busy queue meets it
                    job_id = new_job_id(now)
            if init_image is not None:
                self.blobs.put(init_image)
            self._handle(ev.JobSubmitted(now, job_id, spec, shape))
            self._nudge()
            return job_id

    def cancel_job(self, job_id: str) -> None:
        with self._lock:
            self._handle(ev.JobCancelled(self.clock(), job_id))
            self._nudge()
            for key in [k for k in self.previews if k[0] == job_id]:
                del self.previews[key]

    def forget_job(self, job_id: str) -> None:
        """Remove an ended job from the queue (its output files stay; its blobs are collected)."""
        with self._lock:
            self._handle(ev.JobForgotten(self.clock(), job_id))
            for key in [k for k in self.previews if k[0] == job_id]:
                del self.previews[key]

    def pause_job(self, job_id: str) -> None:
        self._handle(ev.JobPaused(self.clock(), job_id))
        self._nudge()

    def resume_job(self, job_id: str) -> None:
        self._handle(ev.JobResumed(self.clock(), job_id))
        self._nudge()

    def retry_job(self, job_id: str) -> None:
        """Run a failed job again from its shards' last checkpoints (finished samples stay)."""
        self._handle(ev.JobRetried(self.clock(), job_id))
        self._nudge()

    def set_priority(self, job_id: str, priority: int) -> None:
        self._handle(ev.JobReprioritised(self.clock(), job_id, priority))
        self._nudge()

    def move_job(self, job_id: str, offset: int) -> None:
        """Move `offset` places (negative: earlier) among waiting jobs of the same priority."""
        self._handle(ev.JobMoved(self.clock(), job_id, offset))
        self._nudge()

    def get_job(self, job_id: str) -> JobView:
        with self._lock:
            state = self.state
        job = state.jobs.get(job_id)
        if job is None:
            raise NotFound("job", f"no job {job_id!r}")
        return views.job_view(state, job, views.positions(state).get(job_id, 0))

    def list_jobs(self, after: str = "", limit: int | None = None) -> list[JobView]:
        with self._lock:
            state = self.state
        return views.job_views(state, after, limit)

    def read_output(self, job_id: str, index: int) -> bytes:
        """The bytes of output `index` of a job, as written (for a client on another PC)."""
        return read_output(self.get_job(job_id), index)

    def preview(self, job_id: str, sample: int) -> bytes | None:
        with self._lock:
            if job_id not in self.state.jobs:
                raise NotFound("job", f"no job {job_id!r}")
            return self.previews.get((job_id, sample))

    # ----- nodes --------------------------------------------------------------------------------

    def list_nodes(self) -> list[NodeView]:
        with self._lock:
            state = self.state
        return views.node_views(state)

    def node(self, name: str) -> NodeRecord | None:
        return self.state.nodes.get(name)

    def node_joined(self, info: NodeInfo) -> None:
        """A node (re)joins with a fresh worker: a new PC, or one whose worker started again. Replies
        still due from its old worker are no longer waited for (a late one would be about the old)."""
        with self._lock:
            self._handle(ev.NodeJoined(self.clock(), info))
            self.inflight = {h: f for h, f in self.inflight.items() if f.node != info.name}
            self.probes = {h: n for h, n in self.probes.items() if n != info.name}
            self._nudge()

    def node_left(self, name: str, reason: str) -> None:
        """A node is gone (its agent or worker stopped answering): its segment resumes elsewhere."""
        self._handle(ev.NodeLeft(self.clock(), name, reason))
        self._nudge()

    def pause_node(self, name: str, pause: Pause = OPERATOR_PAUSE) -> None:
        """No new work; a running segment checkpoints at its next step boundary (the loop's next tick
        asks the node) and comes back."""
        self._handle(ev.NodePaused(self.clock(), name, pause))
        self._nudge()

    def drain_node(self, name: str) -> None:
        """Finish the running segment, then take no more work."""
        self._handle(ev.NodeDrained(self.clock(), name))
        self._nudge()

    def resume_node(self, name: str) -> None:
        self._handle(ev.NodeResumed(self.clock(), name))
        self._nudge()

    def node_models(self, name: str, stored: frozenset[str], allow: tuple[str, ...], deny: tuple[str, ...],
                    link_bytes_per_s: float) -> None:
        """A node's disk (synced models it holds), its owner's model lists, its measured link speed."""
        self._handle(ev.NodeModels(self.clock(), name, stored, allow, deny, link_bytes_per_s))
        self._nudge()

    def model_served(self, model: str, size: int, holders: tuple[str, ...]) -> None:
        """A model only the head holds: nodes without it fetch `size` bytes before running it."""
        known = self.state.synced.get(model)
        if known != size:
            self._handle(ev.ModelServed(self.clock(), model, size, holders))

    def remove_node(self, name: str) -> None:
        """Forget a node; its segment resumes elsewhere from its last checkpoint."""
        self._handle(ev.NodeRemoved(self.clock(), name))
        self._nudge()

    # ----- the loop -----------------------------------------------------------------------------

    def tick(self, timeout: float = 0.1) -> None:
        """Collect finished segments (waiting up to `timeout`), apply them, carry out what `decide` says."""
        finished = self.executor.wait(timeout)
        with self._lock:
            now = self.clock()
            for step in self.executor.step_events():
                self._contained(lambda s=step: self._handle(ev.SegmentProgressed(now, s.shard_id, s.node, s.step)),
                                node=step.node)
            for handle, outcome in finished:
                if handle in self.probes:
                    node = self.probes.pop(handle)
                    self._contained(lambda n=node, o=outcome: self._answered(n, o), node=node)
                    continue
                flight = self.inflight.pop(handle, None)
                if flight is not None:
                    self._contained(lambda f=flight, o=outcome: self._outcome(f, o), flight)
            self._act()

    def _nudge(self) -> None:
        """Act on a command now rather than at the loop's next wake-up (only while a loop runs: a
        farm driven tick by tick, as in `finish`, acts at its next tick)."""
        if self._thread is not None and self._thread.is_alive():
            self._act()

    def _act(self) -> None:
        with self._lock:
            try:
                actions = self._decide(self.state, self.clock())
            except Exception:
                log.exception("the scheduler failed to decide; trying again at the next tick")
                return
            for action in actions:
                self._contained(lambda a=action: self._carry_out(a), node=getattr(action, "node", ""),
                                shard_id=getattr(action, "shard_id", ""))
            if self._collect:
                self._collect = False
                self._contained(lambda: self.blobs.collect(self.state.blobs()))

    def _contained(self, fn: Callable[[], object], flight: InFlight | None = None, node: str = "",
                   shard_id: str = "") -> None:
        """Run one handler; a failure is logged with its job and node, and the segment concerned goes
        back to the queue with the reason, so the loop goes on with everything else."""
        try:
            fn()
        except Exception as e:
            node = flight.node if flight else node
            shard_id = flight.task.shard_id if flight else shard_id
            log.exception("handling %s on node %s failed", shard_id or "the farm", node or "-")
            if shard_id and node:
                try:
                    self._handle(ev.SegmentFailed(self.clock(), shard_id, node, f"{type(e).__name__}: {e}"))
                except Exception:
                    log.exception("could not requeue %s", shard_id)

    def _carry_out(self, action: Action) -> None:
        now = self.clock()
        match action:
            case Record(event=event):
                self._handle(event)
            case StartSegment():
                self._start(action, now)
            case InterruptNode(node=node):
                self.executor.interrupt(node)
                self._handle(ev.NodeInterrupted(now, node))
            case ProbeNode(node=node):
                self._handle(ev.NodeProbed(now, node))
                if node in self.probes.values():
                    return  # the last probe is still out (a worker that cannot be reached): wait for it
                try:
                    self.probes[self.executor.probe(node)] = node
                except Exception as e:  # no worker to ask
                    self._handle(ev.NodeLeft(now, node, f"Ray worker unreachable: {e}"))
            case WriteOutputs():
                self._write(action, now)

    def _answered(self, node: str, outcome: object) -> None:
        now = self.clock()
        if isinstance(outcome, BaseException):
            reason = outcome.args[1] if isinstance(outcome, NodeLost) and len(outcome.args) > 1 else str(outcome)
            self._handle(ev.NodeLeft(now, node, f"Ray worker unreachable: {reason or type(outcome).__name__}"))
        else:  # a worker that measured its speed answers with the figure (`Executor.probe`)
            calibration = outcome if isinstance(outcome, float) and outcome > 0 else 0.0
            self._handle(ev.NodeReady(now, node, calibration))

    def _start(self, a: StartSegment, now: float) -> None:
        job = self.state.jobs[job_of_shard(a.shard_id)]
        shard = job.shards[a.shard_id].shard
        samples = job.spec.samples()
        checkpoint = self.blobs.get(a.checkpoint) if a.checkpoint is not None else None
        # Only the node that encodes (the first segment, no checkpoint yet) gets the init image.
        image = self.blobs.get(job.spec.init_image) if job.spec.init_image and checkpoint is None else None
        task = SegmentTask(job.spec, a.shard_id, tuple(samples[i] for i in shard.sample_indices), a.index, a.start,
                           a.end, checkpoint, a.mode, image, decode=a.index == len(shard.bounds) - 1)
        try:
            handle = self.executor.submit(a.node, task)
        except Exception as e:  # its actor is gone: the node is, as far as the farm can tell
            self._handle(ev.NodeLeft(now, a.node, f"cannot reach its worker: {e}"))
            return
        self.inflight[handle] = InFlight(task, a.node, now)
        self._handle(ev.SegmentStarted(now, a.shard_id, a.index, a.node, a.start, a.end, a.mode))

    def _outcome(self, flight: InFlight, outcome: SegmentResult | BaseException) -> None:
        now = self.clock()
        task = flight.task
        if isinstance(outcome, NodeLost):
            self._handle(ev.SegmentLost(now, task.shard_id, flight.node, str(outcome)))
            self._handle(ev.NodeLeft(now, flight.node, str(outcome)))
            return
        if isinstance(outcome, BaseException):
            self._handle(ev.SegmentFailed(now, task.shard_id, flight.node, str(outcome) or type(outcome).__name__))
            return
        try:
            self._handle(self._accept(flight, outcome, now))
        except BadResult as e:
            self._handle(ev.SegmentFailed(now, task.shard_id, flight.node, f"bad result: {e}"))

    def _accept(self, flight: InFlight, r: SegmentResult, now: float) -> ev.SegmentFinished:
        """A node's reply checked and turned into an event: attributed to the node it was sent to,
        its durations bounded by the head's own clock, its blobs stored."""
        task = flight.task
        if not isinstance(r, SegmentResult) or r.shard_id != task.shard_id or r.index != task.index:
            raise BadResult(f"a reply for another segment ({getattr(r, 'shard_id', '?')}#{getattr(r, 'index', '?')})")
        stopped = r.stopped_at is not None
        reached = r.stopped_at if stopped else task.end
        if not isinstance(reached, int) or not task.start <= reached <= task.end:
            raise BadResult(f"stopped at step {reached!r}, outside {task.start}-{task.end}")
        checkpoint = result = None
        if task.last and not stopped:
            size = sample_bytes(task.job)
            images = tuple(r.images)
            if len(images) != len(task.samples) or any(not isinstance(i, bytes) or len(i) != size for i in images):
                raise BadResult(f"expected {len(task.samples)} images of {size} bytes, got "
                                f"{[len(i) if isinstance(i, bytes) else type(i).__name__ for i in images]}")
            result = self.blobs.put(b"".join(images))
        else:
            if not isinstance(r.checkpoint, bytes):
                raise BadResult("no checkpoint")
            try:
                cp = checkpoint_codec.decode(r.checkpoint)
            except CheckpointError as e:
                raise BadResult(f"its checkpoint does not decode: {e}") from None
            seeds = tuple(s.seed for s in task.samples)
            if (cp.model, cp.step, cp.steps, cp.seeds) != (task.job.model, reached, task.job.steps, seeds):
                raise BadResult(f"its checkpoint is of {cp.model} step {cp.step}/{cp.steps} seeds {cp.seeds[:4]}, "
                                f"not of this shard at step {reached}")
            checkpoint = self.blobs.put(r.checkpoint)
        elapsed = max(0.0, now - flight.started)
        seconds = min(max(0.0, float(r.seconds)), elapsed)
        denoise = min(max(0.0, float(r.denoise_seconds)), seconds)
        for sample, png in zip(task.samples, r.previews):
            if isinstance(png, bytes):
                self.previews[(job_of_shard(task.shard_id), sample.index)] = png
        return ev.SegmentFinished(now, task.shard_id, task.index, flight.node, task.start, reached, stopped,
                                  checkpoint, result, seconds, denoise, str(r.gpu)[:100], str(r.memory_mode)[:40],
                                  tuple(str(m)[:200] for m in r.loaded), float(r.peak_gib or 0.0),
                                  str(r.precision)[:40])

    def _write(self, a: WriteOutputs, now: float) -> None:
        found = self.state.shard(a.shard_id)
        assert found is not None
        job, shard = found
        payload = self.blobs.get(a.result)
        size = sample_bytes(job.spec)
        samples = job.spec.samples()
        paths = []
        try:
            for k, index in enumerate(shard.shard.sample_indices):
                self.previews.pop((job.id, index), None)
                path = self.sink.write(job.id, job.spec, samples[index], payload[k * size:(k + 1) * size], shard.runs)
                paths.append((index, str(path)))
        except Exception as e:
            log.exception("writing the outputs of %s failed", a.shard_id)
            self._handle(ev.OutputsFailed(now, a.shard_id, f"{type(e).__name__}: {e}"))
            return
        self._handle(ev.OutputsWritten(now, a.shard_id, tuple(paths)))

    # ----- running it ---------------------------------------------------------------------------

    def render(self, spec: JobSpec, job_id: str | None = None,
               on_tick: Callable[[Coordinator, str], None] | None = None) -> JobView:
        """Submit a job and run the loop on this thread until it is done, failed or cancelled."""
        return self.finish(self.submit(spec, job_id), on_tick)

    def finish(self, job_id: str, on_tick: Callable[[Coordinator, str], None] | None = None) -> JobView:
        """Run the loop on this thread until `job_id` is done, failed or cancelled."""
        while True:
            self.tick()
            if on_tick is not None:
                on_tick(self, job_id)
            view = self.get_job(job_id)
            if view.status in ENDED:
                return view
            with self._lock:
                if not self.inflight and not self.probes and all(n.offline for n in self.state.nodes.values()):
                    self._handle(ev.JobFailed(self.clock(), job_id, "every node is offline"))

    def start(self) -> None:
        """Run the loop on a background thread (a head, or an embedded farm with a dashboard)."""
        self._thread = threading.Thread(target=self._loop, name="farm-coordinator", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        broken = 0
        try:
            while not self._stop.is_set():
                try:
                    self.tick(self._wait_s())
                    broken = 0
                except Exception:
                    broken += 1
                    log.exception("a scheduler tick failed (%d in a row)", broken)
                    if broken >= MAX_BROKEN_TICKS:
                        return
                    self._stop.wait(min(2.0 ** broken, 10.0))
        finally:
            if not self._stop.is_set():
                self._set_serving(False)

    def _wait_s(self) -> float:
        """How long the loop may wait for an event before `decide` has something due."""
        with self._lock:
            due = next_check(self.state)
        if due is None:
            return IDLE_WAIT_S
        return min(IDLE_WAIT_S, max(MIN_WAIT_S, due - self.clock() + MIN_WAIT_S))

    def _set_serving(self, serving: bool) -> None:
        self.serving = serving
        if self.on_health is not None:
            self.on_health(serving)

    def stop(self) -> None:
        self._stop.set()
        wake = getattr(self.executor, "wake", None)  # an executor whose `wait` blocks (Ray's) ends it now
        if wake is not None:
            wake()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.store is not None:
            with self._lock:
                try:
                    self.store.snapshot(self.state)
                except Exception:
                    log.exception("could not write the final snapshot")

    def wait(self, job_id: str, timeout: float | None = None) -> JobView:
        """Block until a job ends (with `start` running the loop)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while self.state.jobs[job_id].status not in ENDED:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._changed.wait(timeout=left if left is not None else 1.0)
        return self.get_job(job_id)
