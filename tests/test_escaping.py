"""Output hygiene (issue 15, point 6): terminal escape sequences (OSC 0 and 52, CSI, C0 and C1 controls)
and rich/Textual markup put in every free-text field are shown escaped by the CLI and the dashboard,
never acted on; newlines cannot forge lines of a PNG's `parameters`; outputs are not world-readable."""

from __future__ import annotations

import stat
from dataclasses import replace
from pathlib import Path

import pytest
from fake_farm import FakeFarm
from PIL import Image
from test_cluster_cli import LocalHead, head, run  # noqa: F401  (the `head` fixture)
from tui_pilot import screen_text, settle

from farm.contracts.control import Event, JobView, NodeStatus, NodeView
from farm.contracts.domain import JobStatus, NodeInfo, Sample
from farm.contracts.text import safe_markup, safe_text
from farm.jobs.jobspec import make_job
from farm.runtime.outputs import PngWriter, parameters_line, png_text, provenance

# OSC 0 (window title), OSC 52 (clipboard), CSI (clear screen, colour), a C1 CSI, markup, a newline.
ATTACK = "\x1b]0;T\x07\x1b]52;c;ZWNobw==\x07\x1b[2J\x9b31m[red]X[/red]\n"
SHOWN = safe_text(ATTACK)  # what a reader sees: every control as a visible escape, the markup as typed
CONTROLS = ("\x1b", "\x07", "\x9b", "\x90", "\x9d")


def hostile_farm(node: str = f"pc{ATTACK}") -> FakeFarm:
    """Every free-text field hostile; `node` too where the client does not refuse it first (the control
    API's client accepts only node names of letters, digits, '-' and '_')."""
    spec = replace(make_job(prompts=["a cat"], seeds=1, steps=4), prompts=(f"p{ATTACK}",),
                   negative_prompt=f"n{ATTACK}", owner=f"o{ATTACK}", model=f"m{ATTACK}")
    job = JobView("j1", spec, JobStatus.FAILED, 0, 1, 0, 4, 1000.0, error=f"e{ATTACK}")
    view = NodeView(NodeInfo(node, 12.0, 1.0, f"g{ATTACK}"), NodeStatus.PAUSED, pause_reason=f"r{ATTACK}")
    events = [Event(1, 1000.0, "node_paused", f"j{ATTACK}", f"pc{ATTACK}", f"why{ATTACK}")]
    return FakeFarm(nodes=[view], jobs=[job], events=events)


def test_safe_text_shows_every_control_and_safe_markup_escapes_tags() -> None:
    assert SHOWN == "\\x1b]0;T\\x07\\x1b]52;c;ZWNobw==\\x07\\x1b[2J\\x9b31m[red]X[/red]\\x0a"
    assert safe_text("a\u202eb\u2028c\x7f") == "a\\u202eb\\u2028c\\x7f"
    assert safe_markup("[red]X[/red] [1] [@click=quit]") == "\\[red]X\\[/red] [1] \\[@click=quit]"
    from rich.text import Text

    assert Text.from_markup(safe_markup(ATTACK)).plain == SHOWN


@pytest.mark.parametrize("command", [["jobs"], ["nodes"]])
def test_the_cli_prints_hostile_fields_escaped(head: LocalHead, capsys, monkeypatch, command: list[str]) -> None:  # noqa: F811
    monkeypatch.setenv("COLUMNS", "400")
    hostile = hostile_farm(node="pc-1")
    head.farm.jobs, head.farm.nodes = hostile.jobs, hostile.nodes
    code, out, err = run(capsys, *command)
    assert code == 0, err
    assert not any(c in out + err for c in CONTROLS)
    fields = ("o", "m", "e") if command == ["jobs"] else ("g", "r")
    for field in fields:
        assert f"{field}{SHOWN}" in out, field


def test_an_error_message_from_the_head_is_printed_escaped(head: LocalHead, capsys) -> None:  # noqa: F811
    code, _, err = run(capsys, "cancel", f"j{ATTACK}")
    assert code != 0 and not any(c in err for c in CONTROLS) and err.count("\n") == 1


@pytest.mark.anyio
async def test_the_dashboard_draws_hostile_fields_escaped() -> None:
    from tui.app import make_app

    app = make_app(hostile_farm(), live=False, clock=lambda: 0.0)
    async with app.run_test(size=(220, 50)) as pilot:
        await settle(pilot)
        shown = {"dashboard": screen_text(app)}
        await pilot.press("2")  # the jobs table
        await settle(pilot)
        shown["jobs"] = screen_text(app)
        await pilot.press("enter")  # the job's detail
        await settle(pilot)
        shown["job"] = screen_text(app)
        await pilot.press("escape", "3")  # the event log
        await settle(pilot)
        shown["events"] = screen_text(app)
    expected = {"dashboard": ("pc", "g", "r"), "jobs": ("o", "m"), "job": ("o", "m", "e"), "events": ("pc", "why")}
    for screen, fields in expected.items():
        assert not any(c in shown[screen] for c in CONTROLS), screen
        for field in fields:
            assert f"{field}{SHOWN[:12]}" in shown[screen], (screen, field)
        if screen != "dashboard":  # node cards are narrow: the markup lies past their ellipsis
            assert "[red]X[/red]" in shown[screen], screen


def test_newlines_cannot_forge_png_parameters(tmp_path: Path) -> None:
    spec = replace(make_job(prompts=["a"], seeds=1, steps=4, width=64, height=64),
                   prompts=("a cat\nSteps: 999, Sampler: forged",), negative_prompt="x\r\nSeed: 1\x1b[2J")
    sample = Sample(0, spec.prompts[0], 7)
    line = parameters_line(provenance("j1", spec, sample, ()))
    assert line.count("\n") == 2 and "Steps: 4," in line.splitlines()[2]
    assert all(not line.splitlines()[i].startswith(("Steps", "Seed")) for i in (0, 1))
    assert "\x1b" not in line
    path = PngWriter(tmp_path).write("j1", spec, sample, bytes(64 * 64 * 3), ())
    assert png_text(path.read_bytes())["parameters"] == line


def test_outputs_are_private_by_default_and_shared_with_the_group_on_request(tmp_path: Path, monkeypatch) -> None:
    spec = make_job(prompts=["a"], seeds=1, steps=4, width=64, height=64)
    sample = spec.samples()[0]
    monkeypatch.delenv("FARM_OUTPUTS_GROUP", raising=False)
    path = PngWriter(tmp_path / "out").write("j1", spec, sample, bytes(64 * 64 * 3), ())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o700
    with Image.open(path) as im:
        assert im.size == (64, 64)
    monkeypatch.setenv("FARM_OUTPUTS_GROUP", "1")
    shared = PngWriter(tmp_path / "shared").write("j2", spec, sample, bytes(64 * 64 * 3), ())
    assert stat.S_IMODE(shared.stat().st_mode) == 0o640
    assert stat.S_IMODE(shared.parent.stat().st_mode) == 0o750
