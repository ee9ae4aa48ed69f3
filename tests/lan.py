"""A LAN of PCs in network namespaces, for the multi-PC tests (tests/test_lan.py) and bench/idle.py.

Layout, all of it made here and removed by `Lan.close` (also when a test fails):

- one namespace `<tag>-br` holding a bridge `br0` (nothing is added to the caller's namespace);
- per PC a namespace `<tag>-<pc>` with one veth (`eth0`) whose peer sits on the bridge, the address
  `<subnet>.<n>/24`, loopback up, and a default route via `<subnet>.254` (no host has it: a home PC has
  a default route, and Ray finds its own address from it; nothing answers there, so nothing leaves);
- per PC its own host name (`unshare --uts`), HOME, FARM_HOME and TMPDIR (Ray's session folder)
  under one short root folder (Unix socket paths must stay under 108 characters).

Every process is started in a new session and tracked by PID; stopping a PC kills the PIDs that
`ip netns pids` lists in its namespace (its `farm` process and every Ray process it started, whatever
their process group), never anything by name.

Blocking the head's Ray port uses iptables (REJECT with tcp-reset is not used: a DROP, as a home
firewall does) inside the PC's namespace when iptables is installed, else a policy-routing rule
(`ip rule add ipproto tcp dport PORT to HEAD unreachable`), which fails connections at once; `block`
says which it used.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from waiting import wait_for

# A test range of our own (only these addresses ever carry traffic): SUBNET.<k>.0/24, k from the LAN's
# tag. Each LAN gets its own: Ray finds "its" GCS by looking for gcs_server processes with its address
# in `ps`, which shows every namespace's processes, so two LANs with one address range (runs side by
# side) would take each other's Ray heads for their own (`ray start --head`: "already running").
SUBNET = "10.213"
HEAD_PORT = 7070
RAY_PORT = 6379
REPO = Path(__file__).resolve().parent.parent
FARM = [sys.executable, "-m", "farm.cli.main"]


def unavailable() -> str:
    """Why namespaces cannot be made here ('' when they can): the reason a test skips with."""
    if sys.platform != "linux":
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "making network namespaces needs root (CI runs as root)"
    for tool in ("ip", "unshare"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (apt-get install iproute2 util-linux)"
    probe = f"flanprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` fails here: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return ""


def _ip(*args: str, ns: str | None = None) -> None:
    argv = ["ip", *(["-n", ns] if ns else []), *args]
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {r.stderr.strip()}")


@dataclass
class Pc:
    """One PC: its namespace, address, folders, and the farm process running on it (if any)."""

    name: str
    ns: str
    address: str
    root: Path
    proc: subprocess.Popen[str] | None = None
    lines: list[str] = field(default_factory=list)  # stdout of the farm process, read so far
    blocked: str = ""  # how the route to the head's Ray port is blocked now, '' when it is not
    blocked_rule: tuple[list[str], int] = ([], 0)

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def farm_home(self) -> Path:
        return self.root / "farm"

    @property
    def log(self) -> Path:
        return self.root / "farm.log"

    def env(self) -> dict[str, str]:
        keep = {k: v for k, v in os.environ.items()
                if not k.startswith(("RAY_", "FARM_")) and k not in ("HOME", "TMPDIR", "PYTHONPATH")}
        return {**keep, "HOME": str(self.home), "FARM_HOME": str(self.farm_home), "TMPDIR": str(self.root / "t"),
                "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(REPO),
                "PYTHONUNBUFFERED": "1"}

    def argv(self, args: Sequence[str], hostname: bool = True) -> list[str]:
        """`args` run inside this PC: its namespace, and (for daemons) its own host name."""
        if not hostname:
            return ["ip", "netns", "exec", self.ns, *args]
        inner = "hostname \"$0\" && exec \"$@\""
        return ["ip", "netns", "exec", self.ns, "unshare", "--uts", "sh", "-c", inner, self.name, *args]

    def pids(self) -> list[int]:
        """Every process in this PC's namespace (its farm process, Ray processes, CLI runs)."""
        r = subprocess.run(["ip", "netns", "pids", self.ns], capture_output=True, text=True)
        return [int(p) for p in r.stdout.split()] if r.returncode == 0 else []

    def read_line(self, startswith: str, timeout: float) -> str:
        """The next stdout line of the farm process that starts with `startswith`."""
        assert self.proc is not None and self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line and self.proc.poll() is not None:
                raise AssertionError(f"{self.name}: exited with {self.proc.returncode} before printing "
                                     f"{startswith!r}:\n{self.tail()}")
            self.lines.append(line)
            if line.strip().startswith(startswith):
                return line.strip()
        raise AssertionError(f"{self.name}: no line starting with {startswith!r} within {timeout} s:\n{self.tail()}")

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


