"""
``membio:`` endpoint descriptions, in-process over loopback: server and client
parsers, verification, wrapping other endpoints (UNIX, PROXY protocol), the
user's own certificate files, and one-line errors.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, threads
from twisted.internet.endpoints import (
    TCP4ServerEndpoint,
    TCP6ServerEndpoint,
    clientFromString,
    quoteStringArgument,
    serverFromString,
)
from twisted.python.failure import Failure

from membio_transport import MemoryBIOTLSProtocol
from membio_transport.certs import ensure_certificate
from membio_transport.serving import TLSServerEndpoint, parse_server

from ._plugin_helpers import REPO

TIMEOUT = 10


@pytest.fixture(autouse=True)
def _private_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "home" / "state"))
    monkeypatch.delenv("MEMBIO_KEY_PASSWORD", raising=False)


@pytest.fixture(scope="module", autouse=True)
def _drop_in_visible() -> Iterator[None]:
    """
    Twisted finds drop-ins through ``twisted.plugins.__path__``, built from
    sys.path when first imported; an editable install run from elsewhere may
    lack this checkout's ``twisted/plugins``.
    """
    from twisted.internet.interfaces import IStreamServerEndpointStringParser
    from twisted.plugin import getPlugins

    import twisted.plugins

    added = None
    if not any(
        plugin.prefix == "membio" for plugin in getPlugins(IStreamServerEndpointStringParser)
    ):
        added = str(REPO / "twisted" / "plugins")
        twisted.plugins.__path__.append(added)
    yield
    if added is not None:
        twisted.plugins.__path__.remove(added)


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def _q(text: str | Path) -> str:
    return quoteStringArgument(str(text))


class Echo(protocol.Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)


class PeerReporter(protocol.Protocol):
    """Answers any data with the peer address the server sees."""

    def dataReceived(self, data: bytes) -> None:
        peer = self.transport.getPeer()
        self.transport.write(f"{peer.host} {peer.port}\n".encode())


class Collect(protocol.Protocol):
    def __init__(self) -> None:
        self.received = b""
        self.wanted = 0
        self.done: defer.Deferred[bytes] = defer.Deferred()
        self.reason: Failure | None = None
        self.lost: defer.Deferred[None] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if len(self.received) >= self.wanted and not self.done.called:
            self.done.callback(self.received)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.reason = reason
        self.lost.callback(None)
        if not self.done.called:
            self.done.errback(reason)


def _factory(kind: type[protocol.Protocol]) -> protocol.Factory:
    return protocol.Factory.forProtocol(kind)


def _listen_description(cert_dir: Path, *extra: str) -> str:
    return ":".join(["membio:0:interface=127.0.0.1", f"certDir={_q(cert_dir)}", *extra])


@pytest.mark.integration
@pytest_twisted.inlineCallbacks
def test_server_and_client_descriptions_talk_tls(tmp_path: Path) -> Any:
    reactor = _reactor()
    cert_dir = tmp_path / "certs"
    server = serverFromString(reactor, _listen_description(cert_dir, "alpn=x-test,http/1.1"))
    assert isinstance(server, TLSServerEndpoint)
    port = yield server.listen(_factory(Echo))
    try:
        number = port.getHost().port
        client = clientFromString(
            reactor,
            f"membio:host=localhost:port={number}:caFile={_q(cert_dir / 'local-ca.pem')}"
            ":alpn=x-test",
        )
        connecting = client.connect(_factory(Collect))
        connecting.addTimeout(TIMEOUT, reactor)
        proto = yield connecting
        assert isinstance(proto, Collect), "connect() fires with the application protocol"
        assert isinstance(proto.transport, MemoryBIOTLSProtocol)
        proto.wanted = 5
        proto.transport.write(b"hello")
        assert (yield proto.done.addTimeout(TIMEOUT, reactor)) == b"hello"
        assert proto.transport.negotiatedProtocol == b"x-test"
        assert proto.transport.getHandle().get_protocol_version_name() == "TLSv1.3"
        proto.transport.loseConnection()
        yield proto.lost.addTimeout(TIMEOUT, reactor)
    finally:
        yield port.stopListening()


@pytest.mark.integration
@pytest_twisted.inlineCallbacks
def test_client_refuses_wrong_names_and_unknown_authorities(tmp_path: Path) -> Any:
    from OpenSSL import SSL
    from service_identity import VerificationError

    reactor = _reactor()
    cert_dir = tmp_path / "certs"
    port = yield serverFromString(reactor, _listen_description(cert_dir)).listen(_factory(Echo))
    try:
        number = port.getHost().port
        inner = _q(f"tcp:127.0.0.1:{number}")
        ca = _q(cert_dir / "local-ca.pem")
        for description, expected in [
            (f"membio:host=wrong.example:endpoint={inner}:caFile={ca}", VerificationError),
            # No caFile: the system store, which does not know our local CA.
            (f"membio:host=localhost:port={number}", SSL.Error),
        ]:
            connecting = clientFromString(reactor, description).connect(_factory(Collect))
            proto = yield connecting.addTimeout(TIMEOUT, reactor)
            proto.done.addErrback(lambda _: None)
            yield proto.lost.addTimeout(TIMEOUT, reactor)
            assert proto.reason is not None and proto.reason.check(expected), (
                description, proto.reason,
            )
            assert proto.received == b""
    finally:
        yield port.stopListening()


@pytest.mark.integration
@pytest_twisted.inlineCallbacks
def test_endpoint_option_wraps_a_unix_socket(tmp_path: Path) -> Any:
    reactor = _reactor()
    cert_dir, path = tmp_path / "certs", tmp_path / "tls.sock"
    server = serverFromString(
        reactor, f"membio:endpoint={_q(f'unix:{_q(path)}')}:certDir={_q(cert_dir)}"
    )
    port = yield server.listen(_factory(Echo))
    try:
        client = clientFromString(
            reactor,
            f"membio:host=localhost:endpoint={_q(f'unix:path={_q(path)}')}"
            f":caFile={_q(cert_dir / 'local-ca.pem')}",
        )
        proto = yield client.connect(_factory(Collect)).addTimeout(TIMEOUT, reactor)
        proto.wanted = 4
        proto.transport.write(b"unix")
        assert (yield proto.done.addTimeout(TIMEOUT, reactor)) == b"unix"
        proto.transport.loseConnection()
        yield proto.lost.addTimeout(TIMEOUT, reactor)
    finally:
        yield port.stopListening()


def _proxied_tls_client(port: int, ca: Path) -> str:
    """Send a PROXY v1 header in clear, then talk TLS: as HAProxy does."""
    context = ssl.create_default_context(cafile=str(ca))
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw:
        raw.sendall(f"PROXY TCP4 203.0.113.7 127.0.0.1 40000 {port}\r\n".encode())
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"who?")
            answer = b""
            while not answer.endswith(b"\n"):
                chunk = tls.recv(100)
                if not chunk:
                    break
                answer += chunk
    return answer.decode()


@pytest.mark.integration
@pytest_twisted.inlineCallbacks
def test_tls_inside_the_proxy_protocol(tmp_path: Path) -> Any:
    reactor = _reactor()
    cert_dir = tmp_path / "certs"
    server = serverFromString(
        reactor, f"membio:endpoint=haproxy\\:tcp\\:0\\:interface=127.0.0.1:certDir={_q(cert_dir)}"
    )
    port = yield server.listen(_factory(PeerReporter))
    try:
        answer = yield threads.deferToThread(
            _proxied_tls_client, port.getHost().port, cert_dir / "local-ca.pem"
        ).addTimeout(TIMEOUT, reactor)
        assert answer == "203.0.113.7 40000\n"
    finally:
        yield port.stopListening()


@pytest.mark.integration
@pytest_twisted.inlineCallbacks
def test_own_encrypted_key_with_a_password_file(tmp_path: Path) -> Any:
    from cryptography.hazmat.primitives import serialization

    reactor = _reactor()
    generated = ensure_certificate(tmp_path / "gen", ("files.example",))
    key = serialization.load_pem_private_key(generated.key_path.read_bytes(), None)
    encrypted = tmp_path / "key.pem"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pass phrase"),
        )
    )
    encrypted.chmod(0o600)
    password = tmp_path / "password.txt"
    password.write_text("pass phrase\n")
    server = serverFromString(
        reactor,
        f"membio:0:interface=127.0.0.1:certKey={_q(generated.cert_path)}"
        f":privateKey={_q(encrypted)}:keyPasswordFile={_q(password)}",
    )
    port = yield server.listen(_factory(Echo))
    try:
        client = clientFromString(
            reactor,
            f"membio:host=files.example:endpoint={_q(f'tcp:127.0.0.1:{port.getHost().port}')}"
            f":caFile={_q(generated.trust_path)}",
        )
        proto = yield client.connect(_factory(Collect)).addTimeout(TIMEOUT, reactor)
        proto.wanted = 3
        proto.transport.write(b"key")
        assert (yield proto.done.addTimeout(TIMEOUT, reactor)) == b"key"
        proto.transport.loseConnection()
        yield proto.lost.addTimeout(TIMEOUT, reactor)
    finally:
        yield port.stopListening()


@pytest.mark.integration
@pytest_twisted.inlineCallbacks
def test_the_backlog_reaches_the_listening_socket(tmp_path: Path) -> Any:
    """``backlog=`` (and the 511 default) is what the kernel's accept queue gets."""
    reactor = _reactor()
    cert_dir = tmp_path / "certs"
    for extra, expected in (("backlog=5", 5), (None, 511)):
        description = _listen_description(cert_dir, *([extra] if extra else []))
        port = yield serverFromString(reactor, description).listen(_factory(Echo))
        try:
            assert port.backlog == expected
            if shutil.which("ss") is None:
                pytest.skip("ss (Debian package iproute2) is not installed: kernel not asked")
            number = port.getHost().port
            listing = subprocess.run(
                ["ss", "-ltnH", f"sport = :{number}"], capture_output=True, text=True,
                timeout=10, check=True,
            )
            # For a listening socket, ss shows the backlog as Send-Q.
            fields = listing.stdout.split()
            assert fields[0] == "LISTEN" and fields[2] == str(expected), listing.stdout
        finally:
            yield port.stopListening()


