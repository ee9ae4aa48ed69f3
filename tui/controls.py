"""The keyboard controls for jobs and nodes, shared by the screens that show a job or a node.

Textual merges BINDINGS only from widget classes, so the key lists are constants each screen adds
to its own BINDINGS, and the actions live in mixins that only need to know which job or node is
selected. A key is dimmed in the footer where its action makes no sense for the selection's state.
Every call to the service runs in a worker (`FarmApp.act`); destructive ones (cancel, drain) ask
first.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, cast

from textual.binding import Binding
from textual.dom import DOMNode

from farm.contracts.control import JobView, NodeStatus, NodeView
from farm.contracts.domain import JobStatus
from farm.core.transitions import LEGAL

if TYPE_CHECKING:
    from tui.app import FarmApp

MIN_PRIORITY, MAX_PRIORITY = -100, 100  # farm.jobs.jobspec's range

JOB_BINDINGS = [
    Binding("c", "cancel_job", "Cancel"),
    Binding("p", "pause_job", "Pause"),
    Binding("r", "resume_job", "Resume"),
    Binding("t", "retry_job", "Retry"),
    Binding("plus", "priority(1)", "Pri+", key_display="+"),
    Binding("minus", "priority(-1)", "Pri-", key_display="-"),
    Binding("shift+up", "move(-1)", "Up", key_display="⇧↑"),
    Binding("shift+down", "move(1)", "Down", key_display="⇧↓"),
]

# The job states in which each action makes sense; in others its key is shown dimmed and does nothing.
# Cancel and pause follow farm.core.transitions (the service's own rule); resume and retry are the two
# ways out of paused and failed.
WAITING = frozenset({JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.PAUSED})
JOB_ACTIONS: dict[str, frozenset[JobStatus]] = {
    "cancel_job": frozenset(s for s in JobStatus if JobStatus.CANCELLED in LEGAL[s]),
    "pause_job": frozenset(s for s in JobStatus if JobStatus.PAUSED in LEGAL[s]),
    "resume_job": frozenset({JobStatus.PAUSED}),
    "retry_job": frozenset({JobStatus.FAILED}),
    "priority": WAITING,
    "move": WAITING,
}

NODE_BINDINGS = [
    Binding("p", "pause_node", "Pause node"),
    Binding("d", "drain_node", "Drain"),
    Binding("r", "resume_node", "Resume node"),
]


NODE_ACTIONS: dict[str, frozenset[NodeStatus]] = {
    "pause_node": frozenset({NodeStatus.STARTING, NodeStatus.IDLE, NodeStatus.BUSY, NodeStatus.DRAINING}),
    "drain_node": frozenset({NodeStatus.STARTING, NodeStatus.IDLE, NodeStatus.BUSY}),
    "resume_node": frozenset({NodeStatus.PAUSED, NodeStatus.DRAINING}),
}


def farm_app(node: DOMNode) -> FarmApp:
    return cast("FarmApp", node.app)


class JobControls:
    """Actions on the selected job; the class using it says which one is selected."""

    def selected_job(self) -> JobView | None:
        raise NotImplementedError

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Textual asks before showing or running a binding: None dims it (see JOB_ACTIONS)."""
        if action not in JOB_ACTIONS:
            return True
        job = self.selected_job()
        return True if job is not None and job.status in JOB_ACTIONS[action] else None

    def action_cancel_job(self) -> None:
        if job := self.selected_job():
            app = farm_app(cast(DOMNode, self))
            app.confirm(
                f"Cancel job {job.id}? {job.samples_done} of {job.samples_total} samples are done.",
                partial(app.act, f"cancelled {job.id}", partial(app.service.cancel_job, job.id), job=job.id),
            )

    def action_pause_job(self) -> None:
        self._job_call("paused", "pause_job")

    def action_resume_job(self) -> None:
        self._job_call("resumed", "resume_job")

    def action_retry_job(self) -> None:
        self._job_call("retrying", "retry_job")

    def action_priority(self, delta: int) -> None:
        if job := self.selected_job():
            app = farm_app(cast(DOMNode, self))
            priority = min(max(job.spec.priority + delta, MIN_PRIORITY), MAX_PRIORITY)
            app.act(f"priority {priority} for {job.id}", partial(app.service.set_priority, job.id, priority),
                    job=job.id, reorder=True)

    def action_move(self, offset: int) -> None:
        if job := self.selected_job():
            app = farm_app(cast(DOMNode, self))
            where = "up" if offset < 0 else "down"
            app.act(f"moved {job.id} {where}", partial(app.service.move_job, job.id, offset), job=job.id, reorder=True)

    def _job_call(self, verb: str, method: str) -> None:
        if job := self.selected_job():
            app = farm_app(cast(DOMNode, self))
            app.act(f"{verb} {job.id}", partial(getattr(app.service, method), job.id), job=job.id)


class NodeControls:
    """Actions on the selected node."""

    def selected_node(self) -> NodeView | None:
        raise NotImplementedError

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action not in NODE_ACTIONS:
            return True
        node = self.selected_node()
        return True if node is not None and node.status in NODE_ACTIONS[action] else None

    def action_pause_node(self) -> None:
        if node := self.selected_node():
            app = farm_app(cast(DOMNode, self))
            app.act(f"paused {node.info.name}", partial(app.service.pause_node, node.info.name), node=True)

    def action_drain_node(self) -> None:
        if node := self.selected_node():
            app = farm_app(cast(DOMNode, self))
            name = node.info.name
            app.confirm(
                f"Drain {name}? It finishes its current segment, then takes no work.",
                partial(app.act, f"draining {name}", partial(app.service.drain_node, name), node=True),
            )

    def action_resume_node(self) -> None:
        if node := self.selected_node():
            app = farm_app(cast(DOMNode, self))
            app.act(f"resumed {node.info.name}", partial(app.service.resume_node, node.info.name), node=True)