class Events:
    """The head's activity log as it happens: `python tests/lan.py events` inside a PC's namespace
    follows `StreamEvents` and prints one JSON object per event; a thread here collects them. Events
    carry the head's clock (`time.time()`, the same clock as this process: one machine)."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        self.seen: list[dict[str, object]] = []
        self._cv = threading.Condition()
        self.proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     stdin=subprocess.DEVNULL, text=True, start_new_session=True)
        threading.Thread(target=self._read, name="lan-events", daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            with self._cv:
                self.seen.append(event)
                self._cv.notify_all()
        with self._cv:
            self._cv.notify_all()

    @property
    def last_seq(self) -> int:
        with self._cv:
            return int(self.seen[-1]["seq"]) if self.seen else 0  # type: ignore[call-overload]

    def since(self, seq: int) -> list[dict[str, object]]:
        with self._cv:
            return [e for e in self.seen if int(e["seq"]) > seq]  # type: ignore[call-overload]

    def wait(self, match: Callable[[dict[str, object]], bool], timeout: float, what: str,
             after: int = 0) -> dict[str, object]:
        """The first event after seq `after` that `match`es; AssertionError naming `what` after `timeout`."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while True:
                found = next((e for e in self.seen if int(e["seq"]) > after and match(e)), None)  # type: ignore[call-overload]
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    tail = "\n".join(json.dumps(e) for e in self.seen[-15:])
                    state = "exited" if self.proc.poll() is not None else "running"
                    raise AssertionError(f"{what}: not within {timeout:g} s (events follower {state}); "
                                         f"last events:\n{tail}")
                self._cv.wait(min(left, 1.0))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


