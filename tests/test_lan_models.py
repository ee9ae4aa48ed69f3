"""Model sync on a LAN of PCs in network namespaces (tests/lan.py): models only the head holds reach the
PCs that run them over the farm's TLS port, verified, resumable, and never reach a PC that denies them.

The head's Hugging Face cache (its own HOME) holds two models no other PC has: `farmtest/shapes`, the
bytes of the bundled demo-shapes model (so its images must equal demo-shapes' pixel for pixel), and
`farmtest/big`, the same plus 80 MB of padding (a transfer long enough to kill halfway). pcb joins with
`--deny-models 'farmtest/*'`; the head's own node is paused while a synced model renders, so its
segments can only run on pca, which must fetch the model first.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from lan import FARM, Lan, Pc, install_hf_model, limit_rate, unavailable, unlimit_rate
from PIL import Image
from waiting import wait_for

import farm

pytestmark = pytest.mark.slow
WHY = unavailable()
DEMO = Path(farm.__file__).resolve().parent / "models" / "demo-shapes"
PADDING = 80 * 2**20
PROMPTS = ["a red circle on a blue background", "a green square on a white background"]


def job_toml(model: str) -> str:
    return (f'model = "{model}"\nprompts = {json.dumps(PROMPTS)}\nseeds = 1\nsteps = 8\nguidance = 3.0\n'
            'width = 64\nheight = 64\nsampler = "euler"\n')


def repo(pc: Pc, model: str) -> Path:
    return pc.farm_home / "models" / "hub" / ("models--" + model.replace("/", "--"))


class Farm:
    def __init__(self, lan: Lan) -> None:
        self.lan = lan
        self.head, self.a, self.b = lan.add_pc("headpc"), lan.add_pc("pca"), lan.add_pc("pcb")
        install_hf_model(self.head, "farmtest/shapes", DEMO)
        install_hf_model(self.head, "farmtest/big", DEMO, padding=PADDING)
        lan.start_head(self.head)
        self.events = lan.follow()
        lan.join(self.a)
        lan.join(self.b, "--deny-models", "farmtest/*")
        self.wait_idle("headpc", "pca", "pcb")
        self.reference: dict[str, bytes] = {}

    def wait_idle(self, *names: str, timeout: float = 150) -> None:
        self.lan.wait_nodes(lambda n: all(n.get(x, {}).get("status") == "idle" for x in names), timeout,
                            f"{', '.join(names)} idle")

    def logs(self) -> str:
        return "\n".join(f"--- {pc.name}\n{pc.tail(2500)}" for pc in self.lan.pcs.values())

    def submit(self, model: str, out: str, timeout: float = 400) -> tuple[str, dict[str, bytes], set[str]]:
        """`farm submit` on the head PC (which has the model to check the job against), followed to the end:
        the job id, each output's pixels by file name, and the nodes that rendered it."""
        (self.head.root / f"{out}.toml").write_text(job_toml(model))
        r = self.lan.cli(self.head, "submit", f"{out}.toml", "--out", str(self.head.root / out), timeout=timeout)
        assert r.returncode == 0, f"{r.stdout}\n{r.stderr[-2000:]}\n{self.logs()}"
        status, *paths = r.stdout.splitlines()
        assert status.endswith(f"done: {len(PROMPTS)}/{len(PROMPTS)} samples"), status
        pixels, nodes = {}, set()
        for p in map(Path, paths):
            with Image.open(p) as im:
                pixels[p.name] = im.tobytes()
                nodes |= {run["node"] for run in json.loads(im.text["farm"])["segments"]}
        return status.split()[0], pixels, nodes

    def models(self) -> tuple[dict[str, dict[str, object]], dict[str, dict[str, object]]]:
        r = self.lan.cli(self.head, "models", "--json")
        assert r.returncode == 0, r.stderr
        rows = [json.loads(line) for line in r.stdout.splitlines()]
        return ({row["model"]: row for row in rows if "model" in row},
                {row["node_models"]["node"]: row["node_models"] for row in rows if "node_models" in row})

    def pause_head(self) -> None:
        assert self.lan.cli(self.head, "node", "pause", "headpc").returncode == 0

    def resume_head(self) -> None:
        assert self.lan.cli(self.head, "node", "resume", "headpc").returncode == 0


