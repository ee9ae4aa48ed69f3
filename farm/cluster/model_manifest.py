"""A model (or adapter) as the farm syncs it: a set of files, each with its SHA-256 and size.

The head builds a `Manifest` from a model's folder (a diffusers folder, a Hugging Face snapshot
whose files are symlinks into its blobs, or an adapter's folder); a PC fetches each file by its hash
and lays the files out as the Hugging Face cache does (`repo_folder`), so the same model has the same
bytes and the same revision on every PC. Hashes are kept per (file, size, mtime): a model is read
once per head process, not once per request.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from farm.contracts.errors import InvalidInput

CHUNK = 1 << 20
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
@dataclass(frozen=True)
class FileEntry:
    path: str  # relative to the model's folder, "/"-separated
    sha256: str
    size: int


@dataclass(frozen=True)
class Manifest:
    model: str
    revision: str  # 40 hex: the hash of the file list; the snapshot folder's name on a PC
    files: tuple[FileEntry, ...]

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    def entry(self, sha256: str) -> FileEntry | None:
        return next((f for f in self.files if f.sha256 == sha256), None)


def revision_of(files: tuple[FileEntry, ...]) -> str:
    lines = "".join(f"{f.sha256} {f.size} {f.path}\n" for f in sorted(files, key=lambda f: f.path))
    return hashlib.sha256(lines.encode()).hexdigest()[:40]


def checked(model: str, revision: str, files: tuple[FileEntry, ...]) -> Manifest:
    """A manifest from the wire, refused unless every path stays inside the model's folder, every hash is
    64 hex, every size is non-negative and the revision is that of the file list."""
    for f in files:
        parts = f.path.split("/")
        if not f.path or f.path.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in f.path:
            raise InvalidInput("manifest.files.path", f"must be a relative path inside the model, got {f.path!r}")
        if not SHA256_HEX.match(f.sha256):
            raise InvalidInput("manifest.files.sha256", f"must be 64 lowercase hex characters, got {f.sha256[:70]!r}")
        if f.size < 0:
            raise InvalidInput("manifest.files.size", f"must be 0 or more bytes, got {f.size}")
    if revision != revision_of(files):
        raise InvalidInput("manifest.revision", "does not match its file list")
    return Manifest(model, revision, files)


def file_sha256(path: Path, already: int = 0, digest: hashlib._Hash | None = None) -> str:
    """The SHA-256 of a file (read from byte `already` into `digest` when given: a resumed download)."""
    h = digest or hashlib.sha256()
    with path.open("rb") as f:
        f.seek(already)
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def model_files(folder: Path) -> list[tuple[str, Path]]:
    """(relative path, real file) of every file under a model folder, symlinks followed (a Hugging Face
    snapshot links into its blobs), hidden files and folders left out; a single file (a LoRA adapter's
    `.safetensors`) is a set of one."""
    if folder.is_file():
        return [(folder.name, folder)]
    out = []
    for root, dirs, names in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if name.startswith("."):
                continue
            path = Path(root) / name
            if path.is_file():
                out.append((path.relative_to(folder).as_posix(), path))
    return out


def folder_size(folder: Path) -> int:
    """Bytes of a model's files (from their sizes only: no file is read)."""
    return sum(p.stat().st_size for _, p in model_files(folder))


class HashCache:
    """SHA-256 of files by (real path, size, mtime): each file is read once while it is unchanged."""

    def __init__(self) -> None:
        self._known: dict[tuple[str, int, int], str] = {}
        self._lock = threading.Lock()

    def sha256(self, path: Path) -> str:
        st = path.stat()
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
        with self._lock:
            known = self._known.get(key)
        if known is None:
            known = file_sha256(path)
            with self._lock:
                self._known[key] = known
        return known


def build_manifest(model: str, folder: Path, cache: HashCache) -> Manifest:
    files = tuple(FileEntry(rel, cache.sha256(path), path.stat().st_size) for rel, path in model_files(folder))
    return Manifest(model, revision_of(files), files)


def repo_folder(model: str) -> str:
    """The Hugging Face cache's folder name for a model: `models--org--name` for a Hub id; a local folder
    named by path becomes `models--local--<folder name>-<8 hex of the path>`."""
    parts = model.split("/")
    if len(parts) == 2 and all(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", p) for p in parts):
        return f"models--{parts[0]}--{parts[1]}"
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(model).name).strip("-.") or "model"
    return f"models--local--{slug}-{hashlib.sha256(model.encode()).hexdigest()[:8]}"
