"""The jobs table, kept in step with the store cell by cell.

Rebuilding a 10,000-row table on every event would stall the UI, so `sync` touches only rows whose
`JobRow` object changed (the store keeps unchanged rows as the same object), and re-sorts only when
the queue order changed, keeping the cursor on the job it was on. A first load of thousands of rows
goes in chunks, so the keyboard answers while it fills.
"""

from __future__ import annotations

from collections.abc import Iterable

from rich.text import Text
from textual.widgets import DataTable

from tui.format import bar, plain, status_text
from tui.store import FarmStore, JobRow

COLUMNS = (("id", "job"), ("owner", "owner"), ("model", "model"), ("priority", "pri"), ("progress", "progress"),
           ("samples", "samples"), ("eta", "ETA"), ("status", "state"))
BAR = 12
CHUNK = 1000  # rows added per turn of the event loop (a row costs tens of microseconds)


def cells(job_id: str, row: JobRow) -> tuple[object, ...]:
    """The table cells of a row, in COLUMNS order (after the id, one per `JobRow` field)."""
    progress = bar(row.progress / 1000, BAR).append(f" {row.progress // 10:>3}%")
    return (plain(job_id), plain(row.owner), plain(row.model), Text(str(row.priority), justify="right"), progress,
            Text(row.samples, justify="right"), Text(row.eta, justify="right"), status_text(row.status))


class JobsTable(DataTable[object]):
    def __init__(self, **kwargs: object) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)  # type: ignore[arg-type]
        self._shown: dict[str, JobRow] = {}
        self._order: list[str] = []

    def on_mount(self) -> None:
        for key, label in COLUMNS:
            self.add_column(label, key=key)

    @property
    def selected_id(self) -> str | None:
        if not self._shown or not self.is_valid_row_index(self.cursor_row):
            return None
        return self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value

    def sync(self, store: FarmStore, changed: Iterable[str] | None = None) -> None:
        """Show `store`: `changed` names the jobs that may differ from what is shown (None: any)."""
        for job_id in [j for j in (self._shown if changed is None else changed) if j not in store.rows]:
            if job_id in self._shown:
                self.remove_row(job_id)
                del self._shown[job_id]
        self._order = [j for j in self._order if j in self._shown]
        added = 0
        for job_id in store.rows if changed is None else changed:
            row = store.rows.get(job_id)
            old = self._shown.get(job_id)
            if row is None or old is row:
                continue
            if old is None:
                if added == CHUNK:  # the rest after the UI had a turn: keys stay live during a big load
                    self.call_later(self.sync, store)
                    return
                self.add_row(*cells(job_id, row), key=job_id)
                self._order.append(job_id)
                added += 1
            else:
                fresh = cells(job_id, row)
                for (key, _), before, after, cell in zip(COLUMNS[1:], old, row, fresh[1:], strict=True):
                    if before != after:
                        self.update_cell(job_id, key, cell)
            self._shown[job_id] = row
        if self._order != store.order:
            self._sort(store.order)

    def _sort(self, order: list[str]) -> None:
        selected = self.selected_id
        place = {job_id: i for i, job_id in enumerate(order)}
        self.sort("id", key=lambda cell: place[cell.plain])
        self._order = list(order)
        if selected is not None:
            self.move_cursor(row=place[selected])
