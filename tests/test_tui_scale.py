"""10,000 queued jobs: the table loads once, and after that an event costs a few cell updates, not a
rebuild. Counted in operations (service reads, table calls), not timed, so it holds on any machine."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest
from tui_fake import job, scene_farm
from tui_pilot import settle, until

from farm.contracts.domain import JobStatus
from tui.app import make_app
from tui.jobs_table import CHUNK, JobsTable
from tui.screens.job_detail import JobDetailScreen

pytestmark = pytest.mark.anyio
JOBS = 10_000


@pytest.fixture
def table_calls(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """How often the jobs table was changed, by method."""
    calls: Counter[str] = Counter()
    for name in ("add_row", "update_cell", "remove_row", "sort", "clear", "sync"):
        original = getattr(JobsTable, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):  # type: ignore[no-untyped-def]
            calls[_name] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(JobsTable, name, counted)
    return calls


def queue(n: int) -> list:  # type: ignore[type-arg]
    template = job("j0", eta_s=60)
    return [replace(template, id=f"j{i:05d}", position=i + 1, submitted_at=template.submitted_at + i) for i in range(n)]


async def test_ten_thousand_jobs_load_once_and_follow_events_cell_by_cell(table_calls: Counter[str]) -> None:
    fake = scene_farm(jobs=queue(JOBS), events=[])
    app = make_app(fake, live=False, clock=lambda: 0.0)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("2")
        await settle(pilot)
        table = app.screen.query_one(JobsTable)
        await until(pilot, lambda: table.row_count == JOBS)
        # Filled in chunks, the event loop turning in between; no re-sort, no clear: rows come in order.
        assert table_calls == Counter(add_row=JOBS, sync=JOBS // CHUNK + 1)
        assert fake.reads == Counter(list_jobs=1, list_nodes=1)

        await pilot.press("ctrl+end")
        assert table.selected_id == "j09999"
        await pilot.press("pageup", "up")
        assert table.cursor_row < JOBS - 10
        await pilot.press("ctrl+home", "down", "down")
        assert table.selected_id == "j00002"

        # One job progresses: one get_job, its changed cells only.
        table_calls.clear()
        fake.put_job(replace(fake.jobs["j00002"], status=JobStatus.RUNNING, position=0, steps_done=40))
        fake.emit("segment_progress", job_id="j00002")
        app.read_events(forever=False)
        await settle(pilot)
        assert fake.reads["get_job"] == 1 and fake.reads["list_jobs"] == 1
        assert table_calls["add_row"] == 0 and table_calls["update_cell"] <= 3  # progress, ETA, state
        assert table_calls["sort"] == 1 and table.selected_id == "j00002"  # running jobs go first
        assert table.cursor_row == 0

        # A full read that changes nothing touches no row.
        table_calls.clear()
        app.read_all()
        await settle(pilot)
        assert table_calls == Counter(sync=1)

        await pilot.press("enter")
        await settle(pilot)
        assert isinstance(app.screen, JobDetailScreen) and app.screen.job_id == "j00002"
        assert fake.reads["get_job"] == 1  # the detail draws from the store