class Lan:
    """A bridge and PCs in namespaces; a head on one of them and `farm join` on the others."""

    def __init__(self, root: Path | None = None, tag: str = "") -> None:
        self.tag = tag or f"fl{uuid.uuid4().hex[:6]}"
        self.root = root or Path(tempfile.mkdtemp(prefix="lan-", dir="/tmp"))
        self.bridge_ns = f"{self.tag}-br"
        self.subnet = f"{SUBNET}.{zlib.crc32(self.tag.encode()) % 250 + 1}"
        self.pcs: dict[str, Pc] = {}
        self.namespaces: list[str] = []
        self.head: Pc | None = None
        self.token = ""  # the admin token: what the CLI presents
        self.join_token = ""  # what `farm join` presents (through FARM_TOKEN, as the printed line does)
        self.followers: list[Events] = []
        self._made_root = root is None
        self._add_ns(self.bridge_ns)
        _ip("link", "add", "br0", "type", "bridge", ns=self.bridge_ns)
        _ip("link", "set", "br0", "up", ns=self.bridge_ns)

    def _add_ns(self, ns: str) -> None:
        _ip("netns", "add", ns)
        self.namespaces.append(ns)
        _ip("link", "set", "lo", "up", ns=ns)

    # ----- PCs ------------------------------------------------------------------------------------

    def add_pc(self, name: str) -> Pc:
        n = len(self.pcs) + 1
        pc = Pc(name, f"{self.tag}-{name}", f"{self.subnet}.{n}", self.root / name)
        for folder in (pc.home, pc.farm_home, pc.root / "t"):
            folder.mkdir(parents=True, exist_ok=True)
        self._add_ns(pc.ns)
        port = f"p{n}"  # the bridge's end of this PC's cable
        _ip("link", "add", "eth0", "netns", pc.ns, "type", "veth", "peer", "name", port, "netns", self.bridge_ns)
        _ip("link", "set", port, "master", "br0", ns=self.bridge_ns)
        _ip("link", "set", port, "up", ns=self.bridge_ns)
        _ip("addr", "add", f"{pc.address}/24", "dev", "eth0", ns=pc.ns)
        _ip("link", "set", "eth0", "up", ns=pc.ns)
        _ip("route", "add", "default", "via", f"{self.subnet}.254", ns=pc.ns)
        self.pcs[name] = pc
        return pc

    def spawn(self, pc: Pc, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        """Start `farm ARGS` as this PC's daemon (stdout piped for its lines, stderr to its log), with
        `env` added to the PC's environment."""
        assert pc.proc is None or pc.proc.poll() is not None, f"{pc.name} already runs {pc.proc.pid}"
        with pc.log.open("a") as log:
            log.write(f"\n===== {time.strftime('%H:%M:%S')} farm {' '.join(args)}\n")
            log.flush()
            pc.proc = subprocess.Popen(pc.argv([*FARM, *args]), env={**pc.env(), **(env or {})}, cwd=pc.root,
                                       stdout=subprocess.PIPE,
                                       stderr=log, stdin=subprocess.DEVNULL, text=True, start_new_session=True)
        pc.lines = []
        return pc.proc

    def start_head(self, pc: Pc, *extra: str, timeout: float = 240) -> str:
        """`farm head --advertise <its address>` on `pc`; returns the admin token (from its folder).
        The join line it prints, `FARM_TOKEN=T farm join ADDR`, gives the join token."""
        self.spawn(pc, "head", "--advertise", pc.address, "--simulate-gpu", "8", "--out", str(pc.root / "out"),
                   "--state", str(pc.root / "state"), *extra)
        line = pc.read_line("FARM_TOKEN=", timeout).split()
        assert line[1:3] == ["farm", "join"] and line[3] == f"{pc.address}:{HEAD_PORT}", line
        self.head, self.join_token = pc, line[0].removeprefix("FARM_TOKEN=")
        self.token = (pc.farm_home / "head" / "admin-token").read_text().strip()
        return self.token

    def restart_head(self, *extra: str, timeout: float = 240) -> None:
        """Stop the head (SIGTERM, as systemd does) and start it again with the same state."""
        assert self.head is not None
        self.stop(self.head)
        token = self.start_head(self.head, *extra, timeout=timeout)
        assert token == self.token, "a restarted head keeps its admin token"

    def join(self, pc: Pc, *extra: str, timeout: float = 180) -> str:
        """`FARM_TOKEN=T farm join HEAD --simulate-gpu 8` on `pc` (its name: its host name); the 'joined' line."""
        assert self.head is not None
        self.spawn(pc, "join", f"{self.head.address}:{HEAD_PORT}", "--simulate-gpu", "8", *extra,
                   env={"FARM_TOKEN": self.join_token})
        return pc.read_line("joined", timeout)

    def stop(self, pc: Pc, timeout: float = 90) -> None:
        """SIGTERM the PC's farm process (it stops its Ray processes), then SIGKILL what is left."""
        if pc.proc is not None and pc.proc.poll() is None:
            pc.proc.send_signal(signal.SIGTERM)
            try:
                pc.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        self.kill(pc)

    def kill(self, pc: Pc) -> list[int]:
        """SIGKILL every process of the PC (a power cut): its farm process and all its Ray processes,
        by the PIDs in its namespace. Returns the PIDs it killed."""
        killed = []
        for _ in range(20):  # a process may fork while we kill: repeat until the namespace is empty
            pids = pc.pids()
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        if pc.proc is not None:
            try:
                pc.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            if pc.proc.stdout is not None:
                pc.proc.stdout.close()
        return killed

    # ----- the network ----------------------------------------------------------------------------

    def block_ray(self, pc: Pc, port: int = RAY_PORT) -> str:
        """Cut `pc`'s route to the head's Ray port (the head still answers on 7070). Returns how."""
        assert self.head is not None and not pc.blocked
        rule = ["OUTPUT", "-p", "tcp", "-d", self.head.address, "--dport", str(port), "-j", "DROP"]
        if shutil.which("iptables"):
            subprocess.run(["ip", "netns", "exec", pc.ns, "iptables", "-I", *rule], check=True)
            pc.blocked = "iptables"
        else:
            _ip("rule", "add", "ipproto", "tcp", "dport", str(port), "to", self.head.address, "unreachable",
                ns=pc.ns)
            pc.blocked = "ip rule"
        pc.blocked_rule = (rule, port)
        return pc.blocked

    def unblock_ray(self, pc: Pc) -> None:
        assert self.head is not None and pc.blocked
        rule, port = pc.blocked_rule
        if pc.blocked == "iptables":
            subprocess.run(["ip", "netns", "exec", pc.ns, "iptables", "-D", *rule], check=True)
        else:
            _ip("rule", "del", "ipproto", "tcp", "dport", str(port), "to", self.head.address, "unreachable",
                ns=pc.ns)
        pc.blocked = ""

    # ----- the CLI from a PC ----------------------------------------------------------------------

    def cli(self, pc: Pc, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """`farm ARGS --head HEAD:7070 --token T` run inside `pc`'s namespace."""
        assert self.head is not None
        argv = pc.argv([*FARM, *args, "--head", f"{self.head.address}:{HEAD_PORT}", "--token", self.token],
                       hostname=False)
        return subprocess.run(argv, env=pc.env(), cwd=pc.root, capture_output=True, text=True, timeout=timeout)

    def follow(self, pc: Pc | None = None, after: int = 0) -> Events:
        """Follow the head's events from `pc` (default: the head PC itself)."""
        assert self.head is not None
        pc = pc or self.head
        argv = pc.argv([sys.executable, str(Path(__file__).resolve()), "events", f"{self.head.address}:{HEAD_PORT}",
                        self.token, str(after)], hostname=False)
        events = Events(argv, pc.env(), pc.root)
        self.followers.append(events)
        return events

    def nodes(self, pc: Pc | None = None) -> dict[str, dict[str, object]]:
        r = self.cli(pc or self.head, "nodes", "--json")  # type: ignore[arg-type]
        if r.returncode != 0:
            return {}
        return {n["name"]: n for n in map(json.loads, r.stdout.splitlines())}

    def jobs(self, pc: Pc | None = None) -> dict[str, dict[str, object]]:
        r = self.cli(pc or self.head, "jobs", "--json")  # type: ignore[arg-type]
        if r.returncode != 0:
            return {}
        return {j["id"]: j for j in map(json.loads, r.stdout.splitlines())}

    def wait_nodes(self, want: Callable[[dict[str, dict[str, object]]], bool], timeout: float,
                   what: str) -> dict[str, dict[str, object]]:
        """`farm nodes` until `want(nodes)` holds (each poll is one CLI process: about a second)."""
        last: list[dict[str, dict[str, object]]] = [{}]

        def poll() -> dict[str, dict[str, object]] | None:
            last[0] = self.nodes()
            return last[0] if want(last[0]) else None

        try:
            return wait_for(poll, timeout, what, interval=0.5)
        except AssertionError as e:
            raise AssertionError(f"{e}\nnodes: {json.dumps(last[0], indent=1)}") from None

    # ----- cleanup --------------------------------------------------------------------------------

    def close(self) -> None:
        """Kill every process in every namespace made here (by PID), then delete the namespaces (the
        veth pairs and the bridge go with them). Safe to call twice."""
        for follower in self.followers:
            follower.close()
        for pc in self.pcs.values():
            if pc.blocked:
                try:
                    self.unblock_ray(pc)
                except Exception:
                    pass
            self.kill(pc)
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.namespaces.clear()
        if self._made_root and os.environ.get("LAN_KEEP") != "1":
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Lan:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _print_events(head: str, token: str, after: int) -> None:
    """`python tests/lan.py events HEAD TOKEN AFTER`: the head's events as JSON lines, followed;
    reconnects while the head restarts."""
    from types import SimpleNamespace

    from farm.cli.cluster import connect
    from farm.contracts.errors import FarmError

    while True:
        try:
            client = connect(SimpleNamespace(head=head, token=token))
            for e in client.follow_events(after):
                after = e.seq
                print(json.dumps({"seq": e.seq, "time": e.time, "kind": e.kind, "job": e.job_id, "node": e.node,
                                  "message": e.message}), flush=True)
        except FarmError:
            time.sleep(0.5)


if __name__ == "__main__":
    if sys.argv[1:2] == ["events"]:
        _print_events(sys.argv[2], sys.argv[3], int(sys.argv[4]))


# ----- model sync (tests/test_lan_models.py, bench/model_sync.py) ----------------------------------


def install_hf_model(pc: Pc, repo_id: str, source: Path, padding: int = 0) -> Path:
    """Put a copy of the diffusers folder `source` into `pc`'s own Hugging Face cache as `repo_id`, as
    `huggingface-cli download` leaves it (blobs, a snapshot of links, refs/main), with `padding` bytes of
    extra file (`padding.bin`, pseudo-random) to make a transfer take long enough. Returns the snapshot."""
    import hashlib

    repo = pc.home / ".cache" / "huggingface" / "hub" / ("models--" + repo_id.replace("/", "--"))
    revision = hashlib.sha1(f"{repo_id}:{padding}".encode()).hexdigest()
    snapshot = repo / "snapshots" / revision
    files = [(p.relative_to(source).as_posix(), p.read_bytes()) for p in sorted(source.rglob("*")) if p.is_file()]
    if padding:
        block = hashlib.sha256(repo_id.encode()).digest() * (2**20 // 32)
        files.append(("padding.bin", (block * (padding // len(block) + 1))[:padding]))
    for rel, data in files:
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return snapshot


def limit_rate(pc: Pc, rate: str) -> None:
    """Shape what `pc` sends and receives on its cable to `rate` (tc syntax, e.g. '40mbit'): traffic
    to the PC is limited on the bridge's end of its cable, traffic from it on its own end."""
    n = pc.address.rsplit(".", 1)[1]
    bridge = pc.ns.rsplit("-", 1)[0] + "-br"
    for ns, dev in ((pc.ns, "eth0"), (bridge, f"p{n}")):
        subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate", rate,
                        "burst", "64kb", "latency", "200ms"], check=True, capture_output=True)


def unlimit_rate(pc: Pc) -> None:
    n = pc.address.rsplit(".", 1)[1]
    bridge = pc.ns.rsplit("-", 1)[0] + "-br"
    for ns, dev in ((pc.ns, "eth0"), (bridge, f"p{n}")):
        subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", dev, "root"], capture_output=True)
