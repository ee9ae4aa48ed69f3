"""`farm join`: a PC becomes part of a farm.

First contact is pinned: the head's certificate must match the pin inside the join token before the
token is sent (`farm.cluster.pki.fetch_pinned_cert`). The PC keeps its private key, sends a certificate
request, and gets back its certificate, the farm CA, its node token and the Ray address and token.
It then serves its `NodeAgent` with that certificate and keeps its Ray worker running.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from farm.api.control_client import FarmClient, open_channel, split_address
from farm.api.convert import node_name
from farm.cluster.membership import JoinGrant
from farm.cluster.pki import TlsIdentity, fetch_pinned_cert, new_key_and_csr, write_private
from farm.cluster.tokens import pin_of
from farm.contracts.control import OwnerPolicy
from farm.contracts.errors import Unauthenticated
from node.agent import Agent
from node.agent_server import serve_agent
from node.probe import GpuSource, HostProbe
from node.worker import Supervisor, ray_start_command

HEAD_PORT = 7070
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

    With the farm token first; if the head refuses it (rotated since this PC joined) and this PC
    joined before (`saved` holds its CA and node token), again as that member, so a PC restarted
    after a rotation comes back without a new join line.
    """
    name = node_name("--name", cfg.name)
    host, port = split_address(cfg.head, HEAD_PORT)
    key_pem, csr_pem = new_key_and_csr(name)
    attempts = [(lambda: fetch_pinned_cert(host, port, pin_of(cfg.token)), cfg.token)]
    if (saved / "join.json").exists() and (saved / "ca.pem").exists():
        node_token = json.loads((saved / "join.json").read_text())["node_token"]
        attempts.append((lambda: (saved / "ca.pem").read_bytes(), node_token))
    for i, (roots, token) in enumerate(attempts):
        client = FarmClient(open_channel(host, port, roots()), token, where=f"the head at {host}:{port}")
        try:
            return key_pem, client.join(name, csr_pem, probe.hardware(), f"{cfg.advertise}:{agent_port}", cfg.policy)
        except Unauthenticated:
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
            command = ray_start_command(self.grant.ray_address, self.grant.nodes, self.grant.ray_token,
                                        node_ip=self.cfg.advertise or None, ray=self.cfg.ray, wrapper=self.cfg.wrapper,
                                        ports_from=self.cfg.ray_ports_from)
            worker = Supervisor(command, self.folder / "ray-worker.log")
        self.agent = Agent(self.probe, self.cfg.policy, worker)
        self.agent.tick()
        self.agent_address = f"{host}:{port}"
        self.server, _ = serve_agent(self.agent, f"{host}:{port}", tls=TlsIdentity(key_pem, self.grant.cert_pem),
                                     node_token=self.grant.node_token)
        threading.Thread(target=self.agent.run, name="agent", daemon=True).start()

    @property
    def node_names(self) -> Sequence[str]:
        return [n.name for n in self.grant.nodes] if self.grant else []

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(grace=2).wait()
        if self.agent is not None:
            self.agent.close()
