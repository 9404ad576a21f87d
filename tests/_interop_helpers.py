"""
Support code for ``test_interop.py``: a throw-away PKI, peer processes,
small application protocols and blocking clients meant to run in a thread.

Nothing here is specific to one test; the tests decide what to assert.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import ipaddress
import os
import random
import re
import select
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier
from twisted.internet import defer, error, protocol
from twisted.internet.interfaces import IHalfCloseableProtocol, IHandshakeListener
from twisted.python.failure import Failure
from zope.interface import implementer

KeyType = Literal["ecdsa", "rsa"]

# ---------------------------------------------------------------------------
# PKI
# ---------------------------------------------------------------------------

#: A private-arc OID for the padding extension of the oversized chain.  Not
#: critical, so every verifier ignores its content.
_PADDING_OID = ObjectIdentifier("1.3.6.1.4.1.57264.99.1")

_ONE_DAY = datetime.timedelta(days=1)


def _new_key(key_type: KeyType, rsa_bits: int = 2048) -> Any:
    if key_type == "ecdsa":
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "membio-transport interop tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


@dataclass
class Issued:
    """One certificate with its key."""

    cert: x509.Certificate
    key: Any

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def _padding_extension(size: int) -> x509.UnrecognizedExtension:
    # The extension value is itself DER: an OCTET STRING of zero bytes.
    body = bytes(size)
    if size < 0x80:
        header = bytes([0x04, size])
    elif size < 0x10000:
        header = bytes([0x04, 0x82]) + size.to_bytes(2, "big")
    else:
        header = bytes([0x04, 0x83]) + size.to_bytes(3, "big")
    return x509.UnrecognizedExtension(_PADDING_OID, header + body)


def make_ca(
    common_name: str,
    key_type: KeyType = "ecdsa",
    *,
    issuer: Issued | None = None,
    padding: int = 0,
    key: Any = None,
) -> Issued:
    """A root CA (no C{issuer}) or an intermediate CA signed by C{issuer}."""
    key = key if key is not None else _new_key(key_type)
    now = datetime.datetime.now(datetime.UTC)
    subject = _name(common_name)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _ONE_DAY)
        .not_valid_after(now + 30 * _ONE_DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
    )
    signer = issuer.key if issuer else key
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
            critical=False,
        )
    if padding:
        builder = builder.add_extension(_padding_extension(padding), critical=False)
    return Issued(builder.sign(signer, hashes.SHA256()), key)


def make_leaf(
    issuer: Issued,
    names: Sequence[str] = ("localhost", "127.0.0.1"),
    key_type: KeyType = "ecdsa",
) -> Issued:
    """A server certificate for C{names} (DNS names or IP addresses)."""
    key = _new_key(key_type)
    now = datetime.datetime.now(datetime.UTC)
    alt_names: list[x509.GeneralName] = []
    for name in names:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt_names.append(x509.DNSName(name))
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(names[0]))
        .issuer_name(issuer.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _ONE_DAY)
        .not_valid_after(now + 30 * _ONE_DAY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=key_type == "rsa",
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
            critical=False,
        )
        .sign(issuer.key, hashes.SHA256())
    )
    return Issued(cert, key)


@dataclass
class ServerFiles:
    """PEM files for one server identity, and the CA that vouches for it."""

    name: str
    ca: Path  # the trust anchor a client should use
    cert: Path  # leaf first, then intermediates
    key: Path
    chain_der: list[bytes] = field(default_factory=list)  # as sent: leaf first

    @property
    def ca_pem(self) -> bytes:
        return self.ca.read_bytes()

    def certificate_message_size(self, tls13: bool) -> int:
        """Length of the body of the Certificate handshake message we send."""
        if tls13:
            # context length, list length, then per entry: length, DER, extensions.
            return 1 + 3 + sum(3 + len(der) + 2 for der in self.chain_der)
        return 3 + sum(3 + len(der) for der in self.chain_der)


def _write(directory: Path, name: str, ca: Issued, chain: Sequence[Issued]) -> ServerFiles:
    directory.mkdir(parents=True, exist_ok=True)
    ca_path = directory / f"{name}-ca.pem"
    cert_path = directory / f"{name}-chain.pem"
    key_path = directory / f"{name}-key.pem"
    ca_path.write_bytes(ca.pem)
    cert_path.write_bytes(b"".join(c.pem for c in chain))
    key_path.write_bytes(chain[0].key_pem)
    key_path.chmod(0o600)
    return ServerFiles(name, ca_path, cert_path, key_path, [c.der for c in chain])


#: The largest Certificate message OpenSSL clients accept by default
#: (``SSL_CTX_set_max_cert_list``): 100 KiB.  The oversized chain stays just
#: below it, so that the whole server flight still exceeds 100 KiB.
OPENSSL_MAX_CERT_LIST = 100 * 1024


def _big_chain(root: Issued, target: int, intermediates: int) -> list[Issued]:
    """
    Leaf + C{intermediates} padded intermediates below C{root}, tuned so
    that the TLS 1.3 Certificate message is C{target} bytes, give or take
    the few bytes an ECDSA signature varies by.
    """
    keys = [_new_key("ecdsa") for _ in range(intermediates)]
    leaf_key_type: KeyType = "ecdsa"
    padding = [(target - 700) // intermediates - 500] * intermediates
    chain: list[Issued] = []
    for _ in range(6):
        issuer = root
        cas = []
        for i in range(intermediates):
            issuer = make_ca(
                f"Padded Intermediate {i}", issuer=issuer, padding=padding[i], key=keys[i]
            )
            cas.append(issuer)
        leaf = make_leaf(issuer, key_type=leaf_key_type)
        chain = [leaf, *reversed(cas)]
        size = 1 + 3 + sum(3 + len(c.der) + 2 for c in chain)
        if abs(size - target) <= 8:
            break
        padding[0] += target - size
    return chain


def build_pki(directory: Path) -> dict[str, ServerFiles]:
    """
    Every server identity the interop tests use:

    * ``ecdsa`` / ``rsa``: a root CA of that key type and a leaf for
      localhost and 127.0.0.1 it signed directly;
    * ``wrong-name``: a leaf for another host name, from the ``ecdsa`` CA;
    * ``untrusted``: a leaf for localhost from a CA nobody trusts (its
      ``ca`` file is the trusted ``ecdsa`` CA, which did not sign it);
    * ``big-chain``: a leaf under padded intermediates whose Certificate
      message is just under `OPENSSL_MAX_CERT_LIST`, from the ``ecdsa`` CA.
    """
    result: dict[str, ServerFiles] = {}
    roots: dict[str, Issued] = {}
    for key_type in ("ecdsa", "rsa"):
        root = make_ca(f"Interop Root {key_type.upper()}", key_type)  # type: ignore[arg-type]
        roots[key_type] = root
        leaf = make_leaf(root, key_type=key_type)  # type: ignore[arg-type]
        result[key_type] = _write(directory, key_type, root, [leaf])
    trusted = roots["ecdsa"]
    result["wrong-name"] = _write(
        directory, "wrong-name", trusted, [make_leaf(trusted, names=("wrong-name.invalid",))]
    )
    stranger = make_ca("Interop Untrusted Root")
    untrusted = _write(directory, "untrusted", trusted, [make_leaf(stranger)])
    result["untrusted"] = untrusted
    result["big-chain"] = _write(
        directory, "big-chain", trusted, _big_chain(trusted, OPENSSL_MAX_CERT_LIST - 100, 4)
    )
    return result


# ---------------------------------------------------------------------------
# Peer processes (openssl s_client / s_server, curl)
# ---------------------------------------------------------------------------


class PeerProcess(protocol.ProcessProtocol):
    """
    A child process whose output we can wait on.

    @ivar ended: fires with the exit code (or the signal number, negated)
        once the process is gone and all its output was collected.
    """

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self.out = bytearray()
        self.err = bytearray()
        self.ended: defer.Deferred[int] = defer.Deferred()
        self.exit_code: int | None = None
        self._waiters: list[
            tuple[str, re.Pattern[bytes], int, defer.Deferred[list[re.Match[bytes]]]]
        ] = []
        self.started = time.monotonic()

    # -- process events -----------------------------------------------------

    def outReceived(self, data: bytes) -> None:
        self.out += data
        self._check()

    def errReceived(self, data: bytes) -> None:
        self.err += data
        self._check()

    def processEnded(self, reason: Failure) -> None:
        value = reason.value
        if isinstance(value, (error.ProcessDone, error.ProcessTerminated)):
            code = value.exitCode
            if code is None:
                code = -(value.signal or 0)
        else:
            code = -1
        self.exit_code = code
        waiters, self._waiters = self._waiters, []
        for stream, pattern, _count, d in waiters:
            if d.called:
                continue
            d.errback(
                AssertionError(
                    f"process ended (code {code}) before {pattern.pattern!r} appeared on "
                    f"{stream}\n{self.transcript()}"
                )
            )
        self.ended.callback(code)

    # -- what tests use -----------------------------------------------------

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def close_stdin(self) -> None:
        if self.transport is not None:
            self.transport.closeStdin()

    def wait_for(
        self, pattern: bytes, stream: str = "out", timeout: float = 10.0, count: int = 1
    ) -> defer.Deferred[list[re.Match[bytes]]]:
        """
        Fire with the matches of C{pattern} (a regex) on the stream once
        there are at least C{count} of them.
        """
        compiled = re.compile(pattern)
        d: defer.Deferred[list[re.Match[bytes]]] = defer.Deferred()
        self._waiters.append((stream, compiled, count, d))
        self._check()
        if d.called:
            return d
        if self.exit_code is not None:
            self._waiters.remove((stream, compiled, count, d))
            d.errback(AssertionError(f"process already ended\n{self.transcript()}"))
            return d

        def timed_out(failure: Failure) -> Failure:
            failure.trap(defer.TimeoutError, defer.CancelledError)
            found = self.count(pattern, stream)
            return Failure(
                AssertionError(
                    f"{pattern!r} did not appear {count} times on {stream} within {timeout}s "
                    f"(found {found})\n{self.transcript()}"
                )
            )

        d.addTimeout(timeout, self.clock)
        d.addErrback(timed_out)
        return d

    def count(self, pattern: bytes, stream: str = "out") -> int:
        return len(re.findall(pattern, self.out if stream == "out" else self.err))

    def _check(self) -> None:
        ready = []
        still = []
        for waiter in self._waiters:
            stream, pattern, count, d = waiter
            if d.called:
                continue
            matches = list(pattern.finditer(self.out if stream == "out" else self.err))
            if len(matches) >= count:
                ready.append((d, matches))
            else:
                still.append(waiter)
        # Callbacks may add waiters (a test awaiting the next output): the
        # list must be settled before they run.
        self._waiters = still
        for d, matches in ready:
            d.callback(matches)

    def transcript(self) -> str:
        out = bytes(self.out[-3000:]).decode("utf-8", "replace")
        err = bytes(self.err[-3000:]).decode("utf-8", "replace")
        return f"--- stdout (tail) ---\n{out}\n--- stderr (tail) ---\n{err}"

    def kill(self) -> None:
        if self.exit_code is None and self.transport is not None:
            with contextlib.suppress(error.ProcessExitedAlready):
                self.transport.signalProcess("KILL")


# ---------------------------------------------------------------------------
# Application protocols run over the TLS layer under test
# ---------------------------------------------------------------------------


@implementer(IHandshakeListener)
class Recorder(protocol.Protocol):
    """
    Keeps what happened to it.  C{lost} fires (with None) once
    C{connectionLost} was called, whose reason is kept in C{reason};
    C{handshake} fires when the handshake completes.
    """

    def __init__(self) -> None:
        self.received = bytearray()
        self.handshake: defer.Deferred[None] = defer.Deferred()
        self.lost: defer.Deferred[None] = defer.Deferred()
        self.made: defer.Deferred[None] = defer.Deferred()
        self.negotiated: bytes | str | None = "not set"
        self.version: str | None = None
        self.servername: bytes | None = None
        self.reason: Failure | None = None

    def connectionMade(self) -> None:
        self.made.callback(None)

    def handshakeCompleted(self) -> None:
        self.negotiated = self.transport.negotiatedProtocol  # type: ignore[union-attr]
        handle = self.transport.getHandle()  # type: ignore[union-attr]
        self.version = handle.get_protocol_version_name()
        self.servername = handle.get_servername()
        if not self.handshake.called:
            self.handshake.callback(None)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.reason = reason
        if not self.lost.called:
            # A Failure as a result would take the errback path: fire with
            # None; the reason is in self.reason.
            self.lost.callback(None)


class Echo(Recorder):
    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        self.transport.write(data)  # type: ignore[union-attr]


class TinyHTTP(Recorder):
    """Answers one HTTP/1.1 request, naming the negotiated protocol, then closes."""

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        if b"\r\n\r\n" not in self.received:
            return
        alpn = self.transport.negotiatedProtocol  # type: ignore[union-attr]
        body = b"hello from membio-transport; alpn=" + repr(alpn).encode() + b"\n"
        self.transport.write(  # type: ignore[union-attr]
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        self.transport.loseConnection()  # type: ignore[union-attr]


class HashingSink(Recorder):
    """
    Hashes what it receives instead of keeping it; C{done} fires with the
    hex digest once C{expected} bytes arrived.
    """

    def __init__(self, expected: int) -> None:
        super().__init__()
        self.expected = expected
        self.count = 0
        self.sha = hashlib.sha256()
        self.done: defer.Deferred[str] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.count += len(data)
        self.sha.update(data)
        if self.count >= self.expected and not self.done.called:
            self.done.callback(self.sha.hexdigest())


class HashingEcho(HashingSink):
    """Echoes everything back, hashing it on the way."""

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]
        super().dataReceived(data)


class Factory(protocol.ClientFactory):
    """Builds protocols with C{make} and keeps them, in order."""

    def __init__(self, make: Callable[[], protocol.Protocol]) -> None:
        self.make = make
        self.instances: list[Any] = []
        self.built: defer.Deferred[Any] = defer.Deferred()

    def buildProtocol(self, addr: Any) -> protocol.Protocol:
        p = self.make()
        p.factory = self
        self.instances.append(p)
        if not self.built.called:
            self.built.callback(p)
        return p


@implementer(IHalfCloseableProtocol)
class HalfCloser(Recorder):
    """Writes C{greeting}, half-closes, and keeps reading."""

    def __init__(self, greeting: bytes) -> None:
        super().__init__()
        self.greeting = greeting
        self.read_lost: defer.Deferred[None] = defer.Deferred()
        self.write_lost: defer.Deferred[None] = defer.Deferred()

    def handshakeCompleted(self) -> None:
        super().handshakeCompleted()
        self.transport.write(self.greeting)  # type: ignore[union-attr]
        self.transport.loseWriteConnection()  # type: ignore[union-attr]

    def readConnectionLost(self) -> None:
        if not self.read_lost.called:
            self.read_lost.callback(None)

    def writeConnectionLost(self) -> None:
        if not self.write_lost.called:
            self.write_lost.callback(None)


# ---------------------------------------------------------------------------
# Blocking clients, for threads
# ---------------------------------------------------------------------------

TLS_VERSIONS = {
    "1.2": ssl.TLSVersion.TLSv1_2,
    "1.3": ssl.TLSVersion.TLSv1_3,
}


def client_context(ca: Path, version: str | None = None) -> ssl.SSLContext:
    """Python's default client context, strict X.509, pinned to C{version}."""
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    if version is not None:
        ctx.minimum_version = ctx.maximum_version = TLS_VERSIONS[version]
    return ctx


