"""LoRA adapters by name: `<name>.safetensors` files in an adapter folder, each pinned by its SHA-256.

A job names adapters (`loras = [{name = "...", weight = 0.8}]`); `make_job` checks each against the
files on the PC that accepts the job and pins the file's SHA-256 in the job, so every node that runs
a segment loads the same bytes (a node whose file differs refuses the segment) and the sync can
fetch it by hash. Folders, searched in order:

* `$FARM_HOME/loras/` (default `~/.cache/farm/loras/`): a user's adapters, and where a node keeps
  the ones synced to it;
* `farm/models/loras/` in the package: the bundled ones (`demo-shapes-outline`).

A file may say in its safetensors metadata which model family it was trained for (`farm.family`); a
job pairing it with a model of another family is refused. Adapters change the denoiser only: a file
with text-encoder weights is refused (transformers 5 loads adapters into its text encoders only with
peft 0.22 or later, which is not released yet). Only headers and bytes are read here (no torch): the
loading is `farm.pipelines.adapters`.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from farm.contracts.domain import Lora
from farm.contracts.errors import InvalidInput
from farm.jobs.sources import MAX_HEADER, farm_home

LORA_SUFFIX = ".safetensors"
BUNDLED = Path(__file__).resolve().parent.parent / "models" / "loras"
METADATA_BASE = "farm.base_model"
METADATA_FAMILY = "farm.family"
# A name is a file name without its suffix: no path separators, nothing hidden.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")
MIN_WEIGHT, MAX_WEIGHT = -4.0, 4.0
MAX_LORAS = 8
CHUNK = 1 << 20
TEXT_ENCODER_KEYS = ("text_encoder", "lora_te")  # diffusers' and kohya's names for text-encoder weights


@dataclass(frozen=True)
class LoraFile:
    """An adapter file found on this PC."""

    name: str
    path: Path
    sha256: str  # of the whole file: what jobs pin and the sync fetches by
    short_hash: str  # A1111's "Lora hashes" value: see `a1111_hash`
    family: str | None  # the model family its metadata names, if any
    base_model: str | None
    text_encoder: bool  # it has weights for a text encoder (diffusers' or kohya's key names)


def lora_folders(home: Path | None = None) -> tuple[Path, ...]:
    return ((home or farm_home()) / "loras", BUNDLED)


def _header(path: Path) -> tuple[int, dict[str, str], list[str]]:
    """(header length, `__metadata__`, tensor names) of a safetensors file; InvalidInput when it is
    not one."""
    try:
        with path.open("rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > MAX_HEADER:
                raise ValueError(f"a {length}-byte header")
            header = json.loads(f.read(length))
    except (OSError, ValueError, struct.error) as e:
        raise InvalidInput("loras", f"{path.name} is not a safetensors file ({e})") from None
    if not isinstance(header, dict):
        raise InvalidInput("loras", f"{path.name} is not a safetensors file (its header is not a table)")
    meta = header.pop("__metadata__", None)
    return length, meta if isinstance(meta, dict) else {}, list(header)


@lru_cache(maxsize=256)
def _hashes(path: Path, size: int, mtime_ns: int) -> tuple[str, str]:
    """(SHA-256 of the file, SHA-256 of its bytes after the header), read once per version of a file
    (the cache key holds its size and modification time)."""
    length, _, _ = _header(path)
    whole, body = hashlib.sha256(), hashlib.sha256()
    with path.open("rb") as f:
        head = f.read(8 + length)
        whole.update(head)
        for chunk in iter(lambda: f.read(CHUNK), b""):
            whole.update(chunk)
            body.update(chunk)
    return whole.hexdigest(), body.hexdigest()


def a1111_hash(body_sha256: str) -> str:
    """The short hash AUTOMATIC1111 writes in "Lora hashes": the first 12 hex digits of kohya's
    "addnet" hash, the SHA-256 of a safetensors file's bytes after its header (metadata edits leave
    it unchanged)."""
    return body_sha256[:12]


def find_lora(name: str, home: Path | None = None) -> LoraFile | None:
    """The adapter called `name` on this PC (the first folder that has it), or None."""
    if not NAME.fullmatch(name):
        return None
    for folder in lora_folders(home):
        path = folder / f"{name}{LORA_SUFFIX}"
        if path.is_file():
            stat = path.stat()
            sha, body = _hashes(path.resolve(), stat.st_size, stat.st_mtime_ns)
            _, meta, keys = _header(path)
            return LoraFile(name, path, sha, a1111_hash(body), meta.get(METADATA_FAMILY), meta.get(METADATA_BASE),
                            any(k.startswith(TEXT_ENCODER_KEYS) for k in keys))
    return None


def lora_metadata(path: Path) -> dict[str, object]:
    """An adapter file's safetensors metadata as A1111 reads it: values that hold JSON tables (kohya's
    `ss_tag_frequency`, ...) parsed, the rest as written."""
    _, meta, _ = _header(path)
    out: dict[str, object] = {}
    for key, value in meta.items():
        out[key] = value
        if isinstance(value, str) and value.startswith("{"):
            try:
                out[key] = json.loads(value)
            except ValueError:
                pass
    return out


def available_loras(home: Path | None = None) -> list[str]:
    """Every adapter name on this PC, sorted."""
    names = {p.name[: -len(LORA_SUFFIX)] for folder in lora_folders(home) if folder.is_dir()
             for p in folder.glob(f"*{LORA_SUFFIX}")}
    return sorted(n for n in names if NAME.fullmatch(n))


def parse_lora_flag(text: str) -> dict[str, object]:
    """`NAME:WEIGHT` (or `NAME`, weight 1) as the job file writes it: {"name": ..., "weight": ...}.
    The weight is checked with the job (`make_job`); only its form is checked here."""
    name, _, weight = text.rpartition(":") if ":" in text else (text, "", "1")
    try:
        value = float(weight)
    except ValueError:
        raise InvalidInput("--lora", f"must be NAME:WEIGHT with WEIGHT a number from {MIN_WEIGHT:g} to "
                                     f"{MAX_WEIGHT:g}, got {text!r}") from None
    return {"name": name, "weight": value}


def check_lora_form(value: object) -> tuple[tuple[str, float], ...]:
    """A job's `loras` checked for form only, as a client that sends the job to a head checks them: the
    head alone knows its adapter files (`check_loras` runs there). Errors name the entry."""
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)) or len(value) > MAX_LORAS:
        raise InvalidInput("loras", f"must be a list of 0 to {MAX_LORAS} tables {{name, weight}}, got {value!r:.80}")
    out: list[tuple[str, float]] = []
    for i, entry in enumerate(value):
        field = f"loras[{i}]"
        if not isinstance(entry, dict) or set(entry) - {"name", "weight"} or "name" not in entry:
            raise InvalidInput(field, f"must be a table {{name = \"...\", weight = 1.0}}, got {entry!r:.80}")
        name, weight = entry["name"], entry.get("weight", 1.0)
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise InvalidInput(f"{field}.name", "must be an adapter's file name without .safetensors (1 to 100 "
                                                f"letters, digits, '.', '_', '+' or '-'), got {name!r:.80}")
        if (isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight)
                or not MIN_WEIGHT <= weight <= MAX_WEIGHT):
            raise InvalidInput(f"{field}.weight", f"must be a number from {MIN_WEIGHT:g} to {MAX_WEIGHT:g}, "
                                                  f"got {weight!r:.40}")
        if any(known == name for known, _ in out):
            raise InvalidInput(f"{field}.name", f"{name} is named twice; name each adapter once")
        out.append((name, float(weight)))
    return tuple(out)


def check_loras(value: object, model: str, family: str, home: Path | None = None) -> tuple[Lora, ...]:
    """A job's `loras` (a list of {name, weight} tables) checked against the adapters on this PC, each
    pinned to its file's hash. Errors name the entry: `loras[1].weight`."""
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)) or len(value) > MAX_LORAS:
        raise InvalidInput("loras", f"must be a list of 0 to {MAX_LORAS} tables {{name, weight}}, got {value!r:.80}")
    out: list[Lora] = []
    for i, entry in enumerate(value):
        field = f"loras[{i}]"
        if not isinstance(entry, dict) or set(entry) - {"name", "weight"} or "name" not in entry:
            raise InvalidInput(field, f"must be a table {{name = \"...\", weight = 1.0}}, got {entry!r:.80}")
        name, weight = entry["name"], entry.get("weight", 1.0)
        try:
            found = find_lora(name, home) if isinstance(name, str) else None
        except InvalidInput as e:  # a file by that name that is not a safetensors file
            raise InvalidInput(f"{field}.name", str(e).partition(": ")[2]) from None
        if found is None:
            known = ", ".join(available_loras(home)) or "none"
            # "known": the PC that checks the job (`farm render`'s own, or the head for `farm submit`)
            raise InvalidInput(f"{field}.name", f"unknown adapter {name!r:.80}; known adapters: {known}")
        if found.family is not None and found.family != family:
            raise InvalidInput(f"{field}.name", f"{name} is for {found.base_model or found.family} models "
                                                f"({found.family}), not {model} ({family})")
        if found.text_encoder:
            raise InvalidInput(f"{field}.name", f"{name} has text-encoder weights; the farm applies adapters to "
                                                "the UNet or transformer only (a file without them is accepted)")
        if (isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight)
                or not MIN_WEIGHT <= weight <= MAX_WEIGHT):
            raise InvalidInput(f"{field}.weight", f"must be a number from {MIN_WEIGHT:g} to {MAX_WEIGHT:g}, "
                                                  f"got {weight!r:.40}")
        if any(lora.name == name for lora in out):
            raise InvalidInput(f"{field}.name", f"{name} is named twice; name each adapter once")
        out.append(Lora(name, float(weight), found.sha256, found.short_hash))
    return tuple(out)
