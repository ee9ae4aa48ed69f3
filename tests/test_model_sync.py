"""Model sync on loopback: the head's FarmModels service (real gRPC, real tokens and role table) and a
PC's fetcher into a Hugging Face-style cache; and the planner's side (model lists, pricing a transfer).

The multi-PC versions of these, in network namespaces with real Ray workers, are in test_lan_models.py.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from huggingface_hub import scan_cache_dir, try_to_load_from_cache

import farm
import node.model_fetch as model_fetch
from farm.api.auth import Access, TokenInterceptor, bearer
from farm.api.control_server import serve
from farm.api.model_server import ModelLibrary, ServedModels, add_models_service, head_folder
from farm.api.models_client import HeadModels
from farm.cluster.model_manifest import CHUNK, FileEntry, checked, repo_folder, revision_of
from farm.cluster.pki import PIN_CHARS
from farm.cluster.tokens import TokenStore
from farm.contracts.domain import JobSpec, Lora, NodeInfo
from farm.contracts.errors import FarmError, InvalidInput, PermissionDenied, Unauthenticated, Unreachable
from farm.core import model_lists, planner
from farm.core.costmodel import Shape
from farm.runtime.coordinator import Coordinator
from farm.runtime.simulate import CountingSink, SimExecutor, SimJob, SimNode
from node.model_fetch import ModelFetcher, ModelStore

MODEL = "org/tiny-model"
PCS = {"pca": ("pca",), "pcb": ("pcb",)}


def _write_model(folder: Path) -> dict[str, bytes]:
    """A model folder as a diffusers save makes it: an index, configs, and a weight file of several chunks."""
    rng = hashlib.sha256(b"seed")
    weights = b"".join(rng.digest() + i.to_bytes(4, "little") for i in range(120_000))  # ~4.3 MB
    files = {"model_index.json": b'{"_class_name": "StableDiffusionPipeline"}',
             "unet/config.json": b'{"sample_size": 8}',
             "unet/diffusion_pytorch_model.safetensors": weights,
             "text_encoder/config.json": b"{}"}
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    return files


class Head:
    """The head's side on loopback: tokens, a real coordinator (simulated nodes), FarmModels served."""

    def __init__(self, root: Path) -> None:
        self.folder = root / "model"
        self.files = _write_model(self.folder)
        (root / "head").mkdir()
        self.tokens = TokenStore(root / "head", "a" * PIN_CHARS)
        nodes = [SimNode(NodeInfo(n, 8.0), 1.0) for n in ("headpc", "pca", "pcb")]
        self.executor = SimExecutor(nodes, [])
        self.coordinator = Coordinator(self.executor, CountingSink(), clock=lambda: self.executor.now)
        self.library = ModelLibrary(lambda name: self.folder if name == MODEL else None)
        access = Access(self.tokens.identify)
        self.server, self.port = serve(
            lambda s: add_models_service(s, access, self.library, self.coordinator, lambda pc: PCS.get(pc, ()),
                                         ("headpc",)),
            "127.0.0.1:0", tls=None, interceptor=TokenInterceptor(access), names=())
        self.node_tokens = {pc: self.tokens.issue_node_token(pc) for pc in PCS}

    def client(self, token: str) -> HeadModels:
        return HeadModels(grpc.insecure_channel(f"127.0.0.1:{self.port}"), bearer(token))

    def fetcher(self, pc: str, root: Path) -> ModelFetcher:
        return ModelFetcher(self.client(self.node_tokens[pc]), ModelStore(root / pc / "hub"), lambda model: False)

    def close(self) -> None:
        self.server.stop(grace=None)


@pytest.fixture
def head(tmp_path: Path):
    h = Head(tmp_path)
    yield h
    h.close()


class Counting:
    """A real HeadModels whose fetches are counted (offset asked, bytes received)."""

    def __init__(self, inner: HeadModels) -> None:
        self.inner = inner
        self.offsets: list[int] = []
        self.received = 0

    def fetch(self, model: str, sha256: str, offset: int):  # type: ignore[no-untyped-def]
        self.offsets.append(offset)
        for data in self.inner.fetch(model, sha256, offset):
            self.received += len(data)
            yield data

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


# ----- the manifest ------------------------------------------------------------------------------


def test_manifest_names_every_file_by_its_sha256(head: Head) -> None:
    manifest = head.library.manifest(MODEL)
    assert {f.path: (f.sha256, f.size) for f in manifest.files} == {
        rel: (hashlib.sha256(data).hexdigest(), len(data)) for rel, data in head.files.items()}
    assert manifest.size == sum(len(d) for d in head.files.values())
    assert manifest.revision == revision_of(manifest.files) and len(manifest.revision) == 40
    assert head.library.manifest(MODEL).revision == manifest.revision  # stable


