"""The farm's certificate authority: created by `farm head`, it signs a certificate for every node
that joins, so every gRPC port off loopback speaks TLS with certificates the farm itself issued.

Certificates name roles, not addresses (home PCs change IPs with DHCP): the head's says `farm-head`,
a node's says `node-<name>`, and clients check those names (`grpc.ssl_target_name_override`). A node
keeps its private key: it sends a certificate request and gets the certificate back. A node's
certificate also names itself (`c<serial>.node-<name>`), which is the name the head checks when it
calls that PC's agent: only the certificate of the PC's latest join passes, not an older one.

Ray's TLS between PCs (`RAY_USE_TLS`) has a CA of its own, the Ray CA (`ray-ca.*` in the head's
folder), replaced at every `farm node remove`: one Ray CA epoch per set of members. The head's Ray
certificate and each member's (issued for the key of the member's farm certificate, so a PC keeps one
key) come from the current Ray CA, and every Ray process trusts only it. Ray's servers require a client
certificate and check it against that CA in every TLS handshake, so a removed PC's Ray certificate,
from a retired epoch, is refused by every Ray port (unknown CA): that is its revocation. Ray connects
to node IP addresses and checks them against the certificate, so Ray certificates also name the PC's
address and loopback (and so do farm certificates, which they are made from).

Node certificates last a year and are renewed at each re-join. A removed PC's certificate, and the one
a re-join replaces, stop opening anything at once: the head checks each PC's agent under the name only
the current certificate carries; the head's own gRPC servers check node tokens (Python's gRPC server
cannot ask for an optional client certificate, so it has no certificate to check there), and a
removed PC's node token is deleted; Ray refuses the removed PC's Ray certificate (above).

First contact: a PC that joins does not have the CA yet. The join token carries a pin (a SHA-256
prefix) of the head's certificate; the PC fetches that certificate, checks the pin before it sends
anything, and trusts only it for the join call, which returns the CA.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from farm.contracts.errors import FarmError, Unreachable

HEAD_NAME = "farm-head"
PIN_CHARS = 32  # hex characters of SHA-256: 128 bits
CA_VALID_DAYS = 3650
VALID_DAYS = 365  # node certificates and the head's Ray certificate; a re-join renews a node's (its Ray one with it)


def node_host(name: str) -> str:
    """The DNS name in a node's certificate (and the name the head checks when it calls the node)."""
    return f"node-{name}"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def write_private(path: Path, data: bytes) -> None:
    """Write a secret readable by its owner only (the file is created 0600, never widened)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def pin(cert_pem: bytes) -> str:
    """The pin of a certificate: the first 128 bits of the SHA-256 of its DER form, in hex."""
    der = x509.load_pem_x509_certificate(cert_pem).public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(der).hexdigest()[:PIN_CHARS]


def new_key_and_csr(name: str) -> tuple[bytes, bytes]:
    """A node's private key and its certificate request for `node-<name>` (both PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder().subject_name(_name(name))
           .sign(key, hashes.SHA256()))
    return _key_pem(key), csr.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class TlsIdentity:
    """A server's private key and certificate (PEM)."""

    key_pem: bytes
    cert_pem: bytes


