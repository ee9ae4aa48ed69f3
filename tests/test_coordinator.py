"""The coordinator's queue and loop against a scripted executor (no Ray, no torch): every control
of FarmService, and what happens to work when nodes pause, fail or vanish."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from farm.contracts.control import NodeStatus
from farm.contracts.domain import JobSpec, JobStatus, NodeInfo, Sample, SegmentResult, SegmentTask, StepRun
from farm.contracts.errors import InvalidInput, NodeLost, SegmentFailed
from farm.core.transitions import transition
from farm.jobs.jobspec import make_job
from farm.runtime.coordinator import Coordinator
from farm.runtime.simulate import stand_in_checkpoint
from farm.wire import checkpoint_codec
from node.simulated import simulated_nodes


class ScriptedExecutor:
    """Runs each segment instantly on the next `wait`, unless told to fail, lose or pause a node."""

    def __init__(self, nodes: list[NodeInfo]) -> None:
        self._nodes = nodes
        self.handles = itertools.count()
        self.pending: dict[int, tuple[str, SegmentTask]] = {}
        self.tasks: list[tuple[str, SegmentTask]] = []
        self.fail: dict[str, int] = {}  # node -> how many more segments fail there
        self.lose: set[str] = set()
        self.interrupted: set[str] = set()
        self.hold = False  # keep segments running (not returned) while set
        self.answers: list[tuple[int, object]] = []  # probe answers: given even while segments are held
        self.mute: set[str] = set()  # nodes whose worker does not answer probes
        self.unanswered: dict[int, str] = {}

    def nodes(self) -> list[NodeInfo]:
        return list(self._nodes)

    def submit(self, node: str, task: SegmentTask) -> object:
        handle = next(self.handles)
        self.pending[handle] = (node, task)
        self.tasks.append((node, task))
        return handle

    def wait(self, timeout: float):
        out, self.answers = self.answers, []
        if self.hold:
            return out
        for handle, (node, task) in list(self.pending.items()):
            del self.pending[handle]
            out.append((handle, self._outcome(node, task)))
        return out

    def _outcome(self, node: str, task: SegmentTask):
        if node in self.lose:
            return NodeLost(node, "raylet died")
        if self.fail.get(node, 0) > 0:
            self.fail[node] -= 1
            return SegmentFailed(f"CUDA error on {node}")
        common = dict(shard_id=task.shard_id, index=task.index, node=node, gpu="fake", seconds=1.0,
                      loaded=(task.job.model,))
        if node in self.interrupted and task.end - task.start > 1:
            self.interrupted.discard(node)
            return SegmentResult(**common, checkpoint=stand_in_checkpoint(task, task.start + 1),
                                 stopped_at=task.start + 1)
        if task.last:
            size = task.job.width * task.job.height * 3 * task.job.frames
            return SegmentResult(**common, images=tuple(bytes([s.index]) * size for s in task.samples))
        return SegmentResult(**common, checkpoint=stand_in_checkpoint(task, task.end))

    def step_events(self):
        return []

    def probe(self, node: str) -> object:
        handle = next(self.handles)
        if node in self.mute:  # its worker does not answer (yet)
            self.unanswered[handle] = node
        else:
            self.answers.append((handle, NodeLost(node, "raylet died") if node in self.lose else True))
        return handle

    def interrupt(self, node: str) -> None:
        self.interrupted.add(node)


class MemorySink:
    def __init__(self) -> None:
        self.written: list[tuple[str, int, tuple[StepRun, ...]]] = []

    def write(self, job_id: str, job: JobSpec, sample: Sample, rgb: bytes, runs) -> Path:
        self.written.append((job_id, sample.index, tuple(runs)))
        return Path(job_id) / f"{sample.index}.png"


def farm(**kw) -> tuple[Coordinator, ScriptedExecutor, MemorySink]:
    executor, sink = ScriptedExecutor(simulated_nodes()), MemorySink()
    return Coordinator(executor, sink, clock=lambda: 1000.0, **kw), executor, sink


def small_job(**kw) -> JobSpec:
    return make_job(**{"prompts": ["a", "b"], "seeds": 3, "steps": 6, **kw})


def run_until_final(c: Coordinator, job_id: str, ticks: int = 200) -> None:
    for _ in range(ticks):
        c.tick(0)
        if c.get_job(job_id).status in (JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED):
            return
    raise AssertionError("job did not finish")


def test_every_sample_is_written_exactly_once() -> None:
    c, ex, sink = farm(max_segment_steps=2)
    job_id = c.submit(small_job())
    run_until_final(c, job_id)
    view = c.get_job(job_id)
    assert view.status == JobStatus.DONE and view.samples_done == 6 and view.steps_done == view.steps_total
    assert sorted(i for _, i, _ in sink.written) == list(range(6))
    for _, _, runs in sink.written:
        assert runs[0].start == 0 and runs[-1].end == 6
        assert all(a.end == b.start for a, b in zip(runs, runs[1:]))
    tasks = [t for _, t in ex.tasks]
    assert all((t.checkpoint is None) == (t.start == 0) for t in tasks)
    kinds = [e.kind for e in c.events(0) if e.job_id == job_id]
    assert kinds[0] == "job_submitted" and kinds[-1] == "job_done" and "segment_finished" in kinds


def test_cancel_discards_running_work_and_is_final() -> None:
    c, ex, sink = farm()
    job_id = c.submit(small_job())
    ex.hold = True
    c.tick(0)
    assert ex.pending
    c.cancel_job(job_id)
    ex.hold = False
    for _ in range(5):
        c.tick(0)
    assert c.get_job(job_id).status == JobStatus.CANCELLED and sink.written == []
    with pytest.raises(InvalidInput, match="cancelled"):
        c.resume_job(job_id)


def test_paused_job_starts_nothing_until_resumed() -> None:
    c, ex, _ = farm()
    job_id = c.submit(small_job())
    c.pause_job(job_id)
    for _ in range(3):
        c.tick(0)
    assert ex.tasks == [] and c.get_job(job_id).status == JobStatus.PAUSED
    c.resume_job(job_id)
    assert c.get_job(job_id).status == JobStatus.QUEUED
    run_until_final(c, job_id)
    assert c.get_job(job_id).status == JobStatus.DONE


def test_paused_node_checkpoints_mid_segment_and_the_rest_runs_elsewhere() -> None:
    c, ex, sink = farm(max_segment_steps=6)
    job_id = c.submit(small_job())
    ex.hold = True
    c.tick(0)
    node, task = ex.tasks[0]
    c.pause_node(node)
    c.tick(0)  # the loop's next tick asks the node to stop at its next step
    assert node in ex.interrupted
    ex.hold = False
    run_until_final(c, job_id)
    resumed = [t for n, t in ex.tasks[1:] if t.shard_id == task.shard_id and t.index == task.index]
    assert resumed and resumed[0].start == task.start + 1 and resumed[0].checkpoint is not None
    assert all(n != node for n, t in ex.tasks[len(ex.tasks) - len(resumed):] if t.shard_id == task.shard_id)
    assert {v.info.name: v.status for v in c.list_nodes()}[node] == NodeStatus.PAUSED
    assert sorted(i for _, i, _ in sink.written) == list(range(6))


def test_lost_node_work_resumes_from_its_checkpoint_on_others() -> None:
    c, ex, sink = farm(max_segment_steps=2)
    job_id = c.submit(small_job())
    c.tick(0)  # every node runs its first segment
    victim = "sim-24gb"
    ex.lose.add(victim)
    run_until_final(c, job_id)
    assert c.get_job(job_id).status == JobStatus.DONE
    assert {v.info.name: v.status for v in c.list_nodes()}[victim] == NodeStatus.OFFLINE
    assert sorted(i for _, i, _ in sink.written) == list(range(6))
    retried = [t for n, t in ex.tasks if n != victim and t.index > 0]
    assert all(checkpoint_codec.decode(t.checkpoint).step == t.start for t in retried)


def test_failing_node_is_blocklisted_for_the_job_and_the_job_still_finishes() -> None:
    c, ex, sink = farm(max_failures=10)
    ex.fail["sim-24gb"] = 100
    job_id = c.submit(small_job())
    run_until_final(c, job_id)
    assert c.get_job(job_id).status == JobStatus.DONE
    # at most `blocklist_after` tries there (fewer when its shards moved to nodes predicted to be sooner)
    assert 1 <= sum(1 for n, _ in ex.tasks if n == "sim-24gb") <= 3
    assert sorted(i for _, i, _ in sink.written) == list(range(6))


def test_job_fails_with_its_reason_after_max_failures_and_retry_resumes() -> None:
    c, ex, _ = farm(max_failures=2)
    for n in ("sim-8gb", "sim-12gb", "sim-24gb"):
        ex.fail[n] = 1
    job_id = c.submit(small_job())
    run_until_final(c, job_id)
    view = c.get_job(job_id)
    assert view.status == JobStatus.FAILED and "CUDA error" in view.error
    c.retry_job(job_id)
    run_until_final(c, job_id)
    assert c.get_job(job_id).status == JobStatus.DONE


def test_priority_and_moves_order_the_queue() -> None:
    c, ex, _ = farm()
    first = c.submit(small_job(prompts=["a"], seeds=1))
    second = c.submit(small_job(prompts=["b"], seeds=1))
    third = c.submit(small_job(prompts=["c"], seeds=1))
    assert [j.position for j in c.list_jobs()] == [1, 2, 3]
    c.move_job(third, -2)
    assert [c.get_job(j).position for j in (third, first, second)] == [1, 2, 3]
    c.set_priority(second, 10)
    assert c.get_job(second).position == 1
    with pytest.raises(InvalidInput, match="priority"):
        c.set_priority(second, 1000)
    with pytest.raises(InvalidInput, match="no job"):
        c.cancel_job("nope")


def test_drain_finishes_the_segment_then_takes_nothing() -> None:
    c, ex, _ = farm(max_segment_steps=2)
    job_id = c.submit(small_job())
    ex.hold = True
    c.tick(0)
    c.drain_node("sim-24gb")
    ex.hold = False
    run_until_final(c, job_id)
    after = [n for n, _ in ex.tasks[3:]]
    assert "sim-24gb" not in after
    c.resume_node("sim-24gb")
    assert {v.info.name: v.status for v in c.list_nodes()}["sim-24gb"] == NodeStatus.IDLE


def test_events_are_ordered_and_long_poll_returns_only_new_ones() -> None:
    c, _, _ = farm()
    c.submit(small_job())
    first = c.events(0)
    assert [e.seq for e in first] == list(range(1, len(first) + 1))
    assert c.events(first[-1].seq, timeout=0.01) == []


LEGAL_CASES = [
    ("queued", "running"), ("queued", "paused"), ("queued", "cancelled"), ("queued", "failed"), ("queued", "done"),
    ("running", "done"), ("running", "failed"), ("running", "cancelled"), ("running", "paused"),
    ("paused", "queued"), ("paused", "running"), ("paused", "cancelled"),
    ("failed", "queued"), ("failed", "running"), ("failed", "cancelled"),
    ("done", "done"), ("running", "running"),
]
ILLEGAL_CASES = [
    ("done", "running"), ("done", "queued"), ("done", "cancelled"), ("done", "paused"), ("done", "failed"),
    ("cancelled", "running"), ("cancelled", "queued"), ("cancelled", "paused"), ("cancelled", "done"),
    ("failed", "paused"), ("failed", "done"), ("paused", "done"), ("paused", "failed"),
]


@pytest.mark.parametrize(("current", "new"), LEGAL_CASES)
def test_legal_transitions_pass(current: str, new: str) -> None:
    assert transition("j", JobStatus(current), JobStatus(new)) == JobStatus(new)


@pytest.mark.parametrize(("current", "new"), ILLEGAL_CASES)
def test_illegal_transitions_are_refused_naming_the_status(current: str, new: str) -> None:
    with pytest.raises(InvalidInput, match=f"is {current}; it cannot become {new}"):
        transition("j", JobStatus(current), JobStatus(new))


def test_a_new_job_is_planned_together_with_the_unstarted_work_of_the_queue() -> None:
    c, ex, sink = farm(max_segment_steps=2)
    first = c.submit(small_job(prompts=["a", "b", "c", "d"], seeds=3))
    video = c.submit(make_job(model="tiny-wan21", prompts=["v"], seeds=2, steps=6, frames=5))
    c.tick(0)  # plans both jobs at once, then dispatches
    for job_id, total in ((first, 12), (video, 2)):
        shards = c.get_job(job_id).shards
        assert sorted(i for s in shards for i in s.samples) == list(range(total))
        assert len({s.id for s in shards}) == len(shards)
    run_until_final(c, first)
    run_until_final(c, video)
    assert len(sink.written) == 14 and len(set((j, i) for j, i, _ in sink.written)) == 14


def test_while_ray_restarts_the_loop_never_waits_for_it_and_the_queue_answers() -> None:
    """A node removal restarts the Ray cluster in a new epoch (`farm head`'s `Reconnecting` held for a
    minute or two). The coordinator's loop then must not wait for Ray under its lock: `farm jobs`
    answered nothing during the restart. Held, a tick returns at once, a segment it starts fails as
    for an unreachable worker (requeued, nothing lost), and the job finishes once Ray is back."""
    from farm.cli.head import Reconnecting

    scripted = ScriptedExecutor(simulated_nodes())
    executor = Reconnecting(scripted)  # type: ignore[arg-type]
    c = Coordinator(executor, MemorySink(), clock=lambda: 1000.0)
    job_id = c.submit(small_job())
    for node in scripted.nodes():  # as the head does before it stops Ray
        c.node_left(node.name, "Ray restarts with a new token")
    executor.hold()
    for _ in range(3):
        c.tick(timeout=0.01)  # returns: nothing to wait for
        assert [j.id for j in c.list_jobs()] == [job_id]
    assert scripted.tasks == [] and c.get_job(job_id).status != JobStatus.DONE
    assert all(n.status == NodeStatus.OFFLINE for n in c.list_nodes())
    executor.resume(scripted)
    for node in scripted.nodes():
        c.node_joined(node)
    run_until_final(c, job_id)
    assert c.get_job(job_id).status == JobStatus.DONE
