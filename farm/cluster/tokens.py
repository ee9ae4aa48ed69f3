"""Tokens: every credential the head accepts, kept in its folder, and the role each one grants.

Four kinds, so that a leaked or rotated credential touches only what it should:

- the join token (`farm1.<pin>.<secret>`): what a new PC presents to `Join`, and nothing else. It
  carries the pin of the head's certificate (see `farm.cluster.pki`), so one string is all a new PC
  needs. `farm token rotate` replaces it; joined PCs keep working, an old join line stops working.
- the admin token (same shape), created by the first `farm head` and kept: everything, including
  rotation, removal, other users' jobs, priorities above 0 and owners' policies.
- user tokens (same shape), one per user name (`farm token issue --user NAME`; issuing again
  replaces it): their own jobs, reading nodes and the queue. The head keeps only their hashes.
- node tokens, issued to each PC at join: the head presents one when it calls that PC's agent, and
  the PC presents it to join again after a restart. Removing the PC forgets it.

Which RPC each role may call is `farm.api.auth.ROLES`; this module only says who a token is.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import threading
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from farm.cluster.pki import PIN_CHARS, write_private
from farm.contracts.errors import InvalidInput

TOKEN_PREFIX = "farm1"
USER_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
RESERVED_USERS = frozenset({"admin", "local", "api"})  # owners the head itself uses


class Role(StrEnum):
    JOIN = "join"
    USER = "user"
    ADMIN = "admin"
    NODE = "node"


@dataclass(frozen=True)
class Principal:
    """Who a call comes from: a role and a name (the user, the PC, or the role's own name)."""

    role: Role
    name: str


ADMIN = Principal(Role.ADMIN, "admin")
LOCAL = Principal(Role.ADMIN, "local")  # the embedded farm on loopback: no tokens, its jobs owned by `local`


def new_farm_token(cert_pin: str) -> str:
    return f"{TOKEN_PREFIX}.{cert_pin}.{secrets.token_urlsafe(24)}"


def pin_of(token: str) -> str:
    """The head-certificate pin inside a join, admin or user token (raises InvalidInput naming --token)."""
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != TOKEN_PREFIX or len(parts[1]) != PIN_CHARS or not parts[2]:
        raise InvalidInput("--token", "is not a farm token (it looks like farm1.<32 hex>.<secret>): use the "
                                      "admin token in FARM_HOME/head/admin-token, a user token from `farm token "
                                      "issue`, or the join token from the line `farm head` printed")
    return parts[1]


def user_name(name: str) -> str:
    """A user name as tokens and job owners carry it (raises InvalidInput naming --user)."""
    if not USER_NAME.fullmatch(name) or name in RESERVED_USERS:
        raise InvalidInput("--user", f"must be 1 to 64 letters, digits, '.', '@', '_' or '-', and not one of "
                                     f"{', '.join(sorted(RESERVED_USERS))}; got {name!r}")
    return name


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


class TokenStore:
    """The head's tokens, kept in its folder (0600) so a restarted head accepts the same callers."""

    def __init__(self, folder: Path, cert_pin: str) -> None:
        self._pin = cert_pin
        self._join_path = folder / "join-token"
        self._admin_path = folder / "admin-token"
        self._users_path = folder / "user-tokens.json"
        self._nodes_path = folder / "node-tokens.json"
        self._lock = threading.Lock()
        for path in (self._join_path, self._admin_path):
            if not path.exists():
                write_private(path, new_farm_token(cert_pin).encode())
        self._join = self._join_path.read_text().strip()
        self._admin = self._admin_path.read_text().strip()
        self._users: dict[str, str] = json.loads(self._users_path.read_text()) if self._users_path.exists() else {}
        self._nodes: dict[str, str] = json.loads(self._nodes_path.read_text()) if self._nodes_path.exists() else {}

    @property
    def join_token(self) -> str:
        return self._join

    @property
    def admin_token(self) -> str:
        return self._admin

    def rotate(self) -> str:
        """A new join token; the old one is refused from now on (no other credential changes)."""
        with self._lock:
            self._join = new_farm_token(self._pin)
            write_private(self._join_path, self._join.encode())
            return self._join

    def issue_user_token(self, name: str) -> str:
        """A token for user `name`, replacing the one issued before (which stops working)."""
        with self._lock:
            token = new_farm_token(self._pin)
            self._users[user_name(name)] = _digest(token)
            write_private(self._users_path, json.dumps(self._users, indent=1, sort_keys=True).encode())
            return token

    def issue_node_token(self, name: str) -> str:
        with self._lock:
            token = secrets.token_urlsafe(32)
            self._nodes[name] = _digest(token)
            self._save_nodes()
            return token

    def identify(self, token: str | None) -> Principal | None:
        """Who presents `token`, or None for a missing or unknown one."""
        if not token:
            return None
        if _same(token, self._admin):
            return ADMIN
        if _same(token, self._join):
            return Principal(Role.JOIN, "join")
        digest = _digest(token)
        with self._lock:
            user = next((n for n, known in self._users.items() if _same(digest, known)), None)
            node = next((n for n, known in self._nodes.items() if _same(digest, known)), None)
        if user is not None:
            return Principal(Role.USER, user)
        return Principal(Role.NODE, node) if node is not None else None

    def remove_node(self, name: str) -> bool:
        with self._lock:
            if self._nodes.pop(name, None) is None:
                return False
            self._save_nodes()
            return True

    def _save_nodes(self) -> None:
        write_private(self._nodes_path, json.dumps(self._nodes, indent=1, sort_keys=True).encode())
