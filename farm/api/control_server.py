"""The `FarmControl` gRPC server: any `FarmService` (the coordinator, a fake in tests) on the network.

Each RPC converts its message (`farm.api.convert`), calls the service, and converts the answer back.
Errors become status codes a client can act on (`farm.api.status`), always with the one-line message;
a missing or wrong token is UNAUTHENTICATED and a call outside the caller's role PERMISSION_DENIED
(`farm.api.auth`, before the servicer runs). One bad call never stops the server.

Who the caller is matters past the role table: a job's owner is the user of the token that submitted
it (whatever owner the request names), a user acts only on their own jobs and submits at priority 0
or below; the admin token may do everything.

Off loopback the server only speaks TLS with the farm's certificate; plaintext without tokens is
allowed on loopback only (the embedded farm and tests).
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import replace

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from farm.api import convert
from farm.api.auth import Access, TokenInterceptor
from farm.api.status import answer
from farm.api.stream_slots import StreamSlots
from farm.cluster.membership import Membership
from farm.cluster.pki import TlsIdentity, is_loopback
from farm.cluster.tokens import LOCAL, Principal, Role, TokenStore
from farm.contracts.control import FarmService
from farm.contracts.errors import FarmError, InvalidInput, PermissionDenied
from farm.jobs.init_image import MAX_FILE_BYTES
from protos.farm.v1 import control_pb2, control_pb2_grpc

log = logging.getLogger(__name__)
SERVICE_NAME = "protos.farm.v1.FarmControl"
MAX_WAIT_S = 30.0  # longest one StreamEvents batch may wait for its first event
FOLLOW_POLL_S = 1.0
OUTPUT_CHUNK = 256 * 1024  # well under gRPC's 4 MB message limit
DEFAULT_PAGE, MAX_PAGE = 100, 1000  # jobs per ListJobs page
PAGE_BYTES = 3 * 2**20  # a page stops growing here, under gRPC's 4 MB message limit


def _peer_host(peer: str) -> str:
    """'ipv4:10.0.0.5:51234' -> '10.0.0.5'; 'ipv6:[::1]:51234' -> '::1'."""
    address = peer.split(":", 1)[1] if ":" in peer else peer
    host = address.rsplit(":", 1)[0]
    return host.strip("[]")


class FarmControlServicer(control_pb2_grpc.FarmControlServicer):
    def __init__(self, service: FarmService, membership: Membership | None = None,
                 access: Access | None = None) -> None:
        self.service = service
        self.membership = membership
        self.access = access
        self.streams = StreamSlots()

    def _caller(self, context: grpc.ServicerContext) -> Principal:
        """Who calls (without tokens, on loopback only: the embedded farm's `local` admin)."""
        return self.access.caller(context) if self.access is not None else LOCAL

    def _own(self, context: grpc.ServicerContext, job_id: str) -> str:
        """`job_id`, checked; a user may only name their own jobs."""
        job = convert.job_id(job_id)
        caller = self._caller(context)
        if caller.role != Role.ADMIN and self.service.get_job(job).spec.owner != caller.name:
            raise PermissionDenied(f"job_id: {job} belongs to another user (only its owner or the admin may act on it)")
        return job

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
                                         address, policy, self._caller(context), _ips(host))
            return control_pb2.JoinReply(
                node_token=grant.node_token, ca_pem=grant.ca_pem.decode(), cert_pem=grant.cert_pem.decode(),
                ray_address=grant.ray_address, ray_token=grant.ray_token,
                nodes=[convert.node_info_to_proto(n) for n in grant.nodes],
                ray_cert_pem=grant.ray_cert_pem.decode(), ray_ca_pem=grant.ray_ca_pem.decode())

        return answer(context, join)

    def Submit(self, request, context):  # type: ignore[no-untyped-def]
        def submit() -> control_pb2.SubmitReply:
            caller = self._caller(context)
            image = request.init_image or None
            spec = replace(convert.spec_from_proto(request.spec, request.init_image), owner=caller.name)
            _check_priority(caller, spec.priority)
            return control_pb2.SubmitReply(job_id=self.service.submit(spec, init_image=image))

        return answer(context, submit)

    def ListJobs(self, request, context):  # type: ignore[no-untyped-def]
        def page() -> control_pb2.ListJobsReply:
            if not 0 <= request.page_size <= MAX_PAGE:
                raise InvalidInput("page_size", f"must be from 0 to {MAX_PAGE} (0: {DEFAULT_PAGE}), "
                                   f"got {request.page_size}")
            size = request.page_size or DEFAULT_PAGE
            views = self.service.list_jobs(convert.page_token(request.page_token), size + 1)
            reply, used = control_pb2.ListJobsReply(), 0
            for view in views[:size]:
                job = convert.job_to_proto(view)
                used += job.ByteSize()
                if reply.jobs and used > PAGE_BYTES:  # at least one job: a job's text is capped below this
                    break
                reply.jobs.append(job)
            if len(reply.jobs) < len(views):
                reply.next_page_token = reply.jobs[-1].id
            return reply

        return answer(context, page)

    def GetJob(self, request, context):  # type: ignore[no-untyped-def]
        return answer(context, lambda: convert.job_to_proto(self.service.get_job(convert.job_id(request.job_id))))

    def _job_action(self, context: grpc.ServicerContext, action: Callable[[str], None], job_id: str) -> control_pb2.Ack:
        def run() -> control_pb2.Ack:
            action(self._own(context, job_id))
            return control_pb2.Ack()

        return answer(context, run)

    def CancelJob(self, request, context):  # type: ignore[no-untyped-def]
        return self._job_action(context, self.service.cancel_job, request.job_id)

    def RemoveJob(self, request, context):  # type: ignore[no-untyped-def]
        return self._job_action(context, self.service.forget_job, request.job_id)

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
            _check_priority(self._caller(context), request.priority)
            self.service.set_priority(job, request.priority)

        return self._job_action(context, run, request.job_id)

    def MoveJob(self, request, context):  # type: ignore[no-untyped-def]
        def run(job: str) -> None:
            if not -1_000_000 <= request.offset <= 1_000_000 or request.offset == 0:
                raise InvalidInput("offset", f"must be a non-zero number of places, got {request.offset}")
            self.service.move_job(job, request.offset)

        return self._job_action(context, run, request.job_id)

    def ListNodes(self, request, context):  # type: ignore[no-untyped-def]
        return answer(context, lambda: control_pb2.ListNodesReply(
            nodes=[convert.node_to_proto(n) for n in self.service.list_nodes()]))

    def _node_action(self, context: grpc.ServicerContext, action: Callable[[str], None], name: str) -> control_pb2.Ack:
        def run() -> control_pb2.Ack:
            action(convert.node_name("name", name))
            return control_pb2.Ack()

        return answer(context, run)

    def PauseNode(self, request, context):  # type: ignore[no-untyped-def]
        return self._node_action(context, self.service.pause_node, request.name)

    def DrainNode(self, request, context):  # type: ignore[no-untyped-def]
        return self._node_action(context, self.service.drain_node, request.name)

    def ResumeNode(self, request, context):  # type: ignore[no-untyped-def]
        return self._node_action(context, self.service.resume_node, request.name)

    def RemoveNode(self, request, context):  # type: ignore[no-untyped-def]
        return self._node_action(context, lambda name: self._members().remove(name), request.name)

    def RotateToken(self, request, context):  # type: ignore[no-untyped-def]
        return answer(context, lambda: control_pb2.RotateTokenReply(token=self._members().tokens.rotate()))

    def RayToken(self, request, context):  # type: ignore[no-untyped-def]
        def run() -> control_pb2.RayTokenReply:
            ray = self._members().ray_credentials(self._caller(context))
            return control_pb2.RayTokenReply(ray_address=ray.address, ray_token=ray.token,
                                             ray_cert_pem=ray.cert_pem.decode(), ray_ca_pem=ray.ca_pem.decode())

        return answer(context, run)

    def IssueUserToken(self, request, context):  # type: ignore[no-untyped-def]
        return answer(context, lambda: control_pb2.IssueUserTokenReply(
            token=self._members().tokens.issue_user_token(request.user)))

    def _stream_slot(self, context: grpc.ServicerContext) -> None:
        """Hold one of the caller's stream slots until this RPC ends (RESOURCE_EXHAUSTED when none is free)."""
        user = self._caller(context).name
        answer(context, lambda: self.streams.take(user))
        if not context.add_callback(lambda: self.streams.give_back(user)):
            self.streams.give_back(user)  # it ended already

    def StreamEvents(self, request, context) -> Iterator[control_pb2.Event]:  # type: ignore[no-untyped-def]
        self._stream_slot(context)
        after = request.after
        wait = min(max(request.wait_s, 0.0), MAX_WAIT_S)
        while context.is_active():
            batch = answer(context, lambda a=after: self.service.events(a, FOLLOW_POLL_S if request.follow else wait))
            for event in batch:
                yield convert.event_to_proto(event)
                after = event.seq
            if not request.follow:
                return

    def GetPreview(self, request, context):  # type: ignore[no-untyped-def]
        def run() -> control_pb2.PreviewReply:
            png = self.service.preview(self._own(context, request.job_id), request.sample)
            return control_pb2.PreviewReply(present=png is not None, png=png or b"")

        return answer(context, run)

    def GetOutput(self, request, context) -> Iterator[control_pb2.OutputChunk]:  # type: ignore[no-untyped-def]
        self._stream_slot(context)
        data = answer(context, lambda: self.service.read_output(self._own(context, request.job_id), request.index))
        digest = hashlib.sha256(data).hexdigest()
        last = max(len(data) - 1, 0) // OUTPUT_CHUNK * OUTPUT_CHUNK
        for offset in range(0, last + 1, OUTPUT_CHUNK):
            yield control_pb2.OutputChunk(data=data[offset:offset + OUTPUT_CHUNK], size=len(data) if offset == 0 else 0,
                                          sha256=digest if offset == last else "")


