"""In-process TLS benchmark: TLS layers talking memory-to-memory, with no sockets.

Why this exists: what membio_transport sets out to cut is the TLS layer's own cost (Python work
per write, per record, per handshake).  Over real sockets that cost is buried under kernel,
reactor and scheduler noise, so here a client and a server protocol built by the factory under
test are connected through a minimal in-memory transport and driven by one small pump loop that
is identical for every factory.  Next to Twisted's ``TLSMemoryBIOFactory`` and ours, a bare
pyOpenSSL loop does the same TLS work with no Twisted at all: the floor that any layer built on
pyOpenSSL's memory BIOs can approach.

Every implementation uses the same certificate, the same server ``CertificateOptions``, the same
client connection creator (hence the same TLS 1.3 cipher suite and key exchange) and the same
workload protocols; only the layer in between changes.

Run it through ``benchmarks/run.py``; ``python benchmarks/inprocess.py --profile IMPL --only
WORKLOAD`` profiles one implementation on one workload.
"""

from __future__ import annotations

import abc
import argparse
import contextlib
import gc
import importlib
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from OpenSSL import SSL, crypto
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IConsumer,
    IOpenSSLClientConnectionCreator,
    IPushProducer,
    ITransport,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import CertificateOptions, TLSVersion
from twisted.internet.task import Clock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

if __name__ == "__main__" and not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.results import BARE, OURS, TWISTED, Row, RunOptions

SUITE = "in-process"
KiB = 1 << 10
MiB = 1 << 20

#: Application bytes the bulk sender writes per pump step: one Twisted TCP read's worth.
BURST = 64 * KiB
#: Size asked of bio_read / recv by the bare floor: more than one step ever produces.
BIO_READ_SIZE = 1 << 18
RECV_SIZE = 1 << 16

HOSTNAME = "localhost"
DEFAULT_CIPHERSUITE = "TLS_AES_256_GCM_SHA384"
CLIENT_ADDRESS = IPv4Address("TCP", "127.0.0.1", 50000)
SERVER_ADDRESS = IPv4Address("TCP", "127.0.0.1", 443)

GO = b"go"
REQUEST = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"
RESPONSE = b"HTTP/1.1 204 No Content\r\n\r\n"


@dataclass(frozen=True)
class Sizes:
    """How much work each workload does per measurement, and how many rounds to run."""

    bulk_bytes: int
    echo_round_trips: int
    echo_size: int
    handshakes: int
    resumed_handshakes: int
    rounds: int
    #: Pieces each measurement is cut into, to interleave implementations finely.
    slices: int


FULL = Sizes(64 * MiB, 10_000, 100, 1_000, 1_000, rounds=7, slices=8)
QUICK = Sizes(4 * MiB, 500, 100, 40, 40, rounds=3, slices=2)
#: For the smoke test and for warming up: every code path, almost no time.
TINY = Sizes(256 * KiB, 20, 100, 4, 4, rounds=1, slices=2)


@dataclass(frozen=True)
class Measurement:
    wall: float
    cpu: float
    #: Bytes received, round trips completed or connections completed, as counted by the
    #: receiving application protocol (not by the layer under test).
    work: int

    def __add__(self, other: Measurement) -> Measurement:
        return Measurement(self.wall + other.wall, self.cpu + other.cpu, self.work + other.work)


class BenchmarkError(RuntimeError):
    """The harness or an implementation did not do the work it was asked to do."""


class _Stopwatch:
    """Wall and process CPU time around the measured loop only."""

    def __init__(self) -> None:
        self._wall = time.perf_counter()
        self._cpu = time.process_time()

    def stop(self, work: int) -> Measurement:
        cpu = time.process_time() - self._cpu
        wall = time.perf_counter() - self._wall
        return Measurement(wall=wall, cpu=cpu, work=work)


# --------------------------------------------------------------------------- TLS setup


def make_certificate() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """
    A fresh ECDSA P-256 self-signed certificate for ``localhost``, in memory,
    from the project's own certificate factory.
    """
    from membio_transport.certs import generate_leaf

    certificate, key = generate_leaf([HOSTNAME], "ecdsa")
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key, certificate


def _server_options(
    key: ec.EllipticCurvePrivateKey, certificate: x509.Certificate, session_tickets: bool
) -> CertificateOptions:
    settings: dict[str, Any] = {
        "raiseMinimumTo": TLSVersion.TLSv1_3,
        # Stateless TLS 1.3 tickets, so that clients can resume; Twisted's default (off) would
        # make every handshake a full one.
        "enableSessionTickets": session_tickets,
    }
    try:
        # pyOpenSSL takes cryptography objects directly and deprecates its own wrappers.
        options = CertificateOptions(privateKey=key, certificate=certificate, **settings)
        options.getContext()
    except TypeError:  # an older pyOpenSSL that only takes its own types
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            options = CertificateOptions(
                privateKey=crypto.PKey.from_cryptography_key(key),
                certificate=crypto.X509.from_cryptography(certificate),
                **settings,
            )
            options.getContext()
    return options


