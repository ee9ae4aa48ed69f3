"""Deterministic scenes for snapshots and the README screenshot: the scene farm, a fake clock,
and a few full reads so the throughput sparkline has a history."""

from __future__ import annotations

import os
from dataclasses import replace

from fake_farm import FakeFarm
from textual.pilot import Pilot
from tui_fake import scene_farm
from tui_pilot import settle

from tui.app import FarmApp, make_app

SIZE = (120, 36)
# Sample-steps rendered between two reads 5 s apart: a farm warming up, a node paused, resumed.
STEPS_PER_READ = (20, 45, 60, 75, 70, 90, 85, 40, 35, 80, 95, 100, 98, 105)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def scene() -> tuple[FakeFarm, FarmApp, Clock]:
    fake = scene_farm()
    clock = Clock()
    return fake, make_app(fake, live=False, clock=clock, head="head.lan:7070"), clock


async def with_history(pilot: Pilot, fake: FakeFarm, clock: Clock) -> None:
    """Settle the first read, then read again after each step of STEPS_PER_READ."""
    await settle(pilot)
    app = pilot.app
    assert isinstance(app, FarmApp)
    for steps in STEPS_PER_READ:
        clock.now += 5
        fake.put_job(replace(fake.jobs["j1"], steps_done=fake.jobs["j1"].steps_done + steps))
        app.read_all()
        await settle(pilot)
    fake.put_job(replace(fake.jobs["j1"], steps_done=42))  # the job as the other screens show it
    app.read_all()
    await settle(pilot)


def update_docs() -> bool:
    """FARM_UPDATE_DOCS=1 rewrites docs/dashboard.svg instead of comparing with it."""
    return os.environ.get("FARM_UPDATE_DOCS") == "1"
