"""`farm head` says which address it advertises, and never advertises loopback to other PCs unasked."""

from __future__ import annotations

import threading

import pytest

from farm.cli import cluster
from farm.cli.main import main


class FakeHead:
    """Stands in for `farm.cli.head.Head`: no Ray, no servers."""

    def __init__(self, config, gpus) -> None:  # type: ignore[no-untyped-def]
        self.config, self.port, self.http = config, 7070, None
        self.folder = config.home / "head"
        self.ray_connected = threading.Event()

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def join_command(self) -> str:
        return f"FARM_TOKEN=farm1.x.y farm join {self.config.advertise}:{self.port}"


@pytest.fixture
def fake_head(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("FARM_HOME", str(tmp_path))
    monkeypatch.setattr("farm.cli.head.Head", FakeHead)
    monkeypatch.setattr(cluster, "_serve_until_stopped", lambda start, stop, rearm=None: (start(), stop()))


def test_no_default_route_is_refused_with_one_line(fake_head: None, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cluster, "_lan_address", lambda: "127.0.0.1")
    assert main(["head", "--simulate-gpu", "8"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "--advertise ADDRESS" in err and "127.0.0.1" in err


@pytest.mark.parametrize(("given", "detected", "shown"), [
    ([], "192.168.1.20", "192.168.1.20"),
    (["--advertise", "127.0.0.1"], "127.0.0.1", "127.0.0.1"),  # asked for: a farm of this PC alone
    (["--advertise", "10.0.0.5"], "127.0.0.1", "10.0.0.5"),
])
def test_the_advertised_address_is_printed(fake_head: None, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str], given: list[str], detected: str,
                                           shown: str) -> None:
    monkeypatch.setattr(cluster, "_lan_address", lambda: detected)
    assert main(["head", "--simulate-gpu", "8", *given]) == 0
    lines = capsys.readouterr().out.splitlines()
    advertising = next(line for line in lines if line.startswith("advertising "))
    assert advertising.split()[1] == shown and "farm join" not in advertising
    assert lines[lines.index(advertising) + 1].endswith(f" farm join {shown}:7070")