def connect_tls(
    port: int,
    ctx: ssl.SSLContext,
    *,
    timeout: float = 10.0,
    server_hostname: str = "localhost",
    suppress_ragged_eofs: bool = False,
    session: ssl.SSLSession | None = None,
) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        return ctx.wrap_socket(
            raw,
            server_hostname=server_hostname,
            suppress_ragged_eofs=suppress_ragged_eofs,
            session=session,
        )
    except BaseException:
        raw.close()
        raise


def recv_exactly(sock: ssl.SSLSocket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            break
        chunks += chunk
    return bytes(chunks)


def recv_all(sock: ssl.SSLSocket) -> bytes:
    """Read until the TLS session ends cleanly (close_notify)."""
    chunks = bytearray()
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return bytes(chunks)
        chunks += chunk


def full_duplex_echo(sock: ssl.SSLSocket, payload: bytes, deadline: float) -> bytes:
    """
    Send C{payload} while reading the echo, on one non-blocking socket (an
    SSLSocket must not be used from two threads at once).  Return what came
    back once it is as long as the payload.
    """
    sock.setblocking(False)
    view = memoryview(payload)
    sent = 0
    received = bytearray()
    chunk = 65536
    while len(received) < len(payload):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"echo incomplete: sent {sent}, received {len(received)}")
        want_write = [sock] if sent < len(payload) else []
        readable, writable, _ = select.select([sock], want_write, [], min(remaining, 1.0))
        if writable:
            with contextlib.suppress(ssl.SSLWantWriteError, ssl.SSLWantReadError):
                sent += sock.send(view[sent : sent + chunk])
        if readable or sock.pending():
            while True:
                try:
                    data = sock.recv(262144)
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    break
                if not data:
                    raise ConnectionError(f"peer closed after {len(received)} echoed bytes")
                received += data
    sock.setblocking(True)
    return bytes(received)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def payload(size: int, seed: bytes = b"membio") -> bytes:
    """Deterministic, incompressible-looking bytes."""
    return random.Random(seed).randbytes(size)


def wait_for_eof(fd: int, timeout: float) -> float | None:
    """Seconds until the TCP peer closed C{fd} (reads drained), or None."""
    start = time.monotonic()
    while True:
        remaining = timeout - (time.monotonic() - start)
        if remaining <= 0:
            return None
        readable, _, _ = select.select([fd], [], [], remaining)
        if readable:
            try:
                data = os.read(fd, 65536)
            except ConnectionResetError:
                return time.monotonic() - start
            if not data:
                return time.monotonic() - start
