"""
Interoperability of `MemoryBIOTLSFactory` with real peers over loopback.

The peers are OpenSSL's ``s_client`` / ``s_server``, curl, Python's ``ssl``
module (all three on the system OpenSSL), and Twisted's own TLS layer (on
the OpenSSL bundled with pyOpenSSL).  Each test is bounded by timeouts and
cleans up its listening ports, connections and child processes through the
`harness` fixture, whatever happens.
"""

from __future__ import annotations

import random
import re
import shutil
import socket
import ssl
import struct
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet import defer, reactor, threads
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    PrivateCertificate,
    TLSVersion,
    optionsForClientTLS,
)
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure

from membio_transport import MemoryBIOTLSFactory, tls_failure_reason
from membio_transport.tls import ServerTLSOptions, server_context

from ._interop_helpers import (
    OPENSSL_MAX_CERT_LIST,
    Echo,
    Factory,
    HalfCloser,
    HashingEcho,
    HashingSink,
    PeerProcess,
    Recorder,
    ServerFiles,
    TinyHTTP,
    build_pki,
    client_context,
    connect_tls,
    full_duplex_echo,
    payload,
    recv_all,
    recv_exactly,
    sha256,
    wait_for_eof,
)

pytestmark = [
    pytest.mark.integration,
    # Twisted's CertificateOptions hands pyOpenSSL objects to pyOpenSSL.
    pytest.mark.filterwarnings("ignore:Passing pyOpenSSL:DeprecationWarning"),
]

OPENSSL = shutil.which("openssl")
CURL = shutil.which("curl")
STDBUF = shutil.which("stdbuf")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="no openssl binary")
needs_curl = pytest.mark.skipif(CURL is None, reason="no curl binary")

TLS_VERSIONS = ["1.2", "1.3"]
KEY_TYPES = ["ecdsa", "rsa"]
VERSION_NAMES = {"1.2": "TLSv1.2", "1.3": "TLSv1.3"}
S_CLIENT_FLAGS = {"1.2": "-tls1_2", "1.3": "-tls1_3"}

#: Size of the bulk transfers.
BULK = 16 * 1024 * 1024


# ---------------------------------------------------------------------------
# Fixtures and plumbing
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ServerFiles]:
    return build_pki(tmp_path_factory.mktemp("interop-pki"))


def bounded(d: defer.Deferred[Any], seconds: float, what: str = "operation") -> defer.Deferred[Any]:
    """C{d}, failing with a readable AssertionError after C{seconds}."""

    def timed_out(failure: Failure) -> Failure:
        failure.trap(defer.TimeoutError)
        return Failure(AssertionError(f"{what} did not finish within {seconds}s"))

    d.addTimeout(seconds, reactor)
    d.addErrback(timed_out)
    return d


def sleep(seconds: float) -> defer.Deferred[None]:
    d: defer.Deferred[None] = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d


class Harness:
    """Owns everything a test starts, and stops it all at teardown."""

    def __init__(self) -> None:
        self.ports: list[Any] = []
        self.factories: list[WrappingFactory] = []
        self.connectors: list[Any] = []
        self.peers: list[PeerProcess] = []

    def serve(self, tls_factory: WrappingFactory) -> int:
        port = reactor.listenTCP(0, tls_factory, interface="127.0.0.1")
        self.ports.append(port)
        self.factories.append(tls_factory)
        return int(port.getHost().port)

    def connect(self, port: int, tls_factory: WrappingFactory) -> None:
        self.factories.append(tls_factory)
        self.connectors.append(reactor.connectTCP("127.0.0.1", port, tls_factory, timeout=5))

    def spawn(self, *argv: str) -> PeerProcess:
        peer = PeerProcess(reactor)
        env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C", "HOME": "/nonexistent"}
        reactor.spawnProcess(peer, argv[0], list(argv), env=env)
        self.peers.append(peer)
        return peer

    async def close(self) -> None:
        for peer in self.peers:
            peer.close_stdin()
            peer.kill()
        for factory in self.factories:
            for proto in list(getattr(factory, "protocols", {})):
                transport = getattr(proto, "transport", None)
                if transport is not None:
                    transport.abortConnection()
        for connector in self.connectors:
            connector.disconnect()
        for port in self.ports:
            await port.stopListening()
        for peer in self.peers:
            if peer.exit_code is None:
                await bounded(peer.ended, 5, "peer process exit")
        # Let aborted connections deliver connectionLost before the next test.
        await sleep(0.01)


@pytest_twisted.async_yield_fixture
async def harness() -> Any:
    h = Harness()
    yield h
    await h.close()


def our_server(
    files: ServerFiles,
    make: Callable[[], Any],
    *,
    alpn: Sequence[bytes] = (),
    **kwargs: Any,
) -> tuple[MemoryBIOTLSFactory, Factory]:
    apps = Factory(make)
    options = ServerTLSOptions(server_context(files.cert, files.key, alpn=alpn))
    return MemoryBIOTLSFactory(options, False, apps, **kwargs), apps


def twisted_server_options(files: ServerFiles) -> CertificateOptions:
    pems = files.cert.read_bytes().split(b"-----END CERTIFICATE-----")
    certs = [Certificate.loadPEM(p + b"-----END CERTIFICATE-----\n") for p in pems if p.strip()]
    leaf = PrivateCertificate.loadPEM(certs[0].dumpPEM() + files.key.read_bytes())
    return CertificateOptions(
        privateKey=leaf.privateKey.original,
        certificate=leaf.original,
        extraCertChain=[c.original for c in certs[1:]],
    )


def client_options(
    files: ServerFiles, version: str | None = None, hostname: str = "localhost"
) -> Any:
    extra: dict[str, Any] = {}
    if version == "1.2":
        extra["lowerMaximumSecurityTo"] = TLSVersion.TLSv1_2
    elif version == "1.3":
        extra["raiseMinimumTo"] = TLSVersion.TLSv1_3
    trust = Certificate.loadPEM(files.ca_pem)
    return optionsForClientTLS(hostname, trustRoot=trust, extraCertificateOptions=extra)


def in_thread(f: Callable[..., Any], *args: Any, **kwargs: Any) -> defer.Deferred[Any]:
    return threads.deferToThread(f, *args, **kwargs)


def s_client_argv(port: int, files: ServerFiles, version: str, *extra: str) -> list[str]:
    assert OPENSSL is not None
    return [
        OPENSSL, "s_client",
        "-connect", f"127.0.0.1:{port}",
        "-CAfile", str(files.ca),
        "-verify_return_error",
        "-verify_hostname", "localhost",
        "-servername", "localhost",
        S_CLIENT_FLAGS[version],
        *extra,
    ]  # fmt: skip


# ---------------------------------------------------------------------------
# 1. Our server against openssl s_client, curl and Python's ssl
# ---------------------------------------------------------------------------


@needs_openssl
@pytest.mark.parametrize("key_type", KEY_TYPES)
@pytest.mark.parametrize("version", TLS_VERSIONS)
@pytest_twisted.ensureDeferred
async def test_server_echo_with_s_client(
    harness: Harness, pki: dict[str, ServerFiles], version: str, key_type: str
) -> None:
    files = pki[key_type]
    factory, apps = our_server(files, Echo)
    port = harness.serve(factory)
    peer = harness.spawn(*s_client_argv(port, files, version))
    await peer.wait_for(rb"Verify return code: 0 \(ok\)")
    line = f"interop echo over {version}/{key_type}\n".encode()
    peer.write(line)
    await peer.wait_for(rb"interop echo over [^\n]*\n")
    # stdin EOF makes s_client send close_notify and exit.
    peer.close_stdin()
    assert await bounded(peer.ended, 10, "s_client exit") == 0, peer.transcript()
    server = apps.instances[0]
    await bounded(server.lost, 5, "server connectionLost")
    assert bytes(server.received) == line
    assert server.version == VERSION_NAMES[version]
    assert server.servername == b"localhost"
    assert server.reason.check(ConnectionDone), server.reason
    assert peer.count(rb"interop echo over") == 1  # stdin is not echoed locally


