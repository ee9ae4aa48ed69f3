"""Token checks on gRPC calls: a server interceptor refuses every call whose token the caller's rule
rejects, and `bearer` puts a token into a call's metadata. The health service needs no token, so that
systemd or a load balancer can probe a port without secrets. The tokens themselves live in
`farm.cluster.tokens`.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc

METADATA_KEY = "authorization"
OPEN_METHODS = frozenset({"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch",
                          "/grpc.health.v1.Health/List"})


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying `token`."""
    return ((METADATA_KEY, f"Bearer {token}"),)


def token_from_metadata(metadata: object) -> str | None:
    for key, value in metadata or ():  # type: ignore[attr-defined]
        if key == METADATA_KEY and isinstance(value, str) and value.startswith("Bearer "):
            return value[len("Bearer "):]
    return None


class TokenInterceptor(grpc.ServerInterceptor):
    """Refuses, with UNAUTHENTICATED, every call whose token `allowed(method, token)` rejects."""

    def __init__(self, allowed: Callable[[str, str | None], bool], open_methods: frozenset[str] = OPEN_METHODS) -> None:
        self._allowed = allowed
        self._open = open_methods

    def intercept_service(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
        method = handler_call_details.method
        handler = continuation(handler_call_details)
        if handler is None or method in self._open:
            return handler
        if self._allowed(method, token_from_metadata(handler_call_details.invocation_metadata)):
            return handler
        return _refusal(handler)


def _refusal(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that only aborts with UNAUTHENTICATED."""

    def deny(request: object, context: grpc.ServicerContext) -> None:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong token")

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(deny)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(deny)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(deny)
    return grpc.unary_unary_rpc_method_handler(deny)