def test_parsed_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reactor = _reactor()
    cert_dir = _q(tmp_path / "certs")
    endpoint = parse_server(reactor, "0", interface="::1", certDir=str(tmp_path / "certs"))
    assert isinstance(endpoint.wrapped, TCP6ServerEndpoint)
    named = serverFromString(
        reactor, f"membio:port=0:certDir={cert_dir}:hostname=a.example,b.example:backlog=5"
    )
    assert isinstance(named, TLSServerEndpoint) and isinstance(named.wrapped, TCP4ServerEndpoint)
    assert named.wrapped._backlog == 5  # type: ignore[attr-defined]  # and see the next test
    assert named.certificate is not None
    assert {"a.example", "b.example"} <= set(named.certificate.names)
    specific = serverFromString(reactor, f"membio:0:interface=192.0.2.5:certDir={cert_dir}")
    assert specific.certificate is not None and "192.0.2.5" in specific.certificate.names
    # Zero configuration: the default state directory, under XDG_STATE_HOME.
    default = serverFromString(reactor, "membio:0")
    assert default.certificate is not None
    assert default.certificate.cert_path.parent == tmp_path / "home" / "state" / "membio-transport"
    # One file with the chain and the key, as Twisted's ssl: accepts.
    combined = tmp_path / "combined.pem"
    generated = ensure_certificate(tmp_path / "gen", ())
    combined.write_bytes(generated.cert_path.read_bytes() + generated.key_path.read_bytes())
    combined.chmod(0o600)
    own = serverFromString(reactor, f"membio:0:certKey={_q(combined)}:profile=modern")
    assert own.certificate is not None and own.certificate.cert_path == combined
    # privateKey= alone names a file with both; a password in the environment
    # is not needed for a plain key, and does not get in the way.
    monkeypatch.setenv("MEMBIO_KEY_PASSWORD", "unused for a plain key")
    key_only = serverFromString(reactor, f"membio:0:privateKey={_q(combined)}")
    assert key_only.certificate is not None
    assert key_only.certificate.cert_path == key_only.certificate.key_path == combined
    assert key_only.certificate.fingerprint_sha256 == generated.fingerprint_sha256


