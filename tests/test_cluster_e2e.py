"""A farm of two processes on loopback, as two PCs would run it: `farm head` (Ray head with token
auth, coordinator, FarmControl over TLS) and `farm join` (agent, supervised Ray worker). The head's
own node is paused, so the job can only render on the joined PC; its provenance must say so."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
from waiting import wait_for

from farm.cli.cluster import connect
from farm.runtime.outputs import read_provenance

pytestmark = pytest.mark.slow
JOB = 'model = "demo-tiny"\nprompts = ["a red circle"]\nseeds = 1\nsteps = 4\n'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Farm:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: list[subprocess.Popen[str]] = []

    def env(self, home: str) -> dict[str, str]:
        return {**os.environ, "FARM_HOME": str(self.root / home), "OMP_NUM_THREADS": "1"}

    def spawn(self, home: str, *args: str) -> subprocess.Popen[str]:
        log = open(self.root / f"{home}.log", "w")  # noqa: SIM115 (kept open for the child)
        proc = subprocess.Popen([sys.executable, "-m", "farm.cli.main", *args], env=self.env(home), cwd=self.root,
                                stdout=subprocess.PIPE, stderr=log, text=True)
        self.procs.append(proc)
        return proc

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "farm.cli.main", *args], env=self.env("head"), cwd=self.root,
                              capture_output=True, text=True, timeout=timeout)

    def stop(self) -> None:
        """SIGTERM each process (the farm stops its own Ray processes); any of them, or of what they
        started (their Ray heads and workers, by PID), still running a minute later is killed."""
        made = []
        for proc in self.procs:
            try:
                made += psutil.Process(proc.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                pass
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        _, alive = psutil.wait_procs(made, timeout=10)
        for child in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()


def read_line(proc: subprocess.Popen[str], startswith: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        if not line and proc.poll() is not None:
            raise AssertionError(f"exited with {proc.returncode} before printing {startswith!r}")
        if line.strip().startswith(startswith):
            return line.strip()
    raise AssertionError(f"no line starting with {startswith!r} within {timeout} s")


def ray_worker_running(agent: subprocess.Popen[str]) -> bool:
    """Whether the agent's supervised `ray start --block` (the PC's Ray worker) is alive."""
    for child in psutil.Process(agent.pid).children(recursive=True):
        try:
            argv = child.cmdline()
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            continue
        if "start" in argv and "--block" in argv:
            return True
    return False


@pytest.fixture
def farm(tmp_path: Path) -> Iterator[Farm]:
    f = Farm(tmp_path)
    yield f
    f.stop()


def test_a_joined_pc_renders_on_a_head_over_loopback(farm: Farm, monkeypatch: pytest.MonkeyPatch) -> None:
    ray_port = free_port()
    # A free HTTP port too: the default 7860 is taken whenever another head runs on this machine.
    head = farm.spawn("head", "head", "--advertise", "127.0.0.1", "--bind", "127.0.0.1", "--port", "0",
                      "--ray-port", str(ray_port), "--http", f"127.0.0.1:{free_port()}", "--simulate-gpu", "8",
                      "--name", "headpc", "--out", "out")
    join_cmd = read_line(head, "FARM_TOKEN=", timeout=240).split()  # FARM_TOKEN=T farm join ADDRESS
    address, join_token = join_cmd[3], join_cmd[0].removeprefix("FARM_TOKEN=")
    token = (farm.root / "head" / "head" / "admin-token").read_text().strip()
    (farm.root / "join-token").write_text(join_token)
    joined = farm.spawn("pc2", "join", address, "--token-file", str(farm.root / "join-token"), "--simulate-gpu",
                        "12", "--name", "pc2", "--listen", "127.0.0.1:0")
    read_line(joined, "joined", timeout=120)

    # Ray itself refuses a client without the cluster's token.
    ray = Path(sys.executable).with_name("ray")
    env = {k: v for k, v in farm.env("stranger").items() if not k.startswith("RAY_AUTH")}
    stranger = subprocess.run([str(ray), "status", "--address", f"127.0.0.1:{ray_port}"], env=env,
                              capture_output=True, text=True, timeout=120)
    assert stranger.returncode != 0 and "token" in (stranger.stdout + stranger.stderr).lower()

    # Keep the work off the head's own node: the job must render on the joined PC.
    assert farm.cli("node", "pause", "headpc").returncode == 0

    def statuses() -> dict[str, dict[str, object]] | None:
        nodes = {n["name"]: n for n in map(json.loads, farm.cli("nodes", "--json").stdout.splitlines())}
        ready = nodes.get("pc2", {}).get("status") == "idle" and nodes.get("headpc", {}).get("status") == "paused"
        return nodes if ready else None

    nodes = wait_for(statuses, 240, "pc2 idle and headpc paused", interval=1)  # each poll is one CLI process
    assert nodes["pc2"]["gpu"] == "simulated 12 GiB (CPU)"

    (farm.root / "job.toml").write_text(JOB)
    r = farm.cli("submit", "job.toml", timeout=400)
    assert r.returncode == 0, r.stderr + (farm.root / "head.log").read_text()[-3000:]
    status, *outputs = r.stdout.splitlines()
    assert status.endswith("done: 1/1 samples") and len(outputs) == 1
    runs = read_provenance(farm.root / outputs[0])
    assert {run["node"] for run in runs["segments"]} == {"pc2"}, runs  # type: ignore[attr-defined]

    # Paused, the PC stops its Ray worker (the GPU is free); resumed, a new worker and a new actor render.
    monkeypatch.setenv("FARM_HOME", str(farm.root / "head"))
    client = connect(SimpleNamespace(head=None, token=None))  # as `farm` on the head's PC does
    try:
        seen = client.events(0)[-1].seq
        assert ray_worker_running(joined)
        assert farm.cli("node", "pause", "pc2").returncode == 0
        wait_for(lambda: not ray_worker_running(joined), 120, "pc2's Ray worker stopped after the pause", interval=0.5)
        assert farm.cli("node", "resume", "pc2").returncode == 0
        # The agent starts a new worker; the head sees its restart and gives pc2 a new actor (node_joined).
        wait_for(lambda: [e for e in client.events(seen, timeout=1.0) if e.kind == "node_joined" and e.node == "pc2"],
                 240, "the head gave pc2's new Ray worker a new actor", interval=0.1)
    finally:
        client.close()
    r = farm.cli("submit", "job.toml", timeout=400)
    assert r.returncode == 0, r.stderr + (farm.root / "head.log").read_text()[-3000:]
    runs = read_provenance(farm.root / r.stdout.splitlines()[1])
    assert {run["node"] for run in runs["segments"]} == {"pc2"}, runs  # type: ignore[attr-defined]
    assert (farm.root / "pc2" / "node" / "ray-worker.log").read_text().count("Ray runtime started") >= 2

    bad = farm.cli("jobs", "--head", address, "--token", token[:-4] + "XXXX")
    assert bad.returncode == 1 and "refused the token" in bad.stderr

    assert farm.cli("node", "remove", "pc2").returncode == 0  # it leaves at once: its worker stops
    nodes = {n["name"]: n for n in map(json.loads, farm.cli("nodes", "--json").stdout.splitlines())}
    assert "pc2" not in nodes
    wait_for(lambda: not ray_worker_running(joined), 120, "pc2's Ray worker stopped after its removal", interval=0.5)
