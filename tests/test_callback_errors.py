"""
A Python callback that OpenSSL runs during a handshake raises: servername
(SNI), ALPN selection, certificate verification, info, key log, and the
SNI lookups of ``membio-https --sni-dir`` and of a ``membio:`` endpoint.

Whatever the callback and however pyOpenSSL reports it, the handshake fails
exactly once, the exception is logged once with its own type (trial's
``flushLoggedErrors`` finds it), both sides see ``ConnectionLost``, and
the failure's log line keeps the callback's own message.
"""

from __future__ import annotations

import contextlib
import errno
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from OpenSSL import SSL
from twisted.internet import defer, protocol
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
)
from twisted.internet.ssl import CertificateOptions, optionsForClientTLS
from twisted.internet.task import Clock
from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from membio_transport import (
    HARDENED,
    MemoryBIOTLSFactory,
    TLSCallbackError,
    TLSState,
    TLSStateError,
    tls_failure_reason,
)
from membio_transport.tls._callbacks import Capture

from ._engines import Side, pump
from ._pki import make_pki
from .test_parity import App

PKI_ = make_pki("ecdsa")


class Oops(LookupError):
    """What the broken callbacks raise: an exception type of the application's."""


def _raise(*args: Any) -> Any:
    raise Oops("no server certificate for name b'boom.test'")


#: Each callback OpenSSL can run during a handshake, installed so that it
#: raises: (which side's context gets it, how to install it).
Installer = Callable[[SSL.Context, SSL.Context], None]
CALLBACKS: dict[str, Installer] = {
    "servername": lambda server, client: server.set_tlsext_servername_callback(_raise),
    "alpn": lambda server, client: (
        server.set_alpn_select_callback(_raise), client.set_alpn_protos([b"h2"])
    ),
    "verify": lambda server, client: client.set_verify(SSL.VERIFY_PEER, _raise),
    "info": lambda server, client: server.set_info_callback(_raise),
    "keylog": lambda server, client: server.set_keylog_callback(_raise),
}


def _contexts(kind: str) -> tuple[SSL.Context, SSL.Context]:
    server, client = PKI_.server_context(), PKI_.client_context()
    CALLBACKS[kind](server, client)
    return server, client


# -- the engine ---------------------------------------------------------------------


def _engines(kind: str) -> tuple[Side, Side]:
    from membio_transport import TLSEngine

    server_ctx, client_ctx = _contexts(kind)
    server_conn = SSL.Connection(server_ctx, None)
    server_conn.set_accept_state()
    client_conn = SSL.Connection(client_ctx, None)
    client_conn.set_connect_state()
    client_conn.set_tlsext_host_name(b"boom.test")
    return (
        Side(TLSEngine(client_conn, server_side=False)),
        Side(TLSEngine(server_conn, server_side=True)),
    )


