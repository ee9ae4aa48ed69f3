"""One node on the dashboard: its card shows what the node does now, and its state is a CSS class
(`-idle`, `-busy`, ...) so the stylesheet, not the code, decides how each state looks."""

from __future__ import annotations

from rich.console import Group
from rich.text import Text
from textual.binding import Binding
from textual.message import Message
from textual.reactive import reactive
from textual.widgets import Static

from farm.contracts.control import NodeStatus, NodeView
from tui.controls import NODE_BINDINGS, NodeControls
from tui.format import bar, percent, plain

BAR = 14


def vram_budget(view: NodeView) -> float:
    """What the farm may use: the owner's cap when set, else the whole card."""
    cap = view.policy.vram_cap_gib
    return min(cap, view.info.vram_gib) if cap is not None else view.info.vram_gib


def card_body(view: NodeView) -> Group:
    budget = vram_budget(view)
    used = view.vram_used_gib / budget if budget else 0.0
    vram = Text("VRAM ").append_text(bar(used, BAR, "magenta")).append(f" {view.vram_used_gib:.1f}/{budget:g} GiB")
    telemetry = Text(f"util {percent(view.utilization):>4}  ")
    telemetry.append(f"{view.temperature_c:.0f}°C" if view.temperature_c is not None else "–°C")
    if view.power_w is not None:
        telemetry.append(f"  {view.power_w:.0f} W")
    if view.segment:
        what = plain(f"seg  {view.segment}")
        done = view.segment_step / view.segment_total if view.segment_total else 0.0
        progress = Text("     ").append_text(bar(done, BAR)).append(f" {view.segment_step}/{view.segment_total}")
    else:
        what = plain(view.pause_reason or "no segment", style="dim")
        progress = Text("")
    lines = [plain(f"{view.info.gpu} · {view.info.vram_gib:g} GiB", style="bold"), vram, telemetry, what, progress]
    for line in lines:
        line.no_wrap, line.overflow = True, "ellipsis"
    return Group(*lines)


class NodeCard(NodeControls, Static, can_focus=True):
    BINDINGS = [*NODE_BINDINGS, Binding("enter", "open", "Details")]

    status: reactive[NodeStatus] = reactive(NodeStatus.OFFLINE)

    def __init__(self, view: NodeView) -> None:
        super().__init__(classes="node-card")
        self.view = view

    def on_mount(self) -> None:
        self.show(self.view)

    def show(self, view: NodeView) -> None:
        self.view = view
        self.status = view.status
        self.border_title = plain(view.info.name)
        self.border_subtitle = str(view.status)
        self.update(card_body(view))
        self.refresh_bindings()

    def watch_status(self, old: NodeStatus, new: NodeStatus) -> None:
        self.remove_class(f"-{old}")
        self.add_class(f"-{new}")

    def selected_node(self) -> NodeView | None:
        return self.view

    def action_open(self) -> None:
        self.post_message(self.Open(self.view.info.name))

    class Open(Message):
        """Enter on a card: the dashboard opens that node's details."""

        def __init__(self, name: str) -> None:
            super().__init__()
            self.node = name