@pytest.mark.parametrize(
    ("description", "expected"),
    [
        ("membio:", "a port is required"),
        ("membio:1:2", "at most one positional argument"),
        ("membio:80:port=81", "give the port once"),
        ("membio:http", "port='http' is not a number"),
        ("membio:99999", "port=99999 is out of range"),
        ("membio:0:colour=blue", "unknown server endpoint option(s) colour"),
        ("membio:endpoint=tcp\\:0:port=1", "put port inside it"),
        ("membio:0:profile=ancient", "profile='ancient' is unknown"),
        ("membio:0:certKey=/nonexistent.pem", "cannot read certificate file /nonexistent.pem"),
        ("membio:0:hostname=bad_name!", "invalid host name 'bad_name!'"),
        # The whole settings table, each key parsed by the table's own parser.
        ("membio:0:handshakeTimeout=soon", "handshakeTimeout='soon' is not a number of seconds"),
        ("membio:0:idleTimeout=-1", "idleTimeout -1 must be 0 or more"),
        ("membio:0:maxConnections=0", "maxConnections 0 must be 1 or more"),
        ("membio:0:clientCert=maybe", "clientCert='maybe': use required or optional"),
        ("membio:0:clientCert=optional", "clientCert needs clientCA (the CAs to trust)"),
        ("membio:0:clientCA=/nonexistent.pem", "cannot read --client-ca /nonexistent.pem"),
        ("membio:0:sniDir=/nonexistent", "sniDir /nonexistent is not a directory"),
        ("membio:0:plainHTTP=shout", "plainHTTP='shout': use explain, redirect, close or off"),
        ("membio:0:alpn=none,h2", "alpn='none,h2'"),
        ("membio:0:requestClientCert=perhaps", "requestClientCert='perhaps': use yes or no"),
        ("membio:0:backlog=0", "backlog 0 must be 1 or more"),
        ("membio:0:cert=/a.pem:certKey=/b.pem", "give cert= once (certKey= is the same)"),
    ],
)
def test_server_description_errors_are_one_line(
    description: str, expected: str, tmp_path: Path
) -> None:
    # A generated certificate's directory, unless the description brings its own.
    cert_dir = "" if "certKey=" in description else f":certDir={_q(tmp_path / 'c')}"
    with pytest.raises(ValueError) as raised:
        serverFromString(_reactor(), f"{description}{cert_dir}")
    message = str(raised.value)
    assert message.startswith("membio: ") and "\n" not in message
    assert expected in message, message


