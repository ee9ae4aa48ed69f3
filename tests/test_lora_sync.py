"""LoRA adapters synced like models (issue 17, points 1 and 4), on loopback: the head's real FarmModels
service (gRPC, tokens, role table, model lists) serves a user adapter only it has, by the hash the job
pinned; a node's real segment runner fetches it into its FARM_HOME/loras before the engine loads it,
and renders the same image as the head's own run. A corrupted copy on the node is refused by the
engine and, with the sync, fetched again.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from test_model_sync import Counting

from farm.api.auth import Access, TokenInterceptor, bearer
from farm.api.control_server import serve
from farm.api.model_server import ModelLibrary, add_models_service, head_folder
from farm.api.models_client import HeadModels
from farm.cluster.pki import PIN_CHARS
from farm.cluster.tokens import TokenStore
from farm.contracts.domain import JobSpec, NodeInfo, SegmentTask
from farm.contracts.errors import FarmError, InvalidInput, NotFound, PermissionDenied
from farm.jobs.jobspec import make_job
from farm.pipelines.runner import SegmentRunner
from farm.runtime.coordinator import Coordinator
from farm.runtime.simulate import CountingSink, SimExecutor, SimNode
from node.model_fetch import ModelFetcher, ModelStore

ADAPTER = "user-style"  # a user's adapter: in the head's FARM_HOME only
PCS = {"pca": ("pca",), "pcb": ("pcb",)}


def write_adapter(path: Path, seed: int) -> None:
    """A UNet adapter for demo-tiny in peft's layout, seeded random weights (as `farm.jobs.loras` reads it)."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    from farm.pipelines.families import get_family

    pipe = get_family("sd15").build_tiny()
    pipe.unet.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_v", "conv1"]))
    gen = torch.Generator().manual_seed(seed)
    weights = {f"unet.{key}": torch.randn(value.shape, generator=gen) * 0.3
               for key, value in sorted(get_peft_model_state_dict(pipe.unet).items())}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(path), metadata={"format": "pt", "farm.family": "sd15"})


class Head:
    """The head on loopback: its FARM_HOME holds the adapter; FarmModels resolves names as `farm head` does."""

    def __init__(self, root: Path) -> None:
        self.home = root / "head-home"
        self.adapter = self.home / "loras" / f"{ADAPTER}.safetensors"
        write_adapter(self.adapter, 17)
        (root / "head").mkdir()
        self.tokens = TokenStore(root / "head", "a" * PIN_CHARS)
        executor = SimExecutor([SimNode(NodeInfo(n, 8.0), 1.0) for n in ("headpc", "pca", "pcb")], [])
        self.coordinator = Coordinator(executor, CountingSink(), clock=lambda: executor.now)
        access = Access(self.tokens.identify)
        self.server, self.port = serve(
            lambda s: add_models_service(s, access, ModelLibrary(head_folder), self.coordinator,
                                         lambda pc: PCS.get(pc, ()), ("headpc",)),
            "127.0.0.1:0", tls=None, interceptor=TokenInterceptor(access), names=())
        self.node_tokens = {pc: self.tokens.issue_node_token(pc) for pc in PCS}

    def client(self, token: str) -> HeadModels:
        return HeadModels(grpc.insecure_channel(f"127.0.0.1:{self.port}"), bearer(token))

    def fetcher(self, pc: str, home: Path) -> ModelFetcher:
        return ModelFetcher(self.client(self.node_tokens[pc]), ModelStore(home / "models" / "hub"), lambda m: True)


