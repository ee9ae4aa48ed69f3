"""One job in full: its settings and progress, a segment bar per sample, live previews of the
samples being rendered, and the job's events; `s` saves its outputs on this PC."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from rich.table import Table
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.widgets import Footer, Header, RichLog, Static
from textual.worker import get_current_worker

from farm.api.downloads import save_outputs
from farm.contracts.control import FarmService, JobView
from tui.controls import JOB_BINDINGS, JobControls, farm_app
from tui.format import bar, duration, event_line, plain, status_text
from tui.screens.base import LiveScreen
from tui.segment_bars import sample_bars
from tui.store import Changes
from tui.thumbnail import half_blocks

MAX_PREVIEWS = 4
THUMB_COLUMNS = 16
BAR = 40
SAVE_TO = Path("renders")  # as `farm submit` and `farm fetch`: renders/<job id>/ under the current folder


def job_facts(job: JobView) -> Table:
    spec = job.spec
    table = Table.grid(padding=(0, 2))
    table.add_column(style="dim")
    table.add_column()
    table.add_column(style="dim")
    table.add_column()
    table.add_row("State", status_text(str(job.status)), "Owner", plain(spec.owner))
    table.add_row("Model", plain(spec.model), "Priority", str(spec.priority))
    table.add_row("Size", f"{spec.width}×{spec.height}" + (f"×{spec.frames}f" if spec.frames > 1 else ""),
                  "Sampler", plain(f"{spec.sampler}, {spec.steps} steps, guidance {spec.guidance:g}"))
    progress = bar(job.progress, 24).append(f" {job.samples_done}/{job.samples_total} samples")
    table.add_row("Progress", progress, "ETA", duration(job.eta_s))
    shares = ", ".join(f"{s.node} {s.steps}" for s in job.shares)
    table.add_row("Sample-steps by node", plain(shares or "–"), "Queue place", str(job.position or "–"))
    if job.error:
        table.add_row("Error", plain(job.error, style="red"), "", "")
    return table


def rendering_samples(job: JobView) -> list[int]:
    """Samples part-way through their steps: the ones a preview says something new about."""
    return sorted(s for shard in job.shards if 0 < shard.step < job.spec.steps for s in shard.samples)[:MAX_PREVIEWS]


def save(service: FarmService, job: JobView) -> str:
    paths = save_outputs(service, job, SAVE_TO)
    return f"{len(paths)} files in {SAVE_TO / job.id}"


class JobDetailScreen(JobControls, LiveScreen):
    BINDINGS = [*JOB_BINDINGS, Binding("s", "save_outputs", "Save outputs"),
                Binding("escape", "app.pop_screen", "Back")]

    class Previews(Message):
        """Thumbnails read in a worker, as (sample index, half-block picture)."""

        def __init__(self, pictures: list[tuple[int, Text]]) -> None:
            super().__init__()
            self.pictures = pictures

    def __init__(self, job_id: str) -> None:
        super().__init__()
        self.job_id = job_id

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="job-facts", classes="panel")
        with VerticalScroll(id="job-samples", classes="panel"):
            yield Static(id="sample-bars")
        with Horizontal(id="previews"):
            for _ in range(MAX_PREVIEWS):
                yield Static(classes="thumb")
        yield RichLog(id="job-log", max_lines=1000, wrap=False)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#job-facts").border_title = plain(self.job_id)
        self.query_one("#job-samples").border_title = "Samples"
        self.query_one("#job-log").border_title = "Events"
        for thumb in self.query(".thumb"):
            thumb.display = False

    def selected_job(self) -> JobView | None:
        return self.farm.store.jobs.get(self.job_id)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "save_outputs":  # dimmed until an output is written
            job = self.selected_job()
            return True if job is not None and job.outputs else None
        return super().check_action(action, parameters)

    def action_save_outputs(self) -> None:
        """Read the outputs through the service (from a remote head too) in a worker, so the screen stays live."""
        if job := self.selected_job():
            app = farm_app(self)
            app.act(f"saved the outputs of {job.id}", partial(save, app.service, job), job=job.id)

    def sync(self, changes: Changes | None) -> None:
        job = self.selected_job()
        if job is not None and (changes is None or self.job_id in changes.jobs):
            self.query_one("#job-facts", Static).update(job_facts(job))
            self.query_one("#sample-bars", Static).update(sample_bars(job, BAR))
            self.read_previews(job)
            self.refresh_bindings()
        log = self.query_one("#job-log", RichLog)
        if changes is None:
            log.clear()
        for event in self.farm.store.events if changes is None else changes.events:
            if event.job_id == self.job_id:
                log.write(event_line(event))

    @work(thread=True, exclusive=True, group="previews")
    def read_previews(self, job: JobView) -> None:
        pictures = []
        try:
            for sample in rendering_samples(job):
                png = self.farm.service.preview(job.id, sample)
                if png:
                    pictures.append((sample, half_blocks(png, THUMB_COLUMNS)))
        except Exception:  # a preview is a nicety: a failed read must not take the dashboard down
            return
        if not get_current_worker().is_cancelled:
            self.post_message(self.Previews(pictures))

    def on_job_detail_screen_previews(self, message: Previews) -> None:
        for n, thumb in enumerate(self.query(".thumb").results(Static)):
            thumb.display = n < len(message.pictures)
            if thumb.display:
                sample, picture = message.pictures[n]
                thumb.border_title = f"#{sample}"
                thumb.update(picture)