def test_encrypted_key_without_password_says_how(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    generated = ensure_certificate(tmp_path / "gen", ())
    key = serialization.load_pem_private_key(generated.key_path.read_bytes(), None)
    encrypted = tmp_path / "key.pem"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"x"),
        )
    )
    os.chmod(encrypted, 0o600)
    with pytest.raises(ValueError, match="encrypted: give its password with keyPasswordFile="):
        serverFromString(
            _reactor(), f"membio:0:certKey={_q(generated.cert_path)}:privateKey={_q(encrypted)}"
        )


@pytest.mark.parametrize(
    ("description", "expected"),
    [
        ("membio:port=443", "host= is required"),
        ("membio:host=example.com", "port= is required"),
        ("membio:example.com:443:port=443", "port given twice"),
        ("membio:host=example.com:port=443:caFile=/nonexistent.pem", "cannot read CA file"),
        ("membio:host=example.com:port=443:trust=x", "unknown client endpoint option(s) trust"),
        ("membio:host=example.com:endpoint=tcp\\:a\\:1:port=1", "put port inside it"),
        ("membio:host=bad_name!:port=443", "host='bad_name!': invalid host name"),
    ],
)
def test_client_description_errors_are_one_line(description: str, expected: str) -> None:
    with pytest.raises(ValueError) as raised:
        clientFromString(_reactor(), description)
    message = str(raised.value)
    assert message.startswith("membio: ") and "\n" not in message
    assert expected in message, message


