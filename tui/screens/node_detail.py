"""One node in full: hardware, telemetry, what it runs, its owner's rules and its events."""

from __future__ import annotations

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import Footer, Header, RichLog, Static

from farm.contracts.control import NodeView
from tui.controls import NODE_BINDINGS, NodeControls
from tui.format import event_line, plain
from tui.node_card import card_body
from tui.screens.base import LiveScreen
from tui.store import Changes


def rules_table(view: NodeView) -> Table:
    """The owner's rules, worded as what the farm will do."""
    policy = view.policy
    table = Table.grid(padding=(0, 2))
    table.add_column(style="dim")
    table.add_column()
    cap = f"{policy.vram_cap_gib:g} GiB of {view.info.vram_gib:g}" if policy.vram_cap_gib is not None else "none"
    table.add_row("VRAM cap", cap)
    table.add_row("Active hours", plain(policy.active_hours or "always"))
    table.add_row("Pause for programs", plain(", ".join(policy.pause_programs) or "none"))
    table.add_row("Pause when another GPU process runs", "yes" if policy.pause_on_other_gpu_process else "no")
    table.add_row("Models it takes", plain(", ".join(view.allow_models) or "every model")
                  + (plain(f" except {', '.join(view.deny_models)}") if view.deny_models else ""))
    return table


def facts_table(view: NodeView) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="dim")
    table.add_column()
    table.add_row("State", plain(str(view.status) + (f" ({view.pause_reason})" if view.pause_reason else "")))
    table.add_row("Speed", f"{view.info.speed:g}× reference" + (" (simulated)" if view.info.simulated else ""))
    table.add_row("Loaded models", plain(", ".join(view.loaded) or "none"))
    table.add_row("Synced to its disk", plain(", ".join(view.stored) or "none"))
    return table


class NodeDetailScreen(NodeControls, LiveScreen):
    BINDINGS = [*NODE_BINDINGS, Binding("escape", "app.pop_screen", "Back")]

    def __init__(self, name: str) -> None:
        super().__init__()
        self.node_name = name

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="node-now", classes="panel")
        yield Static(id="node-facts", classes="panel")
        yield Static(id="node-rules", classes="panel")
        yield RichLog(id="node-log", max_lines=1000, wrap=False)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#node-rules").border_title = "Owner's rules"
        self.query_one("#node-log").border_title = "Events"

    def selected_node(self) -> NodeView | None:
        return self.farm.store.nodes.get(self.node_name)

    def sync(self, changes: Changes | None) -> None:
        view = self.selected_node()
        if view is not None and (changes is None or changes.nodes):
            now = self.query_one("#node-now", Static)
            now.border_title = f"{view.info.name} · {view.status}"
            now.update(card_body(view))
            self.query_one("#node-facts", Static).update(facts_table(view))
            self.query_one("#node-rules", Static).update(rules_table(view))
            self.refresh_bindings()
        log = self.query_one("#node-log", RichLog)
        if changes is None:
            log.clear()
        events = self.farm.store.events if changes is None else changes.events
        for event in events:
            if event.node == self.node_name:
                log.write(event_line(event))
