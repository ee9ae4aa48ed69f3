"""The jobs table, with the job controls on the highlighted row."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.widgets import DataTable, Footer, Header

from farm.contracts.control import JobView
from tui.controls import JOB_BINDINGS, JobControls
from tui.jobs_table import JobsTable
from tui.screens.base import LiveScreen
from tui.screens.job_detail import JobDetailScreen
from tui.store import Changes


class JobsScreen(JobControls, LiveScreen):
    BINDINGS = [*JOB_BINDINGS]

    def compose(self) -> ComposeResult:
        yield Header()
        yield JobsTable(id="jobs")
        yield Footer()

    def sync(self, changes: Changes | None) -> None:
        self.query_one(JobsTable).sync(self.farm.store, None if changes is None else changes.jobs)
        self.refresh_bindings()  # the selected job's state may have changed what its keys can do

    def selected_job(self) -> JobView | None:
        job_id = self.query_one(JobsTable).selected_id
        return self.farm.store.jobs.get(job_id) if job_id else None

    def on_data_table_row_highlighted(self) -> None:
        self.refresh_bindings()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.row_key.value is not None:
            self.app.push_screen(JobDetailScreen(event.row_key.value))
