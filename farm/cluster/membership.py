"""Who belongs to the farm: the head's side of `farm join`, `farm token rotate` and `farm node remove`.

A join turns one PC into one node per GPU (its VRAM budget capped by the owner's rule), signs the PC's
certificate request with the farm CA, and hands back what the PC needs to start its Ray worker. The
member table is kept in the head's folder, so a restarted head still knows its PCs.

A name belongs to the PC that joined with it: joining again under a member's name takes that member's
own node token (the join token is not enough), and the new certificate replaces the old one: the head
reaches a PC's agent only under the name its current certificate alone carries (`Member.agent_host`).
A removed PC's node token is forgotten and the head stops calling it.

Membership also owns the Ray cluster's shared secrets, one `RayEpoch` at a time: Ray's token and the
Ray CA (`farm.cluster.pki`), kept in the head's folder. A removal ends the epoch at once (a new token
and a new Ray CA, on disk before the head restarts Ray, so a head stopped in between comes back in the
new one too): the removed PC's Ray token and Ray certificate are then refused by every Ray process,
and the remaining PCs get the new ones when their Ray workers restart (`ray_credentials`). Each removal
is also noted in `revoked.json` (the PC's name, its farm certificate's serial, the retired Ray CA's
serial, the time), a record for the operator: no check needs the list.
"""

from __future__ import annotations

import datetime
import json
import secrets
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


RAY_CA = "ray-ca"  # the Ray CA's files in the head's folder: ray-ca.key, ray-ca.pem


def ray_secret(folder: Path, new: bool = False) -> str:
    """The Ray cluster's token: created once (or anew, when a removal ends the epoch), handed to PCs at
    join, never printed."""
    path = folder / "ray-token"
    if new or not path.exists():
        write_private(path, secrets.token_hex(32).encode())
    return path.read_text().strip()


def _ray_ca_subject() -> str:
    """A Ray CA's name, its own in every epoch (so an old epoch's certificate names an issuer that the
    new one's trust store does not hold at all)."""
    return f"farm Ray CA {secrets.token_hex(4)}"


@dataclass(frozen=True)
class RayEpoch:
    """What every Ray process of the cluster shares until the next removal: Ray's token, and the Ray
    CA that issues every Ray certificate and is the only one Ray trusts."""

    token: str
    ca: FarmCA


@dataclass(frozen=True)
class RayCredentials:
    """What a member PC's Ray worker starts with in the current epoch."""

    address: str
    token: str
    cert_pem: bytes  # the PC's Ray certificate: its farm certificate's key and addresses, from the Ray CA
    ca_pem: bytes  # the current Ray CA


@dataclass(frozen=True)
class JoinGrant:
    node_token: str
    ca_pem: bytes
    cert_pem: bytes
    ray_address: str
    ray_token: str
    nodes: tuple[NodeInfo, ...]
    ray_cert_pem: bytes
    ray_ca_pem: bytes

    @property
    def ray(self) -> RayCredentials:
        return RayCredentials(self.ray_address, self.ray_token, self.ray_cert_pem, self.ray_ca_pem)


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
        self._folder = folder
        self._ray_address = ray_address
        self._ray = RayEpoch(ray_token, FarmCA.load_or_create(folder, RAY_CA, _ray_ca_subject()))
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

    @property
    def ray_epoch(self) -> RayEpoch:
        """The current Ray token and Ray CA, the pair the head's Ray starts with."""
        with self._lock:
            return self._ray

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
        ray = self._ray_for(member)  # read after `on_join`, which waits while Ray restarts in a new epoch
        return JoinGrant(token, self._ca.cert_pem, cert, ray.address, ray.token, nodes, ray.cert_pem, ray.ca_pem)

    def ray_credentials(self, caller: Principal) -> RayCredentials:
        """Ray's address, current token and CA, and a Ray certificate of the current epoch for the
        caller's farm certificate (its key: the PC needs no new one); for a member's own node token only."""
        with self._lock:
            member = self._members.get(caller.name) if caller.role == Role.NODE else None
            if member is None:
                raise PermissionDenied("RayToken: for a member PC's node token only")
        return self._ray_for(member)

    def _ray_for(self, member: Member) -> RayCredentials:
        ray = self.ray_epoch
        return RayCredentials(self._ray_address, ray.token, ray.ca.reissue(member.cert_pem.encode()), ray.ca.cert_pem)

    def remove(self, name: str) -> Member:
        """Forget a PC: its node token stops working, its nodes leave the farm (`on_remove`: the head
        restarts Ray in the new epoch), and the Ray epoch it knew ends."""
        with self._lock:
            member = self._members.pop(name, None)
            if member is None:
                raise NotFound("name", f"no member PC named {name!r}")
            self._save()
            self._revoke(member)
            self._ray = RayEpoch(ray_secret(self._folder, new=True),
                                 FarmCA.create(self._folder, RAY_CA, _ray_ca_subject()))
        self.tokens.remove_node(name)
        if self._on_remove:
            self._on_remove(member)
        return member

    def _revoke(self, member: Member) -> None:
        """Note the removed PC's farm certificate and the Ray CA whose certificates its removal voids."""
        path = self._folder / "revoked.json"
        rows = json.loads(path.read_text()) if path.exists() else []
        rows.append({"name": member.name, "revoked": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                     "cert_serial": f"{serial_of(member.cert_pem.encode()):x}" if member.cert_pem else "",
                     "ray_ca_serial": f"{self._ray.ca.cert.serial_number:x}"})
        write_private(path, json.dumps(rows, indent=1).encode())

    def _save(self) -> None:
        rows = [{**asdict(m), "nodes": [asdict(n) for n in m.nodes]} for m in self._members.values()]
        write_private(self._path, json.dumps(rows, indent=1).encode())
