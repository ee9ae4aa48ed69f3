"""A job's outputs saved on the PC that asked for them (`farm submit`, `farm fetch`).

The head's paths mean nothing on another PC, so each output is read through `FarmService.read_output`
(over `FarmControl` it arrives in chunks, checked against its SHA-256) and written to
`<out>/<job id>/<file name>` under a temporary name, then renamed: an interrupted fetch never leaves
a half file under the real name.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from farm.contracts.control import FarmService, JobView
from farm.contracts.errors import FarmError


def _plain_name(name: str, what: str) -> str:
    """The last part of a head's path (POSIX or Windows), refused if it could leave the folder."""
    base = re.split(r"[/\\]", name)[-1]
    if base in ("", ".", "..") or "\0" in base:
        raise FarmError(f"the head sent {what} {name!r}, which is not a file name: refusing to write it")
    return base


def save_outputs(service: FarmService, view: JobView, out: Path) -> list[Path]:
    """Write every output `view` lists into `out/<job id>/`; returns the paths written."""
    folder = out / _plain_name(view.id, "the job id")
    folder.mkdir(parents=True, exist_ok=True)
    saved = []
    for index, remote in enumerate(view.outputs):
        path = folder / _plain_name(remote, "the output path")
        data = service.read_output(view.id, index)
        part = path.with_name(f".{path.name}.part")
        part.write_bytes(data)
        os.replace(part, path)
        saved.append(path)
    return saved