def curl_argv(port: int, files: ServerFiles, version: str, *extra: str) -> list[str]:
    assert CURL is not None
    pin = ["--tlsv1.2", "--tls-max", "1.2"] if version == "1.2" else ["--tlsv1.3"]
    return [
        CURL, "--silent", "--show-error", "--fail", "--max-time", "10",
        "--cacert", str(files.ca),
        "--resolve", f"localhost:{port}:127.0.0.1",
        "--http1.1", "--write-out", "\\n%{http_code} %{ssl_verify_result}\\n",
        *pin, *extra,
        f"https://localhost:{port}/",
    ]  # fmt: skip


@needs_curl
@pytest.mark.parametrize("key_type", KEY_TYPES)
@pytest.mark.parametrize("version", TLS_VERSIONS)
@pytest_twisted.ensureDeferred
async def test_server_http_with_curl(
    harness: Harness, pki: dict[str, ServerFiles], version: str, key_type: str
) -> None:
    files = pki[key_type]
    factory, apps = our_server(files, TinyHTTP)
    port = harness.serve(factory)
    peer = harness.spawn(*curl_argv(port, files, version, "--verbose"))
    code = await bounded(peer.ended, 15, "curl")
    assert code == 0, peer.transcript()
    assert peer.out.startswith(b"hello from membio-transport; alpn=None\n"), peer.transcript()
    assert peer.out.endswith(b"\n200 0\n"), peer.transcript()
    assert f"SSL connection using {VERSION_NAMES[version]}".encode() in peer.err
    server = apps.instances[0]
    await bounded(server.lost, 5, "server connectionLost")
    assert server.version == VERSION_NAMES[version]
    assert bytes(server.received).startswith(b"GET / HTTP/1.1\r\nHost: localhost:")


def _python_bulk_echo(port: int, files: ServerFiles, version: str, data: bytes) -> dict[str, Any]:
    ctx = client_context(files.ca, version)
    with connect_tls(port, ctx, timeout=20) as sock:
        echoed = full_duplex_echo(sock, data, time.monotonic() + 25)
        info = {"version": sock.version(), "echo_sha": sha256(echoed), "echo_len": len(echoed)}
        # Orderly end: our close_notify, then the server's answer.
        sock.settimeout(5)
        plain = sock.unwrap()
        plain.close()
    return info


@pytest.mark.parametrize("key_type", KEY_TYPES)
@pytest.mark.parametrize("version", TLS_VERSIONS)
@pytest_twisted.ensureDeferred
async def test_server_bulk_echo_with_python_ssl(
    harness: Harness, pki: dict[str, ServerFiles], version: str, key_type: str
) -> None:
    """16 MiB up and the same 16 MiB back, at once, hashed on both sides."""
    files = pki[key_type]
    data = payload(BULK)
    factory, apps = our_server(files, lambda: HashingEcho(BULK))
    port = harness.serve(factory)
    info = await bounded(
        in_thread(_python_bulk_echo, port, files, version, data), 40, "python bulk echo"
    )
    assert info == {"version": VERSION_NAMES[version], "echo_sha": sha256(data), "echo_len": BULK}
    server = apps.instances[0]
    assert await bounded(server.done, 5, "server hash") == sha256(data)
    await bounded(server.lost, 5, "server connectionLost")
    assert server.count == BULK
    assert server.reason.check(ConnectionDone), server.reason


SERVER_OPTIONS: dict[str, Callable[[ServerFiles], Any]] = {
    "server_context": lambda f: ServerTLSOptions(server_context(f.cert, f.key)),
    "CertificateOptions": twisted_server_options,
    "PrivateCertificate.options": lambda f: PrivateCertificate.loadPEM(
        f.cert.read_bytes() + f.key.read_bytes()
    ).options(),
}


@pytest.mark.parametrize("options", sorted(SERVER_OPTIONS))
@pytest.mark.parametrize("version", TLS_VERSIONS)
@pytest_twisted.ensureDeferred
async def test_server_accepts_twisted_options(
    harness: Harness, pki: dict[str, ServerFiles], version: str, options: str
) -> None:
    """Our factory takes the server options Twisted applications already have."""
    files = pki["rsa"]
    apps = Factory(Echo)
    factory = MemoryBIOTLSFactory(SERVER_OPTIONS[options](files), False, apps)
    port = harness.serve(factory)
    result = await bounded(in_thread(python_echo_once, port, files, version), 10, "python")
    assert result == VERSION_NAMES[version]
    server = apps.instances[0]
    await bounded(server.lost, 5, "server connectionLost")
    assert server.reason.check(ConnectionDone), server.reason


# ---------------------------------------------------------------------------
# 2. Our client against openssl s_server and Twisted's own server
# ---------------------------------------------------------------------------


def s_server_argv(files: ServerFiles, version: str, *extra: str) -> list[str]:
    assert OPENSSL is not None
    return [
        OPENSSL, "s_server",
        "-accept", "127.0.0.1:0",
        "-naccept", "1",
        "-cert", str(files.cert),
        "-key", str(files.key),
        S_CLIENT_FLAGS[version],
        *extra,
    ]  # fmt: skip


async def start_s_server(
    harness: Harness, files: ServerFiles, version: str, *extra: str
) -> tuple[PeerProcess, int]:
    argv = s_server_argv(files, version, *extra)
    if STDBUF is not None:
        # s_server reports its commands with printf(): unbuffer stdout so
        # that the reports arrive when they happen.
        argv = [STDBUF, "-o0", *argv]
    peer = harness.spawn(*argv)
    [match] = await peer.wait_for(rb"ACCEPT 127\.0\.0\.1:(\d+)\n")
    return peer, int(match.group(1))


class HTTPGet(Recorder):
    """Sends a GET as soon as it is connected: it waits for the handshake."""

    def connectionMade(self) -> None:
        super().connectionMade()
        self.transport.write(b"GET / HTTP/1.0\r\n\r\n")  # type: ignore[union-attr]


@needs_openssl
@pytest.mark.parametrize("key_type", KEY_TYPES)
@pytest.mark.parametrize("version", TLS_VERSIONS)
@pytest_twisted.ensureDeferred
async def test_client_with_s_server_www(
    harness: Harness, pki: dict[str, ServerFiles], version: str, key_type: str
) -> None:
    files = pki[key_type]
    peer, port = await start_s_server(harness, files, version, "-www")
    apps = Factory(HTTPGet)
    harness.connect(port, MemoryBIOTLSFactory(client_options(files), True, apps))
    client = await bounded(apps.built, 5, "client connection")
    await bounded(client.lost, 10, "s_server response")
    assert client.version == VERSION_NAMES[version]
    response = bytes(client.received)
    assert response.startswith(b"HTTP/1.0 200 ok\r\n"), response[:200]
    assert f"Protocol  : {VERSION_NAMES[version]}".encode() in response, response
    assert response.rstrip().endswith(b"</BODY></HTML>"), response[-200:]
    # s_server -www ends its answer with close_notify.
    assert client.reason.check(ConnectionDone), client.reason
    assert await bounded(peer.ended, 5, "s_server exit") == 0, peer.transcript()


