"""The Ray worker's command (pure) and its supervisor, driven by a dummy command instead of Ray."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

from waiting import wait_until

from farm.contracts.domain import NodeInfo
from node.worker import (
    NODE_RESOURCE,
    NODE_SLOTS,
    RayTls,
    Supervisor,
    WorkerCommand,
    ray_head_command,
    ray_start_command,
)

NODES = (NodeInfo("pc1-gpu0", 24.0, gpu="RTX 4090"), NodeInfo("pc1-gpu1", 12.0, gpu="RTX 3060"))


def test_ray_start_command_advertises_one_resource_per_gpu_with_token_auth() -> None:
    cmd = ray_start_command("10.0.0.1:6379", NODES, "ray-secret", node_ip="10.0.0.7", num_cpus=4)
    argv = list(cmd.argv)
    assert argv[:4] == ["ray", "start", "--address", "10.0.0.1:6379"]
    assert json.loads(argv[argv.index("--resources") + 1]) == {"farm_node:pc1-gpu0": 16.0, "farm_node:pc1-gpu1": 16.0}
    assert argv[argv.index("--num-gpus") + 1] == "2" and argv[argv.index("--num-cpus") + 1] == "4"
    assert argv[argv.index("--node-ip-address") + 1] == "10.0.0.7" and "--block" in argv
    assert cmd.env["RAY_AUTH_MODE"] == "token" and cmd.env["RAY_AUTH_TOKEN"] == "ray-secret"
    assert cmd.env["RAY_enable_metrics_collection"] == "0"  # an idle worker stays quiet


def test_ray_head_command_is_a_node_too_without_dashboard() -> None:
    cmd = ray_head_command(6379, NODES[:1], "ray-secret", node_ip="10.0.0.1")
    argv = list(cmd.argv)
    assert argv[:5] == ["ray", "start", "--head", "--port", "6379"] and "--include-dashboard=false" in argv
    assert json.loads(argv[argv.index("--resources") + 1]) == {"farm_node:pc1-gpu0": 16.0}
    assert cmd.env["RAY_AUTH_MODE"] == "token"


def test_fixed_ports_give_a_firewall_one_range() -> None:
    argv = list(ray_start_command("h:6379", NODES, "t", ports_from=7100).argv)
    assert argv[argv.index("--node-manager-port") + 1] == "7100" and argv[argv.index("--max-worker-port") + 1] == "7199"
    ports = [int(argv[i + 1]) for i, a in enumerate(argv) if a.endswith("-port")]
    assert len(ports) == 8 and all(7100 <= p <= 7199 for p in ports)
    assert "--node-manager-port" not in ray_start_command("h:6379", NODES, "t").argv


def test_windows_runs_the_worker_in_wsl_and_forwards_the_token() -> None:
    cmd = ray_start_command("h:6379", [NodeInfo("sim", 8.0, simulated=True)], "t", wrapper=["wsl.exe", "--"])
    assert cmd.argv[:4] == ("wsl.exe", "--", "ray", "start")
    assert cmd.argv[cmd.argv.index("--num-gpus") + 1] == "0"  # a simulated GPU is not a CUDA device
    assert {"RAY_AUTH_MODE/u", "RAY_AUTH_TOKEN/u"} <= set(cmd.env["WSLENV"].split(":"))


def test_resource_names_match_the_executor() -> None:
    from farm.runtime import executor

    assert (NODE_RESOURCE, NODE_SLOTS) == (executor.NODE_RESOURCE, executor.NODE_SLOTS)



def test_supervisor_restarts_a_dead_worker_and_stops_it_on_request(tmp_path: Path) -> None:
    starts = tmp_path / "starts"
    script = f"import time; open({str(starts)!r}, 'a').write('x'); time.sleep(600)"
    exits: list[int] = []
    sup = Supervisor(WorkerCommand((sys.executable, "-c", script), {}), tmp_path / "worker.log",
                     min_delay_s=0.1, on_exit=exits.append)
    sup.start()
    try:
        assert wait_until(lambda: sup.pid is not None and starts.exists())
        first = sup.pid
        os.kill(first, signal.SIGKILL)  # the worker crashes
        assert wait_until(lambda: sup.pid not in (None, first))
        assert sup.restarts == 1 and exits == [-signal.SIGKILL] and wait_until(lambda: starts.read_text() == "xx")
    finally:
        second = sup.pid
        sup.stop()
    assert not sup.running and sup.starts == 2
    assert not _pid_alive(second)  # type: ignore[arg-type]
    # Stopped means not restarted. `stop` joined the only thread that spawns, so `starts == 2` above
    # already proves it; this short sleep is a guard against a restart that would still come (a
    # watcher that outlived `stop`): it shows nothing new starts for a while, it waits for nothing.
    time.sleep(0.3)
    assert sup.starts == 2 and starts.read_text() == "xx"


def test_supervisor_sends_the_command_env(tmp_path: Path) -> None:
    out = tmp_path / "env"
    script = f"import os, time; open({str(out)!r}, 'w').write(os.environ['RAY_AUTH_MODE']); time.sleep(600)"
    sup = Supervisor(WorkerCommand((sys.executable, "-c", script), {"RAY_AUTH_MODE": "token"}))
    sup.start()
    try:
        assert wait_until(lambda: out.exists() and out.read_text() == "token")
    finally:
        sup.stop()


def test_a_command_that_cannot_start_is_retried_not_fatal(tmp_path: Path) -> None:
    sup = Supervisor(WorkerCommand((str(tmp_path / "no-such-ray"),), {}), min_delay_s=0.05)
    sup.start()
    assert wait_until(lambda: sup.restarts >= 2)
    sup.stop()
    assert not sup.running


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_ray_tls_files_and_environment(tmp_path: Path) -> None:
    """Ray's TLS between PCs: the PC's key (0600), its certificate and the farm CA, named in the env
    of `ray start`; on Windows WSLENV translates the paths."""
    tls = RayTls.write(tmp_path, b"key", b"cert", b"ca")
    cmd = ray_start_command("10.0.0.1:6379", NODES, "t", tls=tls, wrapper=["wsl.exe", "--"])
    assert cmd.env["RAY_USE_TLS"] == "1" and Path(cmd.env["RAY_TLS_SERVER_KEY"]).read_bytes() == b"key"
    assert Path(cmd.env["RAY_TLS_SERVER_CERT"]).read_bytes() == b"cert"
    assert Path(cmd.env["RAY_TLS_CA_CERT"]).read_bytes() == b"ca"
    assert (tmp_path / "ray-tls.key").stat().st_mode & 0o077 == 0
    assert "RAY_TLS_SERVER_KEY/up" in cmd.env["WSLENV"].split(":")
    assert "RAY_USE_TLS" not in ray_start_command("10.0.0.1:6379", NODES, "t").env  # loopback farms: none


def test_supervisor_renews_its_command_before_each_restart(tmp_path: Path) -> None:
    """A joined PC asks the head for Ray's current token before each start but the first."""
    out = tmp_path / "tokens"

    def command(token: str) -> WorkerCommand:
        script = f"import os; open({str(out)!r}, 'a').write(os.environ['RAY_AUTH_TOKEN'] + ' ')"
        return WorkerCommand((sys.executable, "-c", script), {"RAY_AUTH_TOKEN": token})

    asked = []
    sup = Supervisor(command("old"), min_delay_s=0.05, refresh=lambda: asked.append(1) or command("new"))
    sup.start()
    try:
        assert wait_until(lambda: out.exists() and out.read_text().split()[:3] == ["old", "new", "new"])
    finally:
        sup.stop()
    assert len(asked) >= 2