# ------------------------------------------------------------------ the settings table's keys


def _tls_client(
    port: int, ca: Path, *, host: str = "localhost", certificate: tuple[Path, Path] | None = None
) -> tuple[str, bytes]:
    """Connect, say hello, read the echo: the server certificate's fingerprint and the echo."""
    import hashlib

    context = ssl.create_default_context(cafile=str(ca))
    if certificate is not None:
        context.load_cert_chain(str(certificate[0]), str(certificate[1]))
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw, \
            context.wrap_socket(raw, server_hostname=host) as tls:
        der = tls.getpeercert(binary_form=True) or b""
        tls.sendall(b"hello")
        echoed = b""
        while len(echoed) < 5:
            chunk = tls.recv(5 - len(echoed))
            if not chunk:
                break
            echoed += chunk
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2)), echoed


def _ends_within(port: int, seconds: float, *, tls_ca: Path | None = None) -> float:
    """
    Open a connection that says nothing (or completes a TLS handshake with
    C{tls_ca} and then says nothing) and return how long the server took to
    close it.
    """
    import time

    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=seconds + TIMEOUT) as raw:
        if tls_ca is None:
            with suppress(ConnectionResetError):  # an abort resets, a refusal closes
                assert raw.recv(100) == b""
            return time.monotonic() - started
        context = ssl.create_default_context(cafile=str(tls_ca))
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            started = time.monotonic()
            with suppress(ssl.SSLZeroReturnError):
                assert tls.recv(100) == b""  # the server's close_notify
            return time.monotonic() - started


@pytest.mark.integration
@pytest_twisted.inlineCallbacks
def test_sni_dir_key_chooses_certificates_by_name(tmp_path: Path) -> Any:
    from ._abuse_helpers import issue, make_ca

    reactor = _reactor()
    cert_dir = tmp_path / "certs"
    ca = make_ca("SNI CA")
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem)
    api = issue(ca, ["api.example.test"])
    api.write(tmp_path / "sni", "api.example.test", combined=True)
    server = serverFromString(
        reactor, _listen_description(cert_dir, f"sniDir={_q(tmp_path / 'sni')}")
    )
    port = yield server.listen(_factory(Echo))
    try:
        number = port.getHost().port
        chosen, echoed = yield threads.deferToThread(
            _tls_client, number, tmp_path / "ca.pem", host="api.example.test"
        ).addTimeout(TIMEOUT, reactor)
        assert (chosen, echoed) == (api.fingerprint, b"hello")
        default, _ = yield threads.deferToThread(
            _tls_client, number, cert_dir / "local-ca.pem"
        ).addTimeout(TIMEOUT, reactor)
        assert default == server.certificate.fingerprint_sha256
    finally:
        yield port.stopListening()


