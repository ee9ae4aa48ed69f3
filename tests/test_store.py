"""The durable queue: a coordinator that stops at any moment (crash) and starts again from its store
loses no job, renders nothing finished twice, and finishes every job."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from test_coordinator import MemorySink, ScriptedExecutor, small_job

from farm.contracts.domain import JobStatus, StepRun
from farm.runtime.coordinator import Coordinator
from farm.runtime.store import SCHEMA_VERSION, Store
from node.simulated import simulated_nodes


def coordinator(store: Store, sink: MemorySink, executor: ScriptedExecutor | None = None) -> Coordinator:
    return Coordinator(executor or ScriptedExecutor(simulated_nodes()), sink, store=store, max_segment_steps=2)


def test_fresh_store_is_migrated_to_the_current_schema_in_wal_mode(tmp_path: Path) -> None:
    store = Store(tmp_path)
    assert store.version() == SCHEMA_VERSION
    assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.close()
    Store(tmp_path).close()  # opening again migrates nothing and keeps the data


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    Store(tmp_path).close()
    db = sqlite3.connect(tmp_path / "farm.db")
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(RuntimeError, match="knows up to"):
        Store(tmp_path)


@pytest.mark.parametrize("crash_after_ticks", [0, 1, 2, 3, 5])
def test_restart_loses_nothing_and_renders_nothing_twice(tmp_path: Path, crash_after_ticks: int) -> None:
    sink = MemorySink()
    first = coordinator(Store(tmp_path), sink)
    jobs = [first.submit(small_job(prompts=[p])) for p in ("a", "b", "c")]
    for _ in range(crash_after_ticks):
        first.tick(0)
    first.executor.hold = True
    first.tick(0)  # segments in flight when the head dies: their results are never seen
    written_before = list(sink.written)
    del first

    second = coordinator(Store(tmp_path), sink)
    assert [j.id for j in second.list_jobs()] == jobs
    for _ in range(100):
        second.tick(0)
    assert all(second.get_job(j).status == JobStatus.DONE for j in jobs)
    keys = [(job_id, index) for job_id, index, _ in sink.written]
    assert len(keys) == len(set(keys)) == 9  # every sample exactly once, across both lives
    assert sink.written[: len(written_before)] == written_before
    for view in second.list_jobs():
        assert len(view.outputs) == 3


def test_every_control_survives_a_restart(tmp_path: Path) -> None:
    sink = MemorySink()
    first = coordinator(Store(tmp_path), sink)
    a, b, c = (first.submit(small_job(prompts=[p])) for p in ("a", "b", "c"))
    first.cancel_job(a)
    first.pause_job(b)
    first.set_priority(c, 7)
    events = first.events(0)
    second = coordinator(Store(tmp_path), sink)
    assert [second.get_job(j).status for j in (a, b, c)] == [JobStatus.CANCELLED, JobStatus.PAUSED, JobStatus.QUEUED]
    assert second.get_job(c).spec.priority == 7
    assert second.events(0) == events
    second.resume_job(b)
    for _ in range(50):
        second.tick(0)
    assert second.get_job(b).status == second.get_job(c).status == JobStatus.DONE


def test_recording_a_segment_twice_changes_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path)
    sink = MemorySink()
    c = coordinator(store, sink)
    job_id = c.submit(small_job(prompts=["a"], seeds=1))
    shard_id = next(iter(c.jobs[job_id].shards))
    runs = [StepRun("n", "g", 0, 2)]
    for _ in range(2):
        store.advance_shard(shard_id, 1, 2, b"checkpoint", runs, [(job_id, 0, "x.png")])
    (stored,) = store.load_jobs()
    assert stored.shards[0].next_index == 1 and stored.shards[0].checkpoint == b"checkpoint"
    assert stored.outputs == ((0, "x.png"),)
    assert len(list(store.checkpoints.iterdir())) == 1


def test_checkpoints_are_named_by_content_and_collected_when_unreferenced(tmp_path: Path) -> None:
    store = Store(tmp_path)
    digest = store.put_checkpoint(b"abc")
    assert store.get_checkpoint(digest) == b"abc" and len(digest) == 64
    assert store.collect_garbage() == 1
    assert not (store.checkpoints / digest).exists()
