"""Tokens: who may call the head and the agents, checked by a server interceptor on every call.

Two kinds, so that a node's removal or a token rotation touches only what it should:

- the farm token (`farm1.<pin>.<secret>`): what `farm join` and the CLI present to the head. It
  carries the pin of the head's certificate (see `farm.pki`), so one string is all a new PC needs.
  `farm token rotate` replaces it; joined nodes keep working, an old join command stops working.
- a node token, issued to each node at join: the head presents it when it calls that node's agent,
  and the node presents it to join again after a restart. Removing the node forgets it.

The token store checks node tokens against their hashes; the member table (`farm.membership`, 0600)
keeps each one too, because the head presents it to that PC's agent. The health service needs no
token, so that systemd or a load balancer can probe a port without secrets.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import threading
from collections.abc import Callable
from pathlib import Path

import grpc

from farm.errors import InvalidInput
from farm.pki import PIN_CHARS, write_private

METADATA_KEY = "authorization"
OPEN_METHODS = frozenset({"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch",
                          "/grpc.health.v1.Health/List"})
TOKEN_PREFIX = "farm1"


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying `token`."""
    return ((METADATA_KEY, f"Bearer {token}"),)


def token_from_metadata(metadata: object) -> str | None:
    for key, value in metadata or ():  # type: ignore[attr-defined]
        if key == METADATA_KEY and isinstance(value, str) and value.startswith("Bearer "):
            return value[len("Bearer "):]
    return None


def new_farm_token(cert_pin: str) -> str:
    return f"{TOKEN_PREFIX}.{cert_pin}.{secrets.token_urlsafe(24)}"


def pin_of(token: str) -> str:
    """The head-certificate pin inside a farm token (raises InvalidInput naming --token)."""
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != TOKEN_PREFIX or len(parts[1]) != PIN_CHARS or not parts[2]:
        raise InvalidInput("--token", "is not a farm token (it looks like farm1.<32 hex>.<secret>): "
                                      "copy it from the `farm join` line that `farm head` printed")
    return parts[1]


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenStore:
    """The head's tokens, kept in its folder so a restarted head accepts the same nodes."""

    def __init__(self, folder: Path, cert_pin: str) -> None:
        self._token_path = folder / "token"
        self._nodes_path = folder / "node-tokens.json"
        self._lock = threading.Lock()
        if not self._token_path.exists():
            write_private(self._token_path, new_farm_token(cert_pin).encode())
        self._token = self._token_path.read_text().strip()
        self._nodes: dict[str, str] = (json.loads(self._nodes_path.read_text())
                                       if self._nodes_path.exists() else {})

    @property
    def farm_token(self) -> str:
        return self._token

    def rotate(self) -> str:
        """A new farm token; the old one is refused from now on."""
        with self._lock:
            self._token = new_farm_token(pin_of(self._token))
            write_private(self._token_path, self._token.encode())
            return self._token

    def is_farm_token(self, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(token.encode(), self._token.encode())

    def issue_node_token(self, name: str) -> str:
        with self._lock:
            token = secrets.token_urlsafe(32)
            self._nodes[name] = _digest(token)
            self._save_nodes()
            return token

    def node_of(self, token: str | None) -> str | None:
        """The node a node token belongs to, or None."""
        if token is None:
            return None
        digest = _digest(token)
        for name, known in self._nodes.items():
            if hmac.compare_digest(digest, known):
                return name
        return None

    def remove_node(self, name: str) -> bool:
        with self._lock:
            if self._nodes.pop(name, None) is None:
                return False
            self._save_nodes()
            return True

    def _save_nodes(self) -> None:
        write_private(self._nodes_path, json.dumps(self._nodes, indent=1, sort_keys=True).encode())


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
