"""The durable queue: SQLite (WAL) for jobs, shards, outputs and the event log; checkpoints as files
named by the hash of their bytes.

The coordinator writes through it at every change that must survive a crash of the head: a job
queued, a status change, a segment finished (its new checkpoint and, after the last segment, the
outputs, in one transaction). On start it reads back every unfinished job: in-flight segments are
simply gone, and their shards resume from the last checkpoint the store holds, so a head restart
costs at most the segments that were running.

Writes are idempotent: recording the same segment result twice, or an output twice, changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from farm.contracts.control import Event
from farm.contracts.domain import JobSpec, JobStatus, Shard, StepRun

SCHEMA_VERSION = 1
# Each migration takes the schema from version i to i + 1 (index i).
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY, seq INTEGER NOT NULL, spec TEXT NOT NULL, status TEXT NOT NULL,
        submitted_at REAL NOT NULL, started_at REAL, finished_at REAL, error TEXT NOT NULL DEFAULT '',
        failures INTEGER NOT NULL DEFAULT 0, node_failures TEXT NOT NULL DEFAULT '{}'
    );
    CREATE TABLE shards (
        id TEXT PRIMARY KEY, job_id TEXT NOT NULL REFERENCES jobs(id), spec TEXT NOT NULL,
        next_index INTEGER NOT NULL DEFAULT 0, step INTEGER NOT NULL DEFAULT 0, checkpoint TEXT,
        runs TEXT NOT NULL DEFAULT '[]'
    );
    CREATE INDEX shards_by_job ON shards(job_id);
    CREATE TABLE outputs (
        job_id TEXT NOT NULL REFERENCES jobs(id), sample INTEGER NOT NULL, path TEXT NOT NULL,
        PRIMARY KEY (job_id, sample)
    );
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY, time REAL NOT NULL, kind TEXT NOT NULL, job_id TEXT NOT NULL,
        node TEXT NOT NULL, message TEXT NOT NULL
    );
    """,
)


@dataclass(frozen=True)
class StoredShard:
    shard: Shard
    next_index: int
    step: int
    checkpoint: bytes | None
    runs: tuple[StepRun, ...]


@dataclass(frozen=True)
class StoredJob:
    id: str
    seq: int
    spec: JobSpec
    status: JobStatus
    submitted_at: float
    started_at: float | None
    finished_at: float | None
    error: str
    failures: int
    node_failures: dict[str, int]
    shards: tuple[StoredShard, ...]
    outputs: tuple[tuple[int, str], ...]


def spec_to_json(spec: JobSpec) -> str:
    return json.dumps(asdict(spec), sort_keys=True)


def spec_from_json(text: str) -> JobSpec:
    d = json.loads(text)
    return JobSpec(**{**d, "prompts": tuple(d["prompts"]), "seeds": tuple(d["seeds"])})


def _shard_json(s: Shard) -> str:
    return json.dumps({"id": s.id, "job_id": s.job_id, "sample_indices": s.sample_indices, "home": s.home,
                       "bounds": s.bounds, "need_gib": s.need_gib, "memory_mode": s.memory_mode, "needs": s.needs})


def _shard_from_json(text: str) -> Shard:
    d = json.loads(text)
    return Shard(id=d["id"], job_id=d["job_id"], sample_indices=tuple(d["sample_indices"]), home=d["home"],
                 bounds=tuple(tuple(b) for b in d["bounds"]), need_gib=d["need_gib"], memory_mode=d["memory_mode"],
                 needs=tuple((m, g) for m, g in d["needs"]))


