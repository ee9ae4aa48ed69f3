"""Issue 15 on a LAN of network namespaces (tests/lan.py): what crosses the wire between PCs, and what
the farm's logs keep.

A head and one joined PC; the head's own node paused, so a job with a distinctive prompt must render
on the PC, through Ray. The head's cable is captured the whole time (a raw AF_PACKET socket inside the
head's namespace: tcpdump is not installed here). Neither the Ray token, the join and admin tokens nor
the prompt may appear in the captured bytes; the capture must have seen the job's Ray traffic and, as
a check that it sees clear text at all, the TLS server name the CLI sends in clear. Then no token may
appear in any log the farm or Ray wrote.

Run as a script inside a namespace (`python tests/test_lan_security.py capture FILE`) it is the capture.
"""

from __future__ import annotations

import json
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # lan.py, when run as a script
from lan import HEAD_PORT, Lan, Pc, unavailable  # noqa: E402
from waiting import wait_for  # noqa: E402

pytestmark = pytest.mark.slow
WHY = unavailable()
PROMPT = "a violet zeppelin above quartz lighthouse 7f3a9c"  # appears nowhere else
JOB = f'model = "demo-shapes"\nprompts = ["{PROMPT}"]\nseeds = 2\nsteps = 8\nguidance = 3.0\n'
FARM_PORTS = {HEAD_PORT, 7071}  # FarmControl and the agent: TLS of their own, not Ray's
# Ray's head port, one per test: `ray start --head` refuses an address:port that any gcs_server on the
# machine (another LAN test's namespace has the same addresses) already names.
RAY_PORTS = {"encrypted": "6479", "rotation": "6579"}


def capture(path: Path) -> None:
    """Every frame on eth0 of this namespace into `path` (4-byte length, then the frame), until SIGTERM."""
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(0x0003))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.bind(("eth0", 0))
    sock.settimeout(0.2)
    with path.open("wb") as out:
        print("capturing", flush=True)
        while not stop:
            try:
                frame = sock.recv(1 << 18)
            except TimeoutError:
                continue
            except InterruptedError:
                break
            out.write(struct.pack("!dI", time.time(), len(frame)) + frame)
        out.flush()


def tcp_payloads(path: Path) -> Iterator[tuple[float, str, int, str, int, bytes]]:
    """(time, source, source port, destination, destination port, payload) of each IPv4 TCP frame."""
    data = path.read_bytes()
    at = 0
    while at + 12 <= len(data):
        stamp, size = struct.unpack_from("!dI", data, at)
        frame = data[at + 12:at + 12 + size]
        at += 12 + size
        if len(frame) < 34 or frame[12:14] != b"\x08\x00" or frame[23] != 6:
            continue
        ip = frame[14:]
        ihl = (ip[0] & 0x0F) * 4
        total = struct.unpack_from("!H", ip, 2)[0]
        tcp = ip[ihl:total]
        offset = (tcp[12] >> 4) * 4
        sport, dport = struct.unpack_from("!HH", tcp, 0)
        yield stamp, socket.inet_ntoa(ip[12:16]), sport, socket.inet_ntoa(ip[16:20]), dport, bytes(tcp[offset:])


def streams(packets: list[tuple[float, str, int, str, int, bytes]]) -> dict[tuple[str, int, str, int], bytes]:
    """Each direction of each connection's payload, in capture order (a secret split between two
    segments is found too)."""
    out: dict[tuple[str, int, str, int], bytearray] = {}
    for _, src, sport, dst, dport, payload in packets:
        out.setdefault((src, sport, dst, dport), bytearray()).extend(payload)
    return {k: bytes(v) for k, v in out.items()}


@pytest.fixture
def lan() -> Iterator[Lan]:
    if WHY:
        pytest.skip(f"multi-PC tests need network namespaces: {WHY}")
    network = Lan()
    try:
        yield network
    finally:
        network.close()


