"""
`MemoryBIOTLSFactory` used exactly as Twisted's ``TLSMemoryBIOFactory``:
Twisted's defaults for everything that is policy, Twisted's exception types
in ``connectionLost`` (with the readable reason one call away), Twisted's
handling of legacy and broken context factories, and nothing of ours left
pending on the global reactor.  The project's own entry points, in
contrast, get the hardened policy.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from OpenSSL import SSL
from twisted.internet import protocol
from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IOpenSSLContextFactory
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.test import iosim
from zope.interface import implementer

from membio_transport import (
    HARDENED,
    TWISTED,
    MemoryBIOTLSFactory,
    ServerTLSOptions,
    TLSHandshakeError,
    startTLS,
    tls_failure_reason,
    wrapClientTLS,
    wrapServerTLS,
)
from membio_transport.serving import TLSServerEndpoint
from membio_transport.tls import describe

from ._pki import make_pki
from .test_parity import App, client_options, connect, server_options

PKI = make_pki("ecdsa")


def _policy_of(factory: MemoryBIOTLSFactory) -> dict[str, Any]:
    return {name: getattr(factory, name) for name in TWISTED.keywords()}


# -- policy: Twisted's on the bare factory, ours on our entry points -------------------


def test_the_bare_factory_has_twisteds_policy() -> None:
    factory = MemoryBIOTLSFactory(server_options(PKI), False, protocol.Factory())
    assert _policy_of(factory) == TWISTED.keywords() == {
        "handshake_timeout": None,
        "plain_http": None,
        "refuse_renegotiation": False,
        "log_handshake_failures": False,
        "send_buffer_limit": 1,
    }


def test_the_hardened_policy_is_one_object_of_keywords() -> None:
    factory = MemoryBIOTLSFactory(
        server_options(PKI), False, protocol.Factory(), **HARDENED.keywords()
    )
    assert _policy_of(factory) == HARDENED.keywords()
    assert HARDENED.handshake_timeout == 10.0 and HARDENED.plain_http == "explain"


def test_the_shared_policies_cannot_be_changed_in_place() -> None:
    """
    Every factory and entry point reads `TWISTED` or `HARDENED`: a program
    wanting another policy makes its own, it cannot change one for all.
    """
    for policy in (TWISTED, HARDENED):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(policy, "handshake_timeout", 1.0)  # noqa: B010
    custom = dataclasses.replace(HARDENED, handshake_timeout=30.0)
    assert custom.keywords() == {**HARDENED.keywords(), "handshake_timeout": 30.0}
    assert HARDENED.handshake_timeout == 10.0 and TWISTED.handshake_timeout is None


def test_server_tls_options_ask_for_the_hardened_policy_and_keywords_still_win() -> None:
    creator = ServerTLSOptions(PKI.server_context())
    assert _policy_of(MemoryBIOTLSFactory(creator, False, protocol.Factory())) == (
        HARDENED.keywords()
    )
    relaxed = MemoryBIOTLSFactory(creator, False, protocol.Factory(), handshake_timeout=None)
    assert relaxed.handshake_timeout is None
    assert relaxed.plain_http == "explain"


def test_the_endpoint_wrappers_and_starttls_use_the_hardened_policy() -> None:
    from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint

    reactor = MemoryReactorClock()
    wrapServerTLS(server_options(PKI), TCP4ServerEndpoint(reactor, 443)).listen(
        protocol.Factory.forProtocol(App)
    )
    assert _policy_of(reactor.tcpServers[-1][1]) == HARDENED.keywords()

    wrapClientTLS(client_options(PKI), TCP4ClientEndpoint(reactor, "localhost", 443)).connect(
        protocol.Factory.forProtocol(App)
    )
    client_factory = reactor.tcpClients[-1][2]
    assert _policy_of(client_factory._wrappedFactory) == HARDENED.keywords()

    app = App()
    app.makeConnection(StringTransport())
    app.transport.protocol = app  # type: ignore[union-attr]
    tls = startTLS(app, client_options(PKI), True, clock=Clock())
    assert _policy_of(tls.factory) == HARDENED.keywords()
    tls.abortConnection()


def test_our_server_endpoint_starts_from_the_hardened_policy_under_its_options() -> None:
    from twisted.internet.endpoints import TCP4ServerEndpoint

    reactor = MemoryReactorClock()
    endpoint = TLSServerEndpoint(
        TCP4ServerEndpoint(reactor, 443),
        ServerTLSOptions(PKI.server_context()),
        clock=reactor,
        # What membio-https passes for --handshake-timeout 0 and --idle-timeout 30.
        factory_options={"handshake_timeout": None, "idle_timeout": 30.0},
    )
    endpoint.listen(protocol.Factory.forProtocol(App))
    factory = reactor.tcpServers[-1][1]
    assert factory.handshake_timeout is None and factory.idle_timeout == 30.0
    assert factory.plain_http == "explain" and factory.log_handshake_failures


def test_a_bare_server_hands_plain_http_to_openssl_as_twisted_does() -> None:
    app = App()
    factory = MemoryBIOTLSFactory(
        server_options(PKI), False, protocol.Factory.forProtocol(lambda: app), Clock()
    )
    tls = factory.buildProtocol(None)
    transport = StringTransport()
    tls.makeConnection(transport)
    tls.dataReceived(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert not transport.value().startswith(b"HTTP/"), "no plain-HTTP answer"
    tls.connectionLost(Failure(ConnectionDone()))
    assert app.lost is not None and type(app.lost.value) is SSL.Error


def test_a_bare_server_allows_client_renegotiation_as_twisted_does() -> None:
    tls_server = MemoryBIOTLSFactory(
        server_options(PKI), False, protocol.Factory.forProtocol(App)
    ).buildProtocol(None)
    tls_server.makeConnection(StringTransport())
    # set_options(0) changes nothing and returns the options in force.
    assert not tls_server.getHandle().set_options(0) & SSL.OP_NO_RENEGOTIATION
    hardened = MemoryBIOTLSFactory(
        server_options(PKI), False, protocol.Factory.forProtocol(App), **HARDENED.keywords()
    ).buildProtocol(None)
    hardened.makeConnection(StringTransport())
    assert hardened.getHandle().set_options(0) & SSL.OP_NO_RENEGOTIATION
    for tls in (tls_server, hardened):
        tls.abortConnection()


# -- exception types: Twisted's in connectionLost, the words one call away -------------


def test_an_untrusted_certificate_delivers_pyopenssls_own_error_with_its_queue() -> None:
    untrusting = client_options(make_pki("rsa"))
    pair = connect("membio", PKI, client_creator=untrusting)
    client, server = pair.client.lost, pair.server.lost
    assert client is not None and server is not None
    assert type(client.value) is SSL.Error and type(server.value) is SSL.Error
    assert client.value.args[0][0][2] == "certificate verify failed"
    assert server.value.args[0][0][2] == "tlsv1 alert unknown ca"
    # What our logs say, from what the application received.
    assert tls_failure_reason(client) == (
        "certificate verify failed: unable to get local issuer certificate"
    )
    assert tls_failure_reason(server.value) == "tlsv1 alert unknown ca"


def test_an_end_without_close_notify_is_connection_lost_with_a_reason() -> None:
    pair = connect("membio", PKI)
    pair.client_io.loseConnection()
    pair.flush()
    assert pair.server.lost is not None and type(pair.server.lost.value) is ConnectionLost
    assert tls_failure_reason(pair.server.lost) == "connection closed without close_notify"


def test_an_abort_before_the_handshake_is_connection_lost_on_both_sides() -> None:
    server = App()
    server.connectionMade = lambda: server.transport.abortConnection()  # type: ignore[method-assign,union-attr]
    pair = connect("membio", PKI, server_app=server)
    assert server.lost is not None and server.lost.check(ConnectionLost)
    assert pair.client.lost is not None and pair.client.lost.check(ConnectionLost)


def test_our_own_failures_keep_their_type_and_words() -> None:
    error = TLSHandshakeError(reason="handshake timeout")
    assert tls_failure_reason(Failure(error)) == "handshake timeout"


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (ConnectionDone(), "Connection was closed cleanly"),
        (ConnectionLost(), "Connection to the other side was lost in a non-clean fashion"),
        (ConnectionLost("peer vanished"), "peer vanished"),
        # Twisted's own words (its str()); its docstring's first line stops mid-sentence.
        (ConnectionAborted(), "Connection was aborted locally using ITCPTransport.abortConnection"),
        (SSL.SysCallError(-1, "Unexpected EOF"), "Unexpected EOF"),
        (ValueError("odd"), "odd"),
        (KeyError(), "KeyError"),
    ],
)
def test_the_reason_in_words_for_anything_connection_lost_receives(
    value: BaseException, words: str
) -> None:
    assert tls_failure_reason(value) == words
    assert tls_failure_reason(Failure(value)) == words


def test_an_openssl_error_we_never_classified_is_described_by_its_queue() -> None:
    error = SSL.Error([("SSL routines", "", "no shared cipher")])
    assert tls_failure_reason(error) == describe(error) == "no shared cipher"


# -- legacy and broken context factories, as Twisted's factory takes them --------------


class _OnlyGetContext:
    def __repr__(self) -> str:
        return "an old-style factory"

    def getContext(self) -> SSL.Context:
        return SSL.Context(SSL.TLS_METHOD)


class _GetContextReturnsNothing:
    def __repr__(self) -> str:
        return "a broken factory"

    def getContext(self) -> None:
        return None


class _Nothing:
    def __repr__(self) -> str:
        return "not a factory"


class _GetContextRaises:
    def getContext(self) -> SSL.Context:
        raise ValueError("no such certificate file")


@implementer(IOpenSSLContextFactory)
class _DeclaredContextFactory:
    calls = 0

    def getContext(self) -> SSL.Context:
        self.calls += 1
        return SSL.Context(SSL.TLS_METHOD)


def _legacy_warning() -> type[Warning]:
    from twisted.protocols._tls_legacy import LegacyContextFactoryWarning

    return LegacyContextFactoryWarning


def test_an_undeclared_get_context_object_gets_twisteds_warning_pointing_at_the_caller() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        MemoryBIOTLSFactory(_OnlyGetContext(), True, protocol.Factory())
    [warning] = caught
    assert warning.category is _legacy_warning()
    assert str(warning.message) == (
        "an old-style factory does not explicitly provide any OpenSSL connection-creator "
        "Client interface; neither IOpenSSLClientConnectionCreator, nor IOpenSSLContextFactory."
    )
    assert warning.filename == __file__


@pytest.mark.parametrize(
    ("creator", "message"),
    [
        (_Nothing(), "not a factory does not even have a `getContext` method"),
        (
            _GetContextReturnsNothing(),
            "a broken factory's `getContext` method doesn't return a `Context`",
        ),
    ],
)
def test_a_broken_context_factory_is_a_type_error_with_twisteds_message(
    creator: object, message: str
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(TypeError) as info:
            MemoryBIOTLSFactory(creator, False, protocol.Factory())
    assert str(info.value) == message


def test_get_context_is_tried_at_construction_so_listen_ssl_fails_at_once() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="no such certificate file"):
            MemoryBIOTLSFactory(_GetContextRaises(), False, protocol.Factory())


def test_a_declared_context_factory_is_asked_per_connection_without_a_warning() -> None:
    creator = _DeclaredContextFactory()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        factory = MemoryBIOTLSFactory(creator, False, protocol.Factory.forProtocol(App))
    assert creator.calls == 0
    tls = factory.buildProtocol(None)
    tls.makeConnection(StringTransport())
    assert creator.calls == 1
    tls.abortConnection()


# -- nothing of ours left on the global reactor by a factory driven by hand ------------


@pytest.fixture
def global_reactor_before() -> Iterator[set[Any]]:
    """The global reactor's delayed calls before the test; any it adds are cancelled after."""
    from twisted.internet import reactor

    before = set(reactor.getDelayedCalls())
    yield before
    for call in set(reactor.getDelayedCalls()) - before:
        if call.active():
            call.cancel()


