"""Text pieces every screen shares (bars, durations, sizes).

They live outside the widgets so they can be tested without a terminal, and so a job's bar looks the
same in the jobs table, on a node card and in the job detail.
"""

from __future__ import annotations

import time

from rich.text import Text

from farm.contracts.control import Event
from farm.contracts.text import safe_text

FULL, HALF = "━", "╸"


def bar(fraction: float, width: int, style: str = "green", empty: str = "grey30") -> Text:
    """A bar `width` cells wide with half-cell resolution, the way rich draws progress."""
    halves = round(min(max(fraction, 0.0), 1.0) * width * 2)
    full, half = divmod(halves, 2)
    text = Text(FULL * full, style=style)
    if half:
        text.append(HALF, style=style)
    text.append(FULL * (width - full - half), style=empty)
    return text


def duration(seconds: float | None) -> str:
    """A duration at the precision an operator plans with: `42s`, `12m05s`, `3h04m`, `2d03h`."""
    if seconds is None:
        return "–"
    s = max(int(round(seconds)), 0)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def percent(fraction: float) -> str:
    return f"{fraction * 100:.0f}%"


JOB_STYLES = {"running": "green", "queued": "", "paused": "yellow", "done": "dim green", "failed": "bold red",
              "cancelled": "dim"}


def plain(value: object, style: str = "") -> Text:
    """Free text (a prompt, an owner, a node's name, an error) as a cell: a `Text` is never parsed as
    markup, and `safe_text` shows its control characters as escapes."""
    return Text(safe_text(value), style=style)


def status_text(status: str) -> Text:
    return Text(status, style=JOB_STYLES.get(status, ""))


def event_line(event: Event) -> Text:
    """One event as a log line: local time, kind, then whatever it is about."""
    clock = time.strftime("%H:%M:%S", time.localtime(event.time))
    style = "red" if event.kind.endswith(("failed", "lost")) else ""
    line = Text(f"{clock} ", style="dim")
    line.append(f"{event.kind:<16}", style=style or "bold")
    for part, part_style in ((event.job_id, "cyan"), (event.node, "magenta"), (event.message, "")):
        if part:
            line.append(" ")
            line.append(safe_text(part), style=part_style)
    return line