@implementer(IOpenSSLClientConnectionCreator)
class ClientCreator:
    """The client side for every implementation: TLS 1.3 only, one cipher suite, the server
    certificate verified by OpenSSL against the benchmark certificate as the only trust root,
    and optional session resumption.

    It stands in for ``optionsForClientTLS(HOSTNAME, trustRoot=...)``, with two differences:
    it can offer the previous connection's session, and chain verification stays in C (no
    Python verify callback doing the host name check per handshake, which would be the same
    constant for every layer).  The host name is checked once per run by `probe`.

    With ``count_verifications`` a Python verify callback counts certificate verifications.
    A resumed TLS 1.3 handshake carries no server certificate, so the count must not move
    while resuming: that is how the resumed workload proves that resumption happened, using
    only public pyOpenSSL API (pyOpenSSL does not expose ``SSL_session_reused``).
    """

    def __init__(
        self, trust_root: x509.Certificate, ciphersuite: str, count_verifications: bool
    ) -> None:
        context = SSL.Context(SSL.TLS_METHOD)
        context.set_min_proto_version(SSL.TLS1_3_VERSION)
        context.set_max_proto_version(SSL.TLS1_3_VERSION)
        # What Twisted's CertificateOptions sets, which optionsForClientTLS builds on.
        context.set_options(SSL.OP_NO_COMPRESSION)
        context.set_mode(SSL.MODE_RELEASE_BUFFERS)
        context.set_tls13_ciphersuites(ciphersuite.encode("ascii"))
        store = context.get_cert_store()
        assert store is not None
        store.add_cert(crypto.X509.from_cryptography(trust_root))
        mode = SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT
        if count_verifications:
            context.set_verify(mode, self._count)
        else:
            context.set_verify(mode)
        self._context = context
        self.verifications = 0
        self.session: SSL.Session | None = None
        self.last: SSL.Connection | None = None

    def _count(
        self, connection: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int
    ) -> bool:
        self.verifications += 1
        return bool(ok)

    def clientConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        connection = SSL.Connection(self._context, None)
        connection.set_app_data(tlsProtocol)
        connection.set_tlsext_host_name(HOSTNAME.encode("ascii"))
        if self.session is not None:
            connection.set_session(self.session)
        self.last = connection
        return connection

    def remember_session(self) -> None:
        """Keep the session (with its newest ticket) of the latest connection for the next."""
        assert self.last is not None
        self.session = self.last.get_session()


class TLSSetup:
    """One certificate and the server options built from it, shared by every implementation."""

    def __init__(
        self, ciphersuite: str = DEFAULT_CIPHERSUITE, session_tickets: bool = True
    ) -> None:
        key, self.certificate = make_certificate()
        self.ciphersuite = ciphersuite
        self.server_options = _server_options(key, self.certificate, session_tickets)
        self.server_context: SSL.Context = self.server_options.getContext()

    def client_creator(self, count_verifications: bool = False) -> ClientCreator:
        return ClientCreator(self.certificate, self.ciphersuite, count_verifications)


# --------------------------------------------------------------------------- the harness


