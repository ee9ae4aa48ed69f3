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

from farm.cluster.pki import write_private
from farm.contracts.domain import NodeInfo
from farm.contracts.errors import InvalidInput

log = logging.getLogger(__name__)

# The same values as farm.runtime.executor's (kept here so the agent does not import Ray; a test checks).
NODE_RESOURCE = "farm_node:"
NODE_SLOTS = 16.0
# Ray's timers that cost an idle farm CPU and buy it nothing (no dashboard, no metrics, no autoscaler,
# a handful of long-lived actors), as RAY_<name> settings (src/ray/common/ray_config_def.h). Each Ray
# process reads them from its environment, which it inherits from `ray start`; the head's driver sets
# them too. Liveness is untouched: GCS health checks, heartbeats and reconnects keep their defaults.
QUIET_RAY = {
    "RAY_enable_metrics_collection": "0",  # nobody scrapes Ray's metrics: farm serves its own /metrics
    "RAY_metrics_report_interval_ms": "60000",
    "RAY_emit_main_service_metrics": "0",
    "RAY_event_stats": "0",  # per-handler stats of every event loop, for debug dumps
    # Rare rather than off: the GCS runs these timers whatever the value, and 0 makes it spin.
    "RAY_event_stats_print_interval_ms": "600000",
    "RAY_debug_dump_period_milliseconds": "600000",  # debug_state.txt every 10 minutes instead of 10 s
    "RAY_task_events_report_interval_ms": "0",  # task state events: for the dashboard's task list
    "RAY_enable_timeline": "0",
    "RAY_io_context_event_loop_lag_collection_interval_ms": "0",  # a metric
    "RAY_memory_monitor_refresh_ms": "1000",  # still guards against OOM, 4 times a second less
    "RAY_raylet_check_gc_period_milliseconds": "1000",  # object store pressure: ours is nearly empty
    "RAY_raylet_report_resources_period_milliseconds": "1000",  # a new actor is placed up to 1 s later
    "RAY_local_fs_monitor_interval_ms": "1000",  # disk-full check for the object store
    "RAY_kill_idle_workers_interval_ms": "10000",  # farm runs actors, not a pool of task workers
    "RAY_report_worker_backlog_interval_ms": "10000",  # for the autoscaler, which a farm has not
    "RAY_gcs_pull_resource_loads_period_milliseconds": "10000",  # likewise (and `ray status`)
    "RAY_object_manager_timer_freq_ms": "1000",  # retries of failed object pulls; a pull starts at once
    # No pool of idle task workers (each wakes every 10 ms): the head's raylet starts one per CPU when the
    # coordinator's driver connects, and keeps that many idle. Every farm actor gets a worker of its own.
    # Ray 2.60 drains a node for 30 s on SIGTERM before it stops (for Ray Serve); the farm drains its
    # own work from checkpoints, and a PC's owner gets the GPU back at once.
    "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
    "RAY_prestart_worker_first_driver": "0",
    "RAY_num_workers_soft_limit": "0",
}


@dataclass(frozen=True)
class RayTls:
    """Ray's TLS between PCs (`RAY_USE_TLS`): this PC's key and its certificate from the current Ray CA,
    and that CA, as the files Ray reads. Every Ray connection is then mutual TLS checked against the Ray
    CA, so the Ray token and the work (prompts, checkpoints) never cross the LAN in clear, and a PC
    removed from the farm (its certificate from an earlier Ray CA) fails every handshake."""

    folder: Path

    @classmethod
    def write(cls, folder: Path, key_pem: bytes, cert_pem: bytes, ca_pem: bytes) -> RayTls:
        for name, data in (("ray-tls.key", key_pem), ("ray-tls.pem", cert_pem), ("ray-tls-ca.pem", ca_pem)):
            write_private(folder / name, data)
        return cls(folder)

    def env(self) -> dict[str, str]:
        return {"RAY_USE_TLS": "1", "RAY_TLS_SERVER_CERT": str(self.folder / "ray-tls.pem"),
                "RAY_TLS_SERVER_KEY": str(self.folder / "ray-tls.key"),
                "RAY_TLS_CA_CERT": str(self.folder / "ray-tls-ca.pem")}


