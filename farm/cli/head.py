"""`farm head`: the head PC's processes wired together.

It starts the Ray head (token authentication on, its own GPU as a farm node) as a supervised
`ray start --head`, connects the coordinator to it through the Ray executor, serves the coordinator
as `FarmControl` over TLS with the farm's tokens and as the A1111-compatible HTTP API with its
Prometheus metrics (`farm.api.http`), runs the head's own agent in process, and admits
PCs that `farm join`: each joined GPU becomes a node of the executor and the coordinator, and its
agent is followed for the owner's rules and telemetry.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import ray

from farm.api.agent_links import AgentLinks, NodesWithTelemetry, RemoteAgent
from farm.api.control_server import health_service, serve_control, set_serving
from farm.api.http import farm_token_users, make_app
from farm.api.http_server import DEFAULT_HTTP, HttpServer, needs_credentials, parse_http
from farm.api.metrics import FarmMetrics
from farm.cluster.credentials import HeadCredentials
from farm.cluster.membership import Member, Membership, nodes_for
from farm.cluster.pki import write_private
from farm.contracts.control import NodeStatus, OwnerPolicy
from farm.contracts.domain import NodeInfo
from farm.contracts.errors import FarmError
from farm.runtime.coordinator import Coordinator
from farm.runtime.executor import RayExecutor
from farm.runtime.metered import MeteredExecutor
from farm.runtime.outputs import PngWriter
from farm.runtime.store import Store
from node.agent import Agent, InProcessHandle
from node.probe import GpuSource, HostProbe
from node.worker import Supervisor, ray_head_command

log = logging.getLogger(__name__)
RAY_CONNECT_S = 120.0


@dataclass(frozen=True)
class HeadConfig:
    home: Path  # FARM_HOME: the head keeps its CA, tokens and members under home/head
    name: str  # this PC's name as a member of its own farm
    advertise: str  # the address other PCs reach this one at
    bind: str = "0.0.0.0"
    port: int = 7070
    ray_port: int = 6379
    out: Path = Path("renders")
    state: Path | None = None  # the coordinator's store (durable queue); None: in memory
    policy: OwnerPolicy = field(default_factory=OwnerPolicy)
    ray: str = "ray"
    ray_ports_from: int | None = None  # pin Ray's per-node ports to a range (see node.worker.fixed_ports)
    http: tuple[str, int] | None = parse_http(DEFAULT_HTTP)  # the A1111-compatible API and /metrics; None: off
    http_tls: bool = False  # serve the HTTP API over TLS with the head's certificate


def ray_token_auth_supported() -> bool:
    """Whether the installed Ray has token authentication (RAY_AUTH_MODE=token), which older releases lack."""
    return importlib.util.find_spec("ray._private.authentication") is not None


def ray_secret(folder: Path) -> str:
    """The Ray cluster's token: created once, handed to PCs at join, never printed."""
    path = folder / "ray-token"
    if not path.exists():
        write_private(path, secrets.token_hex(32).encode())
    return path.read_text().strip()


def _use_ray_token(token: str) -> None:
    """Make this process (the coordinator, a Ray driver) present the cluster's token.

    Ray reads the mode and the token once per process; the reset is the one its own test utilities
    (`ray._private.authentication_test_utils`) use, so a driver started before the token was known
    picks it up too.
    """
    from ray._raylet import AuthenticationTokenLoader, Config

    os.environ.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token})
    os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def add_node(coordinator: Coordinator, executor: RayExecutor, info: NodeInfo, new_worker: bool = False) -> None:
    """Make a joined GPU a node of a running farm: an actor pinned to its resource, then the
    coordinator's `node_joined`. With `new_worker` (its PC's Ray worker was started again), the actor
    that died with the old worker is replaced (even mid-segment: that segment is requeued); the node
    keeps its pause or drain."""
    known = coordinator.node(info.name)
    if known is not None and not new_worker and not known.offline:
        return  # a live actor: nothing changed
    executor.add_node(info)
    coordinator.node_joined(info)