@implementer(ITransport, IConsumer, IPushProducer)
class MemoryTransport:
    """The byte pipe under one TLS protocol: writes are queued for the `Pump` to deliver."""

    def __init__(self, host: IPv4Address, peer: IPv4Address) -> None:
        self.out: list[bytes] = []
        self.disconnecting = False
        self.aborted = False
        self.producer: object = None
        self.paused = False
        self._host = host
        self._peer = peer

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def writeSequence(self, data: Sequence[bytes]) -> None:
        self.out.extend(data)

    def loseConnection(self) -> None:
        self.disconnecting = True

    def abortConnection(self) -> None:
        self.disconnecting = True
        self.aborted = True

    def getPeer(self) -> IPv4Address:
        return self._peer

    def getHost(self) -> IPv4Address:
        return self._host

    def registerProducer(self, producer: object, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        self.abortConnection()


class Pump:
    """Moves bytes between a client and a server protocol, like one reactor iteration does.

    Each `step` runs the clock's due calls (Twisted's TLS layer defers small writes to the next
    reactor iteration with ``callLater(0)``), then hands each side, in one ``dataReceived``
    call, everything the other side wrote since the previous step.  When either side has asked
    to disconnect and nothing is left in flight, both get ``connectionLost``.
    """

    def __init__(self, clock: Clock, client: Any, server: Any) -> None:
        self.clock = clock
        self.client = client
        self.server = server
        self.client_transport = MemoryTransport(CLIENT_ADDRESS, SERVER_ADDRESS)
        self.server_transport = MemoryTransport(SERVER_ADDRESS, CLIENT_ADDRESS)
        self.closed = False

    def step(self) -> bool:
        """One iteration; False when there was nothing at all to do."""
        moved = False
        clock = self.clock
        calls = clock.calls
        if calls and calls[0].getTime() <= clock.rightNow:
            clock.advance(0)
            moved = True
        ct = self.client_transport
        out = ct.out
        if out:
            data = out[0] if len(out) == 1 else b"".join(out)
            out.clear()
            self.server.dataReceived(data)
            moved = True
        st = self.server_transport
        out = st.out
        if out:
            data = out[0] if len(out) == 1 else b"".join(out)
            out.clear()
            self.client.dataReceived(data)
            moved = True
        if (
            (ct.disconnecting or st.disconnecting)
            and not self.closed
            and (ct.aborted or st.aborted or not (ct.out or st.out))
        ):
            self.close()
            moved = True
        return moved

    def close(self) -> None:
        self.closed = True
        reason = Failure(ConnectionDone("in-memory connection closed"))
        self.client.connectionLost(reason)
        self.server.connectionLost(reason)

    def run_until(self, condition: Callable[[], bool], what: str) -> None:
        for _ in range(1_000_000):
            if condition():
                return
            if not self.step():
                raise BenchmarkError(f"stalled during {what}")
        raise BenchmarkError(f"no end to {what}")

    def run_until_idle(self, what: str) -> None:
        for _ in range(1_000_000):
            if not self.step():
                return
        raise BenchmarkError(f"no end to {what}")


class _OneShotFactory(Factory):
    """Hands the wrapping TLS factory the application protocol prepared for the next
    connection, so the workload keeps a direct reference to it."""

    noisy = False

    def __init__(self) -> None:
        self.next: Protocol | None = None

    def buildProtocol(self, addr: object) -> Protocol | None:
        protocol, self.next = self.next, None
        if protocol is None:
            raise BenchmarkError("no application protocol prepared")
        protocol.factory = self
        return protocol


class _Harness:
    """A client factory and a server factory of one type, on one clock, connected by pumps."""

    def __init__(self, factory_type: Callable[..., Any], tls: TLSSetup, creator: ClientCreator):
        self.clock = Clock()
        self._client_apps = _OneShotFactory()
        self._server_apps = _OneShotFactory()
        self.client_factory = factory_type(creator, True, self._client_apps, self.clock)
        self.server_factory = factory_type(tls.server_options, False, self._server_apps, self.clock)
        self.client_factory.doStart()
        self.server_factory.doStart()

    def connect(self, client_app: Protocol, server_app: Protocol) -> Pump:
        self._client_apps.next = client_app
        self._server_apps.next = server_app
        server = self.server_factory.buildProtocol(CLIENT_ADDRESS)
        client = self.client_factory.buildProtocol(SERVER_ADDRESS)
        pump = Pump(self.clock, client, server)
        server.makeConnection(pump.server_transport)
        client.makeConnection(pump.client_transport)
        return pump

    def stop(self) -> None:
        self.client_factory.doStop()
        self.server_factory.doStop()


# ------------------------------------------------------------ workload application protocols


class _App(Protocol):
    lost: Failure | None = None

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        self.lost = reason


class BulkReceiver(_App):
    """Client side of bulk transfer: says go, then counts what arrives."""

    def __init__(self) -> None:
        self.received = 0

    def connectionMade(self) -> None:
        self.transport.write(GO)

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)


class BulkSender(_App):
    """Server side of bulk transfer: ready once the client's go arrives; the workload loop
    writes through its transport."""

    def __init__(self) -> None:
        self.ready = False

    def dataReceived(self, data: bytes) -> None:
        self.ready = True


class EchoServer(_App):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)


class EchoClient(_App):
    """Writes a message, waits for all of it to come back, then writes the next."""

    def __init__(self, message: bytes) -> None:
        self.message = message
        self.target = 0
        self.completed = 0
        self.received = 0
        self._pending = 0

    def start(self, round_trips: int) -> None:
        self.target = round_trips
        self.completed = 0
        self.received = 0
        self._send()

    def _send(self) -> None:
        self._pending = len(self.message)
        self.transport.write(self.message)

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        self._pending -= len(data)
        if self._pending <= 0:
            self.completed += 1
            if self.completed < self.target:
                self._send()