@dataclass(frozen=True)
class FarmCA:
    """The CA key and certificate kept under the head's folder (the key never leaves the head)."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @property
    def cert_pem(self) -> bytes:
        return _pem(self.cert)

    @classmethod
    def load_or_create(cls, folder: Path, stem: str = "ca", subject: str = "farm CA") -> FarmCA:
        """The CA kept as `<stem>.key` and `<stem>.pem` in `folder`, created there if missing."""
        key_path, cert_path = folder / f"{stem}.key", folder / f"{stem}.pem"
        if key_path.exists() and cert_path.exists():
            key = serialization.load_pem_private_key(key_path.read_bytes(), None)
            assert isinstance(key, ec.EllipticCurvePrivateKey)
            return cls(key, x509.load_pem_x509_certificate(cert_path.read_bytes()))
        return cls.create(folder, stem, subject)

    @classmethod
    def create(cls, folder: Path, stem: str, subject: str) -> FarmCA:
        """A new CA, replacing the one kept under `stem` (every certificate of the old one stops being
        trusted by whoever trusts only the new one: how a Ray CA epoch ends)."""
        key_path, cert_path = folder / f"{stem}.key", folder / f"{stem}.pem"
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(subject))
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=CA_VALID_DAYS))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                             key_encipherment=False, data_encipherment=False, key_agreement=False,
                                             key_cert_sign=True, crl_sign=True, encipher_only=False,
                                             decipher_only=False), critical=True)
                .sign(key, hashes.SHA256()))
        write_private(key_path, _key_pem(key))
        cert_path.write_bytes(_pem(cert))
        return cls(key, cert)

    def issue(self, csr_pem: bytes, host: str, ips: tuple[str, ...] = (), days: int = VALID_DAYS) -> bytes:
        """Sign a certificate request for DNS name `host` (and `c<serial>.<host>`, and the IP addresses
        `ips`, for Ray); the request's own names are ignored."""
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError:
            raise BadCertificateRequest("csr_pem: not a PEM certificate request") from None
        if not csr.is_signature_valid:
            raise BadCertificateRequest("csr_pem: its signature does not match its key")
        now = datetime.datetime.now(datetime.UTC)
        return self._sign(csr.public_key(), host, ips, now + datetime.timedelta(days=days))

    def reissue(self, cert_pem: bytes) -> bytes:
        """A certificate of this CA for the key, name, IP addresses and expiry of `cert_pem` (one of
        another CA's: a member's farm certificate becomes its Ray certificate without a new key)."""
        cert = x509.load_pem_x509_certificate(cert_pem)
        host = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        ips = tuple(str(ip) for ip in names.get_values_for_type(x509.IPAddress))
        return self._sign(cert.public_key(), str(host), ips, cert.not_valid_after_utc)

    def _sign(self, public_key: CertificatePublicKeyTypes, host: str, ips: tuple[str, ...],
              not_after: datetime.datetime) -> bytes:
        now = datetime.datetime.now(datetime.UTC)
        serial = x509.random_serial_number()
        names: list[x509.GeneralName] = [x509.DNSName(host), x509.DNSName(serial_host(serial, host))]
        if ips:
            names += [x509.DNSName("localhost"), *(x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips)]
        cert = (x509.CertificateBuilder().subject_name(_name(host)).issuer_name(self.cert.subject)
                .public_key(public_key).serial_number(serial)
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(not_after)
                .add_extension(x509.SubjectAlternativeName(names), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                      ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                .sign(self.key, hashes.SHA256()))
        return _pem(cert)

    def head_identity(self, folder: Path) -> TlsIdentity:
        """The head's own key and certificate (`farm-head`), created once and kept."""
        key_path, cert_path = folder / "head.key", folder / "head.pem"
        if not (key_path.exists() and cert_path.exists()):
            key_pem, csr_pem = new_key_and_csr(HEAD_NAME)
            write_private(key_path, key_pem)
            # As long as the CA: every token carries this certificate's pin, so renewing it would
            # void them all (a node's certificate, pinned by nothing, lasts a year instead).
            cert_path.write_bytes(self.issue(csr_pem, HEAD_NAME, days=CA_VALID_DAYS))
        return TlsIdentity(key_path.read_bytes(), cert_path.read_bytes())


def serial_of(cert_pem: bytes) -> int:
    return x509.load_pem_x509_certificate(cert_pem).serial_number


def serial_host(serial: int, host: str) -> str:
    """The name only one certificate carries: `c<serial in hex>.<host>`."""
    return f"c{serial:x}.{host}"


def ray_identity(ray_ca: FarmCA, ips: tuple[str, ...]) -> TlsIdentity:
    """A fresh key and certificate from the current Ray CA for the head's Ray processes, naming the
    addresses `ips` Ray connects to (the head's address may change between starts, and a removal
    starts a new Ray CA epoch, so this one is issued at each start)."""
    key_pem, csr_pem = new_key_and_csr(HEAD_NAME)
    return TlsIdentity(key_pem, ray_ca.issue(csr_pem, HEAD_NAME, ips))


class BadCertificateRequest(FarmError):
    """A join carried a certificate request that is not one."""

    exit_code = 2


class PinMismatch(FarmError):
    """The head presented a certificate other than the one the join token names."""


def fetch_pinned_cert(host: str, port: int, expected_pin: str, timeout: float = 10.0) -> bytes:
    """The head's certificate, if and only if it matches the pin from the join token.

    Checked before any secret is sent, so a machine in the middle learns nothing from the attempt.
    """
    try:
        pem = ssl.get_server_certificate((host, port), timeout=timeout).encode()
    except (OSError, ssl.SSLError) as e:
        raise Unreachable(f"cannot reach the head at {host}:{port}: {e}") from None
    if pin(pem) != expected_pin:
        raise PinMismatch(f"the head at {host}:{port} presented a certificate that the join token does not name "
                          "(wrong address, or someone in the middle): refusing to send the token")
    return pem


def is_loopback(host: str) -> bool:
    """True for addresses that never leave this machine (the only ones allowed without TLS)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve anywhere
