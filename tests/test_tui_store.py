"""The dashboard's pure parts: the store's merge and order, throughput, bars, thumbnails."""

from __future__ import annotations

from dataclasses import replace

from rich.text import Text
from tui_fake import gradient_png, job, sample_jobs, sample_nodes

from farm.contracts.control import ShardView
from farm.contracts.domain import JobStatus
from tui.format import bar, duration
from tui.segment_bars import sample_bars, shard_bar
from tui.store import FarmStore, Update
from tui.thumbnail import half_blocks


def test_first_read_orders_running_then_queue_then_finished_newest_first() -> None:
    store = FarmStore()
    changes = store.apply(Update(nodes=tuple(sample_nodes()), jobs=tuple(sample_jobs())))
    assert store.order == ["j1", "j2", "j3", "j4", "j6", "j5"]  # j4 paused: queued, no place; j6 newer than j5
    assert changes.order and changes.nodes and changes.jobs == {"j1", "j2", "j3", "j4", "j5", "j6"}
    assert list(store.nodes) == ["pc-anna", "pc-ben", "pc-cleo", "pc-dan"]


def test_unchanged_jobs_keep_their_row_object_and_cause_no_reorder() -> None:
    store = FarmStore()
    store.apply(Update(jobs=tuple(sample_jobs())))
    rows = dict(store.rows)
    jobs = sample_jobs()
    jobs[1] = replace(jobs[1], steps_done=40)  # j2 progresses: same place in the queue
    changes = store.apply(Update(jobs=tuple(jobs)))
    assert changes.jobs == {"j2"} and not changes.order
    assert all(store.rows[i] is rows[i] for i in rows if i != "j2")
    assert store.rows["j2"].progress == 500


def test_a_job_that_leaves_the_list_is_removed_and_a_status_change_reorders() -> None:
    store = FarmStore()
    store.apply(Update(jobs=tuple(sample_jobs())))
    changes = store.apply(Update(jobs=tuple(j for j in sample_jobs() if j.id != "j6")))
    assert changes.jobs == {"j6"} and "j6" not in store.rows and changes.order
    changes = store.apply(Update(changed_jobs=(replace(store.jobs["j2"], status=JobStatus.CANCELLED,
                                                       position=0, finished_at=5e9),)))
    assert changes.order and store.order[-2:] == ["j2", "j5"]


def test_events_are_kept_once_in_order() -> None:
    from tui_fake import sample_events

    store = FarmStore()
    events = tuple(sample_events())
    assert store.apply(Update(events=events[:4])).events == events[:4]
    assert store.apply(Update(events=events[2:])).events == events[4:]  # an overlap is not shown twice
    assert [e.seq for e in store.events] == [1, 2, 3, 4, 5, 6]


def test_throughput_is_sample_steps_per_second_between_full_reads() -> None:
    store = FarmStore()
    jobs = [job("a", JobStatus.RUNNING, steps_done=10)]
    assert not store.apply(Update(jobs=tuple(jobs), at=100.0)).throughput  # no rate from one read
    jobs = [replace(jobs[0], steps_done=30)]
    assert store.apply(Update(jobs=tuple(jobs), at=104.0)).throughput
    store.apply(Update(jobs=(), at=106.0))  # the job left the list: 0, not negative
    assert list(store.throughput) == [5.0, 0.0]


def test_summary_counts_states_and_samples_left() -> None:
    store = FarmStore()
    store.apply(Update(jobs=tuple(sample_jobs())))
    summary = store.summary()
    assert summary.counts == {"running": 1, "queued": 2, "paused": 1, "failed": 1, "done": 1}
    assert summary.samples_left == 4 + 4 + 4 + 3 and summary.eta_s == 700


def test_bar_and_duration() -> None:
    def empty_from(text: Text) -> int:  # where the grey (not done) part starts
        return next((s.start for s in text.spans if s.style == "grey30"), len(text))

    assert bar(0.5, 4).plain == "━━━━" and empty_from(bar(0.5, 4)) == 2
    assert bar(0.25, 2).plain == "╸━" and empty_from(bar(0.25, 2)) == 1
    assert empty_from(bar(2.0, 3)) == 3 and empty_from(bar(-1.0, 3)) == 0
    assert [duration(s) for s in (None, 42, 725, 11040, 183600)] == ["–", "42s", "12m05s", "3h04m", "2d03h"]


def test_half_blocks_draw_two_pixels_per_cell_in_their_colours() -> None:
    picture = half_blocks(gradient_png(32), 16)
    lines = picture.plain.split("\n")
    assert len(lines) == 8 and all(line == "▀" * 16 for line in lines)
    first, last = picture.spans[0].style, picture.spans[-1].style
    assert first.color.triplet.red < 40 and first.bgcolor.triplet.green < 40  # top-left: dark
    assert last.color.triplet.red > 200 and last.bgcolor.triplet.green > 200  # bottom-right: red and green
    assert half_blocks(b"not a png", 16).plain == "(unreadable preview)"


def test_segment_bars_show_done_running_and_waiting_steps() -> None:
    shard = ShardView("j/s0", "pc", (0,), ((0, 10), (10, 20)), 14, node="pc")
    assert shard_bar(shard, 20, 20).plain == "█" * 14 + "▒" * 6
    waiting = replace(shard, node="")
    assert shard_bar(waiting, 20, 10).plain == "█" * 7 + "░" * 3
    lines = sample_bars(sample_jobs()[0], 20).plain.split("\n")
    assert [line.split()[0] for line in lines] == ["#0", "#1", "#2", "#3"]
    assert "pc-anna" in lines[0] and "pc-anna" not in lines[2]
    assert sample_bars(sample_jobs()[0], 20, limit=1).plain.endswith("… and 3 more samples")
    assert sample_bars(sample_jobs()[1], 20).plain == "not split into shards yet"