def test_an_adapter_file_is_a_manifest_of_one_file(tmp_path: Path) -> None:
    adapter = tmp_path / "demo-outline.safetensors"
    adapter.write_bytes(b"adapter bytes")
    manifest = ModelLibrary(lambda name: adapter).manifest("demo-outline")
    assert manifest.files == (FileEntry("demo-outline.safetensors", hashlib.sha256(b"adapter bytes").hexdigest(), 13),)


@pytest.mark.parametrize("path", ["../x", "/etc/passwd", "a/../../b", "a\\b", ""])
def test_a_manifest_that_leaves_the_model_folder_is_refused(path: str) -> None:
    files = (FileEntry(path, "0" * 64, 1),)
    with pytest.raises(InvalidInput, match="manifest.files.path"):
        checked("m", revision_of(files), files)


def test_a_manifest_whose_revision_lies_is_refused() -> None:
    files = (FileEntry("a", "0" * 64, 1),)
    with pytest.raises(InvalidInput, match="manifest.revision"):
        checked("m", "f" * 40, files)


def test_repo_folders_follow_the_hugging_face_cache() -> None:
    assert repo_folder("stabilityai/sdxl-turbo") == "models--stabilityai--sdxl-turbo"
    assert repo_folder("/srv/models/my sd").startswith("models--local--my-sd-")
    assert repo_folder("/srv/a/sd") != repo_folder("/srv/b/sd")


# ----- fetching ----------------------------------------------------------------------------------


def test_a_pc_fetches_the_model_into_a_hugging_face_cache_layout(head: Head, tmp_path: Path) -> None:
    fetcher = head.fetcher("pca", tmp_path)
    folder = fetcher.ensure(MODEL)
    assert folder is not None
    for rel, data in head.files.items():
        assert (folder / rel).is_symlink() and (folder / rel).read_bytes() == data
        assert (folder / rel).resolve().parent.name == "blobs"
        assert (folder / rel).resolve().name == hashlib.sha256(data).hexdigest()
    # huggingface_hub itself reads the layout: the snapshot refs/main names, every file in it.
    root = tmp_path / "pca" / "hub"
    found = try_to_load_from_cache(MODEL, "unet/config.json", cache_dir=root)
    assert isinstance(found, str) and Path(found).read_bytes() == head.files["unet/config.json"]
    (repo,) = scan_cache_dir(root).repos
    assert repo.repo_id == MODEL and repo.size_on_disk == sum(len(d) for d in head.files.values())
    # The head's state learned what the PC holds, and the model's size (for the planner).
    state = head.coordinator.state
    assert state.nodes["pca"].stored == {MODEL} and state.nodes["pcb"].stored == frozenset()
    assert state.synced[MODEL] == sum(len(d) for d in head.files.values())
    assert MODEL in state.nodes["headpc"].stored
    assert fetcher.link_bytes_per_s > 0


def test_a_second_ensure_fetches_nothing(head: Head, tmp_path: Path) -> None:
    first = head.fetcher("pca", tmp_path).ensure(MODEL)
    again = head.fetcher("pca", tmp_path)  # a new worker process: it checks the hashes again, fetches nothing
    counting = Counting(again.head)
    again.head = counting  # type: ignore[assignment]
    assert again.ensure(MODEL) == first
    assert counting.offsets == [] and counting.received == 0


def test_an_interrupted_transfer_resumes_where_it_stopped(head: Head, tmp_path: Path, monkeypatch, caplog) -> None:
    monkeypatch.setattr(model_fetch, "STOP_GRACE_S", 0.0)
    fetcher = head.fetcher("pca", tmp_path)
    chunks = iter(range(10**6))
    with pytest.raises(FarmError, match="stopped at byte"):
        fetcher.ensure(MODEL, should_stop=lambda: next(chunks) >= 2)  # stops after the second chunk of a file
    weights = head.files["unet/diffusion_pytorch_model.safetensors"]
    sha = hashlib.sha256(weights).hexdigest()
    blobs = tmp_path / "pca" / "hub" / repo_folder(MODEL) / "blobs"
    partial = [p for p in blobs.iterdir() if p.name.endswith(".incomplete")]
    assert len(partial) == 1
    kept = partial[0].stat().st_size
    assert 0 < kept < (len(weights) if partial[0].name.startswith(sha) else 10**9)

    again = head.fetcher("pca", tmp_path)
    counting = Counting(again.head)
    again.head = counting  # type: ignore[assignment]
    with caplog.at_level(logging.INFO, logger="farm.api.model_server"):
        folder = again.ensure(MODEL)
    assert folder is not None and (folder / "unet/diffusion_pytorch_model.safetensors").read_bytes() == weights
    assert kept in counting.offsets, "the head was asked for the rest of the file, not all of it"
    total = sum(len(d) for d in head.files.values())
    assert counting.received < total  # nothing is fetched twice
    assert any(f"from byte {kept}" in r.message for r in caplog.records)