class Store:
    """One SQLite database and a folder of checkpoint files under `root`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.checkpoints = root / "checkpoints"
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(root / "farm.db", check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._lock = threading.RLock()
        self.migrate()

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def version(self) -> int:
        return self._db.execute("PRAGMA user_version").fetchone()[0]

    def migrate(self) -> None:
        """Bring the schema to SCHEMA_VERSION; refuses a database from a newer farm."""
        current = self.version()
        if current > SCHEMA_VERSION:
            raise RuntimeError(f"{self.root / 'farm.db'} has schema {current}; this farm knows up to {SCHEMA_VERSION}")
        for version in range(current, SCHEMA_VERSION):
            with self._lock:  # one script, one transaction: a crash leaves the old schema whole
                self._db.executescript(f"BEGIN; {MIGRATIONS[version]} PRAGMA user_version={version + 1}; COMMIT;")

    # ----- checkpoints ----------------------------------------------------------------------

    def put_checkpoint(self, payload: bytes) -> str:
        """Write a checkpoint file once (temp name, then rename); its name is its SHA-256."""
        digest = hashlib.sha256(payload).hexdigest()
        path = self.checkpoints / digest
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(payload)
            os.replace(tmp, path)
        return digest

    def get_checkpoint(self, digest: str) -> bytes:
        return (self.checkpoints / digest).read_bytes()

    def collect_garbage(self) -> int:
        """Delete checkpoint files no shard points at any more; returns how many."""
        with self._lock:
            live = {r[0] for r in self._db.execute("SELECT checkpoint FROM shards WHERE checkpoint IS NOT NULL")}
        gone = 0
        for path in self.checkpoints.iterdir():
            if path.name not in live:
                path.unlink(missing_ok=True)
                gone += 1
        return gone

    # ----- writes ---------------------------------------------------------------------------

    def add_job(self, job_id: str, seq: int, spec: JobSpec, submitted_at: float, shards: list[Shard]) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO jobs (id, seq, spec, status, submitted_at) VALUES (?, ?, ?, ?, ?)",
                       (job_id, seq, spec_to_json(spec), str(JobStatus.QUEUED), submitted_at))
            db.executemany("INSERT INTO shards (id, job_id, spec) VALUES (?, ?, ?)",
                           [(s.id, job_id, _shard_json(s)) for s in shards])

    def replace_shards(self, job_id: str, old: list[str], new: list[Shard]) -> None:
        """Unstarted shards planned again: drop `old`, add `new`, in one transaction."""
        with self._tx() as db:
            db.executemany("DELETE FROM shards WHERE id=? AND next_index=0 AND checkpoint IS NULL",
                           [(shard_id,) for shard_id in old])
            db.executemany("INSERT INTO shards (id, job_id, spec) VALUES (?, ?, ?)",
                           [(s.id, job_id, _shard_json(s)) for s in new])

    def update_job(self, job_id: str, *, spec: JobSpec, seq: int, status: JobStatus, started_at: float | None,
                   finished_at: float | None, error: str, failures: int, node_failures: dict[str, int]) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET spec=?, seq=?, status=?, started_at=?, finished_at=?, error=?, failures=?, "
                "node_failures=? WHERE id=?",
                (spec_to_json(spec), seq, str(status), started_at, finished_at, error, failures,
                 json.dumps(node_failures), job_id),
            )

    def advance_shard(self, shard_id: str, next_index: int, step: int, checkpoint: bytes | None,
                      runs: list[StepRun], outputs: list[tuple[str, int, str]] = ()) -> None:
        """A segment's result, atomically: the shard's new position and checkpoint, and (after its
        last segment) the outputs it wrote. Recording the same result again changes nothing."""
        digest = self.put_checkpoint(checkpoint) if checkpoint is not None else None
        with self._tx() as db:
            db.execute("UPDATE shards SET next_index=?, step=?, checkpoint=?, runs=? WHERE id=?",
                       (next_index, step, digest, json.dumps([asdict(r) for r in runs]), shard_id))
            db.executemany("INSERT OR IGNORE INTO outputs (job_id, sample, path) VALUES (?, ?, ?)", outputs)

    def add_event(self, event: Event) -> None:
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO events VALUES (?, ?, ?, ?, ?, ?)",
                       (event.seq, event.time, event.kind, event.job_id, event.node, event.message))

    # ----- reads ----------------------------------------------------------------------------

    def load_jobs(self) -> list[StoredJob]:
        with self._lock:
            jobs = self._db.execute("SELECT id, seq, spec, status, submitted_at, started_at, finished_at, error, "
                                    "failures, node_failures FROM jobs ORDER BY seq").fetchall()
            shards = self._db.execute("SELECT job_id, spec, next_index, step, checkpoint, runs FROM shards "
                                      "ORDER BY rowid").fetchall()
            outputs = self._db.execute("SELECT job_id, sample, path FROM outputs ORDER BY job_id, sample").fetchall()
        by_job: dict[str, list[StoredShard]] = {}
        for job_id, spec, next_index, step, digest, runs in shards:
            by_job.setdefault(job_id, []).append(StoredShard(
                _shard_from_json(spec), next_index, step, self.get_checkpoint(digest) if digest else None,
                tuple(StepRun(**r) for r in json.loads(runs))))
        outs: dict[str, list[tuple[int, str]]] = {}
        for job_id, sample, path in outputs:
            outs.setdefault(job_id, []).append((sample, path))
        return [
            StoredJob(job_id, seq, spec_from_json(spec), JobStatus(status), submitted_at, started_at, finished_at,
                      error, failures, json.loads(node_failures), tuple(by_job.get(job_id, ())),
                      tuple(outs.get(job_id, ())))
            for job_id, seq, spec, status, submitted_at, started_at, finished_at, error, failures, node_failures in jobs
        ]

    def load_events(self, limit: int) -> list[Event]:
        with self._lock:
            rows = self._db.execute("SELECT seq, time, kind, job_id, node, message FROM events ORDER BY seq DESC "
                                    "LIMIT ?", (limit,)).fetchall()
        return [Event(*r) for r in reversed(rows)]
