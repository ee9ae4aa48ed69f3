"""One bad node, sink or store never stops the farm: malformed results are failed segments charged to
the node they were sent to, a failing output write fails only its job, a failing journal only costs
durability, and a loop that cannot go on says so through its health."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from test_coordinator import MemorySink, ScriptedExecutor, farm, run_until_final, small_job
from waiting import wait_until

from farm.contracts.domain import JobSpec, JobStatus, Sample, SegmentResult, SegmentTask
from farm.runtime.coordinator import Coordinator
from farm.runtime.simulate import stand_in_checkpoint
from farm.runtime.store import Store
from node.simulated import simulated_nodes

BAD = "sim-24gb"


def malformed(kind: str, task: SegmentTask, node: str) -> object:
    common = dict(shard_id=task.shard_id, index=task.index, node=node, gpu="fake", seconds=1.0)
    if kind == "undecodable images":
        return SegmentResult(**common, images=(b"\0",) * len(task.samples)) if task.last else \
            SegmentResult(**common, checkpoint=b"\0garbage")
    if kind == "wrong shapes":
        return SegmentResult(**common, images=(b"\0" * 7,)) if task.last else \
            SegmentResult(**common, checkpoint=stand_in_checkpoint(dataclasses.replace(task, samples=task.samples[:1]),
                                                                   task.end))
    if kind == "garbage checkpoint":
        return SegmentResult(**common, checkpoint=b"\x93\x01\x02\x03" * 10, images=())
    if kind == "another segment":
        return SegmentResult(**{**common, "shard_id": "j-other/s0"}, checkpoint=stand_in_checkpoint(task, task.end))
    if kind == "another node":  # credited to the node it was sent to, whatever it claims
        return SegmentResult(**{**common, "node": "sim-8gb", "seconds": 1e6, "denoise_seconds": 1e6},
                             checkpoint=stand_in_checkpoint(task, task.end),
                             images=tuple(bytes(task.job.width * task.job.height * 3) for _ in task.samples))
    return RuntimeError("the worker raised")


class Misbehaving(ScriptedExecutor):
    def __init__(self, kind: str) -> None:
        super().__init__(simulated_nodes())
        self.kind = kind

    def _outcome(self, node: str, task: SegmentTask):
        if node == BAD:
            return malformed(self.kind, task, node)
        return super()._outcome(node, task)


def test_every_kind_of_malformed_result_is_a_failed_segment_and_work_goes_on() -> None:
    for kind in ("undecodable images", "wrong shapes", "garbage checkpoint", "another segment", "exception"):
        executor, sink = Misbehaving(kind), MemorySink()
        c = Coordinator(executor, sink, clock=lambda: 1000.0, max_failures=50, max_segment_steps=2)
        job_id = c.submit(small_job())
        run_until_final(c, job_id)
        assert c.get_job(job_id).status == JobStatus.DONE, kind
        assert sorted(i for _, i, _ in sink.written) == list(range(6)), kind
        failed = [e for e in c.events(0) if e.kind == "segment_failed"]
        assert failed and all(e.node == BAD for e in failed), kind
        assert c.state.jobs[job_id].node_failures[BAD] >= 3, kind  # blocklisted for the job


def test_a_result_claiming_another_node_is_credited_to_the_node_it_was_sent_to() -> None:
    executor = Misbehaving("another node")
    c = Coordinator(executor, MemorySink(), clock=lambda: 1000.0, max_segment_steps=2)
    job_id = c.submit(small_job())
    run_until_final(c, job_id)
    runs = [r for s in c.state.jobs[job_id].shards.values() for r in s.runs]
    sent = {n for n, _ in executor.tasks}
    assert {r.node for r in runs} <= sent and any(r.node == BAD for r in runs)
    assert all(r.seconds <= 1.0 for r in runs)  # bounded by the head's clock (frozen here: 0 s elapsed)


class FailingSink(MemorySink):
    def write(self, job_id: str, job: JobSpec, sample: Sample, rgb: bytes, runs) -> Path:
        if job.prompts[0] == "doomed":
            raise OSError("No space left on device")
        return super().write(job_id, job, sample, rgb, runs)


def test_a_failing_output_write_fails_its_job_only() -> None:
    c = Coordinator(ScriptedExecutor(simulated_nodes()), FailingSink(), clock=lambda: 1000.0)
    doomed = c.submit(small_job(prompts=["doomed"]))
    fine = c.submit(small_job(prompts=["fine"]))
    run_until_final(c, doomed)
    run_until_final(c, fine)
    assert c.get_job(doomed).status == JobStatus.FAILED and "No space left" in c.get_job(doomed).error
    assert c.get_job(fine).status == JobStatus.DONE


def test_a_failing_journal_costs_durability_not_the_farm(tmp_path: Path, monkeypatch) -> None:
    store = Store(tmp_path)

    def broken(*args, **kwargs):
        raise OSError("disk I/O error")

    c = Coordinator(ScriptedExecutor(simulated_nodes()), MemorySink(), clock=lambda: 1000.0, store=store)
    monkeypatch.setattr(store, "append", broken)
    job_id = c.submit(small_job())
    run_until_final(c, job_id)
    assert c.get_job(job_id).status == JobStatus.DONE


def test_a_loop_that_cannot_go_on_reports_not_serving(monkeypatch) -> None:
    import farm.runtime.coordinator as coordinator_module

    monkeypatch.setattr(coordinator_module, "MAX_BROKEN_TICKS", 2)
    health: list[bool] = []
    c, executor, _ = farm()
    c.on_health = health.append

    def dead(timeout: float):
        raise ConnectionError("the Ray cluster is gone")

    executor.wait = dead  # type: ignore[method-assign]
    monkeypatch.setattr(c._stop, "wait", lambda timeout=None: False)  # no back-off pause in the test
    c.start()
    assert wait_until(lambda: health == [False], timeout=10)
    assert not c.serving
    c.stop()


def test_the_health_service_says_not_serving_when_the_loop_stops(monkeypatch) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    import farm.runtime.coordinator as coordinator_module
    from farm.api.control_server import SERVICE_NAME, health_service, serve_control, set_serving

    monkeypatch.setattr(coordinator_module, "MAX_BROKEN_TICKS", 1)
    c, executor, _ = farm()
    checker = health_service()
    c.on_health = lambda serving: set_serving(checker, serving)
    server, port = serve_control(c, "127.0.0.1:0", checker=checker)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = health_pb2_grpc.HealthStub(channel)

    def status() -> int:
        return stub.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=5).status

    try:
        assert status() == health_pb2.HealthCheckResponse.SERVING

        def dead(timeout: float):
            raise ConnectionError("the Ray cluster is gone")

        executor.wait = dead  # type: ignore[method-assign]
        c.start()
        assert wait_until(lambda: status() == health_pb2.HealthCheckResponse.NOT_SERVING, timeout=10)
    finally:
        c.stop()
        channel.close()
        server.stop(0)
