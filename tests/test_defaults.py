"""
The limits a user actually gets, pinned: the named constants, what each
entry point that owns the hardened policy builds (the ``membio:`` endpoint,
``twistd membio-https``, ``twistd membio-tls``, `wrapServerTLS`), and what
those values do to a connection, on a fake clock.

The bare `MemoryBIOTLSFactory` is a drop-in for Twisted's: what it does by
default is Twisted's business (see `test_parity.py`); here it is given the
hardened values explicitly, as the entry points give them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from OpenSSL import SSL
from twisted.internet import defer, protocol
from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from membio_transport import MemoryBIOTLSFactory, TLSEngine, wrapServerTLS
from membio_transport.https import tap
from membio_transport.serving import DEFAULT_BACKLOG, TLSServerEndpoint, parse_server
from membio_transport.tls import DEFAULT_CLOSE_TIMEOUT, DEFAULT_SEND_BUFFER_LIMIT
from membio_transport.tls import HARDENED_HANDSHAKE_TIMEOUT as DEFAULT_HANDSHAKE_TIMEOUT

from ._pki import make_pki
from .test_parity import App, server_options

KIB = 1024


def test_the_named_defaults() -> None:
    """What the README's tables promise (`test_readme.py` checks they say so)."""
    assert DEFAULT_HANDSHAKE_TIMEOUT == 10.0
    assert DEFAULT_CLOSE_TIMEOUT == 5.0
    assert DEFAULT_SEND_BUFFER_LIMIT == 256 * KIB
    assert DEFAULT_BACKLOG == 511


class _Recording:
    """A server endpoint that keeps the factory it is asked to listen with."""

    def __init__(self) -> None:
        self.factory: Any = None

    def listen(self, factory: IProtocolFactory) -> defer.Deferred[IListeningPort]:
        self.factory = factory
        return defer.Deferred()


def _factory_of(entry: str, tmp_path: Path, clock: Clock | None = None) -> MemoryBIOTLSFactory:
    """The TLS factory that entry point C{entry} puts on the connections it accepts."""
    recording = _Recording()
    if entry == "wrapServerTLS":
        endpoint: Any = wrapServerTLS(server_options(make_pki("ecdsa")), recording, clock)  # type: ignore[arg-type]
    else:
        endpoint = ENTRY_POINTS[entry](tmp_path)
        assert isinstance(endpoint, TLSServerEndpoint), endpoint
        # Listen on nothing, on a fake clock: only what TLS adds is looked at.
        endpoint.wrapped = recording  # type: ignore[assignment]
        endpoint.clock = clock
    endpoint.listen(protocol.Factory.forProtocol(App))
    assert isinstance(recording.factory, MemoryBIOTLSFactory), recording.factory
    return recording.factory


def _membio_endpoint(tmp_path: Path) -> Any:
    from twisted.internet import reactor

    return parse_server(reactor, "0", interface="127.0.0.1", certDir=str(tmp_path / "certs"))


def _membio_https(tmp_path: Path) -> Any:
    options = tap.Options()
    options.parseOptions(["--port", "0", "--cert-dir", str(tmp_path / "certs")])
    [listener] = options["listeners"]
    return listener.endpoint


def _membio_tls(tmp_path: Path) -> Any:
    from membio_transport.proxy import tap as proxy_tap

    options = proxy_tap.Options()
    options.parseOptions(
        ["--port", "0", "--backend", "tcp:127.0.0.1:1", "--cert-dir", str(tmp_path / "certs")]
    )
    [listener] = options["listeners"]
    return listener.endpoint


ENTRY_POINTS: dict[str, Callable[[Path], Any]] = {
    "membio:": _membio_endpoint,
    "membio-https": _membio_https,
    "membio-tls": _membio_tls,
    "wrapServerTLS": lambda tmp_path: None,
}


