"""The `FarmControl` gRPC server: any `FarmService` (the coordinator, a fake in tests) on the network.

Each RPC converts its message (`farm.api.convert`), calls the service, and converts the answer back.
Errors become status codes a client can act on: InvalidInput -> INVALID_ARGUMENT, NotFound ->
NOT_FOUND, a missing or wrong token -> UNAUTHENTICATED (`farm.api.auth.TokenInterceptor`, before the
servicer runs), any other farm error -> FAILED_PRECONDITION, always with the one-line message. An
unexpected exception is logged and answered INTERNAL: one bad call never stops the server.

Off loopback the server only speaks TLS with the farm's certificate; plaintext without tokens is
allowed on loopback only (the embedded farm and tests).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from farm.api import convert
from farm.api.auth import TokenInterceptor, token_from_metadata
from farm.cluster.membership import Membership
from farm.cluster.pki import TlsIdentity, is_loopback
from farm.cluster.tokens import TokenStore
from farm.contracts.control import FarmService
from farm.contracts.errors import FarmError, InvalidInput, NotFound, Unauthenticated
from protos.farm.v1 import control_pb2, control_pb2_grpc

log = logging.getLogger(__name__)
T = TypeVar("T")
SERVICE_NAME = "protos.farm.v1.FarmControl"
MAX_WAIT_S = 30.0  # longest one StreamEvents batch may wait for its first event
FOLLOW_POLL_S = 1.0
OUTPUT_CHUNK = 256 * 1024  # well under gRPC's 4 MB message limit


def _call(context: grpc.ServicerContext, fn: Callable[[], T]) -> T:
    """Run `fn`, turning farm errors into status codes with their one-line message."""
    try:
        return fn()
    except NotFound as e:
        context.abort(grpc.StatusCode.NOT_FOUND, str(e))
    except InvalidInput as e:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
    except Unauthenticated as e:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, str(e))
    except FarmError as e:  # e.g. DoesNotFit, an illegal status change
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
    except Exception as e:  # the server outlives any one bad call
        log.exception("FarmControl call failed")
        context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(e).__name__}: {e}")
    raise AssertionError("unreachable: abort raises")


def _peer_host(peer: str) -> str:
    """'ipv4:10.0.0.5:51234' -> '10.0.0.5'; 'ipv6:[::1]:51234' -> '::1'."""
    address = peer.split(":", 1)[1] if ":" in peer else peer
    host = address.rsplit(":", 1)[0]
    return host.strip("[]")


class FarmControlServicer(control_pb2_grpc.FarmControlServicer):
    def __init__(self, service: FarmService, membership: Membership | None = None) -> None:
        self.service = service
        self.membership = membership

    def _members(self) -> Membership:
        if self.membership is None:
            raise FarmError("this farm runs embedded on one machine: it takes no members")
        return self.membership

    def Join(self, request, context):  # type: ignore[no-untyped-def]
        def join() -> control_pb2.JoinReply:
            name = convert.node_name("name", request.name)
            policy = convert.policy_from_proto(request.policy)
            host, _, port = request.agent_address.rpartition(":")
            if not port.isdigit() or not 0 < int(port) < 65536:
                raise InvalidInput("agent_address", f"must be HOST:PORT or :PORT, got {request.agent_address!r}")
            if host in ("", "0.0.0.0", "[::]", "::"):
                host = _peer_host(context.peer())
            address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            grant = self._members().join(name, request.csr_pem.encode(), convert.hardware_from_proto(request.hardware),
                                         address, policy, token_from_metadata(context.invocation_metadata()))
            return control_pb2.JoinReply(
                node_token=grant.node_token, ca_pem=grant.ca_pem.decode(), cert_pem=grant.cert_pem.decode(),
                ray_address=grant.ray_address, ray_token=grant.ray_token,
                nodes=[convert.node_info_to_proto(n) for n in grant.nodes])

        return _call(context, join)

    def Submit(self, request, context):  # type: ignore[no-untyped-def]
        return _call(context, lambda: control_pb2.SubmitReply(
            job_id=self.service.submit(convert.spec_from_proto(request.spec))))

    def ListJobs(self, request, context):  # type: ignore[no-untyped-def]
        return _call(context, lambda: control_pb2.ListJobsReply(
            jobs=[convert.job_to_proto(j) for j in self.service.list_jobs()]))

    def GetJob(self, request, context):  # type: ignore[no-untyped-def]
        return _call(context, lambda: convert.job_to_proto(self.service.get_job(convert.job_id(request.job_id))))

    def _job_action(self, context: grpc.ServicerContext, action: Callable[[str], None], job_id: str) -> control_pb2.Ack:
        def run() -> control_pb2.Ack:
            action(convert.job_id(job_id))
            return control_pb2.Ack()

        return _call(context, run)

    def CancelJob(self, request, context):  # type: ignore[no-untyped-def]
        return self._job_action(context, self.service.cancel_job, request.job_id)

    def PauseJob(self, request, context):  # type: ignore[no-untyped-def]
        return self._job_action(context, self.service.pause_job, request.job_id)

    def ResumeJob(self, request, context):  # type: ignore[no-untyped-def]
        return self._job_action(context, self.service.resume_job, request.job_id)

    def RetryJob(self, request, context):  # type: ignore[no-untyped-def]
        return self._job_action(context, self.service.retry_job, request.job_id)

    def SetPriority(self, request, context):  # type: ignore[no-untyped-def]
        def run(job: str) -> None:
            if not -100 <= request.priority <= 100:
                raise InvalidInput("priority", f"must be from -100 to 100, got {request.priority}")
            self.service.set_priority(job, request.priority)

        return self._job_action(context, run, request.job_id)

    def MoveJob(self, request, context):  # type: ignore[no-untyped-def]
        def run(job: str) -> None:
            if not -1_000_000 <= request.offset <= 1_000_000 or request.offset == 0:
                raise InvalidInput("offset", f"must be a non-zero number of places, got {request.offset}")
            self.service.move_job(job, request.offset)

        return self._job_action(context, run, request.job_id)

    def ListNodes(self, request, context):  # type: ignore[no-untyped-def]
        return _call(context, lambda: control_pb2.ListNodesReply(
            nodes=[convert.node_to_proto(n) for n in self.service.list_nodes()]))

    def _node_action(self, context: grpc.ServicerContext, action: Callable[[str], None], name: str) -> control_pb2.Ack:
        def run() -> control_pb2.Ack:
            action(convert.node_name("name", name))
            return control_pb2.Ack()

        return _call(context, run)

    def PauseNode(self, request, context):  # type: ignore[no-untyped-def]
        return self._node_action(context, self.service.pause_node, request.name)

    def DrainNode(self, request, context):  # type: ignore[no-untyped-def]
        return self._node_action(context, self.service.drain_node, request.name)

    def ResumeNode(self, request, context):  # type: ignore[no-untyped-def]
        return self._node_action(context, self.service.resume_node, request.name)

    def RemoveNode(self, request, context):  # type: ignore[no-untyped-def]
        return self._node_action(context, lambda name: self._members().remove(name), request.name)

    def RotateToken(self, request, context):  # type: ignore[no-untyped-def]
        return _call(context, lambda: control_pb2.RotateTokenReply(token=self._members().tokens.rotate()))

    def StreamEvents(self, request, context) -> Iterator[control_pb2.Event]:  # type: ignore[no-untyped-def]
        after = request.after
        wait = min(max(request.wait_s, 0.0), MAX_WAIT_S)
        while context.is_active():
            batch = _call(context, lambda a=after: self.service.events(a, FOLLOW_POLL_S if request.follow else wait))
            for event in batch:
                yield convert.event_to_proto(event)
                after = event.seq
            if not request.follow:
                return

    def GetPreview(self, request, context):  # type: ignore[no-untyped-def]
        def run() -> control_pb2.PreviewReply:
            png = self.service.preview(convert.job_id(request.job_id), request.sample)
            return control_pb2.PreviewReply(present=png is not None, png=png or b"")

        return _call(context, run)

    def GetOutput(self, request, context) -> Iterator[control_pb2.OutputChunk]:  # type: ignore[no-untyped-def]
        data = _call(context, lambda: self.service.read_output(convert.job_id(request.job_id), request.index))
        digest = hashlib.sha256(data).hexdigest()
        last = max(len(data) - 1, 0) // OUTPUT_CHUNK * OUTPUT_CHUNK
        for offset in range(0, last + 1, OUTPUT_CHUNK):
            yield control_pb2.OutputChunk(data=data[offset:offset + OUTPUT_CHUNK], size=len(data) if offset == 0 else 0,
                                          sha256=digest if offset == last else "")


def control_access(tokens: TokenStore) -> Callable[[str, str | None], bool]:
    """Who may call what: the farm token everything; a node token only Join (its own re-join,
    which `Membership.join` checks by name)."""

    def allowed(method: str, token: str | None) -> bool:
        if tokens.is_farm_token(token):
            return True
        return method.endswith("/Join") and tokens.node_of(token) is not None

    return allowed


def serve(servicers: Callable[[grpc.Server], None], address: str, *, tls: TlsIdentity | None,
          interceptor: grpc.ServerInterceptor | None, names: tuple[str, ...],
          workers: int = 32, checker: health.HealthServicer | None = None) -> tuple[grpc.Server, int]:
    """Start a gRPC server with the health service; returns it and its port (address may end in :0).

    Plaintext is refused unless `address` is on loopback, so a misconfiguration cannot expose a
    port without TLS.
    """
    host = address.rpartition(":")[0]
    if tls is None and not is_loopback(host):
        raise FarmError(f"refusing to serve {address} without TLS: only loopback may be plaintext")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers),
                         interceptors=[interceptor] if interceptor else None)
    servicers(server)
    checker = checker or health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    for name in ("", *names):
        checker.set(name, health_pb2.HealthCheckResponse.SERVING)
    if tls is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, grpc.ssl_server_credentials([(tls.key_pem, tls.cert_pem)]))
    if port == 0:
        raise FarmError(f"cannot listen on {address} (in use, or not an address of this machine)")
    server.start()
    return server, port


def serve_control(service: FarmService, address: str, *, tls: TlsIdentity | None = None,
                  tokens: TokenStore | None = None, membership: Membership | None = None,
                  checker: health.HealthServicer | None = None) -> tuple[grpc.Server, int]:
    """Serve `service` as FarmControl. With `tokens` every call needs a token (see `control_access`);
    `checker` is the health service, for `set_serving` to turn NOT_SERVING when the farm's loop stops."""
    servicer = FarmControlServicer(service, membership)
    interceptor = TokenInterceptor(control_access(tokens)) if tokens is not None else None
    return serve(lambda s: control_pb2_grpc.add_FarmControlServicer_to_server(servicer, s), address, tls=tls,
                 interceptor=interceptor, names=(SERVICE_NAME,), checker=checker)


def health_service() -> health.HealthServicer:
    """A standard gRPC health service, for `serve_control` and `set_serving`."""
    return health.HealthServicer()


def set_serving(checker: health.HealthServicer, serving: bool) -> None:
    """What the standard health service answers for the server and for FarmControl."""
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ("", SERVICE_NAME):
        checker.set(name, status)