@pytest.mark.parametrize("kind", sorted(CALLBACKS))
def test_a_raising_callback_fails_the_engine_once_with_the_original_exception(
    kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    client, server = _engines(kind)
    with pytest.raises(TLSCallbackError) as info:
        pump(client, server)
    failed = client if kind == "verify" else server
    error = info.value
    assert failed.engine.state is TLSState.FAILED
    assert failed.engine.error is error
    assert type(error.error) is Oops and error.__cause__ is error.error
    assert error.error.__traceback__ is not None
    assert error.during_handshake
    assert error.reason == "no server certificate for name b'boom.test' (Oops in a TLS callback)"
    with pytest.raises(TLSStateError):
        failed.engine.next_event()
    # pyOpenSSL and cffi would have printed it to stderr: it was ours instead.
    assert "Oops" not in capsys.readouterr().err


def test_of_several_exceptions_in_one_handshake_step_the_first_is_kept() -> None:
    """
    The info callback runs many times per step and raises each time: the
    engine reports the first exception, the cause, not what followed it.
    """
    from membio_transport import TLSEngine

    calls: list[int] = []

    def info(*args: Any) -> None:
        calls.append(len(calls) + 1)
        raise Oops(f"call {len(calls)}")

    server_ctx = PKI_.server_context()
    server_ctx.set_info_callback(info)
    server_conn = SSL.Connection(server_ctx, None)
    server_conn.set_accept_state()
    client_conn = SSL.Connection(PKI_.client_context(), None)
    client_conn.set_connect_state()
    client = Side(TLSEngine(client_conn, server_side=False))
    server = Side(TLSEngine(server_conn, server_side=True))
    with pytest.raises(TLSCallbackError) as info_:
        pump(client, server)
    assert len(calls) > 1, "several exceptions in the step"
    assert info_.value.error.args == ("call 1",)
    assert server.engine.error is info_.value


def test_writes_held_for_the_handshake_are_dropped_when_a_callback_fails_it() -> None:
    """Nothing waits to be sent for a connection that failed: the buffer is empty."""
    client, server = _engines("verify")  # the client's own callback raises
    client.engine.send(b"early" * 100)
    assert client.engine.buffered == 500
    with pytest.raises(TLSCallbackError):
        pump(client, server)
    assert client.engine.state is TLSState.FAILED
    assert client.engine.buffered == 0


@pytest.mark.parametrize("drive", ["write", "read"])
@pytest.mark.parametrize("direct_io", [True, False], ids=["direct", "public"])
def test_a_callback_raising_in_a_renegotiation_fails_the_engine(
    direct_io: bool, drive: str
) -> None:
    """
    A TLS 1.2 server renegotiates; its new flight arrives and the client's
    next write or read carries the handshake on: the verify callback raises
    inside that call.  The engine fails once, as during the first
    handshake, with the original exception kept.
    """
    from membio_transport import TLSEngine

    from .test_engine import _shuttle

    verifications: list[int] = []

    def verify(*args: Any) -> bool:
        verifications.append(args[-2])  # depth
        if len(verifications) > 2:  # the chain's two certificates, the first time
            raise Oops("renegotiated certificate refused")
        return bool(args[-1])

    client_ctx = PKI_.client_context(SSL.TLS1_2_VERSION)
    client_ctx.set_verify(SSL.VERIFY_PEER, verify)
    client_conn = SSL.Connection(client_ctx, None)
    client_conn.set_connect_state()
    client = Side(TLSEngine(client_conn, server_side=False, direct_io=direct_io))
    server_ctx = PKI_.server_context(SSL.TLS1_2_VERSION)
    # No resumption: the renegotiation is a full handshake, with a certificate.
    server_ctx.set_options(SSL.OP_NO_TICKET)
    server_ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    server = SSL.Connection(server_ctx, None)
    server.set_accept_state()
    _shuttle(client, server, bytearray())
    assert client.engine.state is TLSState.OPEN and len(verifications) == 2
    assert server.renegotiate()
    with contextlib.suppress(SSL.WantReadError):
        server.do_handshake()
    client.engine.receive(server.bio_read(1 << 20))  # HelloRequest
    client.drain_events()  # the client answers with its ClientHello
    server.bio_write(client.engine.data_to_send())
    with contextlib.suppress(SSL.WantReadError):
        server.recv(65536)  # the server reads the ClientHello and answers
    client.engine.receive(server.bio_read(1 << 20))  # ServerHello, Certificate...
    with pytest.raises(TLSCallbackError) as info:
        if drive == "write":
            client.engine.send(b"after the new handshake")
        else:
            client.drain_events()
    assert type(info.value.error) is Oops
    assert client.engine.state is TLSState.FAILED
    assert client.engine.error is info.value
    assert client.engine.buffered == 0


def test_a_callback_that_abandons_the_session_is_obeyed_when_the_step_returns() -> None:
    """Twisted's SNI callback calls abortConnection when its lookup raises."""
    from membio_transport import TLSEngine

    engines: list[TLSEngine] = []

    def abandon(connection: SSL.Connection) -> None:
        engines[0].abort()
        assert engines[0].state is TLSState.HANDSHAKING, "not under OpenSSL's feet"

    server_ctx = PKI_.server_context()
    server_ctx.set_tlsext_servername_callback(abandon)
    server_conn = SSL.Connection(server_ctx, None)
    server_conn.set_accept_state()
    engines.append(TLSEngine(server_conn, server_side=True))
    client_conn = SSL.Connection(PKI_.client_context(), None)
    client_conn.set_connect_state()
    client_conn.set_tlsext_host_name(b"localhost")
    client, server = Side(TLSEngine(client_conn, server_side=False)), Side(engines[0])
    pump(client, server)
    assert server.engine.state is TLSState.CLOSED
    assert server.engine.error is None


def test_a_capture_keeps_only_its_own_threads_exceptions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    elsewhere: list[object] = []
    monkeypatch.setattr(sys, "unraisablehook", elsewhere.append)
    with Capture() as outer:
        with Capture() as inner:
            sys.unraisablehook(_unraisable(KeyError("inner")))
        sys.unraisablehook(_unraisable(KeyError("outer")))
        thread = threading.Thread(
            target=lambda: sys.unraisablehook(_unraisable(KeyError("other thread")))
        )
        thread.start()
        thread.join()
    assert [str(e) for e in inner.errors] == ["'inner'"]
    assert [str(e) for e in outer.errors] == ["'outer'"]
    assert len(elsewhere) == 1, "another thread's exception went where it always goes"


def _unraisable(error: BaseException) -> Any:
    class Unraisable:
        exc_type = type(error)
        exc_value = error
        exc_traceback = None
        err_msg = None
        object = None

    return Unraisable()


# -- the Twisted layer -----------------------------------------------------------------


@implementer(IOpenSSLServerConnectionCreator, IOpenSSLClientConnectionCreator)
class _Creator:
    def __init__(self, context: SSL.Context, server_name: bytes | None = None) -> None:
        self.context = context
        self.server_name = server_name

    def serverConnectionForTLS(self, protocol: object) -> SSL.Connection:
        return SSL.Connection(self.context, None)

    def clientConnectionForTLS(self, protocol: object) -> SSL.Connection:
        connection = SSL.Connection(self.context, None)
        if self.server_name is not None:
            connection.set_tlsext_host_name(self.server_name)
        return connection


@pytest.fixture
def log_events() -> Iterator[list[LogEvent]]:
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(events.append)


def _pair(
    server_creator: Any, client_creator: Any, **factory_kw: Any
) -> tuple[App, App, Any, Any]:
    clock = Clock()
    server, client = App(), App()
    sf = MemoryBIOTLSFactory(server_creator, False,
                             protocol.Factory.forProtocol(lambda: server), clock, **factory_kw)
    cf = MemoryBIOTLSFactory(client_creator, True,
                             protocol.Factory.forProtocol(lambda: client), clock, **factory_kw)
    sp, cp = sf.buildProtocol(None), cf.buildProtocol(None)
    iosim.connect(sp, iosim.makeFakeServer(sp), cp, iosim.makeFakeClient(cp), clock=clock)
    return server, client, sp, cp


@pytest.mark.parametrize("policy", ["twisted", "hardened"])
@pytest.mark.parametrize("kind", sorted(CALLBACKS))
def test_both_sides_see_connection_lost_and_the_error_is_logged_once_with_its_message(
    kind: str, policy: str, log_events: list[LogEvent]
) -> None:
    server_ctx, client_ctx = _contexts(kind)
    server, client, sp, cp = _pair(
        _Creator(server_ctx), _Creator(client_ctx, b"boom.test"),
        **(HARDENED.keywords() if policy == "hardened" else {}),
    )
    assert server.lost is not None and type(server.lost.value) is ConnectionLost
    assert client.lost is not None and type(client.lost.value) is ConnectionLost
    assert server.handshakes == client.handshakes == 0
    failures = [event for event in log_events if "log_failure" in event]
    [failure] = failures
    assert failure["log_failure"].type is Oops
    assert formatEvent(failure).startswith("TLS handshake failed from ")
    assert formatEvent(failure).endswith(
        ": no server certificate for name b'boom.test' (Oops in a TLS callback)"
    )
    failed = cp if kind == "verify" else sp
    assert failed.factory.stats.failed == {"Oops in a TLS callback": 1}


@pytest.mark.parametrize("kind", sorted(CALLBACKS))
def test_the_failed_sides_connection_lost_says_what_the_callback_raised(
    kind: str, log_events: list[LogEvent]
) -> None:
    """
    The application whose callback raised learns why from the reason
    ``connectionLost`` receives, in the log line's words: not just that
    the session was abandoned.
    """
    server_ctx, client_ctx = _contexts(kind)
    server, client, _, _ = _pair(_Creator(server_ctx), _Creator(client_ctx, b"boom.test"))
    failed = client if kind == "verify" else server
    assert failed.lost is not None and type(failed.lost.value) is ConnectionLost
    assert tls_failure_reason(failed.lost) == (
        "no server certificate for name b'boom.test' (Oops in a TLS callback)"
    )


def test_twisteds_sni_lookup_that_raises_aborts_without_a_crash(
    log_events: list[LogEvent],
) -> None:
    """
    Twisted's contextForServerName (what its ``tls:`` endpoint installs)
    logs the lookup's exception itself and aborts the connection from
    inside the handshake; that used to raise TLSStateError out of ours.
    """
    from twisted.internet.ssl import PrivateCertificate

    cert = PrivateCertificate.loadPEM(
        PKI_.chain_pem.split(b"-----END CERTIFICATE-----")[0].decode()
        + "-----END CERTIFICATE-----\n" + PKI_.key_pem.decode()
    )
    options = CertificateOptions(
        privateKey=cert.privateKey.original, certificate=cert.original,
        contextForServerName=_raise,
    )
    trust = optionsForClientTLS("localhost", trustRoot=None)
    server, client, _sp, _cp = _pair(options, trust)
    assert server.lost is not None and server.lost.check(ConnectionLost)
    assert client.lost is not None and client.lost.check(ConnectionLost)
    [failure] = [event for event in log_events if "log_failure" in event]
    assert failure["log_failure"].type is Oops, "logged once, by Twisted's callback"


class FlushLoggedErrorsTests(SynchronousTestCase):
    """A trial test finds the callback's exception among the logged errors."""

    def test_flush_logged_errors_finds_the_original_type(self) -> None:
        server_ctx, client_ctx = _contexts("servername")
        server, _client, _sp, _cp = _pair(_Creator(server_ctx), _Creator(client_ctx))
        self.assertEqual(len(self.flushLoggedErrors(Oops)), 1)
        self.assertIsInstance(server.lost.value, ConnectionLost)  # type: ignore[union-attr]


def test_a_key_log_that_cannot_write_stops_with_one_warning(
    tmp_path: Path, log_events: list[LogEvent]
) -> None:
    from membio_transport.tls import KeyLog

    class FullDisk:
        def write(self, data: bytes) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

    keylog = KeyLog(tmp_path / "keys.log")
    keylog._file.close()
    keylog._file = FullDisk()  # type: ignore[assignment]
    server_ctx = PKI_.server_context()
    keylog.install(server_ctx)
    server, client, _sp, _cp = _pair(_Creator(server_ctx), _Creator(PKI_.client_context()))
    assert server.handshakes == client.handshakes == 1, "a debugging aid fails nothing"
    warnings = [formatEvent(e) for e in log_events if "key log" in formatEvent(e)]
    assert len(warnings) == 1 and "key logging stopped" in warnings[0]


# -- real endpoints ----------------------------------------------------------------------


def _handshake_failure_lines(events: list[LogEvent]) -> list[str]:
    return [formatEvent(e) for e in events if "TLS handshake failed" in formatEvent(e)]


@pytest.mark.integration
@pytest_twisted.inlineCallbacks
def test_a_raising_sni_lookup_on_a_membio_endpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, log_events: list[LogEvent]
) -> Any:
    """
    An application's own SNI lookup on the context of a ``membio:`` server
    raises: the client sees the connection lost, the log names the lookup's
    reason, and the listener goes on serving.
    """
    from twisted.internet import reactor
    from twisted.internet.endpoints import clientFromString, serverFromString

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "home" / "state"))
    cert_dir = tmp_path / "certs"
    endpoint = serverFromString(reactor, f"membio:0:interface=127.0.0.1:certDir={cert_dir}")
    broken = [True]

    def lookup(connection: SSL.Connection) -> None:
        if broken[0]:
            _raise()

    # Before the first connection: pyOpenSSL freezes a context once used.
    endpoint.creator.context.set_tlsext_servername_callback(lookup)
    port = yield endpoint.listen(protocol.Factory.forProtocol(_Echo))
    try:
        client = clientFromString(
            reactor,
            f"membio:host=localhost:port={port.getHost().port}:caFile={cert_dir / 'local-ca.pem'}",
        )
        proto = yield client.connect(protocol.Factory.forProtocol(_Collect)).addTimeout(
            10, reactor
        )
        yield proto.lost.addTimeout(10, reactor)
        assert proto.reason is not None and proto.reason.check(ConnectionLost), proto.reason
        # The client (ours too, in this process) logs its own side.
        [line] = [text for text in _handshake_failure_lines(log_events) if "Oops" in text]
        assert line.endswith(
            ": no server certificate for name b'boom.test' (Oops in a TLS callback)"
        )
        [failure] = [e for e in log_events if "log_failure" in e]
        assert failure["log_failure"].type is Oops

        broken[0] = False
        proto = yield client.connect(protocol.Factory.forProtocol(_Collect)).addTimeout(
            10, reactor
        )
        proto.transport.write(b"still here")
        assert (yield proto.data.addTimeout(10, reactor)) == b"still here"
        proto.transport.loseConnection()
        yield proto.lost.addTimeout(10, reactor)
    finally:
        yield port.stopListening()


