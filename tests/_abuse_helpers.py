"""
Helpers for the hardening and abuse tests: a PKI written to files, a real
``twistd membio-https`` process on loopback (always stopped, with a
temporary HOME), and the clients that probe it (openssl s_client, curl,
Python's ssl, raw sockets), each bounded in time.
"""

from __future__ import annotations

import datetime
import hashlib
import re
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ._plugin_helpers import (
    HTTPS_READY,
    Server,
    listening_port,
    running,
    subprocess_env,
    twistd_command,
)

READY = r"ready: open https://"

#: Every client command gets at most this long.
CLIENT_TIMEOUT = 15.0


# ------------------------------------------------------------------- certificates


@dataclass(frozen=True)
class Issued:
    """A certificate and its key, in memory."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    chain: tuple[x509.Certificate, ...] = ()  # intermediates after the leaf

    @property
    def cert_pem(self) -> bytes:
        return b"".join(
            c.public_bytes(serialization.Encoding.PEM) for c in (self.certificate, *self.chain)
        )

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.certificate.public_bytes(serialization.Encoding.DER))

    def write(self, directory: Path, stem: str, *, combined: bool = False) -> tuple[Path, Path]:
        """Write C{stem}.pem (and C{stem}.key unless C{combined}); keys are 0600."""
        directory.mkdir(parents=True, exist_ok=True)
        cert_path = directory / f"{stem}.pem"
        key_path = cert_path if combined else directory / f"{stem}.key"
        data = self.cert_pem + (self.key_pem if combined else b"")
        _write_private(cert_path, data)
        if not combined:
            _write_private(key_path, self.key_pem)
        return cert_path, key_path


def _write_private(path: Path, data: bytes) -> None:
    # Write beside, then rename: a reader never sees half a file.
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    partial.chmod(0o600)
    partial.replace(path)


def fingerprint(der: bytes) -> str:
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def _new_key(kind: str) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def make_ca(name: str, kind: str = "ecdsa") -> Issued:
    key = _new_key(kind)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), True
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(cert, key)


def issue(
    ca: Issued, names: Sequence[str], *, kind: str = "ecdsa", client: bool = False
) -> Issued:
    """A leaf signed by C{ca}, for servers (DNS names) or for clients (first name as CN)."""
    key = _new_key(kind)
    now = datetime.datetime.now(datetime.UTC)
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                True, False, kind == "rsa", False, False, False, False, False, False
            ),
            True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), False
        )
    )
    if not client:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(name) for name in names]), critical=False
        )
    return Issued(builder.sign(ca.key, hashes.SHA256()), key)


# ------------------------------------------------------------------- the server


@dataclass
class MembioServer:
    """A running membio-https and how to reach it."""

    server: Server
    port: int
    ca: Path  # what clients trust for the default certificate
    home: Path
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.server.process.pid

    @property
    def log(self) -> str:
        return self.server.stdout

    def wait_for_log(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        return self.server.wait_for_log(pattern, timeout)

    def alive(self) -> bool:
        return self.server.process.poll() is None


@contextmanager
def membio_https(
    directory: Path,
    *arguments: str,
    env: dict[str, str] | None = None,
    ca: Path | None = None,
    name: str = "server",
) -> Iterator[MembioServer]:
    """
    ``twistd -n membio-https --port P ARGUMENTS`` with a temporary HOME;
    stopped (SIGTERM, then SIGKILL) on leaving, whatever happened.
    """
    home = directory / f"{name}-home"
    command = [
        *twistd_command(), "--nodaemon", "--pidfile=", "membio-https",
        "--port", "0", *arguments,
    ]
    with running(command, directory, subprocess_env(home, **(env or {})), name) as server:
        port = listening_port(server, HTTPS_READY)
        trust = ca or home / "state" / "membio-transport" / "local-ca.pem"
        yield MembioServer(server, port, trust, home)


# ------------------------------------------------------------------- clients


def openssl_client(
    port: int,
    *arguments: str,
    stdin: bytes = b"",
    timeout: float = CLIENT_TIMEOUT,
    servername: str | None = "localhost",
) -> str:
    """``openssl s_client`` against 127.0.0.1:C{port}; its stdout and stderr together."""
    command = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}"]
    if servername is not None:
        command += ["-servername", servername]
    else:
        command += ["-noservername"]
    result = subprocess.run(
        [*command, *arguments], input=stdin, capture_output=True, timeout=timeout, check=False
    )
    return (result.stdout + result.stderr).decode("utf-8", "replace")


def negotiated(output: str) -> tuple[str, str] | None:
    """(version, cipher) from s_client output, or None when no handshake completed."""
    match = re.search(r"(?:New|Reused), (TLSv[\d.]+), Cipher is (\S+)", output)
    if match is None or match.group(2) == "(NONE)":
        return None
    return match.group(1), match.group(2)


def curl(*arguments: str, timeout: float = CLIENT_TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "--silent", "--show-error", "--max-time", str(timeout), *arguments],
        capture_output=True, text=True, timeout=timeout + 5, check=False,
    )


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    version: str | None
    cipher: str | None
    reused: bool
    alpn: str | None
    peer_fingerprint: str
    session: ssl.SSLSession | None


def client_context(
    ca: Path, *, version: ssl.TLSVersion | None = None, alpn: Sequence[str] = ()
) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    if version is not None:
        context.minimum_version = context.maximum_version = version
    if alpn:
        context.set_alpn_protocols(list(alpn))
    return context


def read_response(tls: ssl.SSLSocket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length (what twisted.web sends here)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = tls.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before the response headers: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = tls.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, headers, body


def request(tls: ssl.SSLSocket, path: str = "/", host: str = "localhost") -> None:
    tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: */*\r\n\r\n".encode())


def https_get(
    port: int,
    context: ssl.SSLContext,
    *,
    host: str | None = "localhost",
    path: str = "/",
    session: ssl.SSLSession | None = None,
    timeout: float = CLIENT_TIMEOUT,
) -> Response:
    """One GET over a new connection (SNI C{host}), closed afterwards."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw, \
            context.wrap_socket(raw, server_hostname=host, session=session) as tls:
        request(tls, path, host or "localhost")
        status, headers, body = read_response(tls)
        der = tls.getpeercert(binary_form=True)
        cipher = tls.cipher()
        return Response(
            status, headers, body, tls.version(), cipher[0] if cipher else None,
            tls.session_reused, tls.selected_alpn_protocol(), fingerprint(der or b""),
            tls.session,
        )


def page_field(body: bytes, label: str) -> str:
    """A field of the plain-text information page."""
    match = re.search(rf"^{re.escape(label)}:\s+(.*)$", body.decode(), re.MULTILINE)
    assert match, body.decode()
    return match.group(1)


# ------------------------------------------------------------------- measurements


def vm_rss_kib(pid: int) -> int:
    """Resident memory of process C{pid}, in KiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    assert match, status
    return int(match.group(1))


def wait_until(predicate: object, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(interval)
    return bool(predicate())  # type: ignore[operator]


def raw_connect(port: int, timeout: float = 5.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    return sock


def client_hello(host: str = "localhost") -> bytes:
    """A real ClientHello (TLS 1.3 and 1.2), as the first flight of Python's ssl."""
    context = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=host)
    with suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