@needs_openssl
@pytest.mark.parametrize("version", TLS_VERSIONS)
@pytest_twisted.ensureDeferred
async def test_client_alpn_and_big_chain_with_s_server(
    harness: Harness, pki: dict[str, ServerFiles], version: str, tmp_path: Path
) -> None:
    """
    Our client takes a server flight of over 100 KiB (s_server sends the
    padded intermediates) and negotiates ALPN through optionsForClientTLS.
    """
    files = pki["big-chain"]
    leaf, intermediates = split_chain(files, tmp_path)
    _peer, port = await start_s_server(
        harness, files, version, "-cert", str(leaf), "-cert_chain", str(intermediates),
        "-alpn", "http/1.1", "-www",
    )  # fmt: skip
    options = optionsForClientTLS(
        "localhost",
        trustRoot=Certificate.loadPEM(files.ca_pem),
        acceptableProtocols=[b"h2", b"http/1.1"],
    )
    apps = Factory(HTTPGet)
    harness.connect(port, MemoryBIOTLSFactory(options, True, apps))
    client = await bounded(apps.built, 5, "client connection")
    await bounded(client.lost, 10, "s_server response")
    assert client.version == VERSION_NAMES[version]
    assert client.negotiated == b"http/1.1"
    assert bytes(client.received).startswith(b"HTTP/1.0 200 ok\r\n")
    assert client.reason.check(ConnectionDone), client.reason


def split_chain(files: ServerFiles, directory: Path) -> tuple[Path, Path]:
    """s_server wants the leaf and the intermediates in separate files."""
    end = b"-----END CERTIFICATE-----\n"
    pems = [p + end for p in files.cert.read_bytes().split(end) if p.strip()]
    leaf = directory / f"{files.name}-leaf-only.pem"
    rest = directory / f"{files.name}-intermediates.pem"
    leaf.write_bytes(pems[0])
    rest.write_bytes(b"".join(pems[1:]))
    return leaf, rest


class BulkSender(HashingSink):
    """Sends C{data} once the handshake is done; expects it echoed back."""

    def __init__(self, data: bytes) -> None:
        super().__init__(len(data))
        self.data = data

    def handshakeCompleted(self) -> None:
        super().handshakeCompleted()
        view = memoryview(self.data)
        for offset in range(0, len(self.data), 1 << 20):
            self.transport.write(view[offset : offset + (1 << 20)])  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        if self.count >= self.expected:
            self.transport.loseConnection()  # type: ignore[union-attr]


@pytest.mark.parametrize("version", TLS_VERSIONS)
@pytest_twisted.ensureDeferred
async def test_client_bulk_echo_with_twisted_server(
    harness: Harness, pki: dict[str, ServerFiles], version: str
) -> None:
    files = pki["ecdsa"]
    data = payload(BULK, b"client bulk")
    servers = Factory(lambda: HashingEcho(BULK))
    port = harness.serve(TLSMemoryBIOFactory(twisted_server_options(files), False, servers))
    apps = Factory(lambda: BulkSender(data))
    harness.connect(port, MemoryBIOTLSFactory(client_options(files, version), True, apps))
    client = await bounded(apps.built, 5, "client connection")
    assert await bounded(client.done, 40, "16 MiB echo") == sha256(data)
    await bounded(client.lost, 10, "client connectionLost")
    assert client.version == VERSION_NAMES[version]
    assert client.count == BULK
    assert client.reason.check(ConnectionDone), client.reason
    server = servers.instances[0]
    assert await bounded(server.done, 5, "server hash") == sha256(data)
    await bounded(server.lost, 5, "server connectionLost")
    assert server.reason.check(ConnectionDone), server.reason


# ---------------------------------------------------------------------------
# 3. Certificate and host name verification on the client side
# ---------------------------------------------------------------------------

LAYERS = {"membio": MemoryBIOTLSFactory, "twisted": TLSMemoryBIOFactory}


class EagerWriter(Recorder):
    """Writes a secret before the handshake: it must never reach the server."""

    def connectionMade(self) -> None:
        super().connectionMade()
        self.transport.write(b"secret sent before verification\n")  # type: ignore[union-attr]


async def _failed_verification(
    harness: Harness, pki: dict[str, ServerFiles], layer: str, identity: str
) -> tuple[Recorder, Recorder]:
    files = pki[identity]
    servers = Factory(Recorder)
    port = harness.serve(
        MemoryBIOTLSFactory(ServerTLSOptions(server_context(files.cert, files.key)), False, servers)
    )
    apps = Factory(EagerWriter)
    harness.connect(port, LAYERS[layer](client_options(files), True, apps))
    client = await bounded(apps.built, 5, "client connection")
    await bounded(client.lost, 10, "client connectionLost")
    server = await bounded(servers.built, 5, "server connection")
    await bounded(server.lost, 10, "server connectionLost")
    assert not client.handshake.called
    assert not server.handshake.called
    assert bytes(server.received) == b""
    return client, server


@pytest.mark.parametrize("layer", sorted(LAYERS))
@pytest_twisted.ensureDeferred
async def test_client_rejects_wrong_host_name(
    harness: Harness, pki: dict[str, ServerFiles], layer: str
) -> None:
    """
    The certificate chains to a trusted root but names another host: both
    layers report service_identity's VerificationError, and both hang up
    from inside the verification callback, before any alert goes out.
    """
    client, server = await _failed_verification(harness, pki, layer, "wrong-name")
    assert client.reason.check(VerificationError), client.reason
    assert "DNSMismatch" in str(client.reason.value)
    assert server.reason.check(ConnectionLost), server.reason


@pytest.mark.parametrize("layer", sorted(LAYERS))
@pytest_twisted.ensureDeferred
async def test_client_rejects_untrusted_ca(
    harness: Harness, pki: dict[str, ServerFiles], layer: str
) -> None:
    """An unknown issuer: OpenSSL's error for both layers, an alert for the server."""
    client, server = await _failed_verification(harness, pki, layer, "untrusted")
    assert client.reason.check(SSL.Error), client.reason
    assert "certificate verify failed" in str(client.reason.value), client.reason
    assert server.reason.check(SSL.Error), server.reason
    assert "unknown ca" in str(server.reason.value), server.reason


@pytest.mark.parametrize("layer", sorted(LAYERS))
@pytest_twisted.ensureDeferred
async def test_client_verifies_ip_address(
    harness: Harness, pki: dict[str, ServerFiles], layer: str
) -> None:
    """optionsForClientTLS("127.0.0.1") checks the certificate's IP address."""
    files = pki["ecdsa"]
    factory, servers = our_server(files, Echo)
    port = harness.serve(factory)
    apps = Factory(HTTPGet)
    harness.connect(port, LAYERS[layer](client_options(files, hostname="127.0.0.1"), True, apps))
    client = await bounded(apps.built, 5, "client connection")
    await bounded(client.handshake, 5, "handshake")
    server = await bounded(servers.built, 5, "server connection")
    await bounded(server.handshake, 5, "server handshake")
    assert server.servername is None  # no SNI for an IP address
    client.transport.loseConnection()
    await bounded(client.lost, 5, "client connectionLost")
    assert client.received == b"GET / HTTP/1.0\r\n\r\n"
    assert client.reason.check(ConnectionDone), client.reason


