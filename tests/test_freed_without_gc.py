"""
A closed connection is freed by reference counting alone, however it ended:
no reference cycle may hold its protocol and its ``SSL`` object until the
cyclic GC runs (issue #14: thousands of peers leaving without close_notify
left cycles whose full collection paused the server ~300 ms).  In memory,
with the GC switched off, and the transport dropping its protocol the way
``twisted.internet.tcp`` does once the connection is lost.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from twisted.internet import protocol
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.test import iosim

from membio_transport import HARDENED, MemoryBIOTLSFactory

from ._pki import make_pki
from .test_parity import App, client_options, server_options

PKI = make_pki("ecdsa")


@pytest.fixture
def no_gc() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _fin(tls: Any) -> None:
    tls.readConnectionLost()  # the peer's FIN with no close_notify before it


def _corrupt(tls: Any) -> None:
    tls.dataReceived(b"\x17\x03\x03\x00\x20" + b"\0" * 32)  # a record that fails its MAC


def _close(tls: Any) -> None:
    tls.loseConnection()


def _abort(tls: Any) -> None:
    tls.abortConnection()


def _nothing(tls: Any) -> None:
    pass  # the transport is simply lost under an open session


def _run(
    end: Callable[[Any], None],
    *,
    handshake: bool = True,
    report: list[Failure] | None = None,
    **kw: Any,
) -> list[Any]:
    """Connect, end the server side with C{end}, lose both transports; weak references."""
    clock = Clock()
    server_factory = MemoryBIOTLSFactory(
        server_options(PKI), False, protocol.Factory.forProtocol(App), clock, **kw
    )
    client_factory = MemoryBIOTLSFactory(
        client_options(PKI), True, protocol.Factory.forProtocol(App), clock
    )
    server = server_factory.buildProtocol(None)
    client = client_factory.buildProtocol(None)
    server_io = iosim.makeFakeServer(server)
    client_io = iosim.makeFakeClient(client)
    pump = iosim.connect(server, server_io, client, client_io, greet=False, clock=clock)
    if handshake:
        pump.flush()
    app = server.wrappedProtocol
    refs = [weakref.ref(server), weakref.ref(server.getHandle()), weakref.ref(app)]
    end(server)
    pump.flush()
    for tls, io in ((server, server_io), (client, client_io)):
        tls.connectionLost(Failure(ConnectionDone()))
        del io.protocol  # as twisted.internet.tcp.Connection.connectionLost does
    assert app.lost is not None
    if report is not None:
        report.append(app.lost)
    del app
    clock.advance(60)
    return refs


@pytest.mark.parametrize("end", [_fin, _corrupt, _close, _abort, _nothing])
@pytest.mark.usefixtures("no_gc")
def test_an_ended_connection_is_freed_without_the_cyclic_gc(end: Callable[[Any], None]) -> None:
    refs = _run(end)
    alive = [type(ref()).__name__ for ref in refs if ref() is not None]
    assert alive == [], f"kept alive by a reference cycle: {alive}"


@pytest.mark.parametrize("end", [_fin, _corrupt, _nothing])
@pytest.mark.usefixtures("no_gc")
def test_hardened_connections_are_freed_without_the_cyclic_gc_too(
    end: Callable[[Any], None],
) -> None:
    refs = _run(end, **HARDENED.keywords())
    assert [ref() for ref in refs] == [None, None, None]


@pytest.mark.usefixtures("no_gc")
def test_a_failed_handshake_is_freed_without_the_cyclic_gc() -> None:
    refs = _run(_corrupt, handshake=False, **HARDENED.keywords())
    assert [ref() for ref in refs] == [None, None, None]


def test_the_application_still_gets_pyopenssls_error() -> None:
    """Dropping the tracebacks changes nothing of what the application is told."""
    from OpenSSL import SSL

    seen: list[Failure] = []
    refs = _run(_corrupt, report=seen)
    assert seen[0].check(SSL.Error) and not seen[0].check(ConnectionLost)
    assert "bad record mac" in str(seen[0].value)
    assert all(ref() is None for ref in refs)
