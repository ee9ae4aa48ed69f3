"""Issue 15, point 4: `farm node remove` revokes the PC's Ray certificate, checked at every TLS handshake.

Ray's TLS trusts one Ray CA, which a removal replaces (a new Ray CA epoch, with a new Ray token). Here
a real mutual-TLS server on loopback (Python's ssl, requiring a client certificate, as Ray's gRPC
servers do) holds the head's Ray identity of an epoch (`ray_identity`, as `farm head` makes it), and
clients present the Ray certificates the real FarmControl server handed out at `Join` and `RayToken`.

Run as a script (`python tests/test_ray_ca_rotation.py handshake HOST PORT CERT KEY`) it is the client
the LAN test (tests/test_lan_security.py) runs inside a PC's network namespace against Ray's GCS port.
"""

from __future__ import annotations

import json
import socket
import ssl
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cryptography import x509

sys.path.insert(0, str(Path(__file__).resolve().parent))  # cluster_harness, when run as a script
from cluster_harness import HARDWARE, Head  # noqa: E402

from farm.cluster.pki import TlsIdentity, new_key_and_csr, ray_identity  # noqa: E402
from farm.contracts.control import OwnerPolicy  # noqa: E402

# The client connection preface of HTTP/2 and an empty SETTINGS frame: a gRPC server (Ray's) answers
# it with its own SETTINGS once it has accepted the client's certificate.
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def tls_handshake(host: str, port: int, cert: Path, key: Path, ca: Path | None = None) -> tuple[str, str]:
    """Connect with mutual TLS presenting `cert`/`key`: ("accepted", the server's first bytes, hex) or
    ("refused", why). Without `ca` the server's certificate is not checked, so a refusal is the
    server's verdict on ours: in TLS 1.3 it comes as an alert on the first read after the handshake.
    An unreachable port raises (it is no refusal of a certificate)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["h2"])
    if ca is None:
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    else:
        ctx.load_verify_locations(ca)
    with socket.create_connection((host, port), timeout=10) as raw:
        try:
            with ctx.wrap_socket(raw, server_hostname=host) as tls:
                first = _first_bytes(tls)
        except (ssl.SSLError, ConnectionError) as e:
            return "refused", f"{type(e).__name__}: {e}"
    return ("accepted", first.hex()) if first else ("refused", "closed without a byte")


def _first_bytes(tls: ssl.SSLSocket) -> bytes:
    """What the server sends first: read before writing (data sent to a server that has just refused us
    turns its alert into a bare reset); a gRPC server that waits for the client's preface gets it."""
    tls.settimeout(2)
    try:
        return tls.recv(64)
    except TimeoutError:
        tls.settimeout(10)
        tls.sendall(H2_PREFACE)
        return tls.recv(64)


def test_only_the_current_ray_ca_epoch_passes_a_mutual_tls_handshake(tmp_path: Path) -> None:
    head = Head(tmp_path / "head")
    try:
        pcs, farm_serials = {}, {}
        for name in ("pca", "pcb"):
            key, csr = new_key_and_csr(name)
            grant = head.client().join(name, csr, HARDWARE, ":7071", OwnerPolicy())
            pcs[name] = _files(tmp_path / name, key, grant.ray_cert_pem, grant.ray_ca_pem)
            ray_cert = x509.load_pem_x509_certificate(grant.ray_cert_pem)
            farm_cert = x509.load_pem_x509_certificate(grant.cert_pem)
            # The Ray certificate is the farm certificate's key and addresses from the Ray CA, not the farm CA.
            ray_cert.verify_directly_issued_by(x509.load_pem_x509_certificate(grant.ray_ca_pem))
            assert ray_cert.public_key() == farm_cert.public_key() and grant.ray_ca_pem != grant.ca_pem
            assert ray_cert.not_valid_after_utc == farm_cert.not_valid_after_utc
            farm_serials[name] = f"{farm_cert.serial_number:x}"
        first = head.members.ray_epoch
        with ray_server(tmp_path / "epoch1", ray_identity(first.ca, ("127.0.0.1",)), first.ca.cert_pem) as (port, _):
            for name, (cert, key, ca) in pcs.items():
                assert tls_handshake("127.0.0.1", port, cert, key, ca) == ("accepted", b"farm-ray".hex()), name

        head.client().remove_node("pcb")
        epoch = head.members.ray_epoch
        assert epoch.token != first.token and epoch.ca.cert_pem != first.ca.cert_pem
        assert (tmp_path / "head" / "ray-ca.pem").read_bytes() == epoch.ca.cert_pem  # kept for a restarted head
        node_token = json.loads((tmp_path / "head" / "members.json").read_text())[0]["token"]
        renewed = head.client(token=node_token).ray_credentials()  # what pca's agent asks before its restart
        assert renewed.token == epoch.token and renewed.ca_pem == epoch.ca.cert_pem
        pca_now = _files(tmp_path / "pca-renewed", (tmp_path / "pca" / "key.pem").read_bytes(), renewed.cert_pem,
                         renewed.ca_pem)
        with ray_server(tmp_path / "epoch2", ray_identity(epoch.ca, ("127.0.0.1",)), epoch.ca.cert_pem) as (port, seen):
            for name, (cert, key, _) in pcs.items():  # the certificates of the old epoch: pcb's, and pca's own
                verdict, why = tls_handshake("127.0.0.1", port, cert, key)
                assert verdict == "refused" and "UNKNOWN_CA" in why, (name, verdict, why)
            assert tls_handshake("127.0.0.1", port, *pca_now) == ("accepted", b"farm-ray".hex())
        # The server itself failed the handshakes on the client certificate's issuer, and only those.
        assert len(seen) == 3 and all("certificate verify failed" in s for s in seen[:2]) and seen[2] == "ok", seen

        revoked = json.loads((tmp_path / "head" / "revoked.json").read_text())
        assert [(r["name"], r["cert_serial"], r["ray_ca_serial"]) for r in revoked] == [
            ("pcb", farm_serials["pcb"], f"{first.ca.cert.serial_number:x}")]
    finally:
        head.server.stop(0)


def _files(folder: Path, key: bytes, cert: bytes, ca: bytes) -> tuple[Path, Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = folder / "cert.pem", folder / "key.pem", folder / "ca.pem"
    for path, data in zip(paths, (cert, key, ca), strict=True):
        path.write_bytes(data)
    return paths


@contextmanager
def ray_server(folder: Path, identity: TlsIdentity, ca_pem: bytes) -> Iterator[tuple[int, list[str]]]:
    """A TLS server on a loopback port that requires a client certificate of `ca_pem` (as Ray's do)
    and sends b"farm-ray" to a client it accepts; yields the port and each handshake's outcome (all of
    them once the block has ended)."""
    cert, key, _ = _files(folder, identity.key_pem, identity.cert_pem, ca_pem)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(cadata=ca_pem.decode())
    ctx.verify_mode = ssl.CERT_REQUIRED
    listener = socket.create_server(("127.0.0.1", 0))
    seen: list[str] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # closed
            with conn:
                try:
                    with ctx.wrap_socket(conn, server_side=True) as tls:
                        tls.sendall(b"farm-ray")
                        seen.append("ok")
                except (ssl.SSLError, OSError) as e:
                    seen.append(str(e))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], seen
    finally:
        listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept (a close alone does not)
        listener.close()
        thread.join(timeout=5)


if __name__ == "__main__":
    if sys.argv[1:2] == ["handshake"]:
        host, port, cert, key = sys.argv[2:6]
        print(json.dumps(tls_handshake(host, int(port), Path(cert), Path(key))))
