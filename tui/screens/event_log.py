"""Every event the farm reported, newest at the bottom."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.widgets import Footer, Header, RichLog

from tui.format import event_line
from tui.screens.base import LiveScreen
from tui.store import MAX_EVENTS, Changes


class EventLogScreen(LiveScreen):
    def compose(self) -> ComposeResult:
        yield Header()
        yield RichLog(id="events", max_lines=MAX_EVENTS, wrap=False)
        yield Footer()

    def sync(self, changes: Changes | None) -> None:
        log = self.query_one("#events", RichLog)
        if changes is None:
            log.clear()
        for event in self.farm.store.events if changes is None else changes.events:
            log.write(event_line(event))