# ---------------------------------------------------------------------------
# 4. TLS 1.3 KeyUpdate in the middle of a transfer
# ---------------------------------------------------------------------------

#: Lines of the interactive transfers.  They never start with a letter that
#: s_client or s_server read as a command (Q q R r K k P S), and a batch fits
#: in one atomic pipe write, so each batch reaches the peer in one read().
LINE = b"line %04d %s\n"
LINE_RE = rb"line \d{4} [0-9a-f]+\n"
LINES_PER_BATCH = 40


def batch(index: int) -> list[bytes]:
    first = index * LINES_PER_BATCH
    return [
        LINE % (n, sha256(b"%d" % n)[:48].encode()) for n in range(first, first + LINES_PER_BATCH)
    ]


def extract_lines(output: bytes, *noise: bytes) -> list[bytes]:
    """
    The transfer's lines in a peer's stdout, once the peer's own reports
    (C{noise}), which may land in the middle of a line, are taken out.
    """
    for report in noise:
        output = output.replace(report, b"")
    return re.findall(LINE_RE, output)


async def drive_batches(
    peer: PeerProcess,
    batches: int,
    command: bytes,
    command_done: bytes,
    command_stream: str,
    batch_seen: Callable[[int], defer.Deferred[Any]],
) -> list[bytes]:
    """
    Write C{batches} batches of lines on the peer's stdin; after each batch
    but the last has started to come back, type C{command} alone and wait
    for the peer to acknowledge it (C{command_done} on C{command_stream})
    before the next batch, so that the command is read on its own.

    A batch always follows the last command: OpenSSL may answer a KeyUpdate
    request only along with its next application data (RFC 8446 allows
    that), and the answer must be seen too.
    """
    sent: list[bytes] = []
    for index in range(batches):
        lines = batch(index)
        chunk = b"".join(lines)
        assert len(chunk) <= 4096  # PIPE_BUF: one atomic write
        peer.write(chunk)
        sent += lines
        if index == batches - 1:
            break
        # The peer has read this batch once some of it made the round trip;
        # the rest may still be in flight while the command runs.
        await batch_seen(index * LINES_PER_BATCH + 1)
        peer.write(command)
        await peer.wait_for(command_done, command_stream, count=index + 1)
    return sent


@needs_openssl
@pytest_twisted.ensureDeferred
async def test_key_update_from_s_client(
    harness: Harness, pki: dict[str, ServerFiles], tmp_path: Path
) -> None:
    """
    s_client sends lines to our echo server and, between batches, a
    KeyUpdate requesting ours ("K"); every line comes back once, in order.
    """
    files = pki["ecdsa"]
    factory, apps = our_server(files, Echo)
    port = harness.serve(factory)
    trace = tmp_path / "s_client.msg"
    # Neither -quiet nor -ign_eof: both disable the command letters.
    peer = harness.spawn(*s_client_argv(port, files, "1.3", "-msg", "-msgfile", str(trace)))
    await peer.wait_for(rb"Verify return code: 0 \(ok\)")
    sent = await drive_batches(
        peer,
        13,
        b"K\n",
        rb"KEYUPDATE\n",
        "err",
        lambda n: peer.wait_for(LINE_RE, count=n),
    )
    await peer.wait_for(re.escape(sent[-1]))
    peer.close_stdin()
    assert await bounded(peer.ended, 10, "s_client exit") == 0, peer.transcript()
    server = apps.instances[0]
    await bounded(server.lost, 5, "server connectionLost")
    assert extract_lines(bytes(peer.out)) == sent
    assert bytes(server.received) == b"".join(sent)
    assert server.reason.check(ConnectionDone), server.reason
    assert handshake_messages(trace, ">>>", "KeyUpdate") == 12
    assert handshake_messages(trace, "<<<", "KeyUpdate") == 12


class LineCounter(Recorder):
    """Keeps what it receives and can wait for a number of whole lines."""

    def __init__(self) -> None:
        super().__init__()
        self.waiters: list[tuple[int, defer.Deferred[None]]] = []

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        lines = self.received.count(b"\n")
        ready = [w for w in self.waiters if w[0] <= lines]
        self.waiters = [w for w in self.waiters if w[0] > lines]
        for _, d in ready:
            d.callback(None)

    def wait_lines(self, count: int) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()
        if self.received.count(b"\n") >= count:
            d.callback(None)
        else:
            self.waiters.append((count, d))
        return bounded(d, 10, f"{count} lines")


class LineEcho(LineCounter):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]
        super().dataReceived(data)


@needs_openssl
@pytest.mark.skipif(STDBUF is None, reason="no stdbuf to unbuffer s_server")
@pytest_twisted.ensureDeferred
async def test_key_update_from_s_server(
    harness: Harness, pki: dict[str, ServerFiles], tmp_path: Path
) -> None:
    """
    s_server sends lines to our echoing client and, between batches, a
    KeyUpdate requesting ours ("K"); every line arrives once, in order, and
    every echo makes it back.
    """
    files = pki["ecdsa"]
    trace = tmp_path / "s_server.msg"
    peer, port = await start_s_server(harness, files, "1.3", "-msg", "-msgfile", str(trace))
    apps = Factory(LineEcho)
    harness.connect(port, MemoryBIOTLSFactory(client_options(files), True, apps))
    client = await bounded(apps.built, 5, "client connection")
    await bounded(client.handshake, 5, "handshake")
    sent = await drive_batches(
        peer,
        13,
        b"K\n",
        rb"SSL_do_handshake -> 1\n",
        "out",
        client.wait_lines,
    )
    await peer.wait_for(re.escape(sent[-1]))
    client.transport.loseConnection()
    await bounded(client.lost, 5, "client connectionLost")
    assert bytes(client.received) == b"".join(sent)
    assert extract_lines(bytes(peer.out), b"SSL_do_handshake -> 1\n") == sent
    assert client.reason.check(ConnectionDone), client.reason
    assert await bounded(peer.ended, 5, "s_server exit") == 0, peer.transcript()
    assert handshake_messages(trace, ">>>", "KeyUpdate") == 12
    assert handshake_messages(trace, "<<<", "KeyUpdate") == 12


# ---------------------------------------------------------------------------
# 5. TLS 1.2 renegotiation
# ---------------------------------------------------------------------------


@needs_openssl
@pytest_twisted.ensureDeferred
async def test_client_initiated_renegotiation_refused(
    harness: Harness, pki: dict[str, ServerFiles], tmp_path: Path
) -> None:
    files = pki["ecdsa"]
    factory, apps = our_server(files, Echo)
    port = harness.serve(factory)
    trace = tmp_path / "s_client.msg"
    peer = harness.spawn(*s_client_argv(port, files, "1.2", "-msg", "-msgfile", str(trace)))
    await peer.wait_for(rb"Verify return code: 0 \(ok\)")
    before = batch(0)[0]
    peer.write(before)
    await peer.wait_for(re.escape(before))
    peer.write(b"R\n")
    await peer.wait_for(rb"RENEGOTIATING\n", "err")
    # Our server answers the new ClientHello with a no_renegotiation warning;
    # OpenSSL's client takes that as fatal and aborts the connection.
    code = await bounded(peer.ended, 10, "s_client exit")
    assert code != 0, peer.transcript()
    assert b"no renegotiation" in peer.err, peer.transcript()
    server = apps.instances[0]
    await bounded(server.lost, 5, "server connectionLost")
    assert bytes(server.received) == before
    assert server.reason.check(SSL.Error), server.reason
    assert "handshake failure" in str(server.reason.value)
    assert handshake_messages(trace, ">>>", "ClientHello") == 2
    assert handshake_messages(trace, "<<<", "ServerHello") == 1
    text = trace.read_text()
    assert "<<< TLS 1.2, Alert [length 0002], warning no_renegotiation" in text
    assert ">>> TLS 1.2, Alert [length 0002], fatal handshake_failure" in text
    # The server lives on.
    assert await bounded(in_thread(python_echo_once, port, files), 10, "echo") == "TLSv1.3"


