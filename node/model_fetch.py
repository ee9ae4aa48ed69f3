"""A PC's side of model sync: fetch a model only the head holds, verified, into a Hugging Face-style cache.

It runs in the node's segment worker (the Ray actor on this PC) just before the worker loads a model
for a segment: that is the one process that knows which model a segment needs when it needs it, it
runs with this PC's FARM_HOME, and the segment's lease stays alive through the transfer (`heartbeat`).
The agent is a separate process; it still governs the transfer, through the head: when the owner's
rules pause the PC, the head interrupts the segment (`should_stop`), the transfer stops between two
chunks and waits, and the agent stops the Ray worker; the partial file stays and the next transfer
resumes from its last byte.

Layout under FARM_HOME/models/hub (the Hugging Face cache's own):
    models--org--name/blobs/<sha256>               verified files, named by their hash
    models--org--name/blobs/<sha256>.incomplete    a transfer in progress (resumed from its size)
    models--org--name/snapshots/<revision>/<path>  relative symlinks into blobs (the folder a pipeline loads)
    models--org--name/refs/main                    the revision, written last: a snapshot it names is whole
    models--org--name/manifests/<revision>.json    the model's name and files, to verify and to report
Every file is written under a temporary name, checked against its SHA-256, then renamed into place; a
blob whose hash no longer matches (a corrupt disk, a partial copy) is deleted and fetched again.

LoRA adapters a job names (`ensure_loras`) are fetched the same way (`lora:NAME`, by the hash the job
pinned) but land where the engine finds adapters, `<FARM_HOME>/loras/NAME.safetensors` (written as
`.NAME.<sha256>.incomplete` first), so a synced adapter and a user's own are one kind of file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from farm.api.auth import bearer
from farm.api.control_client import open_channel, split_address
from farm.api.models_client import HeadModels
from farm.cluster.model_manifest import (
    FileEntry,
    HashCache,
    Manifest,
    checked,
    file_sha256,
    repo_folder,
)
from farm.contracts.domain import Lora
from farm.contracts.errors import FarmError, InvalidInput, Unreachable
from farm.core.model_lists import adapter_key
from farm.jobs.loras import LORA_SUFFIX, find_lora, lora_folders

log = logging.getLogger(__name__)
HEAD_PORT = 7070
RESERVE_BYTES = 256 * 2**20  # left free on the disk after a transfer
HEARTBEAT_S = 5.0
STOP_GRACE_S = 60.0  # how long a stopped transfer waits for the agent to stop the worker before it gives up
ATTEMPTS = 3  # a file whose hash does not match is fetched again this many times in all


class ModelStore:
    """The PC's synced models in the Hugging Face cache layout, verified by hash."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._hashes = HashCache()

    def repo(self, model: str) -> Path:
        return self.root / repo_folder(model)

    def blob(self, model: str, sha256: str) -> Path:
        return self.repo(model) / "blobs" / sha256

    def verified(self, model: str, f: FileEntry) -> bool:
        """The blob is whole and has its hash; a blob that does not is deleted (fetched again)."""
        path = self.blob(model, f.sha256)
        if not path.is_file():
            return False
        if path.stat().st_size == f.size and self._hashes.sha256(path) == f.sha256:
            return True
        log.warning("%s: %s is corrupt or partial: fetching it again", model, f.path)
        path.unlink(missing_ok=True)
        return False

    def partial(self, model: str, f: FileEntry) -> int:
        path = self.blob(model, f.sha256).with_name(f"{f.sha256}.incomplete")
        return path.stat().st_size if path.is_file() else 0

    def snapshot(self, manifest: Manifest) -> Path:
        """Link the verified blobs into `snapshots/<revision>/`, then point refs/main at it."""
        repo = self.repo(manifest.model)
        snap = repo / "snapshots" / manifest.revision
        for f in manifest.files:
            link = snap / f.path
            link.parent.mkdir(parents=True, exist_ok=True)
            target = os.path.relpath(repo / "blobs" / f.sha256, link.parent)
            tmp = link.with_name(f".{link.name}.tmp")
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(target)
            os.replace(tmp, link)
        _write_atomic(repo / "manifests" / f"{manifest.revision}.json",
                      json.dumps({"model": manifest.model, "revision": manifest.revision,
                                  "files": [asdict(f) for f in manifest.files]}).encode())
        _write_atomic(repo / "refs" / "main", manifest.revision.encode())
        return snap

    def local(self, model: str) -> Manifest | None:
        """The manifest of the snapshot refs/main names, if the PC has one."""
        repo = self.repo(model)
        try:
            revision = (repo / "refs" / "main").read_text().strip()
            raw = json.loads((repo / "manifests" / f"{revision}.json").read_text())
        except (OSError, ValueError):
            return None
        return checked(raw["model"], raw["revision"], tuple(FileEntry(**f) for f in raw["files"]))

    def stored(self) -> list[str]:
        """The synced models whose snapshot is whole (its blobs are checked when a segment uses them)."""
        out = []
        for repo in sorted(self.root.glob("models--*")) if self.root.is_dir() else []:
            try:
                revision = (repo / "refs" / "main").read_text().strip()
                out.append(json.loads((repo / "manifests" / f"{revision}.json").read_text())["model"])
            except (OSError, ValueError, KeyError):
                continue
        return out


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class ModelFetcher:
    """`ensure(model)`: the folder to load a model only the head holds from, fetched first if needed."""

    def __init__(self, head: HeadModels, store: ModelStore, is_local: Callable[[str], bool]) -> None:
        self.head = head
        self.store = store
        self.is_local = is_local  # built in, or already on this PC (its own folder or Hugging Face cache)
        self.link_bytes_per_s = 0.0
        self._lock = threading.Lock()

    def ensure(self, model: str, heartbeat: Callable[[], None] | None = None,
               should_stop: Callable[[], bool] | None = None) -> Path | None:
        """None for a model this PC has by itself; else the verified snapshot folder of the head's copy."""
        if self.is_local(model):
            return None
        with self._lock:  # one transfer per PC at a time
            try:
                manifest = self.head.manifest(model)
            except Unreachable:  # the head is away: a whole, verified copy here still renders
                manifest = self.store.local(model)
                if manifest is None or not all(self.store.verified(model, f) for f in manifest.files):
                    raise
                log.warning("%s: the head is unreachable; using this PC's verified copy", model)
                return self.store.repo(model) / "snapshots" / manifest.revision
            missing = [f for f in manifest.files if not self.store.verified(model, f)]
            if missing:
                self._check_disk(model, sum(f.size - self.store.partial(model, f) for f in missing), self.store.root)
                for f in missing:
                    self._fetch_file(model, f, heartbeat or (lambda: None), should_stop or (lambda: False))
            folder = self.store.snapshot(manifest)
            self.head.report(self.store.stored(), self.link_bytes_per_s)
            return folder

    def ensure_loras(self, loras: tuple[Lora, ...], home: Path | None = None,
                     heartbeat: Callable[[], None] | None = None,
                     should_stop: Callable[[], bool] | None = None) -> None:
        """Every adapter of a job in `<home>/loras/` (default FARM_HOME) with the hash the job pinned:
        one this PC lacks, or has with other bytes (a corrupt copy, another version), is fetched from
        the head and replaces it."""
        folder = lora_folders(home)[0]
        for i, lora in enumerate(loras):
            if not lora.sha256:
                continue  # not pinned: nothing to fetch by (the engine reports a missing file)
            try:
                found = find_lora(lora.name, home)
            except InvalidInput:  # a file by that name that is not even a safetensors file
                found = None
            if found is not None and found.sha256 == lora.sha256:
                continue
            with self._lock:  # one transfer per PC at a time
                manifest = self.head.manifest(adapter_key(lora.name))
                entry = manifest.entry(lora.sha256)
                if entry is None:
                    raise FarmError(f"loras[{i}].name: the head's adapter {lora.name} is no longer the file the "
                                    f"job pinned (SHA-256 {lora.sha256[:12]}...)")
                log.info("fetching adapter %s (%d bytes) into %s", lora.name, entry.size, folder)
                part = folder / f".{lora.name}.{lora.sha256}.incomplete"
                self._check_disk(adapter_key(lora.name), entry.size - _size(part), folder)
                self._download(adapter_key(lora.name), entry, part, folder / f"{lora.name}{LORA_SUFFIX}",
                               heartbeat or (lambda: None), should_stop or (lambda: False))

    def _check_disk(self, model: str, need: int, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(root).free
        if need + RESERVE_BYTES > free:
            raise FarmError(f"disk: model {model} needs {need / 2**30:.2f} GiB (+{RESERVE_BYTES / 2**30:.2f} GiB "
                            f"kept free) under {root}, {free / 2**30:.2f} GiB are free: free some space "
                            "or point FARM_HOME at a larger disk")

    def _fetch_file(self, model: str, f: FileEntry, heartbeat: Callable[[], None],
                    should_stop: Callable[[], bool]) -> None:
        blob = self.store.blob(model, f.sha256)
        self._download(model, f, blob.with_name(f"{f.sha256}.incomplete"), blob, heartbeat, should_stop)

    def _download(self, model: str, f: FileEntry, part: Path, dest: Path, heartbeat: Callable[[], None],
                  should_stop: Callable[[], bool]) -> None:
        """Fetch `f` into `part` (resumed from its size), check its SHA-256, rename it to `dest`."""
        part.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(ATTEMPTS):
            have = part.stat().st_size if part.exists() else 0
            if have > f.size:
                part.unlink()
                have = 0
            digest = hashlib.sha256()
            if have:
                file_sha256(part, 0, digest)  # what is there already, so the whole file is hashed once
                log.info("%s: resuming %s at byte %d of %d", model, f.path, have, f.size)
            began, got, beat = time.monotonic(), 0, time.monotonic()
            with part.open("ab") as out:
                for data in self.head.fetch(model, f.sha256, have):
                    out.write(data)
                    digest.update(data)
                    got += len(data)
                    if time.monotonic() - beat >= HEARTBEAT_S:
                        heartbeat()
                        beat = time.monotonic()
                    if should_stop():
                        out.flush()
                        _hold(should_stop, f"model {model}: transfer of {f.path} stopped at byte {have + got}")
                out.flush()
                os.fsync(out.fileno())
            seconds = time.monotonic() - began
            if got >= 2**20 and seconds > 0:
                self.link_bytes_per_s = got / seconds
            if part.stat().st_size == f.size and digest.hexdigest() == f.sha256:
                os.replace(part, dest)
                return
            log.warning("%s: %s does not match its SHA-256: fetching it again", model, f.path)
            part.unlink(missing_ok=True)
        raise FarmError(f"model {model}: {f.path} did not match its SHA-256 after {ATTEMPTS} transfers")


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else 0


def _hold(should_stop: Callable[[], bool], what: str) -> None:
    """A stopped transfer (its node paused or its job gone) waits: a pause stops the whole worker within
    seconds (the partial file stays for the next transfer); if nothing stops it, it gives up."""
    deadline = time.monotonic() + STOP_GRACE_S
    while should_stop() and time.monotonic() < deadline:
        time.sleep(0.5)
    if should_stop():
        raise FarmError(what)


def from_environment() -> ModelFetcher | None:
    """The fetcher of a joined PC, from what `farm join` saved under FARM_HOME/node (None on the head, or
    on a PC that never joined: those hold every model they run)."""
    from farm.jobs.catalog import MODELS  # what every PC builds itself
    from farm.jobs.sources import locate
    from farm.pipelines.loader import farm_home

    home = farm_home()
    saved = home / "node"
    try:
        join = json.loads((saved / "join.json").read_text())
        ca = (saved / "ca.pem").read_bytes()
    except (OSError, ValueError):
        return None
    host, port = split_address(join["head"], HEAD_PORT)
    head = HeadModels(open_channel(host, port, ca), bearer(join["node_token"]), where=f"the head at {host}:{port}")
    return ModelFetcher(head, ModelStore(home / "models" / "hub"),
                        lambda model: model in MODELS or locate(model) is not None)
