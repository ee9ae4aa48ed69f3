"""The dashboard on the embedded farm: the real coordinator (a FarmService) with Ray nodes running
the built-in tiny model. Controls reach the queue, and a job is followed live until done."""

from __future__ import annotations

from pathlib import Path

import pytest
from tui_pilot import screen_text, settle, until
from waiting import ready

from farm.cli.demo import demo_job
from farm.runtime.coordinator import Coordinator
from farm.runtime.executor import RayExecutor
from farm.runtime.outputs import PngWriter
from tui.app import make_app
from tui.jobs_table import JobsTable
from tui.node_card import NodeCard

pytestmark = [pytest.mark.slow, pytest.mark.anyio]


def state(table: JobsTable, job_id: str) -> str:
    return table.get_cell(job_id, "status").plain  # type: ignore[union-attr]


async def test_dashboard_steers_and_follows_the_embedded_farm(embedded: RayExecutor, tmp_path: Path) -> None:
    farm = Coordinator(embedded, PngWriter(tmp_path), max_segment_steps=3)
    ready(farm)  # the nodes' workers answered: they show idle, not starting
    first = farm.submit(demo_job(steps=6, seeds=1))
    second = farm.submit(demo_job(steps=6, seeds=1))  # the loop is not running yet: both wait
    app = make_app(farm, refresh_interval=0.5, poll_timeout=0.2)
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            await settle(pilot)
            assert {c.view.info.name for c in app.screen.query(NodeCard)} == {n.name for n in embedded.nodes()}
            node = app.focused.view.info.name  # type: ignore[union-attr]
            await pilot.press("p")  # pause the first node, then resume it
            await until(pilot, lambda: app.focused.has_class("-paused"))  # type: ignore[union-attr]
            await pilot.press("r")
            await until(pilot, lambda: app.focused.has_class("-idle"))  # type: ignore[union-attr]

            await pilot.press("2")
            await settle(pilot)
            table = app.screen.query_one(JobsTable)
            await until(pilot, lambda: table.row_count == 2)
            table.move_cursor(row=1)
            await pilot.press("plus")  # the second job jumps the queue
            await until(pilot, lambda: table.selected_id == second and table.cursor_row == 0)
            table.move_cursor(row=1)
            await pilot.press("c", "y")  # cancel the first
            await until(pilot, lambda: state(table, first) == "cancelled")

            farm.start()
            await until(pilot, lambda: state(table, second) == "done", rounds=6000)
            assert table.get_cell(second, "progress").plain.endswith("100%")  # type: ignore[union-attr]
            await pilot.press("3")
            await until(pilot, lambda: "job_done" in screen_text(app))
            shown = screen_text(app)
            assert "node_paused" in shown and "job_cancelled" in shown and node in shown
    finally:
        farm.stop()