def python_echo_once(port: int, files: ServerFiles, version: str | None = None) -> str:
    """One line through an echo server with Python's ssl, closed cleanly."""
    with connect_tls(port, client_context(files.ca, version)) as sock:
        sock.sendall(b"are you still there?\n")
        assert recv_exactly(sock, 21) == b"are you still there?\n"
        result = sock.version()
        sock.unwrap().close()
    assert result is not None
    return result


@needs_openssl
@pytest.mark.skipif(STDBUF is None, reason="no stdbuf to unbuffer s_server")
@pytest_twisted.ensureDeferred
async def test_server_initiated_renegotiation_while_receiving(
    harness: Harness, pki: dict[str, ServerFiles], tmp_path: Path
) -> None:
    """
    s_server streams lines to our client and renegotiates ("r") between
    batches, while the previous batch is still arriving: every line arrives
    once, in order, and our client can still write afterwards.
    """
    files = pki["ecdsa"]
    trace = tmp_path / "s_server.msg"
    # No session cache, no tickets: every renegotiation is a full handshake.
    peer, port = await start_s_server(
        harness, files, "1.2", "-no_cache", "-no_ticket", "-msg", "-msgfile", str(trace)
    )
    apps = Factory(LineCounter)
    harness.connect(port, MemoryBIOTLSFactory(client_options(files), True, apps))
    client = await bounded(apps.built, 5, "client connection")
    await bounded(client.handshake, 5, "handshake")
    sent = await drive_batches(
        peer,
        13,
        b"r\n",
        rb"SSL_do_handshake -> 1\n",
        "out",
        client.wait_lines,
    )
    await client.wait_lines(len(sent))
    # s_server sent the last batch right behind its last HelloRequest, so
    # that renegotiation may still be running.  Writing (or closing) while
    # it runs is another test's business: wait until it is over.
    connection = client.transport.getHandle()
    await wait_until(lambda: connection.get_state_string() == HANDSHAKE_DONE, 5, "renegotiation")
    renegotiations = connection.total_renegotiations()
    client.transport.write(b"line 9999 all received\n")
    await peer.wait_for(rb"line 9999 all received\n")
    client.transport.loseConnection()
    await bounded(client.lost, 5, "client connectionLost")
    assert bytes(client.received) == b"".join(sent)
    assert client.reason.check(ConnectionDone), client.reason
    assert await bounded(peer.ended, 5, "s_server exit") == 0, peer.transcript()
    assert renegotiations == 12
    assert handshake_messages(trace, ">>>", "HelloRequest") == 12
    assert handshake_messages(trace, "<<<", "ClientHello") == 13
    assert handshake_messages(trace, ">>>", "Certificate") == 13


#: What OpenSSL's SSL_state_string_long says between handshakes.
HANDSHAKE_DONE = b"SSL negotiation finished successfully"


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout}s")
        await sleep(0.01)


def renegotiating_server(
    listener: socket.socket, files: ServerFiles, rounds: int
) -> dict[str, Any]:
    """
    A bare pyOpenSSL TLS 1.2 server, blocking, for a thread: for each round
    it starts a renegotiation (HelloRequest) and at once sends a batch of
    lines, so they reach the client while it renegotiates, then reads the
    echo of that batch.  Every renegotiation is a full handshake.
    """
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_max_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    ctx.set_options(SSL.OP_NO_TICKET)
    ctx.use_certificate_chain_file(str(files.cert))
    ctx.use_privatekey_file(str(files.key))
    listener.settimeout(10)
    sock, _ = listener.accept()
    with sock:
        sock.setblocking(True)
        # Bound every blocking read: OpenSSL then sees EAGAIN (WantReadError).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 10, 0))
        conn = SSL.Connection(ctx, sock)
        conn.set_accept_state()
        conn.do_handshake()
        sent: list[bytes] = []
        echoed = bytearray()
        for index in range(rounds):
            assert conn.renegotiate()
            conn.do_handshake()  # sends the HelloRequest; does not wait
            lines = batch(index)
            # One record per line: the client gets (and echoes) them one by
            # one, so several writes queue up behind the renegotiation.
            for line in lines:
                conn.sendall(line)
            sent += lines
            while len(echoed) < sum(map(len, sent)):
                echoed += conn.recv(65536)
        result = {
            "sent": sent,
            "echoed": bytes(echoed),
            "renegotiations": conn.total_renegotiations(),
            "version": conn.get_protocol_version_name(),
        }
        conn.shutdown()
    return result


@pytest_twisted.ensureDeferred
async def test_client_writes_during_server_initiated_renegotiation(
    harness: Harness, pki: dict[str, ServerFiles]
) -> None:
    """
    Our client echoes lines that arrive right behind a HelloRequest: its
    writes happen while the renegotiation it started is waiting for the
    ServerHello (OpenSSL's SSL_write says WantRead), so they must wait and
    go out, unchanged and in order, once the handshake is done.
    """
    files = pki["ecdsa"]
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        port = listener.getsockname()[1]
        server = in_thread(renegotiating_server, listener, files, 8)
        apps = Factory(LineEcho)
        harness.connect(port, MemoryBIOTLSFactory(client_options(files), True, apps))
        client = await bounded(apps.built, 5, "client connection")
        result = await bounded(server, 15, "renegotiating server")
    finally:
        listener.close()
    await bounded(client.lost, 5, "client connectionLost")
    expected = b"".join(result["sent"])
    assert result["version"] == "TLSv1.2"
    assert result["renegotiations"] == 8
    assert bytes(client.received) == expected
    assert result["echoed"] == expected
    assert client.transport.getHandle().total_renegotiations() == 8
    assert client.reason.check(ConnectionDone), client.reason


def handshake_messages(trace: Path, direction: str, message: str) -> int:
    """How many C{message}s an -msg trace shows going C{direction} (>>> or <<<)."""
    pattern = rf"{direction} TLS 1\.[23], Handshake \[length [0-9a-f]+\], {message}\n"
    return len(re.findall(pattern.encode(), trace.read_bytes()))


# ---------------------------------------------------------------------------
# 6. Peers that do not speak TLS
# ---------------------------------------------------------------------------

#: What the server is sent, a regex for all it answers ("{port}" is the
#: server's port), and the reason its wrapped protocol is given.
GARBAGE = {
    # Bytes that cannot start TLS (nor HTTP): closed at once, no answer.
    "random": (b"\x00" + random.Random(5095).randbytes(1023), rb"", "not TLS"),
    # A first byte with the high bit set may be an SSLv2-style ClientHello,
    # so OpenSSL gets to judge; it closes without an alert.
    "sslv2-like": (b"\x99" + random.Random(7926).randbytes(1023), rb"", "wrong version number"),
    # Plain HTTP: answered in plain HTTP with a 400 naming the https URL.
    "http": (
        b"GET / HTTP/1.1\r\nHost: localhost:{port}\r\nUser-Agent: interop\r\n\r\n",
        rb"HTTP/1\.1 400 .*\r\n\r\n.*https://localhost:{port}/.*",
        "plain HTTP on the TLS port",
    ),
    # A handshake record whose body is no ClientHello: a fatal
    # unexpected_message alert (level 2, description 10) from OpenSSL.
    "bad-handshake": (
        b"\x16\x03\x01\x00\x40" + bytes(range(64)),
        re.escape(b"\x15\x03\x03\x00\x02\x02\x0a"),
        "unexpected message",
    ),
}