def test_a_paused_transfer_holds_still_and_goes_on_when_the_pause_ends(head: Head, tmp_path: Path) -> None:
    """While the head interrupts the segment (its owner paused the PC) the transfer waits between two chunks;
    when the pause ends within the grace time it goes on from the same byte: nothing is fetched twice."""
    asked: list[float] = []
    held_until = [0.0]

    def paused() -> bool:
        now = time.monotonic()
        asked.append(now)
        if len(asked) == 2:
            held_until[0] = now + 1.0  # the owner's pause lasts a second
        return now < held_until[0]

    fetcher = head.fetcher("pca", tmp_path)
    counting = Counting(fetcher.head)
    fetcher.head = counting  # type: ignore[assignment]
    began = time.monotonic()
    folder = fetcher.ensure(MODEL, should_stop=paused)
    assert folder is not None and time.monotonic() - began >= 1.0
    assert counting.received == sum(len(d) for d in head.files.values())
    assert counting.offsets == [0] * len(head.files)


def test_a_corrupt_blob_is_refused_and_fetched_again(head: Head, tmp_path: Path) -> None:
    folder = head.fetcher("pca", tmp_path).ensure(MODEL)
    assert folder is not None
    blob = (folder / "unet/diffusion_pytorch_model.safetensors").resolve()
    data = bytearray(blob.read_bytes())
    data[1000] ^= 0xFF  # same size, one bit pattern changed: only the hash can tell
    blob.write_bytes(bytes(data))
    again = head.fetcher("pca", tmp_path)
    counting = Counting(again.head)
    again.head = counting  # type: ignore[assignment]
    assert again.ensure(MODEL) == folder
    assert blob.read_bytes() == head.files["unet/diffusion_pytorch_model.safetensors"]
    assert counting.offsets == [0] and counting.received == len(data)