@pytest.fixture
def head(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    h = Head(tmp_path)
    monkeypatch.setenv("FARM_HOME", str(h.home))  # the head's process: it validates jobs and serves files
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield h
    torch.set_num_threads(threads)
    h.server.stop(grace=None)


def styled_job(weight: float = 0.8) -> JobSpec:
    return make_job(model="demo-tiny", prompts=["a red circle", "a blue square"], steps=4, sampler="euler",
                    loras=[{"name": ADAPTER, "weight": weight}])


def render(runner: SegmentRunner, job: JobSpec, cut: int = 2) -> list[np.ndarray]:
    """The job's one shard as two segments handed over at step `cut`."""
    samples = job.samples()
    first = runner.run(SegmentTask(job, "s", samples, 0, 0, cut, None))
    last = runner.run(SegmentTask(job, "s", samples, 1, cut, job.steps, first.checkpoint))
    return [np.frombuffer(b, np.uint8).reshape(job.height, job.width, 3) for b in last.images]


def node_runner(head: Head, pc: str, home: Path, fetcher: ModelFetcher | None = None) -> SegmentRunner:
    fetcher = fetcher or head.fetcher(pc, home)
    return SegmentRunner(NodeInfo(pc, 8.0), home, fetch=fetcher.ensure, fetch_loras=fetcher.ensure_loras)


def test_a_node_without_the_adapter_fetches_it_and_renders_what_the_head_renders(head: Head, tmp_path: Path) -> None:
    job = styled_job()  # accepted by the head: pinned to the head's file
    assert job.loras[0].sha256 == hashlib.sha256(head.adapter.read_bytes()).hexdigest()
    node_home = tmp_path / "pca-home"
    assert not (node_home / "loras").exists()
    fetcher = head.fetcher("pca", node_home)
    counting = Counting(fetcher.head)
    fetcher.head = counting  # type: ignore[assignment]

    on_node = render(node_runner(head, "pca", node_home, fetcher), job)
    synced = node_home / "loras" / f"{ADAPTER}.safetensors"
    assert synced.read_bytes() == head.adapter.read_bytes()
    assert counting.offsets == [0] and counting.received == head.adapter.stat().st_size  # once, for both segments
    assert not [p for p in synced.parent.iterdir() if p.name.endswith(".incomplete")]

    on_head = render(SegmentRunner(NodeInfo("headpc", 8.0), head.home), job)
    assert all(np.array_equal(a, b) for a, b in zip(on_node, on_head, strict=True))
    plain = render(SegmentRunner(NodeInfo("headpc", 8.0), head.home),
                   make_job(model="demo-tiny", prompts=list(job.prompts), steps=4, sampler="euler"))
    assert not any(np.array_equal(a, b) for a, b in zip(on_node, plain)), "the adapter changed nothing"
    assert f"lora:{ADAPTER}" not in head.coordinator.state.synced  # adapters are not priced as models


def test_a_corrupted_adapter_on_the_node_is_refused_and_fetched_again(head: Head, tmp_path: Path) -> None:
    job = styled_job()
    node_home = tmp_path / "pca-home"
    head.fetcher("pca", node_home).ensure_loras(job.loras, node_home)
    copy = node_home / "loras" / f"{ADAPTER}.safetensors"
    data = bytearray(copy.read_bytes())
    data[-100] ^= 0xFF  # same size, one weight changed: only the hash can tell
    copy.write_bytes(bytes(data))

    without_sync = SegmentRunner(NodeInfo("pca", 8.0), node_home)
    with pytest.raises(InvalidInput, match=r"loras\[0\]\.name: .*SHA-256"):
        render(without_sync, job)

    fetcher = head.fetcher("pca", node_home)
    counting = Counting(fetcher.head)
    fetcher.head = counting  # type: ignore[assignment]
    on_node = render(node_runner(head, "pca", node_home, fetcher), job)
    assert copy.read_bytes() == head.adapter.read_bytes()
    assert counting.offsets == [0] and counting.received == len(data)
    on_head = render(SegmentRunner(NodeInfo("headpc", 8.0), head.home), job)
    assert all(np.array_equal(a, b) for a, b in zip(on_node, on_head, strict=True))


def test_a_node_with_another_version_of_the_adapter_gets_the_pinned_one(head: Head, tmp_path: Path) -> None:
    node_home = tmp_path / "pca-home"
    write_adapter(node_home / "loras" / f"{ADAPTER}.safetensors", 99)  # the PC's own file of that name
    job = styled_job()
    head.fetcher("pca", node_home).ensure_loras(job.loras, node_home)
    assert (node_home / "loras" / f"{ADAPTER}.safetensors").read_bytes() == head.adapter.read_bytes()


def test_the_head_serves_an_adapter_only_by_the_pinned_hash_and_as_its_owner_allows(head: Head,
                                                                                 tmp_path: Path) -> None:
    job = styled_job()
    pcb = tmp_path / "pcb-home"
    admin = head.client(head.tokens.admin_token)
    admin.set_rules("pcb", ("sd*",), ())  # an allow list names base models: adapters still come
    head.fetcher("pcb", pcb).ensure_loras(job.loras, pcb)
    (pcb / "loras" / f"{ADAPTER}.safetensors").unlink()
    admin.set_rules("pcb", (), ("lora:user-*",))  # a deny pattern names adapters as lora:NAME
    with pytest.raises(PermissionDenied, match="pcb does not take 'lora:user-style'"):
        head.fetcher("pcb", pcb).ensure_loras(job.loras, pcb)
    with pytest.raises(PermissionDenied):
        list(head.client(head.node_tokens["pcb"]).fetch(f"lora:{ADAPTER}", job.loras[0].sha256, 0))
    assert not (pcb / "loras" / f"{ADAPTER}.safetensors").exists()

    pca = head.client(head.node_tokens["pca"])
    with pytest.raises(NotFound):
        list(pca.fetch(f"lora:{ADAPTER}", hashlib.sha256(b"another file").hexdigest(), 0))
    with pytest.raises(NotFound):
        pca.manifest("lora:no-such-adapter")
    with pytest.raises(NotFound):
        pca.manifest("lora:../../head/admin-token")
    write_adapter(head.adapter, 5)  # the head's file changed after the job was accepted
    with pytest.raises(FarmError, match=r"loras\[0\]\.name: the head's adapter user-style is no longer the file"):
        head.fetcher("pca", tmp_path / "pca-home").ensure_loras(job.loras, tmp_path / "pca-home")


# ----- the head's adapters on the A1111 HTTP API ---------------------------------------------------


def test_the_http_api_lists_the_heads_adapters_as_a1111_does(head: Head, tmp_path: Path) -> None:
    """`GET /sdapi/v1/loras` through the real `webuiapi` client: the head's user adapter and the bundled
    one, with their safetensors metadata; a credential is needed like on every other route."""
    import requests
    import webuiapi
    from fake_farm import FakeFarm

    from farm.api.http import make_app, token_users
    from farm.api.http_server import HttpServer
    from farm.cluster.credentials import HeadCredentials

    tokens = HeadCredentials.load_or_create(tmp_path / "http-head").tokens
    server = HttpServer(make_app(FakeFarm(), authenticate=token_users(tokens.identify), require_credentials=True),
                        "127.0.0.1", 0)
    server.start()
    try:
        assert requests.get(f"{server.url}/sdapi/v1/loras", timeout=10).status_code == 401
        api = webuiapi.WebUIApi(host="127.0.0.1", port=server.port, username="ana",
                                password=tokens.issue_user_token("ana"))
        listed = {item["name"]: item for item in api.get_loras()}
    finally:
        server.stop()
    assert set(listed) >= {ADAPTER, "demo-shapes-outline"}
    mine = listed[ADAPTER]
    assert mine == {"name": ADAPTER, "alias": ADAPTER, "path": f"{ADAPTER}.safetensors",
                    "metadata": {"format": "pt", "farm.family": "sd15"}}
    assert listed["demo-shapes-outline"]["metadata"]["farm.base_model"] == "demo-shapes"


# ----- `farm submit` from a PC that lacks the job's model or adapter --------------------------------


def test_farm_submit_leaves_model_and_adapters_to_the_head(head: Head, tmp_path: Path) -> None:
    """The client PC (its own FARM_HOME, a separate process) has no `user-style` adapter and no
    `org/only-on-head` model: it checks the job file's form only; the head (FARM_HOME with the adapter)
    accepts the adapter and pins its hash, and refuses an unknown model or adapter with one line naming
    the field (INVALID_ARGUMENT); a malformed field never leaves the client."""
    import os
    import subprocess
    import sys

    from fake_farm import FakeFarm

    from farm.api.control_server import serve_control
    from farm.cluster.credentials import HeadCredentials
    from farm.cluster.membership import Membership

    folder = head.home / "head"
    creds = HeadCredentials.load_or_create(folder)
    farm = FakeFarm()
    server, port = serve_control(farm, "127.0.0.1:0", tls=creds.tls, tokens=creds.tokens,
                                 membership=Membership(folder, creds.ca, creds.tokens, "127.0.0.1:6379", "r"))
    client_home = tmp_path / "client-home"
    client_home.mkdir()
    env = {**os.environ, "FARM_HOME": str(client_home), "OMP_NUM_THREADS": "1"}
    env.pop("FARM_HEAD", None)
    env.pop("FARM_TOKEN", None)

    def submit(job: str) -> subprocess.CompletedProcess[str]:
        (tmp_path / "job.toml").write_text(job, encoding="utf-8")
        return subprocess.run([sys.executable, "-m", "farm.cli.main", "submit", str(tmp_path / "job.toml"),
                               "--detach", "--head", f"127.0.0.1:{port}", "--token", creds.tokens.admin_token],
                              env=env, capture_output=True, text=True, timeout=120)

    job = f'model = "demo-tiny"\nprompts = ["a red circle"]\nloras = [{{name = "{ADAPTER}", weight = 0.5}}]\n'
    try:
        accepted = submit(job)
        assert accepted.returncode == 0, accepted.stderr
        (spec,) = [s for name, s in farm.calls if name == "submit"]
        assert spec.loras[0].name == ADAPTER and spec.loras[0].weight == 0.5
        assert spec.loras[0].sha256 == hashlib.sha256(head.adapter.read_bytes()).hexdigest()
        assert spec.steps == 20 and spec.width == 64  # demo-tiny's defaults, filled in by the head

        head_refuses = (
            (job.replace("demo-tiny", "org/only-on-head"), "farm: model: unknown model 'org/only-on-head'"),
            (job.replace(ADAPTER, "not-on-head"), "farm: loras[0].name: unknown adapter 'not-on-head'"),
            (job.replace("demo-tiny", "demo-shapes").replace("prompts", "width = 128\nprompts"),
             "farm: width: must be a multiple of 8 from 8 to 64"))
        for text, line in head_refuses:
            refused = submit(text)
            assert refused.returncode == 2 and refused.stderr.startswith(line), refused.stderr
            assert len(refused.stderr.splitlines()) == 1 and "Traceback" not in refused.stderr
        calls = len(farm.calls)
        malformed = ((job.replace("0.5", "9"), "loras[0].weight"), (job.replace(ADAPTER, "../x"), "loras[0].name"),
                     (job + "steps = 1\n", "steps"), (job + "width = 65\n", "width"))
        for text, field in malformed:
            refused = submit(text)
            assert refused.returncode == 2 and refused.stderr.startswith(f"farm: {field}: "), refused.stderr
        assert len(farm.calls) == calls, "a malformed job reached the head"
    finally:
        server.stop(None)
