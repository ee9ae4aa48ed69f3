"""Helpers for driving the dashboard with Textual's Pilot: wait for the workers a test started,
with a bounded number of rounds instead of sleeps."""

from __future__ import annotations

import io
from collections.abc import Callable

from rich.console import Console
from textual.app import App
from textual.pilot import Pilot
from textual.worker import WorkerState

BUSY = (WorkerState.PENDING, WorkerState.RUNNING)


async def settle(pilot: Pilot, rounds: int = 500) -> None:
    """Until every worker but the event stream finished and its messages were handled."""
    for _ in range(rounds):
        await pilot.pause()
        if not [w for w in pilot.app.workers if w.group != "events" and w.state in BUSY]:
            await pilot.pause()
            return
    raise AssertionError(f"workers still running: {list(pilot.app.workers)}")


async def until(pilot: Pilot, condition: Callable[[], bool], rounds: int = 500) -> None:
    """Until `condition()` holds (something a live worker delivers), or fail after `rounds` pauses."""
    for _ in range(rounds):
        if condition():
            return
        await pilot.pause(0.01)
    raise AssertionError("condition never held")


def screen_text(app: App[object]) -> str:
    """What the terminal shows now, as plain text (what `save_screenshot` draws, without styles)."""
    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), force_terminal=True, record=True,
                      legacy_windows=False, safe_box=False)
    console.print(app.screen._compositor.render_update(full=True, screen_stack=app._background_screens))
    return console.export_text(styles=False)