@pytest.fixture(scope="module")
def lanfarm() -> Iterator[Farm]:
    if WHY:
        pytest.skip(f"multi-PC tests need network namespaces: {WHY}")
    lan = Lan()
    try:
        yield Farm(lan)
    finally:
        lan.close()


def test_a_pc_without_the_model_fetches_it_from_the_head_and_renders(lanfarm: Farm) -> None:
    f = lanfarm
    _, f.reference, _ = f.submit("demo-shapes", "reference")
    assert not repo(f.a, "farmtest/shapes").exists()
    f.pause_head()
    try:
        seq = f.events.last_seq
        job, pixels, nodes = f.submit("farmtest/shapes", "synced")
    finally:
        f.resume_head()
    assert nodes == {"pca"}, nodes  # pcb denies the model, the head's node was paused
    assert pixels == f.reference, "the fetched model renders exactly as the bundled one"
    # The files sit in pca's cache, by hash, and the head knows it holds them.
    snapshot = repo(f.a, "farmtest/shapes") / "snapshots"
    (revision,) = [p.name for p in snapshot.iterdir()]
    weights = snapshot / revision / "unet" / "diffusion_pytorch_model.safetensors"
    assert weights.is_symlink() and weights.read_bytes() == (DEMO / "unet" / weights.name).read_bytes()
    models, nodes_models = f.models()
    assert set(models["farmtest/shapes"]["nodes"].split(", ")) == {"headpc", "pca"}
    assert models["farmtest/shapes"]["revision"] == revision
    assert nodes_models["pca"]["stored"] == "farmtest/shapes"
    # pcb denies farmtest/*: not one of its segments, not one byte of its files.
    assert not [e for e in f.events.since(seq) if e["node"] == "pcb" and e["job"] == job]
    assert not (f.b.farm_home / "models" / "hub").exists()
    assert nodes_models["pcb"]["fetched_mb"] == 0 and nodes_models["pcb"]["deny"] == "farmtest/*"


