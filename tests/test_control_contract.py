"""The control contract (`FarmService`), one set of scenarios run against the shared test fake
(`tests/fake_farm.py`) and against a real `Coordinator`: what one shows and refuses, the other does,
with the same exception type, field and message. Every test that drives a control surface with the
fake leans on this.

Only controls run here: the coordinator's loop is ticked once so its nodes are ready and not again
(a submitted job stays queued, as on the fake), except where the world must move a job on (fail it,
finish it, lose a node), which each side does its own way (`World`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import pytest
from fake_farm import FakeFarm
from test_coordinator import MemorySink, ScriptedExecutor

from farm.contracts.control import Event, FarmService, NodeStatus, Pause, PauseBy
from farm.contracts.domain import JobSpec, JobStatus
from farm.contracts.errors import InvalidInput, NotFound
from farm.jobs.jobspec import make_job
from farm.runtime.coordinator import Coordinator
from node.simulated import simulated_nodes


@dataclass
class World:
    """A farm behind the contract, and what the world (not a user) does to it."""

    farm: FarmService
    fail: Callable[[str], None]  # the job fails (after its work started)
    finish: Callable[[str], None]  # the job is done
    lose: Callable[[str, str], None]  # the node goes offline with this reason


def fake_world() -> World:
    fake = FakeFarm()

    def fail(job_id: str) -> None:
        fake.put_job(replace(fake.jobs[job_id], status=JobStatus.FAILED, started_at=fake.clock(), error="broke"))

    def finish(job_id: str) -> None:
        fake.put_job(replace(fake.jobs[job_id], status=JobStatus.DONE, position=0))

    def lose(name: str, reason: str) -> None:
        fake.put_node(replace(fake.nodes[name], status=NodeStatus.OFFLINE, pause_reason=reason))

    return World(fake, fail, finish, lose)


def coordinator_world() -> World:
    executor = ScriptedExecutor(simulated_nodes())
    c = Coordinator(executor, MemorySink(), max_failures=1, clock=lambda: 1000.0)
    c.tick(0)  # the nodes' workers answer their probes: from now on they take work

    def tick_until(job_id: str, status: JobStatus) -> None:
        for _ in range(100):
            c.tick(0)
            if c.get_job(job_id).status == status:
                return
        raise AssertionError(f"{job_id} never became {status}")

    def fail(job_id: str) -> None:
        executor.fail = {n.name: 1000 for n in simulated_nodes()}
        tick_until(job_id, JobStatus.FAILED)
        executor.fail = {}

    return World(c, fail, lambda job_id: tick_until(job_id, JobStatus.DONE), c.node_left)


@pytest.fixture(params=["fake", "coordinator"])
def world(request: pytest.FixtureRequest) -> World:
    return fake_world() if request.param == "fake" else coordinator_world()


def spec(**kw: object) -> JobSpec:
    return make_job(**{"prompts": ["a red circle", "a blue square"], "seeds": 3, "steps": 4, **kw})


def refused(call: Callable[[], object], error: type[InvalidInput] = InvalidInput) -> tuple[type, str, str]:
    """What a refused call raised: its type, field and message (the farm changes nothing)."""
    with pytest.raises(InvalidInput) as e:
        call()
    assert type(e.value) is error, e.value
    return type(e.value), e.value.field, str(e.value)


def idle_node(farm: FarmService) -> str:
    return next(n.info.name for n in farm.list_nodes() if n.status == NodeStatus.IDLE)


# ----- jobs ---------------------------------------------------------------------------------------


def test_submit_returns_an_id_and_the_job_waits_queued_with_its_samples(world: World) -> None:
    farm = world.farm
    job_id = farm.submit(spec())
    view = farm.get_job(job_id)
    assert isinstance(job_id, str) and job_id and view.id == job_id
    assert (view.status, view.samples_total, view.samples_done, view.steps_total, view.steps_done) == (
        JobStatus.QUEUED, 6, 0, 24, 0)
    assert (view.position, view.spec, view.error, view.outputs) == (1, spec(), "", ())
    assert [j.id for j in farm.list_jobs()] == [job_id] and farm.list_jobs()[0] == view
    other = farm.submit(spec())
    assert other != job_id and [(j.id, j.position) for j in farm.list_jobs()] == [(job_id, 1), (other, 2)]


def test_a_cancelled_job_stays_cancelled_and_refuses_to_come_back(world: World) -> None:
    farm = world.farm
    job_id = farm.submit(spec())
    farm.cancel_job(job_id)
    view = farm.get_job(job_id)
    assert (view.status, view.position) == (JobStatus.CANCELLED, 0) and view.finished_at is not None
    farm.cancel_job(job_id)  # the same status again: nothing to refuse, nothing changes
    assert farm.get_job(job_id).status == JobStatus.CANCELLED
    assert refused(lambda: farm.resume_job(job_id)) == (InvalidInput, "job", f"job: {job_id} is cancelled, not paused")
    assert refused(lambda: farm.pause_job(job_id)) == (
        InvalidInput, "job", f"job: {job_id} is cancelled; it cannot become paused")
    assert refused(lambda: farm.retry_job(job_id)) == (
        InvalidInput, "job", f"job: {job_id} is cancelled; only a failed job can be retried")
    assert farm.get_job(job_id).status == JobStatus.CANCELLED


def test_pause_and_resume(world: World) -> None:
    farm = world.farm
    first, second = farm.submit(spec()), farm.submit(spec())
    farm.pause_job(first)
    assert farm.get_job(first).status == JobStatus.PAUSED
    assert [(j.id, j.position) for j in farm.list_jobs()] == [(first, 0), (second, 1)]
    farm.resume_job(first)
    assert farm.get_job(first).status == JobStatus.QUEUED  # its work never started
    assert [(j.id, j.position) for j in farm.list_jobs()] == [(first, 1), (second, 2)]
    assert refused(lambda: farm.resume_job(first)) == (InvalidInput, "job", f"job: {first} is queued, not paused")
    assert refused(lambda: farm.retry_job(first)) == (
        InvalidInput, "job", f"job: {first} is queued; only a failed job can be retried")


def test_only_a_failed_job_is_retried_and_it_goes_on_where_it_was(world: World) -> None:
    farm = world.farm
    job_id = farm.submit(spec())
    world.fail(job_id)
    assert farm.get_job(job_id).status == JobStatus.FAILED and farm.get_job(job_id).error
    assert refused(lambda: farm.resume_job(job_id)) == (InvalidInput, "job", f"job: {job_id} is failed, not paused")
    farm.retry_job(job_id)
    view = farm.get_job(job_id)
    assert (view.status, view.error, view.finished_at) == (JobStatus.RUNNING, "", None)  # its work had started
    assert refused(lambda: farm.retry_job(job_id)) == (
        InvalidInput, "job", f"job: {job_id} is running; only a failed job can be retried")
    farm.pause_job(job_id)
    farm.resume_job(job_id)
    assert farm.get_job(job_id).status == JobStatus.RUNNING


def test_priority_is_a_whole_number_from_minus_100_to_100_and_orders_the_queue(world: World) -> None:
    farm = world.farm
    first, second = farm.submit(spec()), farm.submit(spec())
    farm.set_priority(second, 100)
    assert farm.get_job(second).spec.priority == 100
    assert [(j.id, j.position) for j in farm.list_jobs()] == [(first, 2), (second, 1)]
    farm.set_priority(second, -100)
    assert [(j.id, j.position) for j in farm.list_jobs()] == [(first, 1), (second, 2)]
    for bad in (101, -101, True, 1.5):
        kind, field, message = refused(lambda b=bad: farm.set_priority(first, b))  # type: ignore[misc]
        assert (kind, field) == (InvalidInput, "priority") and message.endswith(f"got {bad!r}")
    assert refused(lambda: farm.set_priority("nope", 500))[1] == "priority"  # the value is checked first
    assert farm.get_job(first).spec.priority == 0


def test_moves_among_the_waiting_jobs_of_one_priority(world: World) -> None:
    farm = world.farm
    a, b, c = farm.submit(spec()), farm.submit(spec()), farm.submit(spec())
    farm.move_job(c, -1)
    assert [(j.id, j.position) for j in farm.list_jobs()] == [(a, 1), (c, 2), (b, 3)]
    farm.move_job(a, 10)  # past the end: the last place
    assert [(j.id, j.position) for j in farm.list_jobs()] == [(c, 1), (b, 2), (a, 3)]
    farm.pause_job(b)
    farm.move_job(b, -5)  # a paused job keeps a place to come back to
    farm.resume_job(b)
    assert [(j.id, j.position) for j in farm.list_jobs()] == [(b, 1), (c, 2), (a, 3)]
    farm.set_priority(a, 1)
    farm.move_job(a, -1)  # alone at its priority: it stays first
    assert [j.id for j in farm.list_jobs() if j.position == 1] == [a]


def test_a_finished_or_cancelled_job_does_not_move(world: World) -> None:
    farm = world.farm
    done = farm.submit(spec())
    world.finish(done)
    assert refused(lambda: farm.move_job(done, -1)) == (
        InvalidInput, "job", f"job: {done} is done; only waiting jobs move")
    gone = farm.submit(spec())
    farm.cancel_job(gone)
    assert refused(lambda: farm.move_job(gone, 1))[1:] == ("job", f"job: {gone} is cancelled; only waiting jobs move")
    assert refused(lambda: farm.cancel_job(done))[1:] == ("job", f"job: {done} is done; it cannot become cancelled")


def test_an_unknown_job_or_node_is_not_found_naming_the_field(world: World) -> None:
    farm = world.farm
    for call in (farm.get_job, farm.cancel_job, farm.pause_job, farm.resume_job, farm.retry_job,
                 lambda j: farm.set_priority(j, 3), lambda j: farm.move_job(j, 1), lambda j: farm.preview(j, 0),
                 lambda j: farm.read_output(j, 0)):
        assert refused(lambda c=call: c("nope"), NotFound) == (NotFound, "job", "job: no job 'nope'")
    names = ", ".join(sorted(n.info.name for n in farm.list_nodes()))
    for node_call in (farm.pause_node, farm.drain_node, farm.resume_node):
        assert refused(lambda c=node_call: c("pc9"), NotFound) == (  # type: ignore[misc]
            NotFound, "node", f"node: no node 'pc9'; nodes: {names}")


# ----- nodes --------------------------------------------------------------------------------------


def status(farm: FarmService, name: str) -> tuple[NodeStatus, str]:
    view = next(n for n in farm.list_nodes() if n.info.name == name)
    return view.status, view.pause_reason


def test_pause_drain_and_resume_a_node(world: World) -> None:
    farm = world.farm
    name = idle_node(farm)
    farm.pause_node(name)
    assert status(farm, name) == (NodeStatus.PAUSED, "paused by an operator")
    farm.resume_node(name)
    assert status(farm, name) == (NodeStatus.IDLE, "")
    farm.drain_node(name)
    assert status(farm, name) == (NodeStatus.DRAINING, "draining: finishes its segment, then takes no work")
    farm.pause_node(name, Pause(PauseBy.OWNER, "game.exe running"))  # a pause says so before a drain
    assert status(farm, name) == (NodeStatus.PAUSED, "paused by the owner's rules: game.exe running")
    farm.resume_node(name)  # ends both
    assert status(farm, name) == (NodeStatus.IDLE, "")
    farm.resume_node(name)  # nothing to end: no refusal
    assert status(farm, name) == (NodeStatus.IDLE, "")


def test_an_offline_node_cannot_be_resumed(world: World) -> None:
    farm = world.farm
    name = idle_node(farm)
    world.lose(name, "its agent does not answer")
    assert status(farm, name) == (NodeStatus.OFFLINE, "its agent does not answer")
    assert refused(lambda: farm.resume_node(name)) == (
        InvalidInput, "node", f"node: {name} is offline (its agent does not answer)")
    farm.drain_node(name)  # taken, but the node is offline first
    assert status(farm, name)[0] == NodeStatus.OFFLINE


# ----- events -------------------------------------------------------------------------------------


def lines(events: list[Event]) -> list[tuple[str, str, str, str]]:
    return [(e.kind, e.job_id, e.node, e.message) for e in events]


def test_every_control_is_one_event_in_order_and_a_long_poll_returns_only_newer_ones(world: World) -> None:
    farm = world.farm
    before = farm.events(0)
    mark = before[-1].seq if before else 0
    assert [e.seq for e in before] == list(range(1, mark + 1))
    name = idle_node(farm)
    job_id = farm.submit(spec())
    farm.set_priority(job_id, 5)
    farm.move_job(job_id, -1)
    farm.pause_job(job_id)
    farm.resume_job(job_id)
    with pytest.raises(InvalidInput):
        farm.retry_job(job_id)  # refused: no event
    farm.cancel_job(job_id)
    farm.pause_node(name)
    farm.drain_node(name)
    farm.resume_node(name)
    new = farm.events(mark)
    assert [e.seq for e in new] == list(range(mark + 1, mark + 10))
    assert all(a.time <= b.time for a, b in zip(new, new[1:]))
    assert lines(new) == [
        ("job_submitted", job_id, "", f"6 samples, {spec().model}"),
        ("job_moved", job_id, "", "priority 5"),
        ("job_moved", job_id, "", "-1 places"),
        ("job_paused", job_id, "", ""),
        ("job_resumed", job_id, "", ""),
        ("job_cancelled", job_id, "", ""),
        ("node_paused", "", name, "paused by an operator"),
        ("node_draining", "", name, ""),
        ("node_resumed", "", name, ""),
    ]
    last = new[-1].seq
    assert farm.events(last) == [] and farm.events(mark + 3) == new[3:]

    started = time.monotonic()
    assert farm.events(last, timeout=0.2) == []  # nothing newer: it waits the whole timeout
    assert time.monotonic() - started >= 0.15

    got: list[list[Event]] = []
    poll = threading.Thread(target=lambda: got.append(farm.events(last, timeout=30)))
    poll.start()
    farm.pause_node(name)  # wakes the waiting poll (or comes before it: then it answers at once)
    poll.join(timeout=30)
    assert not poll.is_alive()
    assert lines(got[0]) == [("node_paused", "", name, "paused by an operator")] and got[0][0].seq == last + 1