def test_cluster_traffic_is_encrypted_and_no_token_is_logged(lan: Lan) -> None:
    head, pc = lan.add_pc("headpc"), lan.add_pc("pca")
    wire = head.root / "wire.bin"
    sniffer = subprocess.Popen(head.argv([sys.executable, __file__, "capture", str(wire)], hostname=False),
                               stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert sniffer.stdout is not None and sniffer.stdout.readline().strip() == "capturing"
        lan.start_head(head, "--ray-port", RAY_PORTS["encrypted"])
        lan.join(pc)
        lan.wait_nodes(lambda n: n.get("pca", {}).get("status") == "idle", 180, "pca idle")
        assert lan.cli(head, "node", "pause", "headpc").returncode == 0  # the job must cross the LAN
        lan.wait_nodes(lambda n: n.get("headpc", {}).get("status") == "paused", 60, "headpc paused")
        (pc.root / "job.toml").write_text(JOB)
        began = time.time()
        r = lan.cli(pc, "submit", "job.toml", "--out", str(pc.root / "out"), timeout=400)
        ended = time.time()
        assert r.returncode == 0, f"{r.stdout}\n{r.stderr[-2000:]}\n{head.tail()}"
        job = r.stdout.split()[0]
        rendered = {run["node"] for path in r.stdout.splitlines()[1:] for run in _provenance(Path(path))}
        assert rendered == {"pca"}, rendered
    finally:
        sniffer.send_signal(signal.SIGTERM)
        sniffer.wait(timeout=30)

    packets = list(tcp_payloads(wire))
    between = [p for p in packets if {p[1], p[3]} == {head.address, pc.address}]
    ray = [p for p in between if p[2] not in FARM_PORTS and p[4] not in FARM_PORTS]
    assert any(p[4] == int(RAY_PORTS["encrypted"]) for p in ray), "no connection to the Ray head's port"
    during = sum(len(p[5]) for p in ray if began <= p[0] <= ended)
    print(f"captured {len(packets)} TCP frames; head<->pca Ray payload during job {job}: {during} bytes")
    assert during > 20_000, "the capture saw none of the job's Ray traffic"
    wire_streams = streams(packets)
    assert any(b"farm-head" in s for s in wire_streams.values()), "the capture sees no clear text at all"

    farm_home = head.farm_home / "head"
    secrets = {name: (farm_home / name).read_text().strip().encode()
               for name in ("ray-token", "join-token", "admin-token")}
    secrets["prompt"] = PROMPT.encode()
    secrets["node token"] = json.loads((pc.farm_home / "node" / "join.json").read_text())["node_token"].encode()
    for what, secret in secrets.items():
        found = [k for k, s in wire_streams.items() if secret in s]
        assert not found, f"the {what} crossed the LAN in clear: {found}"

    # No token in any log: the farm's own (stderr of each PC), Ray's, the agents'.
    logs = [p for pc_ in lan.pcs.values() for p in _logs(pc_)]
    assert len(logs) > 5, logs
    for what, secret in secrets.items():
        if what == "prompt":
            continue  # a prompt is not a secret to the farm's own logs
        leaked = [str(p) for p in logs if secret in p.read_bytes()]
        assert not leaked, f"the {what} is in {leaked}"


RAY_CLIENT = """
import ray
ray.init("ray://{head}:10001", logging_level="ERROR")
print(ray.get(ray.remote(lambda: "ran on the cluster").remote(), timeout=60))
"""


def ray_client(lan: Lan, pc: Pc, token: str) -> subprocess.CompletedProcess[str]:
    """From `pc`, run a task on the cluster through Ray's client port with `token` and the PC's own
    Ray certificate and Ray CA (what a removed PC still has): the issue's way in."""
    assert lan.head is not None
    folder = pc.farm_home / "node"
    env = {**pc.env(), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "RAY_USE_TLS": "1",
           "RAY_TLS_SERVER_CERT": str(folder / "ray-tls.pem"), "RAY_TLS_SERVER_KEY": str(folder / "ray-tls.key"),
           "RAY_TLS_CA_CERT": str(folder / "ray-tls-ca.pem")}
    argv = pc.argv([sys.executable, "-c", RAY_CLIENT.format(head=lan.head.address)], hostname=False)
    try:
        return subprocess.run(argv, env=env, cwd=pc.root, capture_output=True, text=True, timeout=150)
    except subprocess.TimeoutExpired as e:
        return subprocess.CompletedProcess(argv, -1, str(e.stdout or ""), "timed out")


def ray_handshake(lan: Lan, pc: Pc, port: int) -> tuple[str, str]:
    """From `pc`, a TLS handshake with the head's Ray port `port` presenting the PC's Ray certificate
    (the server's own not checked, so a refusal is the server's): ("accepted"|"refused", detail)."""
    assert lan.head is not None
    folder = pc.farm_home / "node"
    script = str(Path(__file__).resolve().parent / "test_ray_ca_rotation.py")
    r = subprocess.run(pc.argv([sys.executable, script, "handshake", lan.head.address, str(port),
                                str(folder / "ray-tls.pem"), str(folder / "ray-tls.key")], hostname=False),
                       env=pc.env(), cwd=pc.root, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    verdict, detail = json.loads(r.stdout)
    return verdict, detail


def test_removing_a_pc_rotates_rays_token_and_keeps_the_queue(lan: Lan) -> None:
    """High: `farm node remove` left the Ray token unchanged, and the removed PC still ran code; its
    certificate still passed Ray's TLS. The removal starts a new Ray epoch (token and Ray CA): the
    removed PC's Ray certificate fails the handshake with the head's Ray port, the remaining PC's
    renewed one passes, and the queued job is rendered by the remaining PC."""
    head, a, b = lan.add_pc("headpc"), lan.add_pc("pca"), lan.add_pc("pcb")
    lan.start_head(head, "--ray-port", RAY_PORTS["rotation"])
    lan.join(a)
    lan.join(b)
    lan.wait_nodes(lambda n: all(n.get(x, {}).get("status") == "idle" for x in ("pca", "pcb")), 240, "PCs idle")
    port = int(RAY_PORTS["rotation"])
    assert ray_handshake(lan, b, port)[0] == "accepted"  # the check itself lets a member's certificate in
    old = (head.farm_home / "head" / "ray-token").read_text().strip()
    assert lan.cli(head, "node", "pause", "headpc").returncode == 0  # what is left to render after the removal: pca's
    lan.wait_nodes(lambda n: n.get("headpc", {}).get("status") == "paused", 60, "headpc paused")
    (a.root / "job.toml").write_text(JOB.replace("seeds = 2", "seeds = 6").replace("steps = 8", "steps = 24"))
    r = lan.cli(a, "submit", "job.toml", "--detach")
    assert r.returncode == 0, r.stderr
    job = r.stdout.strip()
    assert lan.cli(head, "node", "remove", "pcb").returncode == 0
    assert lan.jobs()[job]["status"] != "done", "the job ended before the removal: nothing tells who rendered after"
    wait_for(lambda: lan.jobs().get(job, {}).get("status") == "done", 600, f"{job} done after the removal")
    assert lan.jobs()[job]["samples"] == "6/6"
    rendered = {run["node"] for path in (head.root / "out" / job).glob("*.png") for run in _provenance(path)}
    assert "pca" in rendered and rendered <= {"pca", "pcb"}, rendered
    new = (head.farm_home / "head" / "ray-token").read_text().strip()
    assert new != old
    # The remaining PC learned the new epoch: it rejoined Ray and takes work again.
    lan.wait_nodes(lambda n: n.get("pca", {}).get("status") == "idle" and "pcb" not in n, 300, "pca back, pcb gone")
    # Revocation at every handshake: the head's Ray GCS refuses pcb's Ray certificate (of the retired Ray
    # CA) and accepts pca's, renewed for the new one.
    refused, accepted = ray_handshake(lan, b, port), ray_handshake(lan, a, port)
    print(f"Ray GCS handshake after the removal: pcb {refused}, pca {accepted}")
    assert refused[0] == "refused" and accepted[0] == "accepted", (refused, accepted)
    revoked = json.loads((head.farm_home / "head" / "revoked.json").read_text())
    assert [row["name"] for row in revoked] == ["pcb"], revoked
    # The way in, with the current token: refused with pcb's certificate, open with pca's.
    refused_client = ray_client(lan, b, new)
    assert refused_client.returncode != 0 and "ran on the cluster" not in refused_client.stdout, refused_client.stdout
    allowed = ray_client(lan, a, new)
    assert "ran on the cluster" in allowed.stdout, allowed.stderr[-3000:]


def _logs(pc: Pc) -> list[Path]:
    """Every log file of a PC: its farm process's, its Ray worker's and Ray's session logs."""
    return [p for p in pc.root.rglob("*") if p.is_file() and (p.suffix in (".log", ".out", ".err")
                                                               or "logs" in p.parts)]


def _provenance(path: Path) -> list[dict[str, object]]:
    from PIL import Image

    with Image.open(path) as im:
        return json.loads(im.text["farm"])["segments"]


if __name__ == "__main__":
    if sys.argv[1:2] == ["capture"]:
        capture(Path(sys.argv[2]))
