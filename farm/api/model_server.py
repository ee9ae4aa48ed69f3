"""`FarmModels`: the head serves the files of the models it holds to the PCs of its farm.

A PC asks for a model's `Manifest` (its files with SHA-256 and size) and `Fetch`es each file by hash
from an offset, over the same TLS port and with its node token, so a transfer is encrypted, attributed
to one PC, and resumes where it stopped. The head checks the PC's model lists (the owner's allow and
deny patterns, kept in the farm's state) on every Manifest and Fetch: a PC that denies a model never
receives a byte of it. `Report` is how a PC says which synced models its disk holds and how fast its
last transfer was; both go into the farm's state as a `NodeModels` event, for the planner.

LoRA adapters travel the same way, named `lora:NAME` (`farm.core.model_lists.adapter_key`): the
head resolves the name to its adapter file (`farm.jobs.loras.find_lora`, a manifest of one file) and
`Fetch` serves it only by the hash a job pinned. An owner's deny patterns apply to adapters by that
name (`--deny-models 'lora:*'` refuses every adapter, `'lora:nsfw*'` some); allow patterns name the
base models a PC takes, so they leave adapters alone (an allow list `sd*` would otherwise refuse every
adapter not named so). The planner places by a job's model only: a PC that denies a job's adapter
refuses its segment at the fetch, and the segment goes to another node.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import grpc

from farm.api.auth import Access
from farm.api.status import answer
from farm.cluster.model_manifest import CHUNK, HashCache, Manifest, build_manifest, folder_size
from farm.cluster.tokens import Role
from farm.contracts.domain import JobSpec
from farm.contracts.errors import FarmError, InvalidInput, NotFound, PermissionDenied
from farm.core import model_lists
from farm.core.state import FarmState, NodeRecord
from protos.farm.v1 import models_pb2, models_pb2_grpc

log = logging.getLogger(__name__)
SERVICE_NAME = "protos.farm.v1.FarmModels"


class ModelBook(Protocol):
    """What the model service reads and tells of the farm (the coordinator)."""

    state: FarmState

    def node(self, name: str) -> NodeRecord | None: ...

    def node_models(self, name: str, stored: frozenset[str], allow: tuple[str, ...], deny: tuple[str, ...],
                    link_bytes_per_s: float) -> None: ...

    def model_served(self, model: str, size: int, holders: tuple[str, ...]) -> None: ...


class ModelLibrary:
    """The head's model files: a model's folder by name (`resolve`: a local diffusers folder, a cached
    Hugging Face snapshot, an adapter's file; None for models every PC builds itself), its size, and
    its manifest, hashed once per head process."""

    def __init__(self, resolve: Callable[[str], Path | None]) -> None:
        self._resolve = resolve
        self._hashes = HashCache()
        self._manifests: dict[str, Manifest] = {}
        self._lock = threading.Lock()

    def folder(self, model: str) -> Path | None:
        try:
            return self._resolve(model)
        except FarmError:
            return None

    def size(self, model: str) -> int | None:
        """Bytes of a model only the head holds (None: not one)."""
        folder = self.folder(model)
        return folder_size(folder) if folder is not None else None

    def manifest(self, model: str) -> Manifest:
        folder = self.folder(model)
        if folder is None:
            raise NotFound("model", f"the head serves no model named {model!r} (built-in models are made on each PC)")
        built = build_manifest(model, folder, self._hashes)
        with self._lock:
            self._manifests[model] = built
        return built

    def path_of(self, model: str, sha256: str) -> tuple[Path, int]:
        """The head's file with this hash in the model, and its size."""
        with self._lock:
            known = self._manifests.get(model)
        manifest = known if known is not None and known.entry(sha256) else self.manifest(model)
        entry = manifest.entry(sha256)
        folder = self.folder(model)
        if entry is None or folder is None:
            raise NotFound("sha256", f"model {model!r} has no file with hash {sha256[:16]}...")
        return (folder if folder.is_file() else folder / entry.path), entry.size  # an adapter: a file of its own


class FarmModelsServicer(models_pb2_grpc.FarmModelsServicer):
    def __init__(self, library: ModelLibrary, book: ModelBook, access: Access,
                 nodes_of: Callable[[str], tuple[str, ...]], own_nodes: tuple[str, ...] = ()) -> None:
        self.library = library
        self.book = book
        self.access = access  # who calls (the role table in `farm.api.auth` already admitted them)
        self.nodes_of = nodes_of  # a member PC's node names
        self.own_nodes = own_nodes  # the head's own nodes: they hold every model the head serves
        self._lock = threading.Lock()
        self.sent: dict[str, int] = {}  # bytes sent to each PC since the head started (`farm models`)

    def _pc(self, context: grpc.ServicerContext) -> str | None:
        """The PC calling with its node token (None: the operator)."""
        caller = self.access.caller(context)
        return caller.name if caller.role == Role.NODE else None

    def _may_hold(self, pc: str, model: str) -> None:
        """PermissionDenied unless the PC's model lists allow `model` (an adapter: unless they deny it)."""
        adapter = model_lists.adapter_of(model) is not None
        for name in self.nodes_of(pc):
            node = self.book.node(name)
            allow = () if adapter or node is None else node.allow_models
            if node is not None and not model_lists.allows(model, allow, node.deny_models):
                raise PermissionDenied(f"model: {pc} does not take {model!r} (its owner's model lists refuse it)")

    def _served(self, model: str, size: int) -> None:
        """The farm's state learns that `model` is fetched from the head (the head's own nodes hold it)."""
        self.book.model_served(model, size, self.own_nodes)

    def Manifest(self, request, context):  # type: ignore[no-untyped-def]
        def run() -> models_pb2.ManifestReply:
            pc = self._pc(context)
            if pc is None:
                raise PermissionDenied("a PC's node token only")
            self._may_hold(pc, request.model)
            manifest = self.library.manifest(request.model)
            if model_lists.adapter_of(request.model) is None:  # the planner prices models' transfers, not adapters'
                self._served(request.model, manifest.size)
            return models_pb2.ManifestReply(model=manifest.model, revision=manifest.revision, files=[
                models_pb2.ModelFile(path=f.path, sha256=f.sha256, size=f.size) for f in manifest.files])

        return answer(context, run)

    def Fetch(self, request, context) -> Iterator[models_pb2.FileChunk]:  # type: ignore[no-untyped-def]
        def opened() -> tuple[Path, int, str]:
            pc = self._pc(context)
            if pc is None:
                raise PermissionDenied("a PC's node token only")
            self._may_hold(pc, request.model)
            path, size = self.library.path_of(request.model, request.sha256)
            if not 0 <= request.offset <= size:
                raise InvalidInput("offset", f"must be from 0 to {size}, got {request.offset}")
            log.info("serving %s of %s to %s from byte %d", request.sha256[:12], request.model, pc, request.offset)
            return path, size, pc

        path, size, pc = answer(context, opened)  # type: ignore[misc]
        offset = request.offset
        with path.open("rb") as f:
            f.seek(offset)
            while offset < size and context.is_active():
                data = f.read(min(CHUNK, size - offset))
                if not data:
                    break
                yield models_pb2.FileChunk(offset=offset, data=data)
                offset += len(data)
                with self._lock:
                    self.sent[pc] = self.sent.get(pc, 0) + len(data)

    def Report(self, request, context):  # type: ignore[no-untyped-def]
        def run() -> models_pb2.ModelsAck:
            pc = self._pc(context)
            if pc is None:
                raise PermissionDenied("a PC's node token only")
            stored = frozenset(m for m in request.stored if len(m) <= 1000)
            if not 0 <= request.link_bytes_per_s <= 1e12:
                raise InvalidInput("link_bytes_per_s", f"must be from 0 to 1e12, got {request.link_bytes_per_s}")
            with self._lock:
                for name in self.nodes_of(pc):
                    node = self.book.node(name)
                    if node is not None:
                        link = request.link_bytes_per_s or node.link_bytes_per_s
                        self.book.node_models(name, stored, node.allow_models, node.deny_models, link)
            return models_pb2.ModelsAck()

        return answer(context, run)

    def SetRules(self, request, context):  # type: ignore[no-untyped-def]
        def run() -> models_pb2.ModelsAck:
            pc = self._pc(context)
            if pc is not None and pc != request.pc:
                raise PermissionDenied(f"pc: a PC sets its own model lists only ({pc}), not {request.pc!r}")
            allow = model_lists.parse_patterns("--models", list(request.rules.allow))
            deny = model_lists.parse_patterns("--deny-models", list(request.rules.deny))
            names = self.nodes_of(request.pc)
            if not names:
                raise NotFound("pc", f"no member PC named {request.pc!r}")
            with self._lock:
                for name in names:
                    node = self.book.node(name)
                    if node is not None:
                        self.book.node_models(name, node.stored, allow, deny, node.link_bytes_per_s)
            return models_pb2.ModelsAck()

        return answer(context, run)

    def ListModels(self, request, context):  # type: ignore[no-untyped-def]
        def run() -> models_pb2.ListModelsReply:
            state = self.book.state
            models = []
            for model in sorted(state.synced):
                try:
                    manifest = self.library.manifest(model)
                    revision, size, files = manifest.revision, manifest.size, len(manifest.files)
                except NotFound:  # gone from the head since
                    revision, size, files = "", state.synced[model], 0
                holders = sorted(n for n, r in state.nodes.items() if model in r.stored)
                models.append(models_pb2.ModelEntry(model=model, revision=revision, size=size, files=files,
                                                    nodes=holders))
            pcs = {node: pc for pc in self.sent for node in self.nodes_of(pc)}
            nodes = [models_pb2.NodeModels(node=n, stored=sorted(r.stored), link_bytes_per_s=r.link_bytes_per_s,
                                           rules=models_pb2.ModelRules(allow=r.allow_models, deny=r.deny_models),
                                           fetched_bytes=self.sent.get(pcs.get(n, ""), 0))
                     for n, r in sorted(state.nodes.items())]
            return models_pb2.ListModelsReply(models=models, nodes=nodes)

        return answer(context, run)


class ServedModels:
    """A `FarmService` that, before a job is queued, tells the farm's state the size of its model when
    only the head holds it, so the planner prices the transfer from the first placement on."""

    def __init__(self, service: object, library: ModelLibrary, book: ModelBook, own_nodes: tuple[str, ...]) -> None:
        self._service = service
        self._library = library
        self._book = book
        self._own = own_nodes

    def submit(self, spec: JobSpec, init_image: bytes | None = None) -> str:
        size = self._library.size(spec.model)
        if size is not None:
            self._book.model_served(spec.model, size, self._own)
        return self._service.submit(spec, init_image=init_image)  # type: ignore[attr-defined,no-any-return]

    def __getattr__(self, name: str) -> object:
        return getattr(self._service, name)


def head_folder(model: str) -> Path | None:
    """The folder of a model only the head holds: a local diffusers folder or a cached Hugging Face
    snapshot (None for a built-in model, which every PC makes or ships itself); for `lora:NAME`, the
    head's adapter file (its FARM_HOME's or the bundled one: a PC with another version fetches it)."""
    from farm.jobs.catalog import MODELS
    from farm.jobs.loras import find_lora
    from farm.jobs.sources import locate

    name = model_lists.adapter_of(model)
    if name is not None:
        found = find_lora(name)
        return found.path if found is not None else None
    return None if model in MODELS else locate(model)


def add_models_service(server: grpc.Server, access: Access | None, library: ModelLibrary, book: ModelBook,
                       nodes_of: Callable[[str], tuple[str, ...]], own_nodes: tuple[str, ...]) -> tuple[str, ...]:
    """Serve FarmModels on `server` (the head's TLS port, behind the role table); returns its name."""
    if access is None:
        raise FarmError("FarmModels needs tokens: it serves model files to the farm's PCs only")
    servicer = FarmModelsServicer(library, book, access, nodes_of, own_nodes)
    models_pb2_grpc.add_FarmModelsServicer_to_server(servicer, server)
    return (SERVICE_NAME,)
