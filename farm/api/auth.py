"""Who may call what over gRPC: the role table, and the server interceptor that enforces it.

`ROLES` is the one place that says which roles (`farm.cluster.tokens.Role`) may call each RPC of each
service; a method missing from it is refused to everyone, so a new RPC is closed until it is listed
(tests/test_security_access.py calls every RPC of every service with every role). The interceptor
answers UNAUTHENTICATED for a missing or unknown token and PERMISSION_DENIED for a known one outside
its role. Finer rules that need the request (a user's own jobs, priorities above 0) are
the servicer's, through `Access.caller`.

The health service needs no token, so that systemd or a load balancer can probe a port without secrets.
The tokens themselves live in `farm.cluster.tokens`.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import grpc

from farm.cluster.tokens import Principal, Role

METADATA_KEY = "authorization"
OPEN_METHODS = frozenset({"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch",
                          "/grpc.health.v1.Health/List"})
FARM_CONTROL = "protos.farm.v1.FarmControl"
NODE_AGENT = "protos.farm.v1.NodeAgent"
FARM_MODELS = "protos.farm.v1.FarmModels"

USERS = frozenset({Role.USER, Role.ADMIN})  # users act on their own jobs (checked by the servicer)
ADMIN = frozenset({Role.ADMIN})
NODES = frozenset({Role.NODE})


def service_roles(service: str, methods: Mapping[str, frozenset[Role]]) -> dict[str, frozenset[Role]]:
    """Rows of the role table for `service`: each method's full gRPC name and its roles."""
    return {f"/{service}/{method}": roles for method, roles in methods.items()}


def node_only(service: str, methods: Iterable[str]) -> dict[str, frozenset[Role]]:
    """Rows for a service only a node token may call (the agent's; the head's services for PCs)."""
    return service_roles(service, dict.fromkeys(methods, NODES))


ROLES: dict[str, frozenset[Role]] = {
    **service_roles(FARM_CONTROL, {
        "Join": frozenset({Role.JOIN, Role.NODE, Role.ADMIN}),  # a node only as itself (membership checks)
        "Submit": USERS, "ListJobs": USERS, "GetJob": USERS, "CancelJob": USERS, "RemoveJob": USERS,
        "PauseJob": USERS, "ResumeJob": USERS, "RetryJob": USERS, "SetPriority": USERS, "ListNodes": USERS,
        "StreamEvents": USERS, "GetPreview": USERS, "GetOutput": USERS,
        "MoveJob": ADMIN,  # moving one job moves every other user's
        "PauseNode": ADMIN, "DrainNode": ADMIN, "ResumeNode": ADMIN,
        "RotateToken": ADMIN, "RemoveNode": ADMIN, "IssueUserToken": ADMIN,
        "RayToken": NODES,  # a joined PC, before each start of its Ray worker
    }),
    # The head calls a PC's agent with that PC's node token (the agent knows no other).
    **node_only(NODE_AGENT, ("Describe", "StreamTelemetry", "Pause", "Resume", "Drain", "SetPolicy")),
    # The head's model files, for its PCs only; a PC sets its own model lists, the operator any PC's.
    **node_only(FARM_MODELS, ("Manifest", "Fetch", "Report")),
    **service_roles(FARM_MODELS, {"SetRules": frozenset({Role.NODE, Role.ADMIN}), "ListModels": USERS}),
}


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying `token`."""
    return ((METADATA_KEY, f"Bearer {token}"),)


def token_from_metadata(metadata: object) -> str | None:
    for key, value in metadata or ():  # type: ignore[attr-defined]
        if key == METADATA_KEY and isinstance(value, str) and value.startswith("Bearer "):
            return value[len("Bearer "):]
    return None


def only(token: str, principal: Principal) -> Callable[[str | None], Principal | None]:
    """An `identify` that knows one token (an agent knows only the node token the head presents)."""
    expected = token.encode()
    return lambda t: principal if t is not None and hmac.compare_digest(t.encode(), expected) else None


@dataclass(frozen=True)
class Access:
    """How a server identifies callers: by their token."""

    identify: Callable[[str | None], Principal | None]

    def caller(self, context: grpc.ServicerContext) -> Principal:
        """The caller of this call; aborts UNAUTHENTICATED for a missing or unknown token."""
        principal = self.identify(token_from_metadata(context.invocation_metadata()))
        if principal is None:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong token")
        return principal  # type: ignore[return-value]  # abort raises


class TokenInterceptor(grpc.ServerInterceptor):
    """Runs `ROLES` before every call but health's: UNAUTHENTICATED or PERMISSION_DENIED, one line."""

    def __init__(self, access: Access, roles: Mapping[str, frozenset[Role]] = ROLES,
                 open_methods: frozenset[str] = OPEN_METHODS) -> None:
        self._access = access
        self._roles = roles
        self._open = open_methods

    def intercept_service(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
        method = handler_call_details.method
        handler = continuation(handler_call_details)
        if handler is None or method in self._open:
            return handler
        allowed = self._roles.get(method, frozenset())

        def check(context: grpc.ServicerContext) -> None:
            caller = self._access.caller(context)
            if caller.role not in allowed:
                context.abort(grpc.StatusCode.PERMISSION_DENIED,
                              f"{method.rsplit('/', 1)[-1]}: not allowed for the {caller.role} role")

        return _guarded(handler, check)


def _guarded(handler: grpc.RpcMethodHandler, check: Callable[[grpc.ServicerContext], None]) -> grpc.RpcMethodHandler:
    """`handler` with `check(context)` run first (it aborts to refuse); the same shape of call."""

    def wrap(behavior):  # type: ignore[no-untyped-def]
        def guarded(request, context):  # type: ignore[no-untyped-def]
            check(context)
            return behavior(request, context)

        return guarded

    kind = next(k for k in ("unary_unary", "unary_stream", "stream_unary", "stream_stream") if getattr(handler, k))
    return handler._replace(**{kind: wrap(getattr(handler, kind))})  # type: ignore[attr-defined]
