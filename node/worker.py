"""The PC's Ray worker: the `ray start` command that joins it to the head's cluster, and a supervisor
that keeps that process alive (restarted with back-off if it dies) and stops it on drain or pause.

The command is built by a pure function so that it can be checked without Ray: each GPU of the PC
is one farm node, advertised as the custom resource `farm_node:<name>` that the executor pins that
node's actor to. On Windows the agent runs natively (so it sees the owner's games) and the worker
runs inside WSL2: `wrapper` is then `["wsl.exe", "--"]` and WSLENV forwards the token variables.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from farm.contracts.domain import NodeInfo
from farm.contracts.errors import InvalidInput

log = logging.getLogger(__name__)

# The same values as farm.runtime.executor's (kept here so the agent does not import Ray; a test checks).
NODE_RESOURCE = "farm_node:"
NODE_SLOTS = 16.0
AUTH_ENV = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")


@dataclass(frozen=True)
class WorkerCommand:
    argv: tuple[str, ...]
    env: Mapping[str, str]  # added to the agent's environment


def fixed_ports(first: int) -> list[str]:
    """Ray's per-node ports pinned to `first`..`first + 99`, so that a firewall can open one range
    between farm PCs instead of everything (Ray otherwise picks free ports at random)."""
    if not 1024 <= first <= 65535 - 99:
        raise InvalidInput("--ray-ports-from", f"must be from 1024 to {65535 - 99}, got {first}")
    named = ("--node-manager-port", "--object-manager-port", "--runtime-env-agent-port",
             "--dashboard-agent-grpc-port", "--dashboard-agent-listen-port", "--metrics-export-port")
    args = [a for i, flag in enumerate(named) for a in (flag, str(first + i))]
    return [*args, "--min-worker-port", str(first + 10), "--max-worker-port", str(first + 99)]


def _ray_command(role: list[str], nodes: Sequence[NodeInfo], ray_token: str, node_ip: str | None,
                 num_cpus: int | None, ray: str, wrapper: Sequence[str], ports_from: int | None) -> WorkerCommand:
    if not nodes:
        raise ValueError("a Ray node of the farm needs at least one farm node (GPU)")
    resources = {NODE_RESOURCE + n.name: NODE_SLOTS for n in nodes}
    argv = [*wrapper, ray, "start", *role, "--resources", json.dumps(resources, sort_keys=True),
            "--num-gpus", str(sum(0 if n.simulated else 1 for n in nodes)), "--block", "--disable-usage-stats",
            # No log monitor: it scans log files all the time (0.6% of a core idle) to send workers'
            # output to drivers, and the coordinator's driver does not take it (log_to_driver=False).
            "--include-log-monitor=false"]
    if num_cpus is not None:
        argv += ["--num-cpus", str(num_cpus)]
    if node_ip:
        argv += ["--node-ip-address", node_ip]
    if ports_from is not None:
        argv += fixed_ports(ports_from)
    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": ray_token} if ray_token else {}
    if env and wrapper:
        env["WSLENV"] = ":".join(f"{k}/u" for k in AUTH_ENV)
    return WorkerCommand(tuple(argv), env)


def ray_start_command(address: str, nodes: Sequence[NodeInfo], ray_token: str, *, node_ip: str | None = None,
                      num_cpus: int | None = None, ray: str = "ray", wrapper: Sequence[str] = (),
                      ports_from: int | None = None) -> WorkerCommand:
    """`ray start --address ... --resources '{"farm_node:<name>": 16}' --block` for this PC's nodes.

    `--block` keeps `ray start` in the foreground, so the supervisor sees the worker die and its
    SIGTERM stops the raylet. With a token, Ray's token authentication is on (RAY_AUTH_MODE=token).
    """
    return _ray_command(["--address", address], nodes, ray_token, node_ip, num_cpus, ray, wrapper, ports_from)


def ray_head_command(port: int, nodes: Sequence[NodeInfo], ray_token: str, *, node_ip: str | None = None,
                     num_cpus: int | None = None, ray: str = "ray", ports_from: int | None = None) -> WorkerCommand:
    """`ray start --head` for the head PC, which is a farm node too; no dashboard (one port less to
    open, and it would be one more service to protect)."""
    return _ray_command(["--head", "--port", str(port), "--include-dashboard=false"], nodes, ray_token, node_ip,
                        num_cpus, ray, (), ports_from)


class Supervisor:
    """Runs one command, restarts it when it exits unasked (waiting 1, 2, 4... up to `max_delay_s`
    seconds, reset after it stays up for `healthy_s`), and stops it (SIGTERM, then SIGKILL)."""

    def __init__(self, command: WorkerCommand, log_path: Path | None = None, *, min_delay_s: float = 1.0,
                 max_delay_s: float = 60.0, healthy_s: float = 60.0, stop_timeout_s: float = 15.0,
                 on_exit: Callable[[int], None] | None = None) -> None:
        self.command = command
        self.log_path = log_path
        self.min_delay_s, self.max_delay_s, self.healthy_s = min_delay_s, max_delay_s, healthy_s
        self.stop_timeout_s = stop_timeout_s
        self.on_exit = on_exit
        self.starts = 0  # processes spawned: each new one is a new Ray node that holds no actors yet
        self.restarts = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._wanted = False
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        with self._cv:
            return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        with self._cv:
            return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    @property
    def wanted(self) -> bool:
        """True between `start` and `stop`."""
        return self._wanted

    def start(self) -> None:
        """Keep the command running until `stop` (a no-op when already wanted)."""
        previous = self._thread
        if previous is not None and not self._wanted:
            previous.join()  # a stop still under way finishes first: one watcher at a time
        with self._cv:
            if self._wanted:
                return
            self._wanted = True
            self._thread = threading.Thread(target=self._watch, name="ray-worker-supervisor", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop the command and stop restarting it; returns once it has exited."""
        with self._cv:
            self._wanted = False
            self._cv.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()

    def _spawn(self) -> subprocess.Popen[bytes]:
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115 (child owns it)
        try:
            return subprocess.Popen(self.command.argv, env={**os.environ, **self.command.env}, stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            if out is not subprocess.DEVNULL:
                out.close()  # type: ignore[union-attr]

    def _watch(self) -> None:
        delay = self.min_delay_s
        while True:
            with self._cv:
                if not self._wanted:
                    return
                try:
                    self._proc = self._spawn()
                    self.starts += 1
                except OSError as e:  # e.g. `ray` not installed: retried, never fatal to the agent
                    log.error("cannot start the Ray worker: %s", e)
                    self._proc = None
            began = time.monotonic()
            code = self._wait_or_stop()
            if code is None:  # stopped on request
                return
            if self.on_exit:
                self.on_exit(code)
            delay = self.min_delay_s if time.monotonic() - began >= self.healthy_s else delay
            log.warning("Ray worker exited with %s; restarting in %.0f s", code, delay)
            with self._cv:
                if self._cv.wait_for(lambda: not self._wanted, timeout=delay):
                    return
                self.restarts += 1
            delay = min(delay * 2, self.max_delay_s)

    def _wait_or_stop(self) -> int | None:
        """Wait until the process exits (its code) or a stop is asked (None, after stopping it)."""
        while True:
            with self._cv:
                proc = self._proc
                if not self._wanted:
                    if proc is not None:
                        _terminate(proc, self.stop_timeout_s)
                    return None
                if proc is None:
                    return -1
                code = proc.poll()
                if code is not None:
                    return code
                self._cv.wait(timeout=0.2)


def _terminate(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM the process group (ray start and the raylet it spawned), then SIGKILL if it lingers.
    On Windows the process itself (wsl.exe: WSL stops what it started)."""
    if os.name == "nt":
        actions: tuple[Callable[[], None], ...] = (proc.terminate, proc.kill)
    else:
        actions = (lambda: os.killpg(proc.pid, signal.SIGTERM), lambda: os.killpg(proc.pid, signal.SIGKILL))
    for action in actions:
        try:
            action()
        except (ProcessLookupError, PermissionError):
            return
        try:
            proc.wait(timeout=timeout)
            return
        except subprocess.TimeoutExpired:
            continue