class _Echo(protocol.Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]


class _Collect(protocol.Protocol):
    def __init__(self) -> None:
        self.data: defer.Deferred[bytes] = defer.Deferred()
        self.lost: defer.Deferred[None] = defer.Deferred()
        self.reason: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        if not self.data.called:
            self.data.callback(data)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.reason = reason
        self.lost.callback(None)


#: Loaded by membio-https through PYTHONPATH: our SNI directory lookup raises
#: for one name, as a bug in it would.
_SITECUSTOMIZE = '''
from membio_transport.serving import _sni

_context_for = _sni.CertificateSet.context_for


def context_for(self, server_name):
    if server_name == "boom.test":
        raise LookupError(f"no server certificate for name {server_name!r}")
    return _context_for(self, server_name)


_sni.CertificateSet.context_for = context_for
'''


@pytest.mark.integration
def test_a_raising_sni_dir_lookup_in_membio_https(tmp_path: Path) -> None:
    from ._abuse_helpers import issue, make_ca, membio_https, openssl_client
    from ._plugin_helpers import REPO

    ca = make_ca("sni test CA")
    sni_dir = tmp_path / "sni"
    issue(ca, ["example.test"]).write(sni_dir, "example.test")
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(ca.cert_pem)
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    with membio_https(
        tmp_path, "--sni-dir", str(sni_dir), env={"PYTHONPATH": f"{inject}:{REPO}"}
    ) as server:
        refused = openssl_client(server.port, servername="boom.test")
        assert "CONNECTED" in refused and "Cipher is (NONE)" in refused, refused
        server.wait_for_log(
            r"TLS handshake failed from 127\.0\.0\.1:\d+: no server certificate for name "
            r"'boom\.test' \(LookupError in a TLS callback\)"
        )
        assert server.log.count("LookupError: no server certificate") == 1, server.log
        served = openssl_client(server.port, "-CAfile", str(ca_file), servername="example.test")
        assert "Verify return code: 0 (ok)" in served, served
        assert server.alive()
