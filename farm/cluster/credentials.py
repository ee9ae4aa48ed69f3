"""The head's secrets in one place: the farm CA, the head's TLS identity and the tokens, all kept
under `FARM_HOME/head/` so a restarted head keeps its farm (same CA, same members, same tokens)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from farm.cluster.pki import FarmCA, TlsIdentity, pin
from farm.cluster.tokens import TokenStore


@dataclass(frozen=True)
class HeadCredentials:
    folder: Path
    ca: FarmCA
    tls: TlsIdentity
    tokens: TokenStore

    @classmethod
    def load_or_create(cls, folder: Path) -> HeadCredentials:
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o700)
        ca = FarmCA.load_or_create(folder)
        tls = ca.head_identity(folder)
        return cls(folder, ca, tls, TokenStore(folder, pin(tls.cert_pem)))
