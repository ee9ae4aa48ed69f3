"""The client of the head's `FarmModels` service: a PC's fetcher (node token) and `farm models` /
`farm node models` (the operator's token, or the PC's own node token for its own lists)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import grpc

from farm.api.control_client import raise_for
from farm.cluster.model_manifest import FileEntry, Manifest, checked
from farm.contracts.errors import FarmError
from protos.farm.v1 import models_pb2, models_pb2_grpc

TIMEOUT_S = 15.0
MANIFEST_TIMEOUT_S = 600.0  # the head hashes a model's files once (minutes for tens of GB)


@dataclass(frozen=True)
class ModelRow:
    """A model only the head holds, as `farm models` lists it."""

    model: str
    revision: str
    size: int
    files: int
    nodes: tuple[str, ...]


@dataclass(frozen=True)
class NodeModelsRow:
    node: str
    stored: tuple[str, ...]
    allow: tuple[str, ...]
    deny: tuple[str, ...]
    link_bytes_per_s: float
    fetched_bytes: int = 0  # bytes the head sent its PC since the head started


class HeadModels:
    def __init__(self, channel: grpc.Channel, metadata: tuple[tuple[str, str], ...], where: str = "the head") -> None:
        self.channel = channel
        self.stub = models_pb2_grpc.FarmModelsStub(channel)
        self.metadata = metadata  # `farm.api.auth.bearer(token)`
        self.where = where

    def manifest(self, model: str) -> Manifest:
        try:
            reply = self.stub.Manifest(models_pb2.ManifestRequest(model=model), metadata=self.metadata,
                                       timeout=MANIFEST_TIMEOUT_S)
        except grpc.RpcError as e:
            raise_for(e, self.where)
        files = tuple(FileEntry(f.path, f.sha256, f.size) for f in reply.files)
        return checked(reply.model, reply.revision, files)

    def fetch(self, model: str, sha256: str, offset: int) -> Iterator[bytes]:
        """The file's bytes from `offset` on, in chunks; a chunk out of place is an error."""
        try:
            for chunk in self.stub.Fetch(models_pb2.FetchRequest(model=model, sha256=sha256, offset=offset),
                                         metadata=self.metadata):
                if chunk.offset != offset:
                    raise FarmError(f"model {model}: the head sent byte {chunk.offset}, expected {offset}")
                offset += len(chunk.data)
                yield chunk.data
        except grpc.RpcError as e:
            raise_for(e, self.where)

    def report(self, stored: list[str], link_bytes_per_s: float) -> None:
        try:
            self.stub.Report(models_pb2.ReportRequest(stored=stored, link_bytes_per_s=link_bytes_per_s),
                             metadata=self.metadata, timeout=TIMEOUT_S)
        except grpc.RpcError as e:
            raise_for(e, self.where)

    def set_rules(self, pc: str, allow: tuple[str, ...], deny: tuple[str, ...]) -> None:
        try:
            self.stub.SetRules(models_pb2.SetRulesRequest(pc=pc, rules=models_pb2.ModelRules(allow=allow, deny=deny)),
                               metadata=self.metadata, timeout=TIMEOUT_S)
        except grpc.RpcError as e:
            raise_for(e, self.where)

    def list(self) -> tuple[list[ModelRow], list[NodeModelsRow]]:
        try:
            reply = self.stub.ListModels(models_pb2.ListModelsRequest(), metadata=self.metadata,
                                         timeout=MANIFEST_TIMEOUT_S)
        except grpc.RpcError as e:
            raise_for(e, self.where)
        models = [ModelRow(m.model, m.revision, m.size, m.files, tuple(m.nodes)) for m in reply.models]
        nodes = [NodeModelsRow(n.node, tuple(n.stored), tuple(n.rules.allow), tuple(n.rules.deny), n.link_bytes_per_s,
                               n.fetched_bytes) for n in reply.nodes]
        return models, nodes

    def close(self) -> None:
        self.channel.close()