class Head:
    """A running head; `start` returns once it serves, `stop` undoes it in reverse order."""

    def __init__(self, config: HeadConfig, gpus: GpuSource) -> None:
        self.config = config
        self.gpus = gpus
        self.folder = config.home / "head"
        self.creds = HeadCredentials.load_or_create(self.folder)
        self.ray_token = ray_secret(self.folder)
        self.port = 0
        self._ray: Supervisor | None = None
        self._server = None
        self.http: HttpServer | None = None
        self._agent: Agent | None = None
        self._store: Store | None = None
        self.coordinator: Coordinator | None = None
        self.executor: RayExecutor | None = None
        self.links: AgentLinks | None = None
        self.membership: Membership | None = None

    @property
    def ray_address(self) -> str:
        return f"{self.config.advertise}:{self.config.ray_port}"

    def join_command(self) -> str:
        return f"farm join {self.config.advertise}:{self.port} --token {self.creds.tokens.farm_token}"

    def start(self) -> None:
        cfg = self.config
        if not ray_token_auth_supported():
            log.warning("this Ray has no token authentication: allow port %d from farm PCs only", cfg.ray_port)
        probe = HostProbe(self.gpus)
        own = nodes_for(cfg.name, probe.hardware(), cfg.policy)
        _use_ray_token(self.ray_token)
        self._ray = Supervisor(ray_head_command(cfg.ray_port, own, self.ray_token, node_ip=cfg.advertise, ray=cfg.ray,
                                                ports_from=cfg.ray_ports_from),
                               self.folder / "ray-head.log")
        self._ray.start()
        self._connect_ray()
        self.executor = RayExecutor(own, cfg.home)
        self._store = Store(cfg.state) if cfg.state is not None else None
        metrics = FarmMetrics()
        self.coordinator = Coordinator(MeteredExecutor(self.executor, metrics.work), PngWriter(cfg.out),
                                       store=self._store)
        self.links = AgentLinks(self.coordinator, on_new_worker=self._new_worker)
        self.membership = Membership(self.folder, self.creds.ca, self.creds.tokens, self.ray_address, self.ray_token,
                                     on_join=self._joined, on_remove=self._removed)
        for member in self.membership.members():  # PCs that joined before a restart: their workers reconnect
            self._joined(member)
        self._agent = Agent(probe, cfg.policy, None, release=lambda: self._release_own(own))
        threading.Thread(target=self._agent.run, name="head-agent", daemon=True).start()
        self.links.add(cfg.name, tuple(n.name for n in own), InProcessHandle(self._agent))
        self.coordinator.start()
        service = NodesWithTelemetry(self.coordinator, self.links)
        checker = health_service()
        self.coordinator.on_health = lambda serving: set_serving(checker, serving)
        self._server, self.port = serve_control(service, f"{cfg.bind}:{cfg.port}", tls=self.creds.tls, checker=checker,
                                                tokens=self.creds.tokens, membership=self.membership)
        set_serving(checker, self.coordinator.serving)  # the loop may have stopped before it was watched
        write_private(self.folder / "control.port", str(self.port).encode())
        metrics.watch(service)
        if cfg.http is not None:
            host, port = cfg.http
            app = make_app(service, authenticate=farm_token_users(self.creds.tokens.is_farm_token),
                           require_credentials=needs_credentials(host), metrics=metrics.render)
            tls = (self.folder / "head.key", self.folder / "head.pem") if cfg.http_tls else None
            self.http = HttpServer(app, host, port, tls)
            self.http.start()

    def _connect_ray(self) -> None:
        deadline = time.monotonic() + RAY_CONNECT_S
        while True:
            try:
                ray.init(address=self.ray_address, _node_ip_address=self.config.advertise, logging_level="ERROR",
                         log_to_driver=False)
                return
            except (ConnectionError, RuntimeError) as e:
                if time.monotonic() > deadline:
                    raise FarmError(f"the Ray head did not start (see {self.folder / 'ray-head.log'}): {e}") from None
                time.sleep(2)

    def _release_own(self, own: tuple[NodeInfo, ...]) -> None:
        """The head's GPU paused by its owner: its actors drop their models and free the memory (a
        joined PC's agent stops its Ray worker instead; the head's Ray node also hosts the farm)."""
        if self.executor is not None:
            for info in own:
                self.executor.release(info.name)

    def _joined(self, member: Member) -> None:
        assert self.coordinator is not None and self.executor is not None and self.links is not None
        for info in member.nodes:  # a (re)join means a new Ray worker on that PC: always a fresh actor
            add_node(self.coordinator, self.executor, info, new_worker=True)
        self.links.add(member.name, tuple(n.name for n in member.nodes),
                       RemoteAgent(member, self.creds.ca.cert_pem))

    def _new_worker(self, node: str) -> None:
        assert self.coordinator is not None and self.executor is not None and self.membership is not None
        info = next((n for m in self.membership.members() for n in m.nodes if n.name == node), None)
        if info is not None:
            add_node(self.coordinator, self.executor, info, new_worker=True)

    def _removed(self, member: Member) -> None:
        """A removed PC leaves at once: its agent stops its Ray worker (as for a pause), its actors are
        killed, and the coordinator forgets its nodes; a segment one was running resumes elsewhere
        from its last checkpoint."""
        assert self.coordinator is not None and self.links is not None and self.executor is not None
        for info in member.nodes:
            self.links.command(info.name, NodeStatus.PAUSED, "removed from the farm")
            self.executor.remove_node(info.name)
            try:
                self.coordinator.remove_node(info.name)
            except FarmError as e:
                log.warning("removing %s: %s", info.name, e)
        self.links.remove(member.name)

    def stop(self) -> None:
        """Stop everything that started, last first; one failing step (Ray already gone) does not
        keep the others, above all the Ray head process, from stopping."""
        steps = [
            lambda: self.http.stop() if self.http is not None else None,
            lambda: self._server.stop(grace=2).wait() if self._server is not None else None,
            lambda: self.coordinator.stop() if self.coordinator is not None else None,
            lambda: self._agent.close() if self._agent is not None else None,
            lambda: self.executor.shutdown() if self.executor is not None else None,
            ray.shutdown,
            lambda: self._ray.stop() if self._ray is not None else None,
            lambda: self._store.close() if self._store is not None else None,
            lambda: (self.folder / "control.port").unlink(missing_ok=True),
        ]
        for step in steps:
            try:
                step()
            except Exception:
                log.exception("while stopping the head")
