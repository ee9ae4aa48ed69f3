"""An output's bytes from where the head wrote it: what `FarmService.read_output` returns.

Only the paths a job lists as its outputs can be read, chosen by their index, so a caller can never
name a file of its own choosing.
"""

from __future__ import annotations

from pathlib import Path

from farm.contracts.control import JobView
from farm.contracts.errors import FarmError, InvalidInput


def read_output(view: JobView, index: int) -> bytes:
    """Output `index` of `view` (raises InvalidInput naming `index` outside the outputs written so far)."""
    if not 0 <= index < len(view.outputs):
        written = f"0 to {len(view.outputs) - 1}" if view.outputs else "none yet"
        raise InvalidInput("index", f"job {view.id} has {len(view.outputs)} outputs ({written}), got {index}")
    try:
        return Path(view.outputs[index]).read_bytes()
    except OSError as e:
        raise FarmError(f"output {index} of job {view.id} cannot be read on the head: {e}") from None
