"""A `FarmService` that forwards every call to a head over gRPC `FarmControl`.

The CLI and the dashboard are written against `FarmService`, so with this client they work on a
remote head exactly as on an embedded farm. Status codes come back as the farm's own errors, with
the head's one-line message: INVALID_ARGUMENT -> InvalidInput (same field), NOT_FOUND -> NotFound,
UNAUTHENTICATED -> Unauthenticated, PERMISSION_DENIED -> PermissionDenied, UNAVAILABLE or a deadline
-> Unreachable.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from typing import Any, NoReturn

import grpc

from farm.api import convert
from farm.api.auth import bearer
from farm.cluster.membership import JoinGrant, RayCredentials
from farm.cluster.pki import HEAD_NAME, is_loopback
from farm.contracts.control import Event, JobView, NodeView, OwnerPolicy
from farm.contracts.domain import JobSpec
from farm.contracts.errors import (
    FarmError,
    InvalidInput,
    LimitReached,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unreachable,
)
from farm.contracts.hardware import Hardware
from farm.jobs.jobspec import JobRequest
from protos.farm.v1 import control_pb2, control_pb2_grpc

DEFAULT_TIMEOUT_S = 15.0
LIST_PAGE = 200  # jobs asked for per ListJobs page


def split_address(address: str, default_port: int) -> tuple[str, int]:
    """'host', 'host:port', '[v6]' or '[v6]:port' -> (host, port); raises InvalidInput naming HEAD."""
    m = re.fullmatch(r"\[(?P<v6>[0-9A-Fa-f:.]+)\](?::(?P<p6>\d+))?|(?P<host>[^:\[\]\s]+)(?::(?P<port>\d+))?", address)
    port = int((m.group("p6") or m.group("port") or default_port) if m else 0)
    if m is None or not 0 < port < 65536:
        raise InvalidInput("HEAD", f"must be HOST or HOST:PORT, got {address!r}")
    return m.group("v6") or m.group("host"), port


def open_channel(host: str, port: int, roots_pem: bytes | None, server_name: str = HEAD_NAME) -> grpc.Channel:
    """TLS trusting only `roots_pem` and checking the role name `server_name`; plaintext on loopback only."""
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if roots_pem is None:
        if not is_loopback(host):
            raise FarmError(f"refusing to talk to {target} without TLS: only loopback may be plaintext")
        return grpc.insecure_channel(target)
    credentials = grpc.ssl_channel_credentials(root_certificates=roots_pem)
    return grpc.secure_channel(target, credentials, options=[("grpc.ssl_target_name_override", server_name)])


def raise_for(error: grpc.RpcError, where: str) -> NoReturn:
    """Re-raise a gRPC error as the farm error a user can read in one line."""
    code, details = error.code(), error.details() or ""  # type: ignore[attr-defined]
    field, _, message = details.partition(": ")
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        raise InvalidInput(field, message) from None
    if code == grpc.StatusCode.NOT_FOUND:
        raise NotFound(field, message) from None
    if code == grpc.StatusCode.UNAUTHENTICATED:
        raise Unauthenticated(f"{where} refused the token ({details}): use a current one (the admin token in "
                              "FARM_HOME/head/admin-token, a user token from `farm token issue`)") from None
    if code == grpc.StatusCode.PERMISSION_DENIED:
        raise PermissionDenied(f"{where} refused: {details}") from None
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        raise LimitReached(details) from None
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        raise Unreachable(f"cannot reach {where}: {details or code.name}") from None
    raise FarmError(f"{where}: {details or code.name}") from None


class FarmClient:
    """`FarmService` over `FarmControl`, plus what only a remote head has (join, tokens, removal)."""

    def __init__(self, channel: grpc.Channel, token: str | None, where: str = "the head",
                 timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self._channel = channel
        self._stub = control_pb2_grpc.FarmControlStub(channel)
        self._metadata = bearer(token) if token else ()
        self._where = where
        self._timeout = timeout

    def _rpc(self, method: str, request: Any, timeout: float | None = None) -> Any:
        try:
            return getattr(self._stub, method)(request, metadata=self._metadata, timeout=timeout or self._timeout)
        except grpc.RpcError as e:
            raise_for(e, self._where)

    def close(self) -> None:
        self._channel.close()

    def models(self):  # type: ignore[no-untyped-def]
        """The head's FarmModels service (`farm.api.models_client.HeadModels`) on this channel, with this token."""
        from farm.api.models_client import HeadModels  # it imports this module's error mapping

        return HeadModels(self._channel, self._metadata, self._where)

    def submit(self, spec: JobSpec | JobRequest, init_image: bytes | None = None) -> str:
        """A job made here (with its init image's bytes when it has one), or a job file's request
        (`farm submit`: the head checks its model and adapters). The image travels once, with the job."""
        if isinstance(spec, JobRequest):
            msg, image = convert.request_to_proto(spec), spec.init_image
        else:
            if spec.init_image and init_image is None:
                raise InvalidInput("init_image", "this job names an init image: pass its file's bytes too")
            msg, image = convert.spec_to_proto(spec), init_image
            msg.ClearField("init_image")  # the head hashes the bytes itself
        return self._rpc("Submit", control_pb2.SubmitRequest(spec=msg, init_image=image or b"")).job_id

    def list_jobs(self, after: str = "", limit: int | None = None) -> list[JobView]:
        """Jobs page by page (each reply stays well under gRPC's message limit): all of them, or up to
        `limit` after `after`."""
        out: list[JobView] = []
        token = after
        while limit is None or len(out) < limit:
            size = LIST_PAGE if limit is None else min(LIST_PAGE, limit - len(out))
            reply = self._rpc("ListJobs", control_pb2.ListJobsRequest(page_size=size, page_token=token))
            out.extend(convert.job_from_proto(j) for j in reply.jobs)
            token = reply.next_page_token
            if not token:
                break
        return out

    def get_job(self, job_id: str) -> JobView:
        return convert.job_from_proto(self._rpc("GetJob", control_pb2.JobRef(job_id=job_id)))

    def cancel_job(self, job_id: str) -> None:
        self._rpc("CancelJob", control_pb2.JobRef(job_id=job_id))

    def forget_job(self, job_id: str) -> None:
        self._rpc("RemoveJob", control_pb2.JobRef(job_id=job_id))

    def pause_job(self, job_id: str) -> None:
        self._rpc("PauseJob", control_pb2.JobRef(job_id=job_id))

    def resume_job(self, job_id: str) -> None:
        self._rpc("ResumeJob", control_pb2.JobRef(job_id=job_id))

    def retry_job(self, job_id: str) -> None:
        self._rpc("RetryJob", control_pb2.JobRef(job_id=job_id))

    def set_priority(self, job_id: str, priority: int) -> None:
        self._rpc("SetPriority", control_pb2.SetPriorityRequest(job_id=job_id, priority=priority))

    def move_job(self, job_id: str, offset: int) -> None:
        self._rpc("MoveJob", control_pb2.MoveJobRequest(job_id=job_id, offset=offset))

    def list_nodes(self) -> list[NodeView]:
        return [convert.node_from_proto(n) for n in self._rpc("ListNodes", control_pb2.ListNodesRequest()).nodes]

    def pause_node(self, name: str) -> None:
        self._rpc("PauseNode", control_pb2.NodeRef(name=name))

    def drain_node(self, name: str) -> None:
        self._rpc("DrainNode", control_pb2.NodeRef(name=name))

    def resume_node(self, name: str) -> None:
        self._rpc("ResumeNode", control_pb2.NodeRef(name=name))

    def events(self, after: int, timeout: float = 0.0) -> list[Event]:
        request = control_pb2.StreamEventsRequest(after=after, follow=False, wait_s=timeout)
        try:
            stream = self._stub.StreamEvents(request, metadata=self._metadata, timeout=timeout + self._timeout)
            return [convert.event_from_proto(e) for e in stream]
        except grpc.RpcError as e:
            raise_for(e, self._where)

    def follow_events(self, after: int) -> Iterator[Event]:
        """Every event after `after` as it happens, until the caller stops iterating."""
        stream = self._stub.StreamEvents(control_pb2.StreamEventsRequest(after=after, follow=True),
                                         metadata=self._metadata)
        try:
            for message in stream:
                yield convert.event_from_proto(message)
        except grpc.RpcError as e:
            raise_for(e, self._where)
        finally:
            stream.cancel()

    def preview(self, job_id: str, sample: int) -> bytes | None:
        reply = self._rpc("GetPreview", control_pb2.PreviewRequest(job_id=job_id, sample=sample))
        return reply.png if reply.present else None

    def read_output(self, job_id: str, index: int) -> bytes:
        """The output's bytes, streamed in chunks and checked against the head's SHA-256 before they
        are returned (raises FarmError when the sizes or checksums differ)."""
        stream = self._stub.GetOutput(control_pb2.OutputRequest(job_id=job_id, index=index),
                                      metadata=self._metadata, timeout=self._timeout * 20)
        data, size, digest = bytearray(), 0, ""
        try:
            for chunk in stream:
                data += chunk.data
                size = chunk.size or size
                digest = chunk.sha256 or digest
        except grpc.RpcError as e:
            raise_for(e, self._where)
        if len(data) != size or hashlib.sha256(data).hexdigest() != digest:
            raise FarmError(f"output {index} of job {job_id} arrived damaged from {self._where} "
                            f"({len(data)} of {size} bytes, checksum {'missing' if not digest else 'mismatch'}): "
                            "fetch it again")
        return bytes(data)

    def join(self, name: str, csr_pem: bytes, hardware: Hardware, agent_address: str,
             policy: OwnerPolicy) -> JoinGrant:
        request = control_pb2.JoinRequest(name=name, csr_pem=csr_pem.decode(), agent_address=agent_address,
                                          policy=convert.policy_to_proto(policy),
                                          hardware=convert.hardware_to_proto(hardware))
        reply = self._rpc("Join", request)
        return JoinGrant(reply.node_token, reply.ca_pem.encode(), reply.cert_pem.encode(), reply.ray_address,
                         reply.ray_token, tuple(convert.node_info_from_proto(n) for n in reply.nodes),
                         reply.ray_cert_pem.encode(), reply.ray_ca_pem.encode())

    def rotate_token(self) -> str:
        return self._rpc("RotateToken", control_pb2.RotateTokenRequest()).token

    def ray_credentials(self) -> RayCredentials:
        """Ray's address and current token, this PC's Ray certificate and the Ray CA, all of the current
        epoch (a joined PC's node token only)."""
        reply = self._rpc("RayToken", control_pb2.RayTokenRequest())
        return RayCredentials(reply.ray_address, reply.ray_token, reply.ray_cert_pem.encode(),
                              reply.ray_ca_pem.encode())

    def issue_user_token(self, user: str) -> str:
        return self._rpc("IssueUserToken", control_pb2.IssueUserTokenRequest(user=user)).token

    def remove_node(self, name: str) -> None:
        self._rpc("RemoveNode", control_pb2.NodeRef(name=name))