@pytest.mark.integration
@pytest_twisted.inlineCallbacks
def test_client_certificate_keys_verify_clients(tmp_path: Path) -> Any:
    from ._abuse_helpers import issue, make_ca

    reactor = _reactor()
    cert_dir = tmp_path / "certs"
    clients = make_ca("client CA")
    ca_file = tmp_path / "clients.pem"
    ca_file.write_bytes(clients.cert_pem)
    alice = issue(clients, ["alice"], client=True).write(tmp_path, "alice")
    trust = cert_dir / "local-ca.pem"
    required = serverFromString(
        reactor, _listen_description(cert_dir, f"clientCA={_q(ca_file)}")
    )
    optional = serverFromString(
        reactor, _listen_description(cert_dir, f"clientCA={_q(ca_file)}:clientCert=optional")
    )
    ports = [(yield required.listen(_factory(Echo))), (yield optional.listen(_factory(Echo)))]
    try:
        strict, lenient = (port.getHost().port for port in ports)
        _, echoed = yield threads.deferToThread(
            _tls_client, strict, trust, certificate=alice
        ).addTimeout(TIMEOUT, reactor)
        assert echoed == b"hello"
        refused = yield threads.deferToThread(_refused, strict, trust).addTimeout(
            TIMEOUT, reactor
        )
        assert refused
        _, echoed = yield threads.deferToThread(_tls_client, lenient, trust).addTimeout(
            TIMEOUT, reactor
        )
        assert echoed == b"hello"
    finally:
        for port in ports:
            yield port.stopListening()


def _refused(port: int, ca: Path) -> bool:
    """Whether a client without a certificate is turned away."""
    try:
        _, echoed = _tls_client(port, ca)
    except (ssl.SSLError, ConnectionError):
        return True
    return echoed == b""  # TLS 1.3: the alert comes after the client's handshake


@pytest.mark.integration
@pytest_twisted.inlineCallbacks
def test_limit_and_timeout_keys(tmp_path: Path) -> Any:
    reactor = _reactor()
    cert_dir = tmp_path / "certs"
    trust = cert_dir / "local-ca.pem"
    server = serverFromString(
        reactor,
        _listen_description(
            cert_dir, "maxConnections=1", "handshakeTimeout=0.5", "idleTimeout=0.5"
        ),
    )
    assert server.factory_options["handshake_timeout"] == 0.5
    assert server.factory_options["idle_timeout"] == 0.5
    port = yield server.listen(_factory(Echo))
    try:
        number = port.getHost().port
        # A client that never starts its handshake goes at the handshake timeout...
        waited = yield threads.deferToThread(_ends_within, number, 0.5).addTimeout(
            TIMEOUT, reactor
        )
        assert 0.4 < waited < 5, waited
        # ... one that goes quiet after it, at the idle timeout, with close_notify.
        waited = yield threads.deferToThread(
            _ends_within, number, 0.5, tls_ca=trust
        ).addTimeout(TIMEOUT, reactor)
        assert 0.4 < waited < 5, waited
        # One connection at a time: the second is closed at once.  The idle one above
        # must be gone on the server's side first (under load it may still count, and
        # `first` would then be the one refused).
        yield _until(lambda: server.serving.stats.active == 0, reactor)
        first = socket.create_connection(("127.0.0.1", number), timeout=TIMEOUT)
        try:
            yield _until(lambda: server.serving.stats.active == 1, reactor)
            waited = yield threads.deferToThread(_ends_within, number, 0.0).addTimeout(
                TIMEOUT, reactor
            )
            assert waited < 0.4, waited
            assert server.serving.limit.refused == 1
        finally:
            first.close()
    finally:
        yield port.stopListening()


@defer.inlineCallbacks
def _until(predicate: Any, reactor: Any, timeout: float = TIMEOUT) -> Any:
    from twisted.internet.task import deferLater

    waited = 0.0
    while not predicate():
        assert waited < timeout, "condition never met"
        yield deferLater(reactor, 0.02, lambda: None)
        waited += 0.02
