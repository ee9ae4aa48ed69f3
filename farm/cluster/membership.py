"""Who belongs to the farm: the head's side of `farm join`, `farm token rotate` and `farm node remove`.

A join turns one PC into one node per GPU (its VRAM budget capped by the owner's rule), signs the PC's
certificate request with the farm CA, and hands back what the PC needs to start its Ray worker. The
member table is kept in the head's folder, so a restarted head still knows its PCs.

A name belongs to the PC that joined with it: joining again under a member's name takes that member's
own node token (the join token is not enough), and the new certificate replaces the old one: the head
reaches a PC's agent only under the name its current certificate alone carries (`Member.agent_host`).
A removed PC's node token is forgotten and the head stops calling it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from farm.cluster.pki import FarmCA, node_host, serial_host, serial_of, write_private
from farm.cluster.tokens import Principal, Role, TokenStore
from farm.contracts.control import OwnerPolicy
from farm.contracts.domain import NodeInfo
from farm.contracts.errors import InvalidInput, NotFound, PermissionDenied
from farm.contracts.hardware import Hardware


@dataclass(frozen=True)
class Member:
    """A joined PC: its agent's address, the nodes (GPUs) it brings, the node token the head presents
    to its agent (kept, 0600, so that a restarted head reaches its PCs again) and its certificate."""

    name: str
    agent_address: str
    nodes: tuple[NodeInfo, ...]
    token: str = field(default="", repr=False)
    cert_pem: str = field(default="", repr=False)

    @property
    def agent_host(self) -> str:
        """The name the head checks on this PC's agent: the one only its current certificate carries."""
        host = node_host(self.name)
        return serial_host(serial_of(self.cert_pem.encode()), host) if self.cert_pem else host


@dataclass(frozen=True)
class JoinGrant:
    node_token: str
    ca_pem: bytes
    cert_pem: bytes
    ray_address: str
    ray_token: str
    nodes: tuple[NodeInfo, ...]


def nodes_for(name: str, hardware: Hardware, policy: OwnerPolicy) -> tuple[NodeInfo, ...]:
    """One node per GPU, named `<pc>` (one GPU) or `<pc>-gpu<i>`, budget = VRAM capped by the owner."""
    if not hardware.gpus:
        raise InvalidInput("hardware.gpus", "a node needs at least one GPU (use --simulate-gpu on a PC without one)")
    nodes = []
    for gpu in hardware.gpus:
        budget = gpu.vram_total_gib if policy.vram_cap_gib is None else min(gpu.vram_total_gib, policy.vram_cap_gib)
        if not 0 < budget <= 4096:
            raise InvalidInput(f"hardware.gpus[{gpu.index}].vram_total_gib",
                               f"must be from 0 to 4096 GiB, got {budget}")
        node = name if len(hardware.gpus) == 1 else f"{name}-gpu{gpu.index}"
        nodes.append(NodeInfo(name=node, vram_gib=round(budget, 2), gpu=gpu.name, simulated=gpu.simulated,
                              gpu_index=None if gpu.simulated else gpu.index))
    return tuple(nodes)


class Membership:
    """Joins and removals; `on_join`/`on_remove` tell the rest of the head (coordinator, agent links)."""

    def __init__(self, folder: Path, ca: FarmCA, tokens: TokenStore, ray_address: str, ray_token: str,
                 on_join: Callable[[Member], None] | None = None,
                 on_remove: Callable[[Member], None] | None = None) -> None:
        self._path = folder / "members.json"
        self._ca = ca
        self.tokens = tokens
        self._ray_address = ray_address
        self.ray_token = ray_token  # replaced when a removal rotates it; PCs get the current one at (re)join
        self._on_join = on_join
        self._on_remove = on_remove
        self._lock = threading.Lock()
        self._members: dict[str, Member] = {}
        if self._path.exists():
            for raw in json.loads(self._path.read_text()):
                nodes = tuple(NodeInfo(**n) for n in raw.pop("nodes"))
                self._members[raw["name"]] = Member(nodes=nodes, **raw)

    def members(self) -> list[Member]:
        with self._lock:
            return list(self._members.values())

    def join(self, name: str, csr_pem: bytes, hardware: Hardware, agent_address: str, policy: OwnerPolicy,
             caller: Principal, ips: tuple[str, ...] = ()) -> JoinGrant:
        """Admit a PC presenting the join (or admin) token under a new name, or a member presenting its
        own node token again; `ips` are the PC's addresses for its Ray certificate."""
        if caller.role == Role.NODE and caller.name != name:
            raise PermissionDenied(f"name: this node token belongs to {caller.name!r}, not {name!r}")
        if caller.role not in (Role.JOIN, Role.ADMIN, Role.NODE):
            raise PermissionDenied("Join: needs the join token (or a member's own node token)")
        nodes = nodes_for(name, hardware, policy)
        with self._lock:
            previous = self._members.get(name)
            if previous is not None and caller.role != Role.NODE:
                raise PermissionDenied(f"name: {name!r} is already a member of this farm: a PC rejoins with its "
                                       "own node token; to give the name to another PC, first run "
                                       f"`farm node remove {name}`")
            cert = self._ca.issue(csr_pem, node_host(name), ips)
            token = self.tokens.issue_node_token(name)
            member = Member(name, agent_address, nodes, token, cert.decode())
            self._members[name] = member
            self._save()
        if self._on_join:
            self._on_join(member)
        return JoinGrant(token, self._ca.cert_pem, cert, self._ray_address, self.ray_token, nodes)

    def ray_credentials(self, caller: Principal) -> tuple[str, str]:
        """Ray's address and current token, for a member's own node token only."""
        with self._lock:
            if caller.role != Role.NODE or caller.name not in self._members:
                raise PermissionDenied("RayToken: for a member PC's node token only")
        return self._ray_address, self.ray_token

    def remove(self, name: str) -> Member:
        """Forget a PC: its node token stops working and its nodes leave the farm (`on_remove` also
        rotates Ray's token, which the PC holds)."""
        with self._lock:
            member = self._members.pop(name, None)
            if member is None:
                raise NotFound("name", f"no member PC named {name!r}")
            self._save()
        self.tokens.remove_node(name)
        if self._on_remove:
            self._on_remove(member)
        return member

    def _save(self) -> None:
        rows = [{**asdict(m), "nodes": [asdict(n) for n in m.nodes]} for m in self._members.values()]
        write_private(self._path, json.dumps(rows, indent=1).encode())