class ConnectClient(_App):
    """One short connection: request, whole response, optional hook, close."""

    def __init__(self, on_response: Callable[[], None] | None) -> None:
        self.received = 0
        self.done = False
        self._on_response = on_response

    def connectionMade(self) -> None:
        self.transport.write(REQUEST)

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        if self.received >= len(RESPONSE) and not self.done:
            self.done = True
            if self._on_response is not None:
                self._on_response()
            self.transport.loseConnection()


class ConnectServer(_App):
    def __init__(self) -> None:
        self.received = 0

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        if self.received == len(REQUEST):
            self.transport.write(RESPONSE)


def _lost_reasons(*apps: _App) -> str:
    return "; ".join(
        f"{type(app).__name__} lost: {app.lost.getErrorMessage()}"
        for app in apps
        if app.lost is not None
    )


# --------------------------------------------------------------------------- implementations


def split(total: int, slices: int) -> list[int]:
    """`total` cut into `slices` near-equal positive parts (fewer if `total` is smaller)."""
    slices = max(1, min(slices, total))
    base, extra = divmod(total, slices)
    return [base + (1 if i < extra else 0) for i in range(slices)]


class Implementation(abc.ABC):
    """One way of doing the workloads' TLS work.

    Each method is a generator: it sets up (untimed), then yields one `Measurement` per
    slice of the work, keeping its connection open in between, and tears down (untimed) when
    resumed after the last slice.  `collect` advances the implementations' generators in
    turn, so their slices interleave finely (A B C A B C ...) and a burst of load from
    elsewhere on the machine hits all of them alike.
    """

    name: str
    label: str

    @abc.abstractmethod
    def bulk(
        self, tls: TLSSetup, total: int, write_size: int, slices: int
    ) -> Iterator[Measurement]:
        """Server writes `total` bytes in `write_size` writes; the client counts them."""

    @abc.abstractmethod
    def echo(
        self, tls: TLSSetup, round_trips: int, size: int, slices: int
    ) -> Iterator[Measurement]:
        """Client writes `size` bytes and waits for the server's echo, `round_trips` times."""

    @abc.abstractmethod
    def connections(
        self, tls: TLSSetup, creator: ClientCreator, count: int, remember: bool, slices: int
    ) -> Iterator[Measurement]:
        """`count` connections: handshake, small request and response, clean TLS close.
        With `remember`, the client keeps each connection's session for the next one."""


