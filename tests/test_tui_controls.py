"""Every keyboard control of the dashboard, driven with Pilot against FakeFarm: the right
call reaches the service, destructive ones only after a yes, and the screens follow."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from fake_farm import FakeFarm
from tui_fake import scene_farm
from tui_pilot import BUSY, screen_text, settle, until

from farm.contracts.control import NodeStatus
from farm.contracts.domain import JobStatus
from tui.app import FarmApp, make_app
from tui.dialogs import ConfirmScreen, SubmitScreen
from tui.jobs_table import JobsTable
from tui.node_card import NodeCard
from tui.screens.event_log import EventLogScreen
from tui.screens.job_detail import JobDetailScreen
from tui.screens.jobs import JobsScreen
from tui.screens.node_detail import NodeDetailScreen

pytestmark = pytest.mark.anyio
SIZE = (120, 40)


@pytest.fixture
def fake() -> FakeFarm:
    return scene_farm()


def app_for(fake: FakeFarm) -> FarmApp:
    return make_app(fake, live=False, clock=lambda: 0.0)


async def open_jobs(pilot, row: int) -> JobsTable:  # type: ignore[no-untyped-def]
    await settle(pilot)
    await pilot.press("2")
    await settle(pilot)
    table = pilot.app.screen.query_one(JobsTable)
    table.move_cursor(row=row)
    await pilot.pause()
    return table


def cell(table: JobsTable, job_id: str, column: str) -> str:
    value = table.get_cell(job_id, column)
    return getattr(value, "plain", value)


@pytest.mark.parametrize("key, call, row, status", [
    ("p", "pause_job", 0, "paused"),  # j1 running
    ("r", "resume_job", 3, "queued"),  # j4 paused
    ("t", "retry_job", 5, "queued"),  # j5 failed (the last row: finished jobs, newest first)
])
async def test_job_state_keys_call_the_service_and_the_row_follows(
        fake: FakeFarm, key: str, call: str, row: int, status: str) -> None:
    app = app_for(fake)
    async with app.run_test(size=SIZE) as pilot:
        table = await open_jobs(pilot, row)
        job_id = table.selected_id
        await pilot.press(key)
        await settle(pilot)
        assert fake.calls == [(call, job_id)]
        assert cell(table, job_id, "status") == status


async def test_cancel_asks_first_and_no_keeps_the_job(fake: FakeFarm) -> None:
    app = app_for(fake)
    async with app.run_test(size=SIZE) as pilot:
        table = await open_jobs(pilot, 1)
        await pilot.press("c")
        await settle(pilot)
        assert isinstance(app.screen, ConfirmScreen) and "j2" in app.screen.question
        await pilot.press("n")
        await settle(pilot)
        assert fake.calls == [] and not isinstance(app.screen, ConfirmScreen)
        await pilot.press("c", "y")
        await settle(pilot)
        assert fake.calls == [("cancel_job", "j2")]
        assert cell(table, "j2", "status") == "cancelled"


async def test_priority_keys_raise_and_lower_and_reread_the_queue(fake: FakeFarm) -> None:
    app = app_for(fake)
    async with app.run_test(size=SIZE) as pilot:
        table = await open_jobs(pilot, 2)  # j3, priority 5
        reads = fake.reads["list_jobs"]
        await pilot.press("plus")
        await settle(pilot)
        await pilot.press("minus", "minus")
        await settle(pilot)
        assert fake.calls == [("set_priority", "j3", 6), ("set_priority", "j3", 5), ("set_priority", "j3", 4)]
        assert cell(table, "j3", "priority") == "4"
        assert fake.reads["list_jobs"] == reads + 3  # the order may have moved: read it whole


async def test_move_keys_move_the_job_and_the_cursor_stays_on_it(fake: FakeFarm) -> None:
    # A job moves among the jobs of its priority, and the queue lets owners take turns: make j3
    # another of ben's jobs at j2's priority, so moving it passes j2.
    j3 = fake.jobs["j3"]
    fake.put_job(replace(j3, spec=replace(j3.spec, priority=0, owner="ben")))
    app = app_for(fake)
    async with app.run_test(size=SIZE) as pilot:
        table = await open_jobs(pilot, 2)  # j3, third in the queue
        await pilot.press("shift+up")
        await settle(pilot)
        assert fake.calls == [("move_job", "j3", -1)]
        assert [table.coordinate_to_cell_key((r, 0)).row_key.value for r in range(3)] == ["j1", "j3", "j2"]
        assert table.selected_id == "j3"
        await pilot.press("shift+down")
        await settle(pilot)
        assert fake.calls[-1] == ("move_job", "j3", 1) and table.selected_id == "j3"


async def test_keys_that_make_no_sense_for_the_state_are_dimmed_and_do_nothing(fake: FakeFarm) -> None:
    app = app_for(fake)
    async with app.run_test(size=SIZE) as pilot:
        await open_jobs(pilot, 4)  # j6 done: nothing to resume, retry, cancel or move
        await pilot.press("r", "t", "c", "shift+up")
        await settle(pilot)
        assert fake.calls == [] and not isinstance(app.screen, ConfirmScreen)
        assert "r Resume" in screen_text(app)  # still listed in the footer, dimmed
        assert app.screen.check_action("resume_job", ()) is None
        await pilot.press("down")  # j5 failed: retry is live now
        assert app.screen.check_action("retry_job", ()) is True


async def test_a_refused_control_shows_the_service_message(fake: FakeFarm) -> None:
    app = app_for(fake)
    async with app.run_test(size=SIZE) as pilot:
        await open_jobs(pilot, 1)  # j2 queued as the dashboard last read it
        fake.put_job(replace(fake.jobs["j2"], status=JobStatus.DONE))  # it has finished since: the service refuses
        await pilot.press("p")
        await settle(pilot)
        assert fake.calls == [("pause_job", "j2")]
        assert [n.message for n in app._notifications] == ["job: j2 is done; it cannot become paused"]


async def test_node_keys_on_the_focused_card(fake: FakeFarm) -> None:
    app = app_for(fake)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert isinstance(app.focused, NodeCard) and app.focused.view.info.name == "pc-anna"
        await pilot.press("p")
        await settle(pilot)
        await pilot.press("right", "d")  # pc-ben: drain asks first
        await settle(pilot)
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("y")
        await settle(pilot)
        await pilot.press("right", "r")  # pc-cleo, paused by its owner's game
        await settle(pilot)
        assert fake.calls == [("pause_node", "pc-anna"), ("drain_node", "pc-ben"), ("resume_node", "pc-cleo")]
        cards = {c.view.info.name: c for c in app.screen.query(NodeCard)}
        assert cards["pc-anna"].has_class("-paused") and not cards["pc-anna"].has_class("-busy")
        assert cards["pc-ben"].has_class("-draining") and cards["pc-cleo"].has_class("-idle")


async def test_node_detail_shows_the_owner_rules_and_takes_node_keys(fake: FakeFarm) -> None:
    app = app_for(fake)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("enter")
        await settle(pilot)
        assert isinstance(app.screen, NodeDetailScreen)
        shown = screen_text(app)
        assert "Active hours" in shown and "22:00-08:00" in shown and "eldenring.exe, cs2.exe" in shown
        await pilot.press("d", "n", "p")  # drain refused at the dialog, pause goes through
        await settle(pilot)
        assert fake.calls == [("pause_node", "pc-anna")]
        await pilot.press("escape")
        assert not isinstance(app.screen, NodeDetailScreen)


async def test_job_detail_shows_segments_previews_and_takes_job_keys(fake: FakeFarm) -> None:
    app = app_for(fake)
    async with app.run_test(size=SIZE) as pilot:
        await open_jobs(pilot, 0)
        await pilot.press("enter")
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, JobDetailScreen) and screen.job_id == "j1"
        thumbs = [t for t in screen.query(".thumb") if t.display]
        assert [t.border_title for t in thumbs] == ["#0", "#1"]  # samples mid-way with a preview
        assert "segment_started" in "\n".join(str(line.text) for line in screen.query_one("#job-log").lines)
        await pilot.press("p")
        await settle(pilot)
        assert fake.calls == [("pause_job", "j1")]
        await pilot.press("escape")
        assert not isinstance(app.screen, JobDetailScreen)


async def test_submit_shows_a_bad_file_in_one_line_then_submits_a_good_one(
        fake: FakeFarm, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('prompts = ["a cat"]\nsteps = 1\n')
    good = tmp_path / "good.toml"
    good.write_text('prompts = ["a cat", "a dog"]\nseeds = 2\nsteps = 8\n')
    app = app_for(fake)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("s")
        await settle(pilot)
        assert isinstance(app.screen, SubmitScreen)
        app.screen.query_one("#path").value = str(bad)
        await pilot.press("enter")
        await settle(pilot)
        assert isinstance(app.screen, SubmitScreen)
        assert "steps: must be from 2 to 1000, got 1" in screen_text(app)
        app.screen.query_one("#path").value = str(good)
        await pilot.press("enter")
        await settle(pilot)
        assert not isinstance(app.screen, SubmitScreen)
        [(call, spec)] = fake.calls
        assert call == "submit" and spec.prompts == ("a cat", "a dog") and spec.steps == 8
        assert "j7" in app.store.jobs


async def test_live_events_update_the_table_without_a_full_read(fake: FakeFarm) -> None:
    app = make_app(fake, refresh_interval=3600, poll_timeout=0.05)
    async with app.run_test(size=SIZE) as pilot:
        table = await open_jobs(pilot, 0)
        await until(pilot, lambda: app._after == 6)  # the event stream caught up with the history
        reads = fake.reads["list_jobs"]
        fake.put_job(replace(fake.jobs["j2"], status=JobStatus.RUNNING, steps_done=40, position=1))
        fake.put_node(replace(fake.nodes["pc-ben"], status=NodeStatus.BUSY))
        fake.emit("segment_started", job_id="j2", node="pc-ben")
        await until(pilot, lambda: cell(table, "j2", "status") == "running")
        assert cell(table, "j2", "progress").endswith("50%")
        assert app.store.nodes["pc-ben"].status == NodeStatus.BUSY
        assert fake.reads["list_jobs"] == reads  # one get_job, not the whole list


async def test_a_slow_service_never_blocks_the_keyboard(fake: FakeFarm) -> None:
    fake.gate.clear()  # list_jobs hangs until the gate opens
    app = make_app(fake, refresh_interval=0.01, poll_timeout=0.05)
    async with app.run_test(size=SIZE) as pilot:
        try:
            await pilot.press("3")
            await until(pilot, lambda: isinstance(app.screen, EventLogScreen))
            await pilot.press("2")
            await until(pilot, lambda: isinstance(app.screen, JobsScreen))
            await pilot.pause(0.2)  # twenty refresh ticks
            assert fake.reads["list_jobs"] == 0  # the full read still hangs, the keys were answered
            assert len([w for w in app.workers if w.group == "read" and w.state in BUSY]) == 1  # not one a tick
        finally:
            fake.gate.set()  # or the app's exit would wait for the hung read forever
        await until(pilot, lambda: app.screen.query_one(JobsTable).row_count == 6)


async def test_an_unreachable_head_is_shown_in_the_header_until_it_answers(fake: FakeFarm) -> None:
    app = make_app(fake, head="head.lan:7070", refresh_interval=0.05, poll_timeout=0.05)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        fake.down = "cannot reach the head at head.lan:7070: connection refused"
        await until(pilot, lambda: app.sub_title == f"head.lan:7070 · {fake.down}")
        fake.down = ""
        await until(pilot, lambda: app.sub_title == "head.lan:7070")


@pytest.mark.parametrize("width, columns", [(80, 2), (120, 3), (200, 5)])
async def test_node_cards_fit_the_terminal_width(fake: FakeFarm, width: int, columns: int) -> None:
    app = app_for(fake)
    async with app.run_test(size=(width, 30)) as pilot:
        await settle(pilot)
        assert app.screen.query_one("#nodes").styles.grid_size_columns == columns
        assert "…" not in screen_text(app).split("Queue")[0]  # no card line cut short