TLS_PATHS = ("RAY_TLS_SERVER_CERT", "RAY_TLS_SERVER_KEY", "RAY_TLS_CA_CERT")  # WSLENV translates these paths


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
                 num_cpus: int | None, ray: str, wrapper: Sequence[str], ports_from: int | None,
                 tls: RayTls | None) -> WorkerCommand:
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
    env = {**QUIET_RAY, **({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": ray_token} if ray_token else {}),
           **(tls.env() if tls is not None else {})}
    if wrapper:
        env["WSLENV"] = ":".join(f"{k}/up" if k in TLS_PATHS else f"{k}/u" for k in env)
    return WorkerCommand(tuple(argv), env)


def ray_start_command(address: str, nodes: Sequence[NodeInfo], ray_token: str, *, node_ip: str | None = None,
                      num_cpus: int | None = None, ray: str = "ray", wrapper: Sequence[str] = (),
                      ports_from: int | None = None, tls: RayTls | None = None) -> WorkerCommand:
    """`ray start --address ... --resources '{"farm_node:<name>": 16}' --block` for this PC's nodes.

    `--block` keeps `ray start` in the foreground, so the supervisor sees the worker die and its
    SIGTERM stops the raylet. With a token, Ray's token authentication is on (RAY_AUTH_MODE=token);
    with `tls`, Ray's TLS (RAY_USE_TLS).
    """
    return _ray_command(["--address", address], nodes, ray_token, node_ip, num_cpus, ray, wrapper, ports_from, tls)


def ray_head_command(port: int, nodes: Sequence[NodeInfo], ray_token: str, *, node_ip: str | None = None,
                     num_cpus: int | None = None, ray: str = "ray", ports_from: int | None = None,
                     tls: RayTls | None = None) -> WorkerCommand:
    """`ray start --head` for the head PC, which is a farm node too; no dashboard (one port less to
    open, and it would be one more service to protect)."""
    return _ray_command(["--head", "--port", str(port), "--include-dashboard=false",
                         "--no-monitor"],  # the autoscaler's monitor: a farm's PCs join by themselves
                        nodes, ray_token, node_ip,
                        num_cpus, ray, (), ports_from, tls)


class Supervisor:
    """Runs one command, restarts it when it exits unasked (waiting 1, 2, 4... up to `max_delay_s`
    seconds, reset after it stays up for `healthy_s`), and stops it (SIGTERM, then SIGKILL). With
    `refresh`, each start after the first runs the command it returns (a joined PC asks the head for
    Ray's current token: a removal rotates it); if it fails, the last command runs again."""

    def __init__(self, command: WorkerCommand, log_path: Path | None = None, *, min_delay_s: float = 1.0,
                 max_delay_s: float = 60.0, healthy_s: float = 60.0, stop_timeout_s: float = 15.0,
                 on_exit: Callable[[int], None] | None = None,
                 refresh: Callable[[], WorkerCommand] | None = None,
                 precheck: Callable[[], str] | None = None, recheck_s: float = 5.0) -> None:
        self.command = command
        self.refresh = refresh
        # Before each start: why the worker cannot work now ('' when it can), e.g. the head's Ray port
        # unreachable. It is then not started (no back-off piling up) but asked again every `recheck_s`.
        self.precheck, self.recheck_s = precheck, recheck_s
        self.problem = ""
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
            if self.refresh is not None and self.starts:
                try:
                    self.command = self.refresh()
                except Exception as e:  # the head unreachable: the last command, retried with back-off
                    log.warning("could not renew the Ray worker's command: %s", e)
            if self._blocked():
                delay = self.min_delay_s  # its exits were the network's doing: start at once once it opens
                continue
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

    def _blocked(self) -> bool:
        """`precheck` finds a reason not to start now: kept in `problem` (logged once per change), and
        waited `recheck_s` (or until a stop)."""
        if self.precheck is None or not self._wanted:
            return False
        problem = self.precheck()
        if problem != self.problem:
            if problem:
                log.warning("Ray worker not started: %s", problem)
            else:
                log.info("Ray worker can start again")
        self.problem = problem
        if problem:
            with self._cv:
                self._cv.wait_for(lambda: not self._wanted, timeout=self.recheck_s)
        return bool(problem)

    def _wait_or_stop(self) -> int | None:
        """Wait until the process exits (its code) or a stop is asked (None, after stopping it).
        A thread blocks in `wait()` and wakes this one: no polling while the worker runs."""
        with self._cv:
            proc = self._proc
        if proc is not None:
            threading.Thread(target=self._reap, args=(proc,), name="ray-worker-reaper", daemon=True).start()
        with self._cv:
            self._cv.wait_for(lambda: not self._wanted or proc is None or proc.poll() is not None)
            if not self._wanted:
                if proc is not None:
                    _terminate(proc, self.stop_timeout_s)
                return None
            return -1 if proc is None else proc.returncode

    def _reap(self, proc: subprocess.Popen[bytes]) -> None:
        proc.wait()
        with self._cv:
            self._cv.notify_all()


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