def test_a_factory_driven_by_hand_sets_no_timer_on_the_global_reactor(
    global_reactor_before: set[Any],
) -> None:
    from twisted.internet import reactor

    payload = b"x" * 200_000  # a burst: the memory sweeper would be interested
    client = App()
    client.connectionMade = lambda: client.transport.write(payload)  # type: ignore[method-assign,union-attr]
    server = App()
    # No clock: the global reactor, as Twisted's own tests build factories.
    sf = MemoryBIOTLSFactory(server_options(PKI), False,
                             protocol.Factory.forProtocol(lambda: server))
    cf = MemoryBIOTLSFactory(client_options(PKI), True,
                             protocol.Factory.forProtocol(lambda: client))
    sp, cp = sf.buildProtocol(None), cf.buildProtocol(None)
    pump = iosim.connect(sp, iosim.makeFakeServer(sp), cp, iosim.makeFakeClient(cp),
                         greet=False, clock=Clock())
    pump.flush()
    assert bytes(server.received) == payload
    # A close the peer never answers: Twisted's layer simply waits, and so do we.
    sp.loseConnection()
    added = set(reactor.getDelayedCalls()) - global_reactor_before
    assert [call for call in added if call.getTime() > reactor.seconds()] == []


def test_a_started_factory_or_one_with_a_clock_bounds_its_close_wait() -> None:
    unstarted = MemoryBIOTLSFactory(server_options(PKI), False, protocol.Factory())
    assert not unstarted.schedules_timers
    unstarted.doStart()
    assert unstarted.schedules_timers, "a port or connector started it"
    unstarted.doStop()
    assert not unstarted.schedules_timers
    pair = connect("membio", PKI, close_timeout=2.0)
    assert pair.server_tls.factory.schedules_timers, "it has a clock"
    pair.server.transport.loseConnection()  # type: ignore[union-attr]
    assert [call.getTime() for call in pair.clock.getDelayedCalls()] == [
        pair.clock.seconds() + 2.0
    ]
