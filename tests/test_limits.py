"""Limits with clear errors (issue 15, point 5): per-job caps (samples, prompt bytes, pixel-frames), a
per-user cap on unfinished jobs, ListJobs in pages that stay under gRPC's message limit, `farm jobs rm`
for ended jobs, and a per-user cap on open streams, so one user cannot stall the others."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from fake_farm import FakeFarm
from test_cluster_cli import LocalHead, head, run  # noqa: F401  (the `head` fixture)
from test_coordinator import MemorySink, ScriptedExecutor, run_until_final, small_job
from waiting import wait_until

from farm.api.control_client import FarmClient
from farm.api.control_server import MAX_PAGE, serve_control
from farm.api.stream_slots import StreamSlots
from farm.contracts.control import JobView
from farm.contracts.domain import JobStatus
from farm.contracts.errors import InvalidInput, LimitReached, NotFound
from farm.core import limits
from farm.jobs.jobspec import make_job
from farm.runtime.coordinator import Coordinator
from farm.runtime.store import Store
from node.simulated import simulated_nodes
from protos.farm.v1 import control_pb2, control_pb2_grpc


@pytest.mark.parametrize("fields, field, allowed", [
    ({"prompts": [f"p{i}" for i in range(101)], "seeds": 100}, "samples", "from 1 to 10000, got 10100"),
    ({"prompts": ["x" * 4097]}, "prompts[0]", "at most 4096 bytes of UTF-8, got 4097"),
    ({"prompts": ["a"], "negative_prompt": "é" * 2049}, "negative_prompt", "at most 4096 bytes of UTF-8, got 4098"),
    ({"prompts": ["x" * 4000] * 300}, "prompts", "total at most 1048576 bytes of UTF-8, got 1200000"),
])
def test_a_job_over_a_cap_is_refused_naming_the_field_and_range(fields: dict, field: str, allowed: str) -> None:
    with pytest.raises(InvalidInput) as e:
        make_job(**fields)
    assert e.value.field == field and allowed in str(e.value) and "\n" not in str(e.value)


def test_pixel_frames_are_capped() -> None:
    spec = replace(make_job(prompts=["a"] * 100, seeds=100), width=1024, height=1024)
    with pytest.raises(InvalidInput, match=r"^pixel-frames: samples x width x height x frames must be at most "
                                           r"8589934592, got 10485760000 \(10000 x 1024 x 1024 x 1\)$"):
        limits.check_job(spec)


def coordinator(**kw) -> Coordinator:
    return Coordinator(ScriptedExecutor(simulated_nodes()), MemorySink(), clock=lambda: 1000.0, **kw)


def test_a_user_with_too_many_unfinished_jobs_is_refused_and_others_are_not() -> None:
    c = coordinator(max_unfinished_per_user=2)
    first = c.submit(small_job(owner="ana"))
    c.submit(small_job(owner="ana"))
    with pytest.raises(LimitReached, match=r"^queue: ana has 2 unfinished jobs \(allowed: 0 to 2 per user\)"):
        c.submit(small_job(owner="ana"))
    c.submit(small_job(owner="ben"))  # another user is not held back
    c.cancel_job(first)
    c.submit(small_job(owner="ana"))  # an ended job frees its place


def test_three_hundred_submits_in_a_row_stop_at_the_default_cap() -> None:
    c = coordinator()
    accepted = 0
    with pytest.raises(LimitReached, match="allowed: 0 to 100 per user"):
        for _ in range(300):
            c.submit(small_job(owner="mallory"))
            accepted += 1
    assert accepted == 100


def test_the_queue_cap_reaches_the_cli_as_one_line(head: LocalHead, tmp_path: Path, capsys,  # noqa: F811
                                                     monkeypatch) -> None:
    def full(spec, init_image=None):
        raise LimitReached("queue: local has 100 unfinished jobs (allowed: 0 to 100 per user); wait")

    monkeypatch.setattr(head.farm, "submit", full)
    (tmp_path / "job.toml").write_text('model = "demo-tiny"\nprompts = ["a"]\nsteps = 4\n')
    code, _, err = run(capsys, "submit", str(tmp_path / "job.toml"), "--detach")
    assert code == 1 and err.strip() == "farm: queue: local has 100 unfinished jobs (allowed: 0 to 100 per user); wait"


def served(service) -> tuple[grpc.Server, FarmClient, control_pb2_grpc.FarmControlStub]:
    server, port = serve_control(service, "127.0.0.1:0")
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    return server, FarmClient(channel, None), control_pb2_grpc.FarmControlStub(channel)


def test_list_jobs_pages_through_thousands_of_jobs_in_id_order() -> None:
    template = JobView("j", make_job(prompts=["a"], steps=4), JobStatus.QUEUED, 0, 1, 0, 4, 1000.0)
    farm = FakeFarm(jobs=[replace(template, id=f"j{i:05d}") for i in range(2500)])
    server, client, stub = served(farm)
    try:
        assert [j.id for j in client.list_jobs()] == [f"j{i:05d}" for i in range(2500)]
        page = stub.ListJobs(control_pb2.ListJobsRequest(page_size=10, page_token="j00100"))
        assert [j.id for j in page.jobs] == [f"j{i:05d}" for i in range(101, 111)] and page.next_page_token == "j00110"
        last = stub.ListJobs(control_pb2.ListJobsRequest(page_size=10, page_token="j02495"))
        assert len(last.jobs) == 4 and last.next_page_token == ""
        with pytest.raises(grpc.RpcError) as e:
            stub.ListJobs(control_pb2.ListJobsRequest(page_size=MAX_PAGE + 1))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert e.value.details().startswith("page_size: must be from 0 to 1000")
    finally:
        server.stop(0)


def test_jobs_with_the_largest_prompts_still_list_under_the_message_limit() -> None:
    big = make_job(prompts=[chr(65 + i % 26) * 4000 for i in range(262)], steps=4)  # just under 1 MiB of text
    template = JobView("j", big, JobStatus.QUEUED, 0, 262, 0, 262 * 4, 1000.0)
    farm = FakeFarm(jobs=[replace(template, id=f"j{i}") for i in range(12)])  # 12 MB in all
    server, client, stub = served(farm)
    try:
        assert len(client.list_jobs()) == 12
        page = stub.ListJobs(control_pb2.ListJobsRequest(page_size=100))
        assert 1 <= len(page.jobs) < 12 and page.ByteSize() < 4 * 2**20 and page.next_page_token
    finally:
        server.stop(0)


def test_jobs_rm_forgets_an_ended_job_collects_its_blobs_and_survives_a_restart(tmp_path: Path) -> None:
    store = Store(tmp_path / "state")
    executor = ScriptedExecutor(simulated_nodes())
    c = Coordinator(executor, MemorySink(), clock=lambda: 1000.0, store=store, max_failures=2, max_segment_steps=2)
    done = c.submit(small_job())
    run_until_final(c, done)
    failed = c.submit(small_job())
    with pytest.raises(InvalidInput, match=r"^job: .* is queued: only a done, failed or cancelled job can be removed"):
        c.forget_job(failed)
    c.tick(0)
    c.tick(0)  # its first segments end: their checkpoints are kept
    executor.fail = {n.name: 99 for n in simulated_nodes()}
    run_until_final(c, failed)
    assert c.get_job(failed).status == JobStatus.FAILED and c.blobs.names()  # kept for a retry
    c.forget_job(done)
    c.forget_job(failed)
    c.tick(0)
    assert c.list_jobs() == [] and not c.blobs.names()
    with pytest.raises(NotFound):
        c.get_job(done)
    assert any(e.kind == "job_removed" and e.job_id == done for e in c.events(0))
    c.stop()
    store.close()
    again = Store(tmp_path / "state")
    restarted = Coordinator(ScriptedExecutor(simulated_nodes()), MemorySink(), clock=lambda: 1000.0, store=again)
    assert restarted.list_jobs() == []
    again.close()


def test_farm_jobs_rm_through_the_cli(head: LocalHead, tmp_path: Path, capsys) -> None:  # noqa: F811
    (tmp_path / "job.toml").write_text('model = "demo-tiny"\nprompts = ["a"]\nsteps = 4\n')
    job_id = run(capsys, "submit", str(tmp_path / "job.toml"), "--detach")[1].strip()
    code, _, err = run(capsys, "jobs", "rm", job_id)
    assert code == 2 and err.count("\n") == 1 and "only an ended job can be removed" in err
    run(capsys, "cancel", job_id)
    code, out, _ = run(capsys, "jobs", "rm", job_id)
    assert code == 0 and out.strip() == f"removed {job_id}" and job_id not in head.farm.jobs


def test_one_user_cannot_hold_every_stream_and_stall_the_others() -> None:
    farm = FakeFarm()
    farm.emit("job_submitted", "j1")
    server, client, stub = served(farm)
    streams = []
    try:
        for _ in range(8):  # the embedded farm's one user: its cap is 8
            stream = stub.StreamEvents(control_pb2.StreamEventsRequest(after=0, follow=True))
            next(stream)  # its handler runs: the slot is held
            streams.append(stream)
        with pytest.raises(grpc.RpcError) as e:
            next(stub.StreamEvents(control_pb2.StreamEventsRequest(after=0, follow=True)))
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert e.value.details().startswith("streams: local has 8 open (allowed: 1 to 8 per user)")
        started = time.monotonic()
        assert client.list_nodes() and time.monotonic() - started < 5  # plain calls still answer
        streams.pop().cancel()

        def opens() -> bool:
            try:
                streams.append(stub.StreamEvents(control_pb2.StreamEventsRequest(after=0, follow=True)))
                next(streams[-1])
                return True
            except grpc.RpcError:
                streams.pop()
                return False

        assert wait_until(opens, timeout=10)  # a closed stream gives its slot back
    finally:
        for s in streams:
            s.cancel()
        server.stop(0)


def test_all_users_together_leave_threads_for_plain_calls() -> None:
    slots = StreamSlots(per_user=2, total=3)
    slots.take("ana")
    slots.take("ana")
    slots.take("ben")
    with pytest.raises(LimitReached, match=r"^streams: the head has 3 open \(allowed: 1 to 3 in all\)"):
        slots.take("cleo")
    slots.give_back("ana")
    slots.take("cleo")