def test_b_a_corrupted_file_on_the_pc_is_refused_and_fetched_again(lanfarm: Farm) -> None:
    f = lanfarm
    if not f.reference or not repo(f.a, "farmtest/shapes").exists():
        pytest.skip("needs the first scenario's fetched model")
    weights = (DEMO / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    blob = repo(f.a, "farmtest/shapes") / "blobs" / hashlib.sha256(weights).hexdigest()
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    before = f.models()[1]["pca"]["fetched_mb"]
    f.pause_head()
    assert f.lan.cli(f.head, "node", "pause", "pcb").returncode == 0
    try:
        # Another model loads on pca (the only node not paused), so the synced one is loaded, and checked, again.
        f.submit("demo-shapes", "evict")
        _, pixels, nodes = f.submit("farmtest/shapes", "after-corruption")
    finally:
        f.resume_head()
        assert f.lan.cli(f.head, "node", "resume", "pcb").returncode == 0
    assert "pca" in nodes and pixels == f.reference
    assert blob.read_bytes() == weights, "the corrupt blob was replaced by the head's bytes"
    again = f.models()[1]["pca"]["fetched_mb"] - before
    assert abs(again - len(weights) / 1e6) < 0.2, f"only the corrupt file is fetched again ({again} MB)"


def test_c_a_transfer_killed_halfway_resumes_without_starting_over(lanfarm: Farm) -> None:
    f = lanfarm
    if not f.reference:
        pytest.skip("needs the first scenario's reference")
    f.wait_idle("headpc", "pca", "pcb")
    # 40 Mbit/s on pca's cable: 80 MB take about 17 s, long enough to cut the transfer halfway.
    before = f.models()[1]["pca"]["fetched_mb"] * 1e6
    limit_rate(f.a, "40mbit")
    f.pause_head()
    (f.head.root / "big.toml").write_text(job_toml("farmtest/big"))
    r = f.lan.cli(f.head, "submit", "big.toml", "--detach")
    assert r.returncode == 0, r.stderr
    job = r.stdout.strip()
    padding = repo(f.a, "farmtest/big") / "blobs"

    def halfway() -> int | None:
        parts = list(padding.glob("*.incomplete")) if padding.exists() else []
        sizes = [p.stat().st_size for p in parts]
        return max(sizes) if sizes and max(sizes) > 20 * 2**20 else None

    wait_for(halfway, 120, "pca halfway through the padding file", interval=0.2)
    f.lan.kill(f.a)  # a power cut mid-transfer
    kept = max(p.stat().st_size for p in padding.glob("*.incomplete"))
    assert kept < PADDING
    unlimit_rate(f.a)
    seq = f.events.last_seq
    try:
        f.lan.join(f.a)
        end = f.events.wait(lambda e: e["kind"] in ("job_done", "job_failed") and e["job"] == job, 300,
                            "the big job to end")
    finally:
        f.resume_head()
    assert end["kind"] == "job_done", end
    assert [e for e in f.events.since(seq) if e["node"] == "pca" and e["kind"] == "segment_finished"]
    total = sum(p.stat().st_size for p in (f.head.home / ".cache" / "huggingface" / "hub" / "models--farmtest--big"
                                          / "blobs").iterdir())
    # Both transfers, the cut one and the resumed one, as the head counted what it sent to pca: starting over
    # would have sent the kept part twice.
    sent = f.models()[1]["pca"]["fetched_mb"] * 1e6 - before
    said = f"sent {sent / 1e6:.1f} MB, model {total / 1e6:.1f} MB, {kept / 1e6:.1f} MB on pca's disk when cut"
    assert total <= sent + 0.2e6 and sent < total + kept / 2, said
    assert not list(padding.glob("*.incomplete"))
    for blob in padding.iterdir():
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name


def test_d_a_pc_that_denies_a_model_never_receives_it(lanfarm: Farm) -> None:
    f = lanfarm
    nodes = f.models()[1]
    assert nodes["pcb"]["fetched_mb"] == 0
    assert not (f.b.farm_home / "models").exists()
    runs = [e for e in f.events.since(0) if e["node"] == "pcb" and e["kind"] == "segment_started"]
    jobs = {e["job"] for e in f.events.since(0) if e["kind"] == "job_submitted"
            and "farmtest/" in str(e["message"])}
    assert jobs and not [e for e in runs if e["job"] in jobs]


def test_e_an_owner_changes_their_pcs_model_lists_later(lanfarm: Farm) -> None:
    """`farm node models` on the PC itself (its node token), then by the operator (the admin token)."""
    f = lanfarm
    own = subprocess.run(f.a.argv([*FARM, "node", "models", "pca", "--allow", "demo*,sd*"], hostname=False),
                         env=f.a.env(), cwd=f.a.root, capture_output=True, text=True, timeout=120)
    assert own.returncode == 0, own.stderr
    assert own.stdout.strip() == "pca: takes demo*, sd* (every other model refused)"
    assert f.models()[1]["pca"]["allow"] == "demo*, sd*"
    other = subprocess.run(f.a.argv([*FARM, "node", "models", "pcb", "--allow", "*"], hostname=False),
                           env=f.a.env(), cwd=f.a.root, capture_output=True, text=True, timeout=120)
    assert other.returncode == 2 and "its own model lists" in other.stderr, other.stderr
    assert f.lan.cli(f.head, "node", "models", "pca").returncode == 0  # the operator clears them
    assert f.models()[1]["pca"]["allow"] == "*"
