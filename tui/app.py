"""The dashboard app and its factory, `make_app`, used by `farm tui`, `farm demo --tui` and tests.

The app owns a `FarmStore`. Worker threads read the service (the event stream, long-polled, and a
periodic full read for telemetry and reconciliation) and post `Refreshed` messages; the UI thread
applies them to the store and lets the screens in view redraw what changed. Every control runs in
a worker too, so a slow or unreachable head never freezes the keyboard.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from textual import work
from textual.app import App
from textual.binding import Binding
from textual.message import Message
from textual.worker import Worker, get_current_worker

from farm.contracts.control import FarmService
from farm.contracts.domain import JobSpec
from farm.contracts.text import safe_text
from tui import live
from tui.dialogs import ConfirmScreen, SubmitScreen
from tui.screens.base import LiveScreen
from tui.screens.dashboard import DashboardScreen
from tui.screens.event_log import EventLogScreen
from tui.screens.jobs import JobsScreen
from tui.store import FarmStore, Update


class Refreshed(Message):
    """Posted from a worker thread (post_message is thread-safe; call_from_thread could block a
    worker forever on an app that is shutting down)."""

    def __init__(self, update: Update) -> None:
        super().__init__()
        self.update = update


class Trouble(Message):
    """The service failed; the header says so until the next `Refreshed`."""

    def __init__(self, error: str) -> None:
        super().__init__()
        self.error = error


def one_line(error: BaseException) -> str:
    return safe_text((str(error).splitlines() or [type(error).__name__])[0])


class FarmApp(App[None]):
    CSS_PATH = Path(__file__).with_name("farm.tcss")
    TITLE = "farm"
    MODES = {"dashboard": DashboardScreen, "jobs": JobsScreen, "events": EventLogScreen}
    DEFAULT_MODE = "dashboard"
    ENABLE_COMMAND_PALETTE = False  # the footer lists every command; the palette would add nothing
    BINDINGS = [
        Binding("1", "switch_mode('dashboard')", "Dashboard"),
        Binding("2", "switch_mode('jobs')", "Jobs"),
        Binding("3", "switch_mode('events')", "Events"),
        Binding("s", "submit", "Submit"),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(self, service: FarmService, *, head: str, refresh_interval: float, poll_timeout: float,
                 clock: Callable[[], float], live: bool) -> None:
        super().__init__()
        self.service = service
        self.head = head
        self.refresh_interval = refresh_interval
        self.poll_timeout = poll_timeout
        self.clock = clock
        self.live = live
        self.store = FarmStore()
        self._after = 0  # the last event seq read; only the (exclusive) events worker touches it
        self._reader: Worker[None]  # the latest full read, started on mount

    def on_mount(self) -> None:
        self.sub_title = self.head
        self._reader = self.read_all()
        self.read_events(forever=self.live)
        if self.live:
            self.set_interval(self.refresh_interval, self._tick)

    def _tick(self) -> None:
        """Start a full read unless the last one still waits on the service: a hung head would
        otherwise hold one more thread every tick, until controls found none left."""
        if self._reader.is_finished:
            self._reader = self.read_all()

    @work(thread=True, group="read")
    def read_all(self) -> None:
        """Nodes and jobs in full: telemetry changes without events, and a missed event heals here."""
        try:
            update = live.read_all(self.service, self.clock)
        except Exception as e:  # an unreachable head is shown, not raised: the next tick retries
            self.post_message(Trouble(one_line(e)))
            return
        self.post_message(Refreshed(update))

    @work(thread=True, exclusive=True, group="events")
    def read_events(self, forever: bool) -> None:
        """Read the events after the last one seen: once without waiting, or (`forever`) long-poll
        until the app closes, outliving a head that restarts or a network blip."""
        worker = get_current_worker()
        while not worker.is_cancelled:
            try:
                events = self.service.events(self._after, self.poll_timeout if forever else 0.0)
                if events and not worker.is_cancelled:
                    self._after = events[-1].seq
                    self.post_message(Refreshed(live.read_after_events(self.service, events)))
            except Exception as e:
                self.post_message(Trouble(one_line(e)))
                if forever:
                    time.sleep(self.poll_timeout)
            if not forever:
                return

    def act(self, done: str, call: Callable[[], object], *, job: str = "", node: bool = False,
            reorder: bool = False) -> None:
        """Run a control in a worker; say `done` (or the service's one-line refusal), then re-read
        what it changed: the job, the nodes, or everything when the queue order moved."""
        self._act(done, call, job, node, reorder)

    @work(thread=True, group="control")
    def _act(self, done: str, call: Callable[[], object], job: str, node: bool, reorder: bool) -> None:
        try:
            result = call()  # None, or what the service made (submit: the job id)
        except Exception as e:  # InvalidInput for an illegal change; any other failure is one line too
            self.notify(one_line(e), severity="error", markup=False)
            return
        self.notify(safe_text(done if result is None else f"{done}: {result}"), markup=False)
        try:
            if reorder:
                update = live.read_all(self.service, self.clock)
            else:
                nodes = tuple(self.service.list_nodes()) if node else None
                update = Update(nodes=nodes, changed_jobs=live.read_jobs(self.service, [job] if job else []))
        except Exception as e:
            self.post_message(Trouble(one_line(e)))
            return
        self.post_message(Refreshed(update))

    def confirm(self, question: str, then: Callable[[], object]) -> None:
        """Ask `question`; run `then` only on yes."""

        def answered(yes: bool | None) -> None:
            if yes:
                then()

        self.push_screen(ConfirmScreen(question), answered)

    def action_submit(self) -> None:
        def submit(spec: JobSpec | None) -> None:
            if spec is not None:
                self.act(f"submitted {len(spec.prompts) * len(spec.seeds)} samples of {spec.model}",
                         lambda: self.service.submit(spec), reorder=True)

        self.push_screen(SubmitScreen(), submit)

    def on_refreshed(self, message: Refreshed) -> None:
        self.sub_title = self.head  # the service answered: any trouble shown is over
        changes = self.store.apply(message.update)
        for screen in self.screen_stack:
            if isinstance(screen, LiveScreen) and screen.is_mounted:
                screen.sync(changes)

    def on_trouble(self, message: Trouble) -> None:
        self.sub_title = safe_text(f"{self.head} · {message.error}")


def make_app(service: FarmService, *, head: str = "embedded farm", refresh_interval: float = 2.0,
             poll_timeout: float = 1.0, clock: Callable[[], float] = time.monotonic, live: bool = True) -> FarmApp:
    """The dashboard for `service`.

    `live=False` reads nodes, jobs and events once at start, then only when told to (`read_all`,
    `read_events(forever=False)`): tests and screenshots drive it step by step. `clock` times the
    throughput samples.
    """
    return FarmApp(service, head=head, refresh_interval=refresh_interval, poll_timeout=poll_timeout,
                   clock=clock, live=live)
