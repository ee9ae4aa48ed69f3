"""The durable queue: the farm's event journal and state snapshots in SQLite (WAL), blobs as files.

Every event the runner applies is appended to the journal before the next one is handled; every
`SNAPSHOT_EVERY` events the whole state is written as a snapshot and the journal before it dropped.
A restarted head reads the latest snapshot and replays the journal after it: the state it gets,
learned speeds and fair-share usage included, is the state the old head had (tests check replay
against the live state). Segments that were running are then given back by the runner, so a restart
costs at most the segments in flight. The activity log (what the dashboard's event list shows) is
kept beside it for history.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from farm.contracts.control import Event
from farm.core.apply import apply
from farm.core.events import Event as FarmEvent
from farm.core.state import FarmState
from farm.runtime import journal_codec
from farm.runtime.blobs import DiskBlobs

SCHEMA_VERSION = 2
SNAPSHOT_EVERY = 500
# Each migration takes the schema from version i to i + 1 (index i). Version 1 kept jobs and shards
# as rows; its queue is not carried over (an unreleased format), the tables are dropped.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY, time REAL NOT NULL, kind TEXT NOT NULL, job_id TEXT NOT NULL,
        node TEXT NOT NULL, message TEXT NOT NULL
    );
    """,
    """
    DROP TABLE IF EXISTS outputs; DROP TABLE IF EXISTS shards; DROP TABLE IF EXISTS jobs;
    CREATE TABLE journal (seq INTEGER PRIMARY KEY, event TEXT NOT NULL);
    CREATE TABLE snapshots (seq INTEGER PRIMARY KEY, state TEXT NOT NULL);
    """,
)


class Store:
    """One SQLite database (`farm.db`) and a folder of blobs under `root` (0700)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        root.chmod(0o700)
        self.blobs = DiskBlobs(root / "checkpoints")
        self._db = sqlite3.connect(root / "farm.db", check_same_thread=False, isolation_level=None)
        (root / "farm.db").chmod(0o600)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._lock = threading.RLock()
        self.migrate()
        self._seq = self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM journal").fetchone()[0]
        self._since_snapshot = 0

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

    # ----- journal --------------------------------------------------------------------------

    def append(self, event: FarmEvent, state: FarmState) -> None:
        """Record `event` (already applied; `state` is the state after it), with a snapshot now and then."""
        with self._tx() as db:
            self._seq += 1
            db.execute("INSERT INTO journal (seq, event) VALUES (?, ?)", (self._seq, journal_codec.encode(event)))
        self._since_snapshot += 1
        if self._since_snapshot >= SNAPSHOT_EVERY:
            self.snapshot(state)

    def snapshot(self, state: FarmState) -> None:
        """Write `state` as of the latest event; the journal and snapshots before it are dropped."""
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO snapshots (seq, state) VALUES (?, ?)",
                       (self._seq, journal_codec.encode(state)))
            db.execute("DELETE FROM snapshots WHERE seq < ?", (self._seq,))
            db.execute("DELETE FROM journal WHERE seq <= ?", (self._seq,))
        self._since_snapshot = 0

    def events_since_snapshot(self) -> list[FarmEvent]:
        with self._lock:
            base = self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM snapshots").fetchone()[0]
            rows = self._db.execute("SELECT event FROM journal WHERE seq > ? ORDER BY seq", (base,)).fetchall()
        return [journal_codec.decode(r[0]) for r in rows]

    def restore(self, initial: FarmState) -> FarmState:
        """The latest snapshot (or `initial`) with the journal after it replayed."""
        with self._lock:
            row = self._db.execute("SELECT state FROM snapshots ORDER BY seq DESC LIMIT 1").fetchone()
        state = journal_codec.decode(row[0]) if row else initial
        for event in self.events_since_snapshot():
            state = apply(state, event)
        return state

    # ----- activity log ---------------------------------------------------------------------

    def add_activity(self, event: Event) -> None:
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO events VALUES (?, ?, ?, ?, ?, ?)",
                       (event.seq, event.time, event.kind, event.job_id, event.node, event.message))

    def load_activity(self, limit: int) -> list[Event]:
        with self._lock:
            rows = self._db.execute("SELECT seq, time, kind, job_id, node, message FROM events ORDER BY seq DESC "
                                    "LIMIT ?", (limit,)).fetchall()
        return [Event(*r) for r in reversed(rows)]
