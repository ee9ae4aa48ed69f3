"""Tokens: the farm token and node tokens the head accepts, kept in its folder.

Two kinds, so that a node's removal or a token rotation touches only what it should:

- the farm token (`farm1.<pin>.<secret>`): what `farm join` and the CLI present to the head. It
  carries the pin of the head's certificate (see `farm.cluster.pki`), so one string is all a new PC needs.
  `farm token rotate` replaces it; joined nodes keep working, an old join command stops working.
- a node token, issued to each node at join: the head presents it when it calls that node's agent,
  and the node presents it to join again after a restart. Removing the node forgets it.

The token store checks node tokens against their hashes; the member table (`farm.cluster.membership`,
0600) keeps each one too, because the head presents it to that PC's agent. gRPC checks them through
`farm.api.auth`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import threading
from pathlib import Path

from farm.cluster.pki import PIN_CHARS, write_private
from farm.contracts.errors import InvalidInput

TOKEN_PREFIX = "farm1"


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