def _check_priority(caller: Principal, priority: int) -> None:
    if priority > 0 and caller.role != Role.ADMIN:
        raise PermissionDenied(f"priority: above 0 needs the admin token (a user may give 0 or less), got {priority}")


def _ips(host: str) -> tuple[str, ...]:
    """The PC's address for its Ray certificate, when it is one (Ray connects to IP addresses)."""
    try:
        return (str(ipaddress.ip_address(host.strip("[]"))),)
    except ValueError:
        return ()


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
    # An img2img job's init image travels in its Submit (up to MAX_FILE_BYTES): above gRPC's 4 MiB default.
    limit = [("grpc.max_receive_message_length", MAX_FILE_BYTES + (1 << 20))]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers),
                         interceptors=[interceptor] if interceptor else None, options=limit)
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
                  checker: health.HealthServicer | None = None,
                  more: Callable[[grpc.Server, Access | None], tuple[str, ...]] | None = None,
                  ) -> tuple[grpc.Server, int]:
    """Serve `service` as FarmControl (and the services `more` adds to the server, with the same access,
    returning their names for the health service: the head's FarmModels).

    With `tokens` every call needs a token and its role (`farm.api.auth.ROLES`); `checker` is the health
    service, for `set_serving` to turn NOT_SERVING when the farm's loop stops."""
    access = Access(tokens.identify) if tokens is not None else None
    servicer = FarmControlServicer(service, membership, access)
    interceptor = TokenInterceptor(access) if access is not None else None
    names = [SERVICE_NAME]

    def add(server: grpc.Server) -> None:
        control_pb2_grpc.add_FarmControlServicer_to_server(servicer, server)
        if more is not None:
            names.extend(more(server, access))

    return serve(add, address, tls=tls, interceptor=interceptor, names=names, checker=checker)


def health_service() -> health.HealthServicer:
    """A standard gRPC health service, for `serve_control` and `set_serving`."""
    return health.HealthServicer()


def set_serving(checker: health.HealthServicer, serving: bool) -> None:
    """What the standard health service answers for the server and for FarmControl."""
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ("", SERVICE_NAME):
        checker.set(name, status)
