"""`farm head`: the head PC's processes wired together.

It starts the Ray head (token authentication on, TLS with Ray-CA certificates off loopback, its own
GPU as a farm node) as a supervised `ray start --head`, connects the coordinator to it through the Ray
executor, serves the coordinator as `FarmControl` over TLS with the farm's tokens and roles and as the
A1111-compatible HTTP API with its Prometheus metrics (`farm.api.http`), runs the head's own agent in
process, and admits PCs that `farm join`: each joined GPU becomes a node of the executor and the coordinator, and its
agent is followed for the owner's rules and telemetry.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import ray

from farm.api.agent_links import AgentLinks, NodesWithTelemetry, RemoteAgent
from farm.api.control_server import health_service, serve_control, set_serving
from farm.api.http import make_app, token_users
from farm.api.http_server import DEFAULT_HTTP, HttpServer, needs_credentials, parse_http
from farm.api.metrics import FarmMetrics
from farm.api.model_server import ModelLibrary, ServedModels, add_models_service, head_folder
from farm.cluster.credentials import HeadCredentials
from farm.cluster.membership import Member, Membership, nodes_for, ray_secret
from farm.cluster.pki import FarmCA, is_loopback, ray_identity, write_private
from farm.contracts.control import NodeStatus, OwnerPolicy
from farm.contracts.domain import NodeInfo
from farm.contracts.errors import FarmError, Unreachable
from farm.runtime.coordinator import Coordinator
from farm.runtime.executor import RayExecutor
from farm.runtime.metered import MeteredExecutor
from farm.runtime.outputs import PngWriter
from farm.runtime.store import Store
from node.agent import Agent, InProcessHandle
from node.model_fetch import from_environment
from node.probe import GpuSource, HostProbe
from node.worker import QUIET_RAY, RayTls, Supervisor, ray_head_command

log = logging.getLogger(__name__)
RAY_CONNECT_S = 120.0
RAY_STARTED = b"block forever"  # what `ray start --block` prints once its processes are up


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


class Reconnecting:
    """The executor the coordinator drives: the current `RayExecutor`, which a new Ray epoch (token and
    Ray CA) replaces (Ray reads its token and TLS files once per process, so the cluster restarts).

    While it does, nothing calls the Ray that is gone, and nothing waits for the new one under the
    coordinator's lock, so the API keeps answering through the restart (a minute or two): the loop
    finds no finished work and no progress, a segment or probe fails at once as for an unreachable
    worker (every node went offline before the restart), and an interrupt or a wake-up has nothing to
    reach (the new executor's arrival wakes the loop)."""

    def __init__(self, inner: RayExecutor) -> None:
        self._inner = inner
        self._ready = threading.Event()
        self._ready.set()

    def __getattr__(self, name: str) -> object:
        if not self._ready.is_set():
            match name:
                case "wait":
                    return self._wait_restarted
                case "step_events":
                    return list
                case "submit" | "probe":
                    return self._refuse
                case "interrupt" | "wake":
                    return lambda *_: None
        self._ready.wait()
        return getattr(self._inner, name)

    def _wait_restarted(self, timeout: float | None = None) -> list[object]:
        self._ready.wait(timeout)
        return []

    @staticmethod
    def _refuse(*_: object) -> object:
        raise Unreachable("the Ray cluster is restarting in a new epoch (after a node removal)")

    def hold(self) -> None:
        self._ready.clear()

    def resume(self, inner: RayExecutor) -> None:
        self._inner = inner
        self._ready.set()


def _use_ray_token(token: str, tls: RayTls | None) -> None:
    """Make this process (the coordinator, a Ray driver) present the cluster's token, over TLS when
    the cluster uses it.

    Ray reads the mode, the token and TLS settings once per process; the reset is the one its own test
    utilities (`ray._private.authentication_test_utils`) use, so a driver started before the token was
    known picks it up too.
    """
    from ray._raylet import AuthenticationTokenLoader, Config

    os.environ.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, **(tls.env() if tls else {})})
    os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def _forget_last_ray_session() -> None:
    """Drop Ray's note of the cluster last started here (`ray_current_cluster` in its temp folder): with
    it, `ray start --head` refuses to start again at that address ("already running") while any process
    in `ps` names it, e.g. a PC's raylet still reaching for the head that restarted, where PCs share one
    process table (PCs in network namespaces on one machine). The head starts a new cluster anyway."""
    from ray._common.utils import get_ray_address_file

    Path(get_ray_address_file(None)).unlink(missing_ok=True)


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
        self._own: tuple[NodeInfo, ...] = ()
        self._executor: Reconnecting | None = None
        self._ray_lock = threading.Lock()  # joins wait while Ray restarts with a new token, and so does `stop`
        self._stopping = threading.Event()
        # Set after every ray.init: Ray installs its own SIGTERM handler, which would skip `stop` and leave
        # the Ray head running; the main thread puts `farm head`'s back (`farm.cli.cluster`).
        self.ray_connected = threading.Event()

    @property
    def ray_address(self) -> str:
        return f"{self.config.advertise}:{self.config.ray_port}"

    def join_command(self) -> str:
        """The line to run on a PC: the join token in the environment, never in `ps` or an argument."""
        return f"FARM_TOKEN={self.creds.tokens.join_token} farm join {self.config.advertise}:{self.port}"

    def _ray_tls(self, ray_ca: FarmCA) -> RayTls | None:
        """Ray's TLS files for this head (a certificate from the current Ray CA naming its address, and
        that CA as the only one trusted), or None on loopback only."""
        if is_loopback(self.config.advertise):
            return None
        ident = ray_identity(ray_ca, (self.config.advertise, "127.0.0.1"))
        return RayTls.write(self.folder, ident.key_pem, ident.cert_pem, ray_ca.cert_pem)

    def start(self) -> None:
        cfg = self.config
        if not ray_token_auth_supported():
            log.warning("this Ray has no token authentication: allow port %d from farm PCs only", cfg.ray_port)
        probe = HostProbe(self.gpus)
        own = nodes_for(cfg.name, probe.hardware(), cfg.policy)
        os.environ.update(QUIET_RAY)  # this process is a Ray driver too: the same quiet timers
        self._own = own
        self.membership = Membership(self.folder, self.creds.ca, self.creds.tokens, self.ray_address,
                                     ray_secret(self.folder), on_join=self._joined, on_remove=self._removed)
        self._start_ray()
        self._connect_ray()
        self.executor = RayExecutor(own, cfg.home, models=from_environment)  # a PC's actor fetches what it lacks
        self._executor = Reconnecting(self.executor)
        self._store = Store(cfg.state) if cfg.state is not None else None
        metrics = FarmMetrics()
        self.coordinator = Coordinator(MeteredExecutor(self._executor, metrics.work), PngWriter(cfg.out),  # type: ignore[arg-type]
                                       store=self._store)
        self.links = AgentLinks(self.coordinator, on_new_worker=self._new_worker, on_offline=self.coordinator.node_left)
        for member in self.membership.members():  # PCs that joined before a restart: their workers reconnect
            self._joined(member)
        self._agent = Agent(probe, cfg.policy, None, release=lambda: self._release_own(own))
        threading.Thread(target=self._agent.run, name="head-agent", daemon=True).start()
        self.links.add(cfg.name, tuple(n.name for n in own), InProcessHandle(self._agent))
        self.coordinator.start()
        library = ModelLibrary(head_folder)
        own_names = tuple(n.name for n in own)
        service = ServedModels(NodesWithTelemetry(self.coordinator, self.links), library, self.coordinator, own_names)
        checker = health_service()
        self.coordinator.on_health = lambda serving: set_serving(checker, serving)
        self._server, self.port = serve_control(service, f"{cfg.bind}:{cfg.port}", tls=self.creds.tls, checker=checker,
                                                tokens=self.creds.tokens, membership=self.membership,
                                                more=lambda server, access: add_models_service(
                                                    server, access, library, self.coordinator, self._nodes_of,
                                                    own_names))
        set_serving(checker, self.coordinator.serving)  # the loop may have stopped before it was watched
        write_private(self.folder / "control.port", str(self.port).encode())
        metrics.watch(service)
        if cfg.http is not None:
            host, port = cfg.http
            app = make_app(service, authenticate=token_users(self.creds.tokens.identify),
                           require_credentials=needs_credentials(host), metrics=metrics.render)
            tls = (self.folder / "head.key", self.folder / "head.pem") if cfg.http_tls else None
            self.http = HttpServer(app, host, port, tls)
            self.http.start()

    def _nodes_of(self, pc: str) -> tuple[str, ...]:
        """The node names of a member PC (none for an unknown name)."""
        assert self.membership is not None
        return next((tuple(n.name for n in m.nodes) for m in self.membership.members() if m.name == pc), ())

    def _start_ray(self) -> None:
        """The Ray head in the current epoch (its token; TLS with the Ray CA off loopback), supervised;
        `_connect_ray` then makes this process its driver."""
        cfg = self.config
        assert self.membership is not None
        epoch = self.membership.ray_epoch
        tls = self._ray_tls(epoch.ca)
        _use_ray_token(epoch.token, tls)
        log_path = self.folder / "ray-head.log"
        self._ray = Supervisor(ray_head_command(cfg.ray_port, self._own, epoch.token, node_ip=cfg.advertise,
                                                ray=cfg.ray, ports_from=cfg.ray_ports_from, tls=tls), log_path)
        self._ray_log_mark = log_path.stat().st_size if log_path.exists() else 0
        _forget_last_ray_session()
        self._ray.start()

    def _ray_started(self, deadline: float) -> None:
        """Wait until this start's `ray start --block` says the runtime is up (GCS and raylet). A
        driver that connects while the GCS is still coming up (as after a token rotation) can be
        aborted inside Ray (a fatal check on its first job id), taking the head with it."""
        path = self.folder / "ray-head.log"
        while time.monotonic() < deadline and not self._stopping.is_set():
            try:
                with path.open("rb") as f:
                    f.seek(self._ray_log_mark)
                    if RAY_STARTED in f.read():
                        return
            except FileNotFoundError:
                pass
            time.sleep(0.5)

    def _connect_ray(self) -> None:
        deadline = time.monotonic() + RAY_CONNECT_S
        self._ray_started(deadline)
        while True:
            try:
                ray.init(address=self.ray_address, _node_ip_address=self.config.advertise, logging_level="ERROR",
                         log_to_driver=False)
                self.ray_connected.set()
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
        with self._ray_lock:  # not while Ray restarts in a new epoch
            for info in member.nodes:  # a (re)join means a new Ray worker on that PC: always a fresh actor
                add_node(self.coordinator, self.executor, info, new_worker=True)
        self.links.add(member.name, tuple(n.name for n in member.nodes),
                       RemoteAgent(member, self.creds.ca.cert_pem))

    def _new_worker(self, node: str) -> None:
        assert self.coordinator is not None and self.executor is not None and self.membership is not None
        info = next((n for m in self.membership.members() for n in m.nodes if n.name == node), None)
        if info is not None:
            with self._ray_lock:
                add_node(self.coordinator, self.executor, info, new_worker=True)

    def _removed(self, member: Member) -> None:
        """A removed PC leaves at once: its agent stops its Ray worker (as for a pause), its actors are
        killed, and the coordinator forgets its nodes; a segment one was running resumes elsewhere
        from its last checkpoint. Membership has already ended the Ray epoch the PC knew (token and Ray
        CA); the Ray cluster restarts in the new one, in the background."""
        assert self.coordinator is not None and self.links is not None and self.executor is not None
        for info in member.nodes:
            self.links.command(info.name, NodeStatus.PAUSED, "removed from the farm")
            self.executor.remove_node(info.name)
            try:
                self.coordinator.remove_node(info.name)
            except FarmError as e:
                log.warning("removing %s: %s", info.name, e)
        self.links.remove(member.name)
        threading.Thread(target=self._rotate_ray_token, name="rotate-ray-token", daemon=True).start()

    def _rotate_ray_token(self) -> None:
        """Restart Ray in the epoch a removal began: a new token, and a new Ray CA, the only one every Ray
        process trusts from now on, so that the removed PC's token and Ray certificate (from the old CA)
        are refused in every TLS handshake with the cluster. Ray reads its token and TLS files once per
        process, so the Ray head restarts: every node goes offline first (its segment is requeued from
        its last checkpoint, as for a lost node; the node stays listed, with its pause or drain), the
        head's own node comes back at once, and each remaining PC's Ray worker, which loses the old
        cluster, is restarted by its agent with the token, Ray certificate and Ray CA it asks the head
        for (`RayToken`) and gets a new actor, as after any restart."""
        assert self.coordinator is not None and self.membership is not None and self._executor is not None
        with self._ray_lock:
            if self._stopping.is_set():
                return  # the next start begins in the new epoch: Membership keeps it on disk
            log.warning("a new Ray token and Ray CA after a removal: restarting the Ray cluster")
            for info in (*self._own, *(n for m in self.membership.members() for n in m.nodes)):
                try:
                    self.coordinator.node_left(info.name, "Ray restarts with a new token")
                except FarmError as e:
                    log.warning("while rotating Ray's token, %s: %s", info.name, e)
            self._executor.hold()
            for step in (self.executor.shutdown, ray.shutdown, self._ray.stop):  # type: ignore[union-attr]
                try:
                    step()
                except Exception:
                    log.exception("while stopping Ray to start its new epoch")
            if self._stopping.is_set():
                return  # the head stops: no new Ray head to outlive it (the next start is in the new epoch)
            self._start_ray()
            while not self._stopping.is_set():  # the supervisor keeps starting Ray (a port still held)
                try:
                    self._connect_ray()
                    break
                except FarmError as e:
                    log.warning("Ray has not restarted yet: %s", e)
            else:
                return  # the head stops: `stop` stops the new Ray head
            self.executor = RayExecutor(self._own, self.config.home, models=from_environment)
            self._executor.resume(self.executor)
            for info in self._own:
                self.coordinator.node_joined(info)

    def stop(self) -> None:
        """Stop everything that started, last first; one failing step (Ray already gone) does not
        keep the others, above all the Ray head process, from stopping. A rotation of Ray's token
        under way ends first, so that no Ray head it started outlives this."""
        self._stopping.set()
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
        with self._ray_lock:
            for step in steps:
                try:
                    step()
                except Exception:
                    log.exception("while stopping the head")