def send_garbage(port: int, data: bytes) -> bytes:
    """Send C{data}, then return everything the server sends until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        answer = bytearray()
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            answer += chunk
    return bytes(answer)


@pytest.mark.parametrize("kind", sorted(GARBAGE))
@pytest_twisted.ensureDeferred
async def test_server_rejects_garbage(
    harness: Harness, pki: dict[str, ServerFiles], kind: str
) -> None:
    files = pki["ecdsa"]
    garbage, expected_answer, expected_reason = GARBAGE[kind]
    factory, apps = our_server(files, Echo)
    port = harness.serve(factory)
    garbage = garbage.replace(b"{port}", b"%d" % port)
    answer = await bounded(in_thread(send_garbage, port, garbage), 10, "server verdict")
    server = apps.instances[0]
    await bounded(server.lost, 5, "server connectionLost")
    assert re.fullmatch(expected_answer.replace(b"{port}", b"%d" % port), answer, re.S), answer
    assert server.reason.check(SSL.Error), server.reason
    assert expected_reason in str(server.reason.value)
    assert not server.handshake.called
    assert bytes(server.received) == b""
    # The server lives on.
    assert await bounded(in_thread(python_echo_once, port, files), 10, "echo") == "TLSv1.3"


def corrupt_record_after_handshake(port: int, files: ServerFiles, version: str) -> bytes:
    """
    Complete a handshake (Python's ssl over memory BIOs on a plain socket),
    then send an application-data record whose ciphertext is random: return
    what the server answers until it closes.
    """
    ctx = client_context(files.ca, version)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                sock.sendall(outgoing.read())
                data = sock.recv(65536)
                if not data:
                    raise ConnectionError("server closed during the handshake") from None
                incoming.write(data)
        sock.sendall(outgoing.read())
        body = random.Random(1).randbytes(64)
        sock.sendall(b"\x17\x03\x03" + len(body).to_bytes(2, "big") + body)
        answer = bytearray()
        while chunk := sock.recv(65536):
            answer += chunk
    incoming.write(bytes(answer))
    try:
        while tls.read(65536):
            pass
    except ssl.SSLError as e:
        return str(e).encode()
    return b"no alert"


async def _corrupt_record(
    harness: Harness, pki: dict[str, ServerFiles], version: str
) -> tuple[bytes, Recorder]:
    files = pki["ecdsa"]
    factory, apps = our_server(files, Echo)
    port = harness.serve(factory)
    verdict = await bounded(
        in_thread(corrupt_record_after_handshake, port, files, version), 10, "client"
    )
    server = apps.instances[0]
    await bounded(server.lost, 5, "server connectionLost")
    assert server.handshake.called
    # The server lives on.
    assert await bounded(in_thread(python_echo_once, port, files), 10, "echo") == "TLSv1.3"
    return verdict, server


@pytest.mark.parametrize("version", TLS_VERSIONS)
@pytest_twisted.ensureDeferred
async def test_server_rejects_corrupt_record_after_handshake(
    harness: Harness, pki: dict[str, ServerFiles], version: str
) -> None:
    verdict, server = await _corrupt_record(harness, pki, version)
    # The alert our server sent, as the client's OpenSSL reads it.
    assert b"BAD_RECORD_MAC" in verdict.upper(), verdict
    assert server.reason.check(SSL.Error), server.reason
    queue = server.reason.value.args[0]
    assert any("bad record mac" in entry[2] for entry in queue), queue


@pytest_twisted.ensureDeferred
async def test_corrupt_record_reason_names_the_cause(
    harness: Harness, pki: dict[str, ServerFiles]
) -> None:
    """The reason logged and shown for the failure says what went wrong."""
    _verdict, server = await _corrupt_record(harness, pki, "1.3")
    assert type(server.reason.value) is SSL.Error, "pyOpenSSL's own, as with Twisted's layer"
    assert "bad record mac" in tls_failure_reason(server.reason)


def silent_client(port: int, partial: bytes, timeout: float) -> float | None:
    """Connect, send C{partial} and nothing more: seconds until the server hangs up."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(partial)
        return wait_for_eof(sock.fileno(), timeout)


@pytest.mark.parametrize(
    "partial",
    [b"", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"],
    ids=["nothing", "part-of-a-client-hello"],
)
@pytest_twisted.ensureDeferred
async def test_server_handshake_timeout(
    harness: Harness, pki: dict[str, ServerFiles], partial: bytes
) -> None:
    """A peer that never finishes its ClientHello is dropped after handshake_timeout."""
    files = pki["ecdsa"]
    factory, apps = our_server(files, Echo, handshake_timeout=0.5)
    port = harness.serve(factory)
    waited = await bounded(in_thread(silent_client, port, partial, 5.0), 10, "client")
    assert waited is not None and 0.3 < waited < 4.0, waited
    server = apps.instances[0]
    await bounded(server.lost, 5, "server connectionLost")
    assert server.reason.check(SSL.Error), server.reason
    assert "handshake timeout" in str(server.reason.value), server.reason


# ---------------------------------------------------------------------------
# 7. ALPN
# ---------------------------------------------------------------------------

ALPN = (b"h2", b"http/1.1")


@needs_curl
@pytest_twisted.ensureDeferred
async def test_alpn_with_curl(harness: Harness, pki: dict[str, ServerFiles]) -> None:
    files = pki["ecdsa"]
    factory, apps = our_server(files, TinyHTTP, alpn=ALPN)
    port = harness.serve(factory)
    # --http1.1 makes curl offer http/1.1 alone.
    peer = harness.spawn(*curl_argv(port, files, "1.3", "--verbose"))
    assert await bounded(peer.ended, 15, "curl") == 0, peer.transcript()
    assert peer.out.startswith(b"hello from membio-transport; alpn=b'http/1.1'\n"), (
        peer.transcript()
    )
    assert b"ALPN: server accepted http/1.1" in peer.err, peer.transcript()
    assert apps.instances[0].negotiated == b"http/1.1"


def python_alpn(port: int, files: ServerFiles, offered: list[str]) -> str | None:
    ctx = client_context(files.ca)
    ctx.set_alpn_protocols(offered)
    with connect_tls(port, ctx) as sock:
        selected = sock.selected_alpn_protocol()
        sock.unwrap().close()
    return selected


@pytest.mark.parametrize(
    ("offered", "expected"),
    [
        (["http/1.1"], b"http/1.1"),
        (["http/1.1", "h2"], b"h2"),  # the server's preference wins
        (["spdy/3", "imap"], None),  # no overlap: the handshake goes on without ALPN
    ],
)
@pytest_twisted.ensureDeferred
async def test_alpn_with_python_ssl(
    harness: Harness, pki: dict[str, ServerFiles], offered: list[str], expected: bytes | None
) -> None:
    files = pki["ecdsa"]
    factory, apps = our_server(files, Recorder, alpn=ALPN)
    port = harness.serve(factory)
    selected = await bounded(in_thread(python_alpn, port, files, offered), 10, "python client")
    server = apps.instances[0]
    await bounded(server.lost, 5, "server connectionLost")
    assert selected == (expected.decode() if expected else None)
    assert server.negotiated == expected
    assert server.reason.check(ConnectionDone), server.reason


# ---------------------------------------------------------------------------
# 8. A certificate chain of 100 KiB (twisted#5095)
# ---------------------------------------------------------------------------


class CountingProtocol(ProtocolWrapper):
    """Counts the bytes the TLS layer above it writes to TCP."""

    def write(self, data: bytes) -> None:
        self.factory.written += len(data)
        super().write(data)

    def writeSequence(self, data: Sequence[bytes]) -> None:
        self.write(b"".join(data))


class CountingFactory(WrappingFactory):
    protocol = CountingProtocol

    def __init__(self, wrapped: Any) -> None:
        super().__init__(wrapped)
        self.written = 0


class FlightEcho(Echo):
    """An echo that notes how many bytes its server had sent at handshake end."""

    flight: int | None = None

    def handshakeCompleted(self) -> None:
        super().handshakeCompleted()
        # Our whole first flight, not yet the last Finished nor any ticket.
        self.flight = self.factory.counter.written


def big_chain_server(files: ServerFiles) -> tuple[CountingFactory, Factory]:
    factory, apps = our_server(files, FlightEcho)
    counting = CountingFactory(factory)
    apps.counter = counting  # type: ignore[attr-defined]
    return counting, apps


def test_big_chain_is_big(pki: dict[str, ServerFiles]) -> None:
    files = pki["big-chain"]
    assert len(files.chain_der) == 5
    for tls13 in (False, True):
        size = files.certificate_message_size(tls13)
        # As large as OpenSSL clients accept by default, and no larger.
        assert OPENSSL_MAX_CERT_LIST - 200 < size <= OPENSSL_MAX_CERT_LIST


@needs_openssl
@pytest.mark.parametrize("version", TLS_VERSIONS)
@pytest_twisted.ensureDeferred
async def test_big_chain_with_s_client(
    harness: Harness, pki: dict[str, ServerFiles], version: str
) -> None:
    files = pki["big-chain"]
    counting, apps = big_chain_server(files)
    port = harness.serve(counting)
    peer = harness.spawn(*s_client_argv(port, files, version))
    await peer.wait_for(rb"Verify return code: 0 \(ok\)")
    [read] = await peer.wait_for(rb"SSL handshake has read (\d+) bytes")
    peer.write(b"line 0000 through a long chain\n")
    await peer.wait_for(rb"line 0000 through a long chain\n")
    peer.close_stdin()
    assert await bounded(peer.ended, 10, "s_client exit") == 0, peer.transcript()
    server = apps.instances[0]
    await bounded(server.lost, 5, "server connectionLost")
    assert server.version == VERSION_NAMES[version]
    assert server.flight > 100 * 1024, server.flight
    assert int(read.group(1)) > 100 * 1024
    assert peer.count(rb"depth=\d", "err") == 6  # root, four intermediates, leaf


@pytest.mark.parametrize("version", TLS_VERSIONS)
@pytest_twisted.ensureDeferred
async def test_big_chain_with_python_ssl(
    harness: Harness, pki: dict[str, ServerFiles], version: str
) -> None:
    files = pki["big-chain"]
    counting, apps = big_chain_server(files)
    port = harness.serve(counting)
    result = await bounded(in_thread(python_echo_once, port, files, version), 10, "python")
    assert result == VERSION_NAMES[version]
    server = apps.instances[0]
    await bounded(server.lost, 5, "server connectionLost")
    assert server.flight > 100 * 1024, server.flight


def python_handshake(port: int, files: ServerFiles, version: str, timeout: float) -> str:
    """'completed' or 'timed out': how a handshake with C{timeout} ends."""
    try:
        with connect_tls(port, client_context(files.ca, version), timeout=timeout):
            return "completed"
    except TimeoutError:
        return "timed out"


@pytest.mark.parametrize("version", TLS_VERSIONS)
@pytest_twisted.ensureDeferred
async def test_big_chain_stalls_twisted(
    harness: Harness, pki: dict[str, ServerFiles], version: str
) -> None:
    """
    The known defect this package fixes (twisted#5095): Twisted's layer
    reads at most 32 KiB from OpenSSL's outgoing BIO per event, so a server
    flight larger than that is never sent in full and the handshake hangs.
    """
    files = pki["big-chain"]
    counting = CountingFactory(
        TLSMemoryBIOFactory(twisted_server_options(files), False, Factory(Echo))
    )
    port = harness.serve(counting)
    outcome = await bounded(in_thread(python_handshake, port, files, version, 2.0), 10, "python")
    assert outcome == "timed out"
    # Twisted sent part of the flight (32 KiB per event), never all of it.
    assert 0 < counting.written < files.certificate_message_size(version == "1.3")


# ---------------------------------------------------------------------------
# 9. close_notify, close timeout and half-close
# ---------------------------------------------------------------------------


class Greeter(Recorder):
    """Says goodbye as soon as the handshake is done, and closes."""

    closing_at: float | None = None

    def handshakeCompleted(self) -> None:
        super().handshakeCompleted()
        self.transport.write(b"goodbye\n")  # type: ignore[union-attr]
        self.closing_at = time.monotonic()
        self.transport.loseConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = ConnectionDone()) -> None:  # noqa: B008
        self.lost_at = time.monotonic()
        super().connectionLost(reason)


def python_clean_close(port: int, files: ServerFiles, version: str) -> dict[str, Any]:
    """Read to the end (ragged EOFs are errors), then answer close_notify."""
    with connect_tls(port, client_context(files.ca, version), suppress_ragged_eofs=False) as sock:
        data = recv_all(sock)  # raises SSLEOFError if the server just hangs up
        plain = sock.unwrap()  # our close_notify; the server's already came
        eof_after = wait_for_eof(plain.fileno(), 5)
        plain.close()
    return {"data": data, "eof_after": eof_after}


@pytest.mark.parametrize("version", TLS_VERSIONS)
@pytest_twisted.ensureDeferred
async def test_lose_connection_sends_close_notify(
    harness: Harness, pki: dict[str, ServerFiles], version: str
) -> None:
    files = pki["ecdsa"]
    factory, apps = our_server(files, Greeter)
    port = harness.serve(factory)
    result = await bounded(in_thread(python_clean_close, port, files, version), 10, "client")
    assert result["data"] == b"goodbye\n"
    # Once both close_notify crossed, the server closes TCP at once.
    assert result["eof_after"] is not None and result["eof_after"] < 4.0, result  # not 5 s
    server = apps.instances[0]
    await bounded(server.lost, 5, "server connectionLost")
    assert server.reason.check(ConnectionDone), server.reason
    assert server.lost_at - server.closing_at < 2.5  # not the 5 s close timeout


def python_silent_peer(port: int, files: ServerFiles, version: str) -> dict[str, Any]:
    """Read to the server's close_notify, never answer it, time the TCP close."""
    with connect_tls(port, client_context(files.ca, version), suppress_ragged_eofs=False) as sock:
        data = recv_all(sock)
        started = time.monotonic()
        eof_after = wait_for_eof(sock.fileno(), 5)
        waited = time.monotonic() - started
    return {"data": data, "eof_after": eof_after, "waited": waited}


def python_silent_peer_twisted(port: int, files: ServerFiles) -> float | None:
    with connect_tls(port, client_context(files.ca, "1.3"), suppress_ragged_eofs=False) as sock:
        assert recv_all(sock) == b"goodbye\n"
        return wait_for_eof(sock.fileno(), 1.5)


@pytest_twisted.ensureDeferred
async def test_close_without_answer_twisted_waits(
    harness: Harness, pki: dict[str, ServerFiles]
) -> None:
    """
    For contrast, the known defect close_timeout fixes (twisted#7926):
    Twisted's layer sends close_notify, then waits for the answer forever.
    """
    files = pki["ecdsa"]
    apps = Factory(Greeter)
    port = harness.serve(TLSMemoryBIOFactory(twisted_server_options(files), False, apps))
    eof_after = await bounded(in_thread(python_silent_peer_twisted, port, files), 10, "client")
    assert eof_after is None
    # It ended only when our client gave up and closed the socket.
    server = apps.instances[0]
    await bounded(server.lost, 5, "server connectionLost")
    assert server.lost_at - server.closing_at > 1.4


@pytest.mark.parametrize("version", TLS_VERSIONS)
@pytest_twisted.ensureDeferred
async def test_close_timeout_when_peer_never_answers(
    harness: Harness, pki: dict[str, ServerFiles], version: str
) -> None:
    files = pki["ecdsa"]
    factory, apps = our_server(files, Greeter, close_timeout=0.5)
    port = harness.serve(factory)
    result = await bounded(in_thread(python_silent_peer, port, files, version), 10, "client")
    assert result["data"] == b"goodbye\n"
    assert result["eof_after"] is not None, "the server never closed the connection"
    server = apps.instances[0]
    await bounded(server.lost, 5, "server connectionLost")
    assert 0.4 <= server.lost_at - server.closing_at < 4.0  # not the 5 s default
    assert result["eof_after"] < 4.0, result
    # We asked to close; a peer that does not answer truncates nothing.
    assert server.reason.check(ConnectionDone), server.reason


def python_half_close_peer(port: int, files: ServerFiles, version: str) -> dict[str, Any]:
    """Read the greeting up to close_notify, then still send, then close."""
    with connect_tls(port, client_context(files.ca, version), suppress_ragged_eofs=False) as sock:
        data = recv_all(sock)
        sock.sendall(b"line 0001 sent after your close_notify\n")
        plain = sock.unwrap()
        plain.close()
    return {"data": data}


@pytest.mark.parametrize("version", TLS_VERSIONS)
@pytest_twisted.ensureDeferred
async def test_lose_write_connection_sends_close_notify(
    harness: Harness, pki: dict[str, ServerFiles], version: str
) -> None:
    """
    A half-closing application: its close_notify ends what it sends, and
    the peer, having read it, can still send and be heard.
    """
    files = pki["ecdsa"]
    factory, apps = our_server(files, lambda: HalfCloser(b"line 0000 half-closed\n"))
    port = harness.serve(factory)
    result = await bounded(in_thread(python_half_close_peer, port, files, version), 10, "client")
    assert result["data"] == b"line 0000 half-closed\n"
    server = apps.instances[0]
    await bounded(server.lost, 5, "server connectionLost")
    assert bytes(server.received) == b"line 0001 sent after your close_notify\n"
    assert server.write_lost.called
    assert server.read_lost.called
    assert server.reason.check(ConnectionDone), server.reason


class BigGreeter(Greeter):
    """Writes a large body, then closes at once: close_notify must follow it."""

    body = payload(4 * 1024 * 1024, b"big goodbye")

    def handshakeCompleted(self) -> None:
        Recorder.handshakeCompleted(self)
        self.transport.write(self.body)  # type: ignore[union-attr]
        self.closing_at = time.monotonic()
        self.transport.loseConnection()  # type: ignore[union-attr]


def python_slow_reader(port: int, files: ServerFiles, version: str, delay: float) -> dict[str, Any]:
    """Wait before reading anything, then read to close_notify and answer it."""
    with connect_tls(port, client_context(files.ca, version), suppress_ragged_eofs=False) as sock:
        time.sleep(delay)
        data = recv_all(sock)
        sock.unwrap().close()
    return {"sha": sha256(data), "size": len(data)}


@pytest.mark.parametrize("version", TLS_VERSIONS)
@pytest_twisted.ensureDeferred
async def test_close_timeout_does_not_truncate_a_slow_reader(
    harness: Harness, pki: dict[str, ServerFiles], version: str
) -> None:
    """
    The close timeout bounds the wait for the peer's close_notify, not the
    delivery of what was written before loseConnection: a reader slower
    than the timeout still gets every byte and then our close_notify.
    """
    files = pki["ecdsa"]
    factory, apps = our_server(files, BigGreeter, close_timeout=0.3)
    port = harness.serve(factory)
    result = await bounded(
        in_thread(python_slow_reader, port, files, version, 1.0), 15, "slow reader"
    )
    assert result == {"sha": sha256(BigGreeter.body), "size": len(BigGreeter.body)}
    server = apps.instances[0]
    await bounded(server.lost, 5, "server connectionLost")


def python_hang_up(port: int, files: ServerFiles) -> None:
    """Send a line, then close TCP without close_notify."""
    sock = connect_tls(port, client_context(files.ca))
    try:
        line = b"line 0000 and then silence\n"
        sock.sendall(line)
        assert recv_exactly(sock, len(line)) == line
    finally:
        # Close the socket under the TLS layer: no close_notify goes out.
        raw = socket.socket(fileno=sock.detach())
        raw.close()


@pytest_twisted.ensureDeferred
async def test_peer_hanging_up_is_not_a_clean_close(
    harness: Harness, pki: dict[str, ServerFiles]
) -> None:
    """An EOF without close_notify may be a truncation: never ConnectionDone."""
    files = pki["ecdsa"]
    factory, apps = our_server(files, Echo)
    port = harness.serve(factory)
    await bounded(in_thread(python_hang_up, port, files), 10, "client")
    server = apps.instances[0]
    await bounded(server.lost, 5, "server connectionLost")
    assert bytes(server.received) == b"line 0000 and then silence\n"
    assert server.reason.check(ConnectionLost), server.reason
    assert not server.reason.check(ConnectionDone)


# ---------------------------------------------------------------------------
# Session resumption
# ---------------------------------------------------------------------------


def python_resume(port: int, files: ServerFiles, version: str) -> list[bool]:
    """Connect twice with one context, offering the first session again."""
    ctx = client_context(files.ca, version)
    reused = []
    session = None
    for _ in range(2):
        with connect_tls(port, ctx, session=session) as sock:
            sock.sendall(b"ping\n")
            # TLS 1.3 tickets arrive after the handshake: read the echo first.
            assert recv_exactly(sock, 5) == b"ping\n"
            reused.append(sock.session_reused)
            session = sock.session
            sock.unwrap().close()
    return reused


@pytest.mark.parametrize("version", TLS_VERSIONS)
@pytest_twisted.ensureDeferred
async def test_session_resumption_with_python_ssl(
    harness: Harness, pki: dict[str, ServerFiles], version: str
) -> None:
    files = pki["ecdsa"]
    factory, apps = our_server(files, Echo)
    port = harness.serve(factory)
    reused = await bounded(in_thread(python_resume, port, files, version), 10, "client")
    assert reused == [False, True]
    for server in apps.instances:
        await bounded(server.lost, 5, "server connectionLost")
        assert server.reason.check(ConnectionDone), server.reason
