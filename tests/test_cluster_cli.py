"""The client commands against a head served in process (a fake FarmService behind the real
FarmControl server, TLS and tokens): output, exit codes, and one-line errors without tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from fake_farm import FakeFarm

from farm.api.control_server import serve_control
from farm.cli.main import main
from farm.cluster.credentials import HeadCredentials
from farm.cluster.membership import Membership
from farm.cluster.pki import write_private
from farm.contracts.control import JobView, NodeStatus
from farm.contracts.domain import JobStatus

JOB = 'model = "demo-tiny"\nprompts = ["a red circle"]\nseeds = 2\nsteps = 4\n'


class LocalHead:
    """What `farm head` leaves in FARM_HOME/head, with a FakeFarm behind a real server."""

    def __init__(self, home: Path) -> None:
        self.farm = FakeFarm()
        folder = home / "head"
        self.creds = HeadCredentials.load_or_create(folder)
        members = Membership(folder, self.creds.ca, self.creds.tokens, "127.0.0.1:6379", "r")
        self.server, self.port = serve_control(self.farm, "127.0.0.1:0", tls=self.creds.tls, tokens=self.creds.tokens,
                                               membership=members)
        write_private(folder / "control.port", str(self.port).encode())


@pytest.fixture
def head(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalHead]:
    monkeypatch.setenv("FARM_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FARM_HEAD", raising=False)
    monkeypatch.delenv("FARM_TOKEN", raising=False)
    h = LocalHead(tmp_path / "home")
    yield h
    h.server.stop(None)


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_submit_detach_jobs_and_cancel(head: LocalHead, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "job.toml").write_text(JOB)
    code, out, _ = run(capsys, "submit", str(tmp_path / "job.toml"), "--detach")
    job_id = out.strip()
    assert code == 0 and head.farm.get_job(job_id).samples_total == 2
    code, out, _ = run(capsys, "jobs", "--json")
    assert code == 0 and json.loads(out)["id"] == job_id and json.loads(out)["samples"] == "0/2"
    assert run(capsys, "cancel", job_id)[0] == 0 and head.farm.get_job(job_id).status == JobStatus.CANCELLED


def test_submit_follows_the_job_until_done(head: LocalHead, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "job.toml").write_text(JOB)

    written = tmp_path / "head-renders"
    written.mkdir()
    for name in ("0000-seed0.png", "0001-seed1.png"):
        (written / name).write_bytes(name.encode() * 1000)

    # The CLI has read the job while it was still queued: from then on it is following it.
    seen_queued = threading.Event()
    get_job = head.farm.get_job

    def watched_get_job(job_id: str) -> JobView:
        view = get_job(job_id)
        if view.status == JobStatus.QUEUED:
            seen_queued.set()
        return view

    monkeypatch.setattr(head.farm, "get_job", watched_get_job)
    following = []

    def render() -> None:  # the fake head finishes the job once the CLI is following it
        following.append(seen_queued.wait(timeout=60))
        if not head.farm.jobs:  # never submitted: the assertions below say so
            return
        (job_id,) = head.farm.jobs
        head.farm.jobs[job_id] = replace(head.farm.jobs[job_id], status=JobStatus.DONE, samples_done=2, steps_done=8,
                                         outputs=tuple(str(p) for p in sorted(written.iterdir())))

    threading.Thread(target=render, daemon=True).start()
    code, out, _ = run(capsys, "submit", str(tmp_path / "job.toml"), "--out", str(tmp_path / "mine"))
    assert following == [True], "the CLI never read the job while it was queued"
    assert code == 0
    job_id = next(iter(head.farm.jobs))
    mine = [str(tmp_path / "mine" / job_id / name) for name in ("0000-seed0.png", "0001-seed1.png")]
    assert out.splitlines() == [f"{job_id} done: 2/2 samples", *mine]  # paths on this PC, downloaded
    assert [Path(p).read_bytes() for p in mine] == [p.read_bytes() for p in sorted(written.iterdir())]


def test_nodes_and_node_commands(head: LocalHead, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "nodes", "--json")
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [r["name"] for r in rows] == ["pc1", "pc2"] and rows[0]["temperature_c"] == 51.0
    assert run(capsys, "node", "pause", "pc1")[0] == 0 and head.farm.nodes["pc1"].status == NodeStatus.PAUSED
    assert run(capsys, "node", "drain", "pc2")[0] == 0 and head.farm.nodes["pc2"].status == NodeStatus.DRAINING
    assert run(capsys, "node", "resume", "pc1")[0] == 0 and head.farm.nodes["pc1"].status == NodeStatus.IDLE
    code, _, err = run(capsys, "node", "pause", "pc9")
    assert code == 2 and err == "farm: node: no node 'pc9'; nodes: pc1, pc2\n"


def test_token_rotate_then_the_old_token_is_refused(head: LocalHead, capsys: pytest.CaptureFixture[str]) -> None:
    old = head.creds.tokens.join_token
    code, out, _ = run(capsys, "token", "rotate")
    assert code == 0 and out.strip() == head.creds.tokens.join_token != old
    code, _, err = run(capsys, "jobs", "--head", f"127.0.0.1:{head.port}", "--token", old)
    assert code == 1 and "refused the token" in err and len(err.splitlines()) == 1
    # The new join token joins PCs and nothing else: one line, exit 2.
    code, _, err = run(capsys, "jobs", "--head", f"127.0.0.1:{head.port}", "--token", out.strip())
    assert code == 2 and "not allowed for the join role" in err and len(err.splitlines()) == 1


def test_node_remove_unknown_is_not_found(head: LocalHead, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "node", "remove", "pc7")
    assert code == 2 and err == "farm: name: no member PC named 'pc7'\n"


def test_bad_job_is_refused_before_it_reaches_the_head(head: LocalHead, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "job.toml").write_text(JOB.replace("steps = 4", "steps = 0"))
    code, _, err = run(capsys, "submit", str(tmp_path / "job.toml"))
    assert code == 2 and err.startswith("farm: steps: ") and head.farm.jobs == {}


@pytest.mark.parametrize("args, message, code", [
    (["jobs", "--head", "127.0.0.1:1", "--token", "farm1." + "0" * 32 + ".x"], "cannot reach the head", 1),
    (["jobs", "--head", "127.0.0.1:1", "--token", "nonsense"], "--token: is not a farm token", 2),
    (["node", "drain", "pc1"], "no head to talk to", 1),
    (["join", "127.0.0.1:1"], "--token: is required", 2),
])
def test_client_errors_are_one_line_without_traceback(tmp_path: Path, args: list[str], message: str, code: int) -> None:
    env = {**os.environ, "FARM_HOME": str(tmp_path), "OMP_NUM_THREADS": "1"}
    env.pop("FARM_HEAD", None)
    env.pop("FARM_TOKEN", None)
    r = subprocess.run([sys.executable, "-m", "farm.cli.main", *args], env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == code and message in r.stderr
    assert len(r.stderr.splitlines()) == 1 and "Traceback" not in r.stderr and r.stdout == ""