class FactoryImplementation(Implementation):
    """A Twisted-style wrapping factory, ``(contextFactory, isClient, wrappedFactory, clock)``,
    driven through `_Harness`: Twisted's own and ours."""

    def __init__(self, name: str, label: str, factory_type: Callable[..., Any]) -> None:
        self.name = name
        self.label = label
        self.factory_type = factory_type

    def bulk(
        self, tls: TLSSetup, total: int, write_size: int, slices: int
    ) -> Iterator[Measurement]:
        writes_total, rest = divmod(total, write_size)
        if rest:
            raise ValueError("bulk size must be a multiple of the write size")
        harness = _Harness(self.factory_type, tls, tls.client_creator())
        receiver, sender = BulkReceiver(), BulkSender()
        pump = harness.connect(receiver, sender)
        pump.run_until(lambda: sender.ready, "bulk set-up")
        pump.run_until_idle("bulk set-up")
        payload = b"\xa5" * write_size
        per_step = max(1, BURST // write_size)
        transport = sender.transport
        step = pump.step

        for writes in split(writes_total, slices):
            before = receiver.received
            expected = before + writes * write_size
            watch = _Stopwatch()
            while writes:
                n = per_step if writes >= per_step else writes
                writes -= n
                for _ in range(n):
                    transport.write(payload)
                step()
            while receiver.received < expected:
                if not step():
                    raise BenchmarkError(
                        f"bulk stalled at {receiver.received} of {total} bytes "
                        + _lost_reasons(receiver, sender)
                    )
            yield watch.stop(receiver.received - before)

        receiver.transport.loseConnection()
        pump.run_until(lambda: pump.closed, "bulk close")
        harness.stop()

    def echo(
        self, tls: TLSSetup, round_trips: int, size: int, slices: int
    ) -> Iterator[Measurement]:
        harness = _Harness(self.factory_type, tls, tls.client_creator())
        client, server = EchoClient(b"\x5a" * size), EchoServer()
        pump = harness.connect(client, server)
        client.start(1)
        pump.run_until(lambda: client.completed == 1, "echo set-up")
        pump.run_until_idle("echo set-up")
        step = pump.step

        for part in split(round_trips, slices):
            watch = _Stopwatch()
            client.start(part)
            while client.completed < part:
                if not step():
                    raise BenchmarkError(
                        f"echo stalled after {client.completed} round trips "
                        + _lost_reasons(client, server)
                    )
            measurement = watch.stop(client.completed)
            if client.received != part * size:
                raise BenchmarkError(f"echo received {client.received} bytes")
            yield measurement

        client.transport.loseConnection()
        pump.run_until(lambda: pump.closed, "echo close")
        harness.stop()

    def connections(
        self, tls: TLSSetup, creator: ClientCreator, count: int, remember: bool, slices: int
    ) -> Iterator[Measurement]:
        harness = _Harness(self.factory_type, tls, creator)
        on_response = creator.remember_session if remember else None
        connect = harness.connect

        for part in split(count, slices):
            completed = 0
            watch = _Stopwatch()
            for _ in range(part):
                client, server = ConnectClient(on_response), ConnectServer()
                pump = connect(client, server)
                step = pump.step
                while not pump.closed:
                    if not step():
                        raise BenchmarkError(
                            f"connection {completed} stalled " + _lost_reasons(client, server)
                        )
                if not client.done or client.received != len(RESPONSE):
                    raise BenchmarkError(
                        f"connection {completed} closed early " + _lost_reasons(client, server)
                    )
                completed += 1
            yield watch.stop(completed)

        harness.stop()


def _drain(connection: SSL.Connection) -> int:
    """Receive until OpenSSL wants more bytes, as any layer must; return the bytes received."""
    received = 0
    try:
        while True:
            received += len(connection.recv(RECV_SIZE))
    except SSL.WantReadError:
        pass
    return received


def _move(source: SSL.Connection, destination: SSL.Connection) -> int:
    """Hand everything `source` has written to `destination`; return the byte count."""
    moved = 0
    while True:
        try:
            data = source.bio_read(BIO_READ_SIZE)
        except SSL.WantReadError:
            return moved
        destination.bio_write(data)
        moved += len(data)


class BarePyOpenSSL(Implementation):
    """``SSL.Connection(context, None)`` pairs driven directly: no Twisted in the loop.

    Written to be the floor, not to be pretty: bound methods hoisted out of loops, one
    ``bio_read`` sized to take a whole step's output, ``recv`` with a large size, one SSL_write
    per application write.  It still receives until ``WantReadError`` after feeding bytes in, as
    any layer that does not parse TLS records itself has to.
    """

    name = BARE
    label = "bare pyOpenSSL"

    def _pair(self, tls: TLSSetup, creator: ClientCreator) -> tuple[SSL.Connection, ...]:
        client = creator.clientConnectionForTLS(None)
        client.set_connect_state()
        server = SSL.Connection(tls.server_context, None)
        server.set_accept_state()
        return client, server

    def _establish(self, client: SSL.Connection, server: SSL.Connection) -> None:
        """Handshake, then let the client take in the server's session tickets (untimed)."""
        for _ in range(10):
            for side in (client, server):
                with contextlib.suppress(SSL.WantReadError):
                    side.do_handshake()
            moved = _move(client, server) + _move(server, client)
            if not moved:
                break
        if _drain(client) or _drain(server) or _move(client, server) or _move(server, client):
            raise BenchmarkError("unexpected bytes after the handshake")

    def bulk(
        self, tls: TLSSetup, total: int, write_size: int, slices: int
    ) -> Iterator[Measurement]:
        writes_total, rest = divmod(total, write_size)
        if rest:
            raise ValueError("bulk size must be a multiple of the write size")
        client, server = self._pair(tls, tls.client_creator())
        self._establish(client, server)
        payload = memoryview(b"\xa5" * write_size)
        per_step = max(1, BURST // write_size)
        send, bio_read = server.send, server.bio_read
        bio_write, recv = client.bio_write, client.recv

        for writes in split(writes_total, slices):
            received = 0
            watch = _Stopwatch()
            while writes:
                n = per_step if writes >= per_step else writes
                writes -= n
                for _ in range(n):
                    sent = send(payload)
                    while sent < write_size:  # only with partial writes enabled
                        sent += send(payload[sent:])
                data = bio_read(BIO_READ_SIZE)
                while len(data) == BIO_READ_SIZE:
                    bio_write(data)
                    try:
                        data = bio_read(BIO_READ_SIZE)
                    except SSL.WantReadError:
                        data = b""
                bio_write(data)
                try:
                    while True:
                        received += len(recv(RECV_SIZE))
                except SSL.WantReadError:
                    pass
            yield watch.stop(received)

    def echo(
        self, tls: TLSSetup, round_trips: int, size: int, slices: int
    ) -> Iterator[Measurement]:
        client, server = self._pair(tls, tls.client_creator())
        self._establish(client, server)
        message = b"\x5a" * size
        c_send, c_read, c_write = client.send, client.bio_read, client.bio_write
        s_send, s_read, s_write = server.send, server.bio_read, server.bio_write
        c_recv, s_recv = client.recv, server.recv
        want_read = SSL.WantReadError

        for part in split(round_trips, slices):
            completed = 0
            received = 0
            watch = _Stopwatch()
            while completed < part:
                c_send(message)
                s_write(c_read(BIO_READ_SIZE))
                try:
                    while True:
                        s_send(s_recv(RECV_SIZE))
                except want_read:
                    pass
                c_write(s_read(BIO_READ_SIZE))
                try:
                    while True:
                        received += len(c_recv(RECV_SIZE))
                except want_read:
                    pass
                completed += 1
            measurement = watch.stop(completed)
            if received != part * size:
                raise BenchmarkError(f"echo received {received} bytes")
            yield measurement

    def connections(
        self, tls: TLSSetup, creator: ClientCreator, count: int, remember: bool, slices: int
    ) -> Iterator[Measurement]:
        server_context = tls.server_context
        new_client = creator.clientConnectionForTLS
        connection = SSL.Connection
        want_read, zero_return = SSL.WantReadError, SSL.ZeroReturnError

        for part in split(count, slices):
            completed = 0
            watch = _Stopwatch()
            for _ in range(part):
                client = new_client(None)
                client.set_connect_state()
                server = connection(server_context, None)
                server.set_accept_state()
                try:  # noqa: SIM105 (hot loop: no context manager)
                    client.do_handshake()  # ClientHello
                except want_read:
                    pass
                server.bio_write(client.bio_read(BIO_READ_SIZE))
                try:  # noqa: SIM105 (hot loop: no context manager)
                    server.do_handshake()  # ServerHello ... Finished
                except want_read:
                    pass
                client.bio_write(server.bio_read(BIO_READ_SIZE))
                client.send(REQUEST)  # finishes the client handshake, then the request
                server.bio_write(client.bio_read(BIO_READ_SIZE))
                if _drain(server) != len(REQUEST):  # finishes the server side, sends tickets
                    raise BenchmarkError("bad request")
                server.send(RESPONSE)
                client.bio_write(server.bio_read(BIO_READ_SIZE))
                if _drain(client) != len(RESPONSE):  # takes in the tickets, then the response
                    raise BenchmarkError("bad response")
                if remember:
                    creator.remember_session()
                client.shutdown()  # close_notify, answered as Twisted's TLS layer does
                server.bio_write(client.bio_read(BIO_READ_SIZE))
                try:  # noqa: SIM105
                    server.recv(RECV_SIZE)
                except zero_return:
                    pass
                server.shutdown()
                client.bio_write(server.bio_read(BIO_READ_SIZE))
                try:  # noqa: SIM105
                    client.recv(RECV_SIZE)
                except zero_return:
                    pass
                client.shutdown()
                completed += 1
            yield watch.stop(completed)


def load_ours() -> tuple[Callable[..., Any] | None, str]:
    """``membio_transport.MemoryBIOTLSFactory`` if it can be imported, else why not."""
    try:
        module = importlib.import_module("membio_transport")
        return module.MemoryBIOTLSFactory, ""
    except Exception as exc:  # any failure means: not available yet
        return None, f"{type(exc).__name__}: {exc}"


def implementations(include_ours: bool = True) -> tuple[list[Implementation], list[str]]:
    """The implementations available in this checkout, in table order, and notes on any
    that are missing."""
    found: list[Implementation] = [
        FactoryImplementation(TWISTED, "twisted.protocols.tls", TLSMemoryBIOFactory)
    ]
    notes: list[str] = []
    if include_ours:
        factory, why = load_ours()
        if factory is None:
            notes.append(f"ours skipped: membio_transport.MemoryBIOTLSFactory unavailable ({why})")
        else:
            found.append(FactoryImplementation(OURS, "membio_transport", factory))
    found.append(BarePyOpenSSL())
    return found, notes


# --------------------------------------------------------------------------- workloads


def _size(n: int) -> str:
    if n % MiB == 0:
        return f"{n // MiB} MiB"
    if n % KiB == 0:
        return f"{n // KiB} KiB"
    return f"{n} B"


def _run_resumed(impl: Implementation, tls: TLSSetup, sizes: Sizes) -> Iterator[Measurement]:
    creator = tls.client_creator(count_verifications=True)
    total(impl.connections(tls, creator, 1, True, 1))  # full handshake: primes the session
    before = creator.verifications
    if not before or creator.session is None:
        raise BenchmarkError("priming connection did not verify the server or get a session")
    yield from impl.connections(tls, creator, sizes.resumed_handshakes, True, sizes.slices)
    if creator.verifications != before:
        raise BenchmarkError(
            f"{impl.name}: {creator.verifications - before} certificate verifications while "
            "resuming: some handshakes were not resumed"
        )


def total(slices: Iterable[Measurement]) -> Measurement:
    """Run every slice of one measurement and add them up."""
    result = Measurement(0.0, 0.0, 0)
    for measurement in slices:
        result += measurement
    return result


@dataclass(frozen=True)
class Workload:
    name: str
    unit: str
    describe: Callable[[Sizes], str]
    #: Work one measurement must report, in bytes or operations.
    expected: Callable[[Sizes], int]
    #: The measurement's slices, as a generator (see `Implementation`).
    slices: Callable[[Implementation, TLSSetup, Sizes], Iterator[Measurement]]

    def run(self, impl: Implementation, tls: TLSSetup, sizes: Sizes) -> Measurement:
        """One whole measurement, not interleaved with anything."""
        gc.collect()
        return total(self.slices(impl, tls, sizes))


WORKLOADS: tuple[Workload, ...] = (
    Workload(
        "bulk-16k",
        "MB/s",
        lambda s: f"bulk {_size(s.bulk_bytes)} in 16 KiB writes",
        lambda s: s.bulk_bytes,
        lambda impl, tls, s: impl.bulk(tls, s.bulk_bytes, 16 * KiB, s.slices),
    ),
    Workload(
        "bulk-64k",
        "MB/s",
        lambda s: f"bulk {_size(s.bulk_bytes)} in 64 KiB writes",
        lambda s: s.bulk_bytes,
        lambda impl, tls, s: impl.bulk(tls, s.bulk_bytes, 64 * KiB, s.slices),
    ),
    Workload(
        "echo",
        "ops/s",
        lambda s: f"echo {s.echo_round_trips} x {s.echo_size} B round trips",
        lambda s: s.echo_round_trips,
        lambda impl, tls, s: impl.echo(tls, s.echo_round_trips, s.echo_size, s.slices),
    ),
    Workload(
        "handshake",
        "ops/s",
        lambda s: f"{s.handshakes} full handshakes (conn/s)",
        lambda s: s.handshakes,
        lambda impl, tls, s: impl.connections(
            tls, tls.client_creator(), s.handshakes, False, s.slices
        ),
    ),
    Workload(
        "resumed",
        "ops/s",
        lambda s: f"{s.resumed_handshakes} resumed handshakes (conn/s)",
        lambda s: s.resumed_handshakes,
        _run_resumed,
    ),
)


def select_workloads(only: Sequence[str]) -> list[Workload]:
    names = [w.name for w in WORKLOADS]
    unknown = [n for n in only if n not in names]
    if unknown:
        raise SystemExit(f"unknown workload {', '.join(unknown)}; choose from {', '.join(names)}")
    return [w for w in WORKLOADS if not only or w.name in only]


def _rate(workload: Workload, work: int, seconds: float) -> float:
    return work / seconds / (1e6 if workload.unit == "MB/s" else 1.0)


# --------------------------------------------------------------------------- running


def probe(impl: Implementation, tls: TLSSetup) -> str:
    """Check what one implementation negotiates, that the server identity verifies, and that
    resumption works; return a one-line description.  Raises BenchmarkError otherwise."""
    from service_identity.cryptography import verify_certificate_hostname

    creator = tls.client_creator(count_verifications=True)
    total(impl.connections(tls, creator, 1, True, 1))
    full = creator.verifications
    total(impl.connections(tls, creator, 2, True, 1))
    if not full or creator.verifications != full:
        raise BenchmarkError(
            f"{impl.name}: verifications full={full} after resuming={creator.verifications}"
        )
    connection = creator.last
    assert connection is not None
    peer = connection.get_peer_certificate(as_cryptography=True)
    if peer is None:
        raise BenchmarkError(f"{impl.name}: no peer certificate")
    verify_certificate_hostname(peer, HOSTNAME)
    version = connection.get_protocol_version_name()
    cipher = connection.get_cipher_name()
    if version != "TLSv1.3" or cipher != tls.ciphersuite:
        raise BenchmarkError(f"{impl.name} negotiated {version} {cipher}")
    return (
        f"{version} {cipher} group={connection.get_group_name()}; server verified as "
        f"{HOSTNAME}; resumption verified (no certificate verification on 2 resumed)"
    )


def _interleaved(
    workload: Workload, impls: list[Implementation], tls: TLSSetup, sizes: Sizes
) -> tuple[dict[str, Measurement], list[tuple[Implementation, Exception]]]:
    """One measurement per implementation, their slices run in turn: A B C A B C ...

    Returns the measurements, and the implementations that raised or did the wrong amount of
    work, with why; those are left out of the measurements."""
    running = {impl.name: (impl, workload.slices(impl, tls, sizes)) for impl in impls}
    totals = {name: Measurement(0.0, 0.0, 0) for name in running}
    failures: list[tuple[Implementation, Exception]] = []
    gc.collect()  # once, so that every implementation starts from the same heap
    while running:
        for name, (impl, slices) in list(running.items()):
            try:
                totals[name] += next(slices)
            except StopIteration:
                del running[name]
            except Exception as exc:
                del running[name], totals[name]
                failures.append((impl, exc))
    expected = workload.expected(sizes)
    for impl in impls:
        measured = totals.get(impl.name)
        if measured is not None and measured.work != expected:
            del totals[impl.name]
            failures.append((impl, BenchmarkError(f"did {measured.work} of {expected}")))
    return totals, failures


def collect(
    options: RunOptions,
    sizes: Sizes | None = None,
    include_ours: bool = True,
    log: Callable[[str], None] = print,
) -> list[Row]:
    """Run the in-process suite and return one Row per (workload, implementation).

    Each round runs every workload once on every implementation; within a workload the
    implementations' slices alternate (see `_interleaved`), so that noise from a busy machine
    lands on all of them alike.  Twisted or bare failing is a harness bug and raises; ours
    failing is reported and ours is left out of the rest of the run.
    """
    if sizes is None:
        sizes = QUICK if options.quick else FULL
    if options.rounds:
        sizes = replace(sizes, rounds=options.rounds)
    workloads = select_workloads(options.only)
    tls = TLSSetup()
    impls, notes = implementations(include_ours)
    for note in notes:
        log(f"[{SUITE}] {note}")

    for impl in list(impls):
        try:
            log(f"[{SUITE}] {impl.name:<8} {probe(impl, tls)}")
            for workload in workloads:  # warm-up: every code path once, not measured
                workload.run(impl, tls, TINY)
        except Exception as exc:
            if impl.name != OURS:
                raise
            log(f"[{SUITE}] ours skipped: failed its check ({type(exc).__name__}: {exc})")
            impls.remove(impl)

    walls: dict[tuple[str, str], list[float]] = {}
    cpus: dict[tuple[str, str], list[float]] = {}
    for round_number in range(sizes.rounds):
        started = time.perf_counter()
        for workload in workloads:
            measured, failures = _interleaved(workload, list(impls), tls, sizes)
            for impl, exc in failures:
                if impl.name != OURS:
                    raise exc
                log(
                    f"[{SUITE}] ours dropped: {workload.name} failed in round "
                    f"{round_number + 1} ({type(exc).__name__}: {exc})"
                )
                impls.remove(impl)
            for name, measurement in measured.items():
                key = (workload.name, name)
                walls.setdefault(key, []).append(
                    _rate(workload, measurement.work, measurement.wall)
                )
                cpus.setdefault(key, []).append(_rate(workload, measurement.work, measurement.cpu))
        print(
            f"[{SUITE}] round {round_number + 1}/{sizes.rounds} "
            f"done in {time.perf_counter() - started:.1f} s",
            file=sys.stderr,
        )

    names = {impl.name for impl in impls}
    rows: list[Row] = []
    for workload in workloads:
        for impl_name in (TWISTED, OURS, BARE):
            key = (workload.name, impl_name)
            if impl_name not in names or key not in walls:
                continue
            rows.append(
                Row(
                    suite=SUITE,
                    workload=workload.name,
                    description=workload.describe(sizes),
                    implementation=impl_name,
                    unit=workload.unit,
                    work=workload.expected(sizes),
                    wall=tuple(walls[key]),
                    cpu=tuple(cpus[key]),
                )
            )
    return rows


def profile(impl_name: str, workload_name: str, quick: bool, top: int, sort: str) -> None:
    """Profile one implementation on one workload (one measurement after a warm-up)."""
    import cProfile
    import pstats

    impls, notes = implementations()
    chosen = [i for i in impls if i.name == impl_name]
    if not chosen:
        raise SystemExit(f"implementation {impl_name} unavailable: {'; '.join(notes)}")
    impl = chosen[0]
    (workload,) = select_workloads([workload_name])
    sizes = QUICK if quick else FULL
    tls = TLSSetup()
    workload.run(impl, tls, TINY)
    gc.collect()
    profiler = cProfile.Profile()
    profiler.enable()
    measured = total(workload.slices(impl, tls, sizes))
    profiler.disable()
    print(
        f"{impl.label} on {workload.describe(sizes)}: "
        f"{_rate(workload, measured.work, measured.wall):.1f} {workload.unit} under cProfile"
    )
    pstats.Stats(profiler).sort_stats(sort).print_stats(top)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--profile", metavar="IMPL", required=True, choices=[TWISTED, OURS, BARE])
    parser.add_argument("--only", metavar="WORKLOAD", required=True)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--sort", default="tottime")
    args = parser.parse_args(argv)
    profile(args.profile, args.only, args.quick, args.top, args.sort)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
