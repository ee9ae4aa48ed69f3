"""`farm join`: a PC becomes part of a farm.

First contact is pinned: the head's certificate must match the pin inside the join token before the
token is sent (`farm.cluster.pki.fetch_pinned_cert`). The PC keeps its private key, sends a certificate
request, and gets back its certificate, the farm CA, its node token and what its Ray worker needs: the
Ray address and token, and (for the same key) a Ray certificate from the current Ray CA with that CA.
It then serves its `NodeAgent` with its farm certificate and keeps its Ray worker running, with Ray's
TLS on its Ray certificate (off loopback). Each restart of the worker asks the head for these again:
a removal of another PC starts a new Ray epoch (token and Ray CA).
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from farm.api.auth import bearer
from farm.api.control_client import FarmClient, open_channel, split_address
from farm.api.convert import node_name
from farm.api.models_client import HeadModels
from farm.cluster.membership import JoinGrant, RayCredentials
from farm.cluster.pki import TlsIdentity, fetch_pinned_cert, is_loopback, new_key_and_csr, write_private
from farm.cluster.tokens import pin_of
from farm.contracts.control import OwnerPolicy
from farm.contracts.errors import FarmError
from node.agent import Agent
from node.agent_server import serve_agent
from node.model_fetch import ModelStore
from node.probe import GpuSource, HostProbe
from node.worker import RayTls, Supervisor, WorkerCommand, ray_start_command

log = logging.getLogger(__name__)
HEAD_PORT = 7070
RAY_PORT = 6379
AGENT_PORT = 7071


@dataclass(frozen=True)
class JoinConfig:
    head: str  # HOST or HOST:PORT
    token: str
    name: str
    home: Path
    listen: str = f"0.0.0.0:{AGENT_PORT}"  # where this PC's agent listens
    advertise: str = ""  # the address the head reaches the agent at; empty: as the head sees this PC
    policy: OwnerPolicy = OwnerPolicy()
    wrapper: tuple[str, ...] = ()  # e.g. ("wsl.exe", "--") on Windows
    ray: str = "ray"
    ray_ports_from: int | None = None  # pin Ray's per-node ports to a range (see node.worker.fixed_ports)
    start_worker: bool = True
    # The owner's model lists (fnmatch patterns; `farm join --models/--deny-models`); None: as the head has them.
    models: tuple[str, ...] | None = None
    deny_models: tuple[str, ...] | None = None


def ray_port_problem(address: str, timeout_s: float = 3.0) -> str:
    """Why this PC cannot open a TCP connection to the head's Ray port ('' when it can), with the rule
    that fixes it: a home firewall blocks it first, and without it the Ray worker never joins (it
    would retry for minutes and the node would sit there without saying why)."""
    host, port = split_address(address, RAY_PORT)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return ""
    except OSError as e:
        why = e.strerror or str(e) or type(e).__name__
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect((host, port))  # no packet is sent: it only picks the route's source address
            here = s.getsockname()[0]
        except OSError:
            here = "this PC"
    return (f"cannot reach the head's Ray port {host}:{port} ({why}): allow TCP port {port} from {here} on the "
            f"head, e.g. `sudo ufw allow proto tcp from {here} to any port {port}`")


def _listen_port(listen: str) -> tuple[str, int]:
    """The agent's host and port; port 0 picks a free one now, because the head must be told it."""
    host, _, port = listen.rpartition(":")
    if int(port):
        return host, int(port)
    with socket.socket(socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET) as s:
        s.bind((host.strip("[]"), 0))
        return host, s.getsockname()[1]


def request_join(cfg: JoinConfig, probe: HostProbe, agent_port: int, saved: Path) -> tuple[bytes, JoinGrant]:
    """Join the head; returns this PC's private key and what the head granted.

    A PC that joined this head before (`saved` holds its CA and node token) rejoins as that member
    first, so a PC restarted after a rotation of the join token comes back without a new join line
    (its name is its own, and its certificate is renewed). Then, or for a new PC, with the join token.
    """
    name = node_name("--name", cfg.name)
    host, port = split_address(cfg.head, HEAD_PORT)
    key_pem, csr_pem = new_key_and_csr(name)
    attempts = []
    before = json.loads((saved / "join.json").read_text()) if (saved / "join.json").exists() else {}
    if before.get("head") == cfg.head and (saved / "ca.pem").exists():
        attempts.append((lambda: (saved / "ca.pem").read_bytes(), before["node_token"]))
    attempts.append((lambda: fetch_pinned_cert(host, port, pin_of(cfg.token)), cfg.token))
    for i, (roots, token) in enumerate(attempts):
        client = FarmClient(open_channel(host, port, roots()), token, where=f"the head at {host}:{port}")
        try:
            return key_pem, client.join(name, csr_pem, probe.hardware(), f"{cfg.advertise}:{agent_port}", cfg.policy)
        except FarmError:  # removed, renamed, or another farm now: the join token decides
            if i == len(attempts) - 1:
                raise
        finally:
            client.close()
    raise AssertionError("unreachable: the last attempt returns or raises")


