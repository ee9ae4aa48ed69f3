"""`farm tui`: refusals are one line, and the dashboard runs over the real FarmControl client."""

from __future__ import annotations

import pytest
from tui_fake import scene_farm
from tui_pilot import screen_text, settle

from farm.api.control_server import serve_control
from farm.cli.main import main
from tui.app import make_app
from tui.cli import connect

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("args, message, code", [
    (["tui"], "farm: --head: the dashboard needs a head", 2),
    (["tui", "--head", "localhost"], "farm: HEAD: must be HOST or HOST:PORT", 2),
    (["tui", "--head", "127.0.0.1:1"], "farm: cannot reach the head at 127.0.0.1:1", 1),
])
def test_refusals_are_one_line(capsys: pytest.CaptureFixture[str], args: list[str], message: str, code: int) -> None:
    assert main(args) == code
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1


async def test_dashboard_over_grpc_shows_the_farm_and_controls_it() -> None:
    fake = scene_farm()
    server, port = serve_control(fake, "127.0.0.1:0")
    client = connect(f"127.0.0.1:{port}", None, None)
    try:
        app = make_app(client, head=f"127.0.0.1:{port}", live=False)
        async with app.run_test(size=(120, 40)) as pilot:
            await settle(pilot)
            shown = screen_text(app)
            assert "pc-anna" in shown and "RTX 4090" in shown and "game started: cs2.exe" in shown
            await pilot.press("p")
            await settle(pilot)
            assert fake.calls == [("pause_node", "pc-anna")]
            assert app.store.nodes["pc-anna"].status == "paused"
    finally:
        client.close()
        server.stop(None)
