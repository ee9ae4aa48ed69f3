"""The durable queue: a coordinator that stops at any moment (crash) and starts again from its store
loses no job, renders nothing finished twice, and finishes every job."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import pytest
from test_coordinator import MemorySink, ScriptedExecutor, small_job

from farm.contracts.domain import JobStatus
from farm.core.state import FarmState
from farm.runtime.coordinator import Coordinator
from farm.runtime.store import SCHEMA_VERSION, Store
from node.simulated import simulated_nodes


def coordinator(store: Store, sink: MemorySink, executor: ScriptedExecutor | None = None) -> Coordinator:
    return Coordinator(executor or ScriptedExecutor(simulated_nodes()), sink, store=store, max_segment_steps=2)


def test_the_state_folder_and_database_are_private(tmp_path: Path) -> None:
    """The queue holds every user's prompts: 0700 folder (its WAL files inside too), 0600 database."""
    root = tmp_path / "state"
    root.mkdir(mode=0o755)
    Store(root).close()
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert stat.S_IMODE((root / "farm.db").stat().st_mode) == 0o600


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
    assert second.events(0)[: len(events)] == events  # the history; then the nodes joining the new head
    second.resume_job(b)
    for _ in range(50):
        second.tick(0)
    assert second.get_job(b).status == second.get_job(c).status == JobStatus.DONE


def test_learned_speeds_and_fair_share_usage_survive_a_restart(tmp_path: Path) -> None:
    sink = MemorySink()
    first = coordinator(Store(tmp_path), sink)
    job_id = first.submit(small_job(prompts=["a"], owner="ana"))
    for _ in range(30):
        first.tick(0)
    assert first.get_job(job_id).status == JobStatus.DONE
    assert first.state.speeds.factors and first.state.usage["ana"] > 0
    second = coordinator(Store(tmp_path), sink)
    assert second.state.speeds == first.state.speeds and second.state.usage == first.state.usage
    assert second.state.jobs == first.state.jobs


def test_a_snapshot_and_the_journal_after_it_give_the_live_state(tmp_path: Path, monkeypatch) -> None:
    from farm.runtime import store as store_module

    monkeypatch.setattr(store_module, "SNAPSHOT_EVERY", 7)
    sink = MemorySink()
    store = Store(tmp_path)
    c = coordinator(store, sink)
    for p in ("a", "b", "c"):
        c.submit(small_job(prompts=[p]))
    for _ in range(6):
        c.tick(0)
    assert store._db.execute("SELECT COUNT(*) FROM snapshots").fetchone()[0] == 1
    restored = Store(tmp_path).restore(FarmState(settings=c.state.settings))
    assert restored == c.state


def test_checkpoints_are_deleted_when_no_shard_needs_them_and_at_start_up(tmp_path: Path) -> None:
    sink = MemorySink()
    store = Store(tmp_path)
    c = coordinator(store, sink)
    job_id = c.submit(small_job(prompts=["a"], steps=8))
    seen: set[str] = set()
    while c.get_job(job_id).status != JobStatus.DONE:
        c.tick(0)
        on_disk = store.blobs.names()
        assert on_disk <= c.state.blobs() | seen  # nothing lingers beyond what a shard still needs
        seen = c.state.blobs()
    assert store.blobs.names() == set()
    store.blobs.put(b"left behind by a crash")
    coordinator(Store(tmp_path), sink).tick(0)
    assert store.blobs.names() == set()
