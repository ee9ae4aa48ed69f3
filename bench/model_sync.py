"""Model sync figures on a LAN of PCs in network namespaces (root; tests/lan.py):

1. throughput of a model fetched from the head (TLS gRPC, node token, SHA-256 checked, written into the
   PC's cache) against a plain TCP copy of the same bytes over the same cable, and their ratio;
2. the time a PC that just ran `farm join` needs until its first segment of a model it did not have
   (the only PC that may run it: the others are paused), fetch, load and steps included.

    .venv/bin/python bench/model_sync.py [--mb 200] [--rate 1gbit]

`--rate` shapes the PCs' cables with tc (a home LAN's gigabit) instead of the bare veth.

The model is demo-shapes' files plus `--mb` MB of padding, in the head's own Hugging Face cache.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from lan import HEAD_PORT, Lan, Pc, install_hf_model, limit_rate, unavailable  # noqa: E402

import farm  # noqa: E402

DEMO = Path(farm.__file__).resolve().parent / "models" / "demo-shapes"
MODEL = "bench/payload"
PLAIN_PORT = 7099

# Inside the PC: the fetcher `farm join` set up there (its FARM_HOME, the head's CA, its node token).
FETCH = """
import json, sys, time
from node.model_fetch import from_environment
fetcher = from_environment()
fetcher.head.manifest(sys.argv[1])  # the head hashes the files once; timed below is the transfer
began = time.perf_counter()
folder = fetcher.ensure(sys.argv[1])
print(json.dumps({"seconds": time.perf_counter() - began, "folder": str(folder)}))
"""
# A plain copy: the same files, one after another, over one TCP connection, written to disk.
SEND = """
import socket, sys
from pathlib import Path
files = [p for p in sorted(Path(sys.argv[1]).rglob("*")) if p.is_file()]
with socket.create_server(("0.0.0.0", int(sys.argv[2]))) as server:
    print("ready", flush=True)
    conn, _ = server.accept()
    with conn:
        for p in files:
            with p.open("rb") as f:
                conn.sendfile(f)
"""
RECEIVE = """
import json, socket, sys, time
began = time.perf_counter()
got = 0
with socket.create_connection((sys.argv[1], int(sys.argv[2]))) as conn, open(sys.argv[3], "wb") as out:
    while data := conn.recv(1 << 20):
        out.write(data)
        got += len(data)
    out.flush()
print(json.dumps({"seconds": time.perf_counter() - began, "bytes": got}))
"""


def run_in(pc: Pc, code: str, *args: str, timeout: float = 600) -> dict[str, object]:
    r = subprocess.run(pc.argv([sys.executable, "-c", code, *args], hostname=False), env=pc.env(), cwd=pc.root,
                       capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise SystemExit(f"{pc.name}: {r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def plain_copy(lan: Lan, head: Pc, pc: Pc, folder: Path) -> dict[str, object]:
    sender = subprocess.Popen(head.argv([sys.executable, "-c", SEND, str(folder), str(PLAIN_PORT)], hostname=False),
                              env=head.env(), stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert sender.stdout is not None and sender.stdout.readline().strip() == "ready"
        return run_in(pc, RECEIVE, head.address, str(PLAIN_PORT), str(pc.root / "plain.bin"))
    finally:
        sender.wait(timeout=60)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=200, help="MB of padding added to demo-shapes' 14 MB (default 200)")
    parser.add_argument("--rate", default="", help="shape each PC's cable to this tc rate, e.g. 1gbit (default: none)")
    args = parser.parse_args()
    why = unavailable()
    if why:
        print(f"skipped: {why}")
        return 0
    with Lan() as lan:
        head, pca, pcb = lan.add_pc("headpc"), lan.add_pc("pca"), lan.add_pc("pcb")
        snapshot = install_hf_model(head, MODEL, DEMO, padding=args.mb * 2**20)
        size = sum(p.stat().st_size for p in snapshot.rglob("*") if p.is_file())
        if args.rate:
            for pc in (pca, pcb):
                limit_rate(pc, args.rate)
        lan.start_head(head)
        events = lan.follow()
        lan.join(pca)
        lan.wait_nodes(lambda n: n.get("pca", {}).get("status") == "idle", 180, "pca idle")

        plain = plain_copy(lan, head, pca, snapshot)
        synced = run_in(pca, FETCH, MODEL)
        assert plain["bytes"] == size, (plain, size)
        plain_mb_s = size / float(plain["seconds"]) / 1e6  # type: ignore[arg-type]
        sync_mb_s = size / float(synced["seconds"]) / 1e6  # type: ignore[arg-type]
        print(f"model {size / 1e6:.1f} MB over the namespace link (veth, {args.rate or 'no'} shaping):")
        print(f"  plain TCP copy     {plain_mb_s:8.1f} MB/s  ({plain['seconds']:.2f} s)")
        print(f"  farm model sync    {sync_mb_s:8.1f} MB/s  ({synced['seconds']:.2f} s, TLS + SHA-256 + cache layout)")
        print(f"  ratio sync/plain   {sync_mb_s / plain_mb_s:8.2f}")

        # A new PC, the only one allowed to run the job: from `farm join` to its first segment of the model.
        for other in ("headpc", "pca"):
            assert lan.cli(head, "node", "pause", other).returncode == 0
        (head.root / "job.toml").write_text(f'model = "{MODEL}"\nprompts = ["a red circle on a blue background"]\n'
                                            'seeds = 1\nsteps = 8\nguidance = 3.0\nwidth = 64\nheight = 64\n'
                                            'sampler = "euler"\n')
        r = lan.cli(head, "submit", "job.toml", "--detach")
        assert r.returncode == 0, r.stderr
        job = r.stdout.strip()
        seq = events.last_seq
        began = time.time()
        lan.join(pcb)
        started = events.wait(lambda e: e["kind"] == "segment_started" and e["node"] == "pcb" and e["job"] == job,
                              600, "pcb's first segment", after=seq)
        finished = events.wait(lambda e: e["kind"] == "segment_finished" and e["node"] == "pcb" and e["job"] == job,
                               600, "pcb's first segment to finish", after=seq)
        print(f"new PC, model of {size / 1e6:.1f} MB it did not have (head at {head.address}:{HEAD_PORT}):")
        print(f"  join -> first segment started    {float(started['time']) - began:6.1f} s")  # type: ignore[arg-type]
        print(f"  join -> first segment finished   {float(finished['time']) - began:6.1f} s"  # type: ignore[arg-type]
              "  (fetch, load and steps)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
