"""Blobs: checkpoints and rendered results, named by the SHA-256 of their bytes.

The farm's state names blobs, never holds their bytes (a video checkpoint is megabytes; a snapshot
of the state must stay small). `DiskBlobs` keeps them as files beside the queue database, so a head
restart resumes from them; `MemoryBlobs` serves a farm without `--state`. Blobs no state names are
deleted (`collect`).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Set
from pathlib import Path


def digest_of(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


class MemoryBlobs:
    def __init__(self) -> None:
        self._blobs: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def put(self, payload: bytes) -> str:
        digest = digest_of(payload)
        with self._lock:
            self._blobs[digest] = payload
        return digest

    def get(self, digest: str) -> bytes:
        with self._lock:
            return self._blobs[digest]

    def collect(self, live: Set[str]) -> int:
        """Forget every blob not in `live`; returns how many."""
        with self._lock:
            gone = [d for d in self._blobs if d not in live]
            for d in gone:
                del self._blobs[d]
        return len(gone)

    def names(self) -> set[str]:
        with self._lock:
            return set(self._blobs)


class DiskBlobs:
    """One file per blob under `folder` (0600, written under a temporary name, then renamed)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def put(self, payload: bytes) -> str:
        digest = digest_of(payload)
        path = self.folder / digest
        if not path.exists():
            tmp = self.folder / f"{digest}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(payload)
            os.replace(tmp, path)
        return digest

    def get(self, digest: str) -> bytes:
        return (self.folder / digest).read_bytes()

    def collect(self, live: Set[str]) -> int:
        gone = 0
        for path in self.folder.iterdir():
            if path.name not in live:
                path.unlink(missing_ok=True)
                gone += 1
        return gone

    def names(self) -> set[str]:
        return {p.name for p in self.folder.iterdir() if not p.name.endswith(".tmp")}
