"""What connections that end without close_notify leave for the cyclic GC (issue #14's p99).

    python benchmarks/profiles/unclean_close_gc.py [--connections N]
    PYTHONPATH=DIR python benchmarks/profiles/unclean_close_gc.py   # another copy of the package

In process, with the GC switched off: N server connections of one factory (the ``membio:``
endpoint's policy, `HARDENED`) complete a TLS 1.3 handshake and exchange one request and
response, then each peer hangs up without close_notify (a TCP FIN, then the transport is lost,
which is what browsers and most HTTP clients do).  The transport drops its protocol afterwards,
as ``twisted.internet.tcp`` does.  Then it reports how many of the N ``SSL`` objects are still
alive (only a reference cycle can hold them), how many objects one full ``gc.collect()`` finds
unreachable, and how long that collection takes: the pause a server pays once such cycles have
piled up in the oldest generation.  Timings vary with the machine; the counts do not.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import time
import weakref
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet import protocol
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.test import iosim


def _context() -> SSL.Context:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(1)
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.use_certificate(cert)
    context.use_privatekey(key)
    return context


class _Server:
    def __init__(self, context: SSL.Context) -> None:
        self.context = context

    def getContext(self) -> SSL.Context:
        return self.context


class _Echo(protocol.Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


class _Client(protocol.Protocol):
    def connectionMade(self) -> None:
        self.transport.write(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")


def run(connections: int) -> None:
    from twisted.internet.interfaces import IOpenSSLContextFactory
    from twisted.internet.ssl import CertificateOptions
    from zope.interface import implementer

    from membio_transport import HARDENED, MemoryBIOTLSFactory

    server_context = _context()
    clock = Clock()
    server_factory = MemoryBIOTLSFactory(
        implementer(IOpenSSLContextFactory)(_Server)(server_context), False,
        protocol.Factory.forProtocol(_Echo), clock, **HARDENED.keywords(),
    )
    client_factory = MemoryBIOTLSFactory(
        CertificateOptions(), True, protocol.Factory.forProtocol(_Client), clock
    )
    alive: list[Any] = []
    gc.collect()
    gc.disable()
    for _ in range(connections):
        server, client = server_factory.buildProtocol(None), client_factory.buildProtocol(None)
        server_io, client_io = iosim.makeFakeServer(server), iosim.makeFakeClient(client)
        iosim.connect(server, server_io, client, client_io, greet=False, clock=clock).flush()
        alive.append(weakref.ref(server.getHandle()))
        server.readConnectionLost()  # the FIN, no close_notify before it
        for tls, io in ((server, server_io), (client, client_io)):
            tls.connectionLost(Failure(ConnectionDone()))
            del io.protocol  # as twisted.internet.tcp does
        del server, client, server_io, client_io, tls, io
    clock.advance(60)
    left = sum(1 for ref in alive if ref() is not None)
    started = time.perf_counter()
    unreachable = gc.collect()
    pause = (time.perf_counter() - started) * 1e3
    gc.enable()
    freed = sum(1 for ref in alive if ref() is None)
    print(
        f"{connections} connections ended without close_notify: {left} SSL objects still alive "
        f"without the GC; one full collection: {unreachable} unreachable objects, "
        f"{pause:.1f} ms; {freed} SSL objects freed in all"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--connections", type=int, default=1000)
    run(parser.parse_args().connections)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