def save(folder: Path, head: str, key_pem: bytes, grant: JoinGrant) -> None:
    """Keep what the join gave (0600), so that `farm nodes` on this PC and a re-join can use it."""
    write_private(folder / "node.key", key_pem)
    write_private(folder / "node.pem", grant.cert_pem)
    (folder / "ca.pem").write_bytes(grant.ca_pem)
    write_private(folder / "join.json", json.dumps({
        "head": head, "node_token": grant.node_token, "ray_address": grant.ray_address,
        "nodes": [n.name for n in grant.nodes]}, indent=1).encode())


class JoinedNode:
    """The running agent of a joined PC: NodeAgent server, rules loop, supervised Ray worker."""

    def __init__(self, cfg: JoinConfig, gpus: GpuSource) -> None:
        self.cfg = cfg
        self.probe = HostProbe(gpus)
        self.folder = cfg.home / "node"
        self.server: grpc.Server | None = None
        self.agent: Agent | None = None
        self.grant: JoinGrant | None = None
        self.agent_address = ""

    def start(self) -> None:
        host, port = _listen_port(self.cfg.listen)
        key_pem, self.grant = request_join(self.cfg, self.probe, port, self.folder)
        save(self.folder, self.cfg.head, key_pem, self.grant)
        worker = None
        if self.cfg.start_worker:
            ray_host, _ = split_address(self.grant.ray_address, 0)
            grant = self.grant

            def command(ray: RayCredentials) -> WorkerCommand:
                """The worker's command, its TLS files (0600) written for this epoch's certificate and CA."""
                tls = None if is_loopback(ray_host) else RayTls.write(self.folder, key_pem, ray.cert_pem, ray.ca_pem)
                return ray_start_command(ray.address, grant.nodes, ray.token, node_ip=self.cfg.advertise or None,
                                         ray=self.cfg.ray, wrapper=self.cfg.wrapper,
                                         ports_from=self.cfg.ray_ports_from, tls=tls)

            def current() -> WorkerCommand:
                """Ray's token, this PC's Ray certificate and the Ray CA as the head has them now (a removal of
                another PC starts a new epoch)."""
                head, port = split_address(self.cfg.head, HEAD_PORT)
                client = FarmClient(open_channel(head, port, grant.ca_pem), grant.node_token,
                                    where=f"the head at {head}:{port}")
                try:
                    return command(client.ray_credentials())
                finally:
                    client.close()

            worker = Supervisor(command(grant.ray), self.folder / "ray-worker.log",
                                refresh=current, precheck=lambda: ray_port_problem(grant.ray_address))
        self.agent = Agent(self.probe, self.cfg.policy, worker)
        self.agent.tick()
        self.agent_address = f"{host}:{port}"
        self.server, _ = serve_agent(self.agent, f"{host}:{port}", tls=TlsIdentity(key_pem, self.grant.cert_pem),
                                     node_token=self.grant.node_token)
        threading.Thread(target=self.agent.run, name="agent", daemon=True).start()
        self._tell_models()

    def _tell_models(self) -> None:
        """Tell the head this PC's model lists (when the owner gave them) and the synced models on its disk."""
        assert self.grant is not None
        host, port = split_address(self.cfg.head, HEAD_PORT)
        head = HeadModels(open_channel(host, port, self.grant.ca_pem), bearer(self.grant.node_token),
                          where=f"the head at {host}:{port}")
        try:
            if self.cfg.models is not None or self.cfg.deny_models is not None:  # asked for: a refusal stops the join
                head.set_rules(node_name("--name", self.cfg.name), self.cfg.models or (), self.cfg.deny_models or ())
            stored = ModelStore(self.cfg.home / "models" / "hub").stored()
            try:
                head.report(stored, 0.0)
            except FarmError as e:  # the planner then counts this PC as holding none of them: it still renders
                log.warning("could not tell the head which models this PC holds: %s", e)
        finally:
            head.close()

    @property
    def node_names(self) -> Sequence[str]:
        return [n.name for n in self.grant.nodes] if self.grant else []

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(grace=2).wait()
        if self.agent is not None:
            self.agent.close()
