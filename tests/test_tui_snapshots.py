"""Snapshots of every screen and dialog on fixed fake data (fixed times, sizes, no clock drawn).

Update after a deliberate change with `pytest tests/test_tui_snapshots.py --snapshot-update` and
look at the SVGs under tests/__snapshots__/ before committing them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from textual.pilot import Pilot
from textual.widgets import Input
from tui_pilot import settle
from tui_scenes import SIZE, scene, update_docs, with_history

from tui.jobs_table import JobsTable

DOCS_SVG = Path(__file__).parent.parent / "docs" / "dashboard.svg"
pytestmark = pytest.mark.usefixtures("utc")


@pytest.fixture
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Event times print in local time: pin it, so snapshots match on every machine."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_dashboard(snap_compare) -> None:  # type: ignore[no-untyped-def]
    fake, app, clock = scene()

    async def run_before(pilot: Pilot) -> None:
        await with_history(pilot, fake, clock)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


async def _jobs(pilot: Pilot, row: int = 0) -> None:
    await settle(pilot)
    await pilot.press("2")
    await settle(pilot)
    pilot.app.screen.query_one(JobsTable).move_cursor(row=row)


def test_jobs_table(snap_compare) -> None:  # type: ignore[no-untyped-def]
    _, app, _ = scene()

    async def run_before(pilot: Pilot) -> None:
        await _jobs(pilot, row=2)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_job_detail_with_segments_previews_and_log(snap_compare) -> None:  # type: ignore[no-untyped-def]
    _, app, _ = scene()

    async def run_before(pilot: Pilot) -> None:
        await _jobs(pilot)
        await pilot.press("enter")
        await settle(pilot)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_node_detail_with_owner_rules(snap_compare) -> None:  # type: ignore[no-untyped-def]
    _, app, _ = scene()

    async def run_before(pilot: Pilot) -> None:
        await settle(pilot)
        await pilot.press("enter")
        await settle(pilot)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_event_log(snap_compare) -> None:  # type: ignore[no-untyped-def]
    _, app, _ = scene()

    async def run_before(pilot: Pilot) -> None:
        await settle(pilot)
        await pilot.press("3")
        await settle(pilot)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_cancel_asks_for_confirmation(snap_compare) -> None:  # type: ignore[no-untyped-def]
    _, app, _ = scene()

    async def run_before(pilot: Pilot) -> None:
        await _jobs(pilot, row=1)
        await pilot.press("c")
        await settle(pilot)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_submit_shows_the_one_line_error(snap_compare) -> None:  # type: ignore[no-untyped-def]
    _, app, _ = scene()

    async def run_before(pilot: Pilot) -> None:
        await settle(pilot)
        await pilot.press("s")
        await settle(pilot)
        field = pilot.app.screen.query_one(Input)
        field.cursor_blink = False
        field.value = "jobs/missing.toml"  # relative: the message must not depend on tmp paths
        await pilot.press("enter")
        await settle(pilot)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


@pytest.mark.anyio
async def test_readme_screenshot_is_the_current_dashboard() -> None:
    """docs/dashboard.svg is what the dashboard draws now; FARM_UPDATE_DOCS=1 rewrites it."""
    fake, app, clock = scene()
    async with app.run_test(size=SIZE) as pilot:
        await with_history(pilot, fake, clock)
        svg = app.export_screenshot(title="farm tui")
    if update_docs():
        DOCS_SVG.parent.mkdir(exist_ok=True)
        DOCS_SVG.write_text(svg, encoding="utf-8")
    assert DOCS_SVG.read_text(encoding="utf-8") == svg