@pytest.fixture
def private_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "home" / "state"))
    monkeypatch.delenv("SSLKEYLOGFILE", raising=False)
    monkeypatch.delenv("MEMBIO_KEY_PASSWORD", raising=False)


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_every_policy_owning_entry_point_builds_the_hardened_limits(
    entry: str, tmp_path: Path, private_home: None
) -> None:
    factory = _factory_of(entry, tmp_path)
    assert factory.handshake_timeout == DEFAULT_HANDSHAKE_TIMEOUT == 10.0
    assert factory.close_timeout == DEFAULT_CLOSE_TIMEOUT == 5.0
    assert factory.send_buffer_limit == DEFAULT_SEND_BUFFER_LIMIT == 256 * KIB
    assert factory.idle_timeout is None, "idle timeout: off unless asked for"
    assert factory.plain_http == "explain"
    assert not factory.isClient


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_a_silent_peer_is_dropped_at_ten_seconds_not_before(
    entry: str, tmp_path: Path, private_home: None
) -> None:
    clock = Clock()
    factory = _factory_of(entry, tmp_path, clock)
    tls = factory.buildProtocol(None)
    wire = StringTransport()
    tls.makeConnection(wire)
    clock.advance(9.9)
    assert not wire.disconnecting, "dropped before the handshake timeout"
    clock.advance(0.2)
    assert wire.disconnecting, "a stalled handshake outlived the 10 s timeout"
    assert factory.stats.failed["handshake timeout"] == 1


def test_the_engines_buffer_limit_is_256_kib_by_default() -> None:
    """Plaintext written during the handshake: the 256 KiB-th byte says "stop"."""
    pki = make_pki("ecdsa")
    connection = SSL.Connection(pki.server_context(), None)
    connection.set_accept_state()
    engine = TLSEngine(connection, server_side=True)
    assert engine.send_buffer_limit == 256 * KIB
    assert engine.send(b"x" * (256 * KIB - 1)) is True
    assert engine.send(b"x") is False


def test_the_bare_factory_applies_the_limits_it_is_given() -> None:
    clock = Clock()
    factory = MemoryBIOTLSFactory(
        server_options(make_pki("ecdsa")), False, protocol.Factory.forProtocol(App), clock,
        handshake_timeout=DEFAULT_HANDSHAKE_TIMEOUT,
        close_timeout=DEFAULT_CLOSE_TIMEOUT,
        send_buffer_limit=DEFAULT_SEND_BUFFER_LIMIT,
    )
    tls: Any = factory.buildProtocol(None)
    wire = StringTransport()
    tls.makeConnection(wire)
    assert tls._engine.send_buffer_limit == 256 * KIB
    clock.advance(DEFAULT_HANDSHAKE_TIMEOUT - 0.1)
    assert not wire.disconnecting
    clock.advance(0.2)
    assert wire.disconnecting


def test_membio_https_policies_off_unless_asked(tmp_path: Path, private_home: None) -> None:
    """HSTS off, no connection cap, no idle timeout, reload polling every 5 s."""
    from membio_transport.https import DEFAULT_HSTS_MAX_AGE
    from membio_transport.serving import DEFAULT_POLL_INTERVAL

    options = tap.Options()
    options.parseOptions(["--port", "0", "--cert-dir", str(tmp_path / "certs")])
    settings = options["settings"]
    assert options["hsts_max_age"] is None
    assert settings.max_connections is None
    assert options["serving"].limit is None
    assert settings.idle_timeout is None
    assert settings.reload_interval == DEFAULT_POLL_INTERVAL == 5.0
    assert settings.handshake_timeout == DEFAULT_HANDSHAKE_TIMEOUT
    assert settings.plain_http == "explain"
    asked = tap.Options()
    asked.parseOptions(["--port", "0", "--cert-dir", str(tmp_path / "certs"), "--hsts"])
    assert asked["hsts_max_age"] == DEFAULT_HSTS_MAX_AGE == 63072000  # two years
