"""The dashboard's job detail saves a job's outputs on this PC with `s`, read through the service
(so from a remote head too), and offers it only once an output exists."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from tui_fake import scene_farm
from tui_pilot import settle

from tui.app import make_app
from tui.screens.job_detail import JobDetailScreen

pytestmark = pytest.mark.anyio


async def test_s_saves_the_outputs_of_the_job_in_detail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    fake = scene_farm()
    files = [tmp_path / "head" / "0000-seed0.png", tmp_path / "head" / "0001-seed1.png"]
    files[0].parent.mkdir()
    for n, f in enumerate(files):
        f.write_bytes(b"\x89PNG" + bytes([n]) * 100)
    fake.put_job(replace(fake.jobs["j6"], outputs=tuple(str(f) for f in files)))
    app = make_app(fake, live=False, clock=lambda: 0.0)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await app.push_screen(JobDetailScreen("j2"))  # queued: nothing written yet, `s` is dimmed
        await settle(pilot)
        assert app.screen.check_action("save_outputs", ()) is None
        await app.push_screen(JobDetailScreen("j6"))
        await settle(pilot)
        await pilot.press("s")
        await settle(pilot)
    saved = sorted((tmp_path / "renders" / "j6").iterdir())
    assert [p.read_bytes() for p in saved] == [f.read_bytes() for f in files]
    assert fake.reads["read_output"] == 2