def test_a_corrupt_partial_file_is_refused_and_fetched_again(head: Head, tmp_path: Path) -> None:
    weights = head.files["unet/diffusion_pytorch_model.safetensors"]
    sha = hashlib.sha256(weights).hexdigest()
    blobs = tmp_path / "pca" / "hub" / repo_folder(MODEL) / "blobs"
    blobs.mkdir(parents=True)
    (blobs / f"{sha}.incomplete").write_bytes(b"\0" * (len(weights) // 2))  # a partial file of wrong bytes
    fetcher = head.fetcher("pca", tmp_path)
    folder = fetcher.ensure(MODEL)
    assert folder is not None and (folder / "unet/diffusion_pytorch_model.safetensors").read_bytes() == weights
    assert not (blobs / f"{sha}.incomplete").exists()


def test_free_disk_is_checked_before_a_transfer(head: Head, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(model_fetch, "RESERVE_BYTES", 2**62)  # more than any disk has free
    with pytest.raises(FarmError, match=r"^disk: model org/tiny-model needs .* GiB are free"):
        head.fetcher("pca", tmp_path).ensure(MODEL)
    assert not (tmp_path / "pca" / "hub" / repo_folder(MODEL) / "blobs").exists()


def test_a_verified_copy_renders_while_the_head_is_away(head: Head, tmp_path: Path) -> None:
    folder = head.fetcher("pca", tmp_path).ensure(MODEL)
    head.close()
    offline = head.fetcher("pca", tmp_path)
    assert offline.ensure(MODEL) == folder
    (folder / "unet/config.json").resolve().write_bytes(b"{}")  # a copy that no longer verifies is not used
    with pytest.raises(Unreachable):
        head.fetcher("pca", tmp_path).ensure(MODEL)


def test_a_model_the_pc_has_itself_is_not_fetched(head: Head, tmp_path: Path) -> None:
    fetcher = ModelFetcher(head.client(head.node_tokens["pca"]), ModelStore(tmp_path / "hub"), lambda m: True)
    assert fetcher.ensure(MODEL) is None
    assert not (tmp_path / "hub").exists()


# ----- model lists and who may call --------------------------------------------------------------


def test_a_pc_that_denies_a_model_is_never_served_its_files(head: Head, tmp_path: Path) -> None:
    admin = head.client(head.tokens.admin_token)
    admin.set_rules("pcb", (), ("org/*",))
    assert head.coordinator.state.nodes["pcb"].deny_models == ("org/*",)
    with pytest.raises(PermissionDenied, match="pcb does not take 'org/tiny-model'"):
        head.fetcher("pcb", tmp_path).ensure(MODEL)
    sha = hashlib.sha256(head.files["model_index.json"]).hexdigest()
    with pytest.raises(PermissionDenied):
        list(head.client(head.node_tokens["pcb"]).fetch(MODEL, sha, 0))
    assert not (tmp_path / "pcb").exists()
    # Its own allow list works the same way, set from the PC itself.
    head.client(head.node_tokens["pca"]).set_rules("pca", ("sd*",), ())
    with pytest.raises(PermissionDenied):
        head.fetcher("pca", tmp_path).ensure(MODEL)


def test_only_a_pcs_node_token_fetches_and_a_pc_sets_only_its_own_lists(head: Head) -> None:
    admin, user = head.client(head.tokens.admin_token), head.client(head.tokens.issue_user_token("ann"))
    for client in (admin, user):
        with pytest.raises(PermissionDenied):
            client.manifest(MODEL)
    with pytest.raises(Unauthenticated):
        head.client("not-a-token").manifest(MODEL)
    with pytest.raises(PermissionDenied, match="its own model lists"):
        head.client(head.node_tokens["pca"]).set_rules("pcb", (), ("*",))
    with pytest.raises(InvalidInput, match="--models"):
        admin.set_rules("pca", ("x" * 300,), ())
    models, nodes = user.list()  # users read the farm's models, as they read its nodes
    assert models == [] and {n.node for n in nodes} == {"headpc", "pca", "pcb"}


def test_farm_models_lists_size_hash_and_holders(head: Head, tmp_path: Path) -> None:
    head.fetcher("pca", tmp_path).ensure(MODEL)
    models, nodes = head.client(head.tokens.admin_token).list()
    (row,) = models
    manifest = head.library.manifest(MODEL)
    assert (row.model, row.revision, row.size, row.files) == (MODEL, manifest.revision, manifest.size, 4)
    assert set(row.nodes) == {"headpc", "pca"}
    assert {n.node: n.stored for n in nodes}["pca"] == (MODEL,)


def test_a_submitted_job_tells_the_planner_its_models_size(head: Head, tmp_path: Path) -> None:
    """A job naming a diffusers folder only the head has: its size is in the farm's state before it is placed."""
    folder = tmp_path / "sd"
    shutil.copytree(Path(farm.__file__).parent / "models" / "demo-shapes", folder)
    library = ModelLibrary(head_folder)
    queue = ServedModels(head.coordinator, library, head.coordinator, ("headpc",))
    job = queue.submit(JobSpec(model=str(folder), prompts=("a red circle on a blue background",), seeds=(1,),
                               steps=4, width=64, height=64, guidance=3.0, sampler="euler"))
    state = head.coordinator.state
    assert job in state.jobs
    assert state.synced[str(folder)] == sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert state.nodes["headpc"].stored == {str(folder)}
    assert ServedModels(head.coordinator, library, head.coordinator, ()).submit(
        JobSpec(model="demo-shapes", prompts=("a",), seeds=(1,), steps=4, width=64, height=64, guidance=3.0,
                sampler="euler")) in head.coordinator.state.jobs
    assert "demo-shapes" not in head.coordinator.state.synced  # a built-in model: every PC has it


# ----- the planner -------------------------------------------------------------------------------


def test_model_lists_match_like_file_names() -> None:
    assert model_lists.parse_patterns("--models", " sd*, wan* ,") == ("sd*", "wan*")
    assert model_lists.allows("sdxl-base", ("sd*",), ())
    assert not model_lists.allows("wan-2.1", ("sd*",), ())
    assert not model_lists.allows("sdxl-base", (), ("sdxl*",))
    assert model_lists.allows("anything", (), ())
    with pytest.raises(InvalidInput, match="--deny-models"):
        model_lists.parse_patterns("--deny-models", ["a\x1b[31m"])


SD = Shape("sd15", 512, 512)


def _demand(samples: int = 12) -> planner.Demand:
    return planner.Demand("org/big", SD, 30, tuple(range(samples)))


def test_the_planner_never_places_a_model_on_a_pc_that_denies_it() -> None:
    nodes = [NodeInfo("a", 8.0, 1.0), NodeInfo("b", 8.0, 3.0)]
    context = planner.PlanContext(lists={"b": ((), ("org/*",))})
    shards = planner.plan_shards("j", _demand(), nodes, context=context)
    assert {s.home for s in shards} == {"a"}


def test_the_planner_weighs_a_transfer_against_waiting() -> None:
    nodes = [NodeInfo("holder", 8.0, 1.0), NodeInfo("new", 8.0, 1.0)]
    base = dict(synced={"org/big": 0}, stored={"holder": frozenset({"org/big"})})
    cheap = planner.plan_shards("j", _demand(), nodes, context=planner.PlanContext(**base))
    assert {s.home for s in cheap} == {"holder", "new"}  # a free transfer: both share the work
    slow_link = dict(base, synced={"org/big": 50 * 2**30}, links={"new": 1e6})  # 50 GiB at 1 MB/s: hours
    dear = planner.plan_shards("j", _demand(), nodes, context=planner.PlanContext(**slow_link))
    assert {s.home for s in dear} == {"holder"}  # waiting for the holder beats the transfer
    fast_link = dict(base, synced={"org/big": 2 * 2**30}, links={"new": 1e9})  # 2 GiB at 1 GB/s: seconds
    fast = planner.plan_shards("j", _demand(), nodes, context=planner.PlanContext(**fast_link))
    assert {s.home for s in fast} == {"holder", "new"}


def test_an_idle_node_that_holds_the_model_on_disk_takes_a_segment_first() -> None:
    from farm.contracts.domain import NodeState, ReadySegment

    seg = ReadySegment("j/s0", 0, "gone", 1.0, "j", "org/big")
    nodes = [NodeState(NodeInfo("fast", 8.0, 2.0)), NodeState(NodeInfo("holder", 8.0, 1.0))]
    (a,) = planner.plan_tick([seg], nodes, {"fast": frozenset({"org/big"}), "holder": frozenset()})
    assert a.node == "holder"
    (b,) = planner.plan_tick([seg], nodes)
    assert b.node == "fast"


def nodes_that_ran(deny: tuple[str, ...], loras: tuple[Lora, ...] = ()) -> set[str]:
    """The real coordinator on a virtual clock, the fast node's owner denying `deny`: who ran the job."""
    nodes = [SimNode(NodeInfo("slow", 8.0, 1.0), 1.0), SimNode(NodeInfo("fast", 8.0, 4.0), 4.0)]
    job = SimJob("j", "sd15-sim", SD, 8, 20)
    executor = SimExecutor(nodes, [job])
    coordinator = Coordinator(executor, CountingSink(), clock=lambda: executor.now, segment_seconds=5.0)
    executor.coordinator = coordinator
    coordinator.node_models("fast", frozenset(), (), deny, 0.0)
    coordinator.submit(replace(job.spec(), loras=loras), job.job_id, job.shape)
    for _ in range(2000):
        coordinator.tick(0)
        if coordinator.state.jobs["j"].status.value == "done":
            break
    state = coordinator.state.jobs["j"]
    assert state.status.value == "done"
    return {run.node for s in state.shards.values() for run in s.runs}


def test_the_farm_never_runs_a_denied_models_segments_on_that_node() -> None:
    assert nodes_that_ran(("sd15*",)) == {"slow"}
    assert nodes_that_ran(("wan*",)) == {"slow", "fast"}


def test_an_owner_denies_adapters_by_name_and_allow_lists_leave_them_alone() -> None:
    assert model_lists.allows_job("sd15", ("ink",), ("sd*",), ())
    assert not model_lists.allows_job("sd15", ("ink",), (), ("lora:*",))
    assert model_lists.allows_job("sd15", ("ink",), (), ("lora:nsfw*",))
    assert model_lists.adapter_of(model_lists.adapter_key("ink")) == "ink"


def test_the_farm_never_runs_a_denied_adapters_segments_on_that_node() -> None:
    """Placement and dispatch both honour a deny pattern that names the job's LoRA."""
    assert nodes_that_ran(("lora:ink*",), (Lora("ink-style", 0.8, "0" * 64),)) == {"slow"}


def test_disk_layout_survives_a_restart_of_the_store(head: Head, tmp_path: Path) -> None:
    head.fetcher("pca", tmp_path).ensure(MODEL)
    store = ModelStore(tmp_path / "pca" / "hub")
    assert store.stored() == [MODEL]
    manifest = store.local(MODEL)
    assert manifest is not None and manifest.revision == head.library.manifest(MODEL).revision
    os.remove(tmp_path / "pca" / "hub" / repo_folder(MODEL) / "refs" / "main")  # a snapshot never finished
    assert store.stored() == []
    assert CHUNK == 1 << 20
