"""The dashboard: every node as a card, the queue in one line, and throughput over time."""

from __future__ import annotations

from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Vertical
from textual.widgets import Footer, Header, Label, Sparkline, Static

from farm.contracts.domain import JobStatus
from tui.format import duration
from tui.node_card import NodeCard
from tui.screens.base import LiveScreen
from tui.screens.node_detail import NodeDetailScreen
from tui.store import Changes, QueueSummary

CARD_WIDTH = 38  # a card's lines fit without ellipsis from this width


def summary_text(summary: QueueSummary) -> Text:
    text = Text("Queue  ", style="bold")
    for status in JobStatus:
        text.append(f"{status} ", style="dim").append(f"{summary.counts.get(status, 0)}   ")
    text.append("samples left ", style="dim").append(f"{summary.samples_left}   ")
    text.append("ETA ", style="dim").append(duration(summary.eta_s))
    return text


class DashboardScreen(LiveScreen):
    BINDINGS = [
        Binding("right", "app.focus_next", "Next node", show=False),
        Binding("left", "app.focus_previous", "Previous node", show=False),
    ]

    def compose(self) -> ComposeResult:
        yield Header()
        yield Grid(id="nodes")
        yield Static(id="queue")
        with Vertical(id="throughput-box"):
            yield Label(id="throughput-label")
            yield Sparkline([], id="throughput")
        yield Footer()

    def sync(self, changes: Changes | None) -> None:
        store = self.farm.store
        if changes is None or changes.nodes:
            self._sync_cards()
        if changes is None or changes.jobs:
            self.query_one("#queue", Static).update(summary_text(store.summary()))
        if changes is None or changes.throughput:
            points = list(store.throughput)
            self.query_one("#throughput", Sparkline).data = points
            label = "Throughput  –"
            if points:
                label = f"Throughput  {points[-1]:.1f} sample-steps/s, peak {max(points):.1f}"
            self.query_one("#throughput-label", Label).update(label)

    def on_resize(self, event: events.Resize) -> None:
        """As many card columns as fit at CARD_WIDTH; CSS cannot ask for the terminal's width."""
        self.query_one("#nodes", Grid).styles.grid_size_columns = max(1, event.size.width // CARD_WIDTH)

    def _sync_cards(self) -> None:
        grid = self.query_one("#nodes", Grid)
        cards = {card.view.info.name: card for card in grid.query(NodeCard)}
        nodes = self.farm.store.nodes
        if list(cards) != list(nodes):  # a node joined or left: lay the cards out again, in name order
            grid.remove_children()
            fresh = [NodeCard(view) for view in nodes.values()]
            grid.mount_all(fresh)
            if fresh and not isinstance(self.focused, NodeCard):
                fresh[0].focus()  # so the node keys work, and show in the footer, straight away
            return
        for name, view in nodes.items():
            if cards[name].view != view:
                cards[name].show(view)

    def on_node_card_open(self, message: NodeCard.Open) -> None:
        self.app.push_screen(NodeDetailScreen(message.node))
