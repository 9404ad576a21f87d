"""
The metrics collector without Prometheus: real handshakes in memory
(``iosim``), the exposition parsed back with ``prometheus_client.parser``;
the failure vocabulary; the per-handshake hook; the sum over workers,
in-process and across a real ``fork()``; ``/metrics`` over real TCP.
"""

from __future__ import annotations

import datetime
import os
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import pytest_twisted
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from twisted.internet import protocol
from twisted.internet.address import IPv4Address
from twisted.internet.ssl import Certificate, TLSVersion, optionsForClientTLS
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.test import iosim

from membio_transport import HARDENED, MemoryBIOTLSFactory, TLSStats
from membio_transport.certs import ServerCertificate
from membio_transport.observe import (
    DURATION_BUCKETS,
    FAILURE_KINDS,
    HandshakeDetails,
    MetricSources,
    WorkerMetrics,
    failure_kind,
    metrics_service,
)
from membio_transport.observe._workers import (
    SnapshotReporter,
    WorkerLink,
    _Reader,
    encode_snapshot,
)

from ._pki import make_pki
from .test_parity import App, client_options, server_options

PKI = make_pki("ecdsa")
OTHER_PKI = make_pki("rsa")


def samples(registry_or_collector: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, by (name, sorted labels)."""
    if isinstance(registry_or_collector, MetricSources):
        text = generate_latest(registry_or_collector.registry()).decode()
    else:
        text = generate_latest(registry_or_collector).decode()
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found: dict[Any, float], name: str, **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


class Server:
    """A hardened server factory (as our entry points build it) with shared counters."""

    def __init__(self, stats: TLSStats) -> None:
        self.clock = Clock()
        self.factory = MemoryBIOTLSFactory(
            server_options(PKI), False, protocol.Factory.forProtocol(App), self.clock,
            stats=stats, **HARDENED.keywords(),
        )

    def handshake(self, client_creator: Any) -> None:
        client = MemoryBIOTLSFactory(
            client_creator, True, protocol.Factory.forProtocol(App), self.clock
        )
        sp, cp = self.factory.buildProtocol(None), client.buildProtocol(None)
        pump = iosim.connect(
            sp, iosim.makeFakeServer(sp), cp, iosim.makeFakeClient(cp), greet=False,
            clock=self.clock,
        )
        pump.flush()
        if cp.connected:
            cp.loseConnection()
            pump.flush()

    def plain_http(self) -> bytes:
        tls = self.factory.buildProtocol(None)
        transport = StringTransport(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 8443),
            peerAddress=IPv4Address("TCP", "127.0.0.1", 51234),
        )
        tls.makeConnection(transport)
        tls.dataReceived(b"GET / HTTP/1.1\r\nHost: localhost:8443\r\n\r\n")
        tls.connectionLost(None)
        return transport.value()


TLS12_CLIENT = optionsForClientTLS(
    "localhost", trustRoot=Certificate.loadPEM(PKI.ca_pem),
    extraCertificateOptions={"lowerMaximumSecurityTo": TLSVersion.TLSv1_2},
)


def test_the_collector_reads_real_handshakes_failures_and_plain_http() -> None:
    stats = TLSStats()
    sources = MetricSources()
    sources.add_tls(stats)
    server = Server(stats)
    server.handshake(client_options(PKI))
    server.handshake(client_options(PKI))
    server.handshake(TLS12_CLIENT)
    server.handshake(client_options(OTHER_PKI))  # the client refuses our certificate
    assert server.plain_http().startswith(b"HTTP/1.1 400 ")

    found = samples(sources)
    assert value(found, "membio_tls_connections_total") == 5
    assert value(found, "membio_tls_connections_active") == 0
    tls13 = {
        labels: count for (name, labels), count in found.items()
        if name == "membio_tls_handshakes_total" and ("version", "TLSv1.3") in labels
    }
    assert sum(tls13.values()) == 2
    assert all(dict(labels)["cipher"].startswith("TLS_") for labels in tls13)
    tls12 = [
        dict(labels) for (name, labels) in found
        if name == "membio_tls_handshakes_total" and ("version", "TLSv1.2") in labels
    ]
    assert len(tls12) == 1 and tls12[0]["cipher"].startswith("ECDHE-ECDSA-")
    assert tls12[0]["group"].lower() in {"x25519", "secp256r1", "prime256v1"}
    handshakes = sum(v for (name, _), v in found.items() if name == "membio_tls_handshakes_total")
    assert handshakes == stats.handshakes == 3
    failed = "membio_tls_handshakes_failed_total"
    assert value(found, failed, reason="peer_rejected_certificate") == 1
    assert value(found, "membio_tls_handshakes_failed_total", reason="plain_http") == 1
    # Every kind is there from the start, so that rate() works from the first failure.
    assert {
        dict(labels)["reason"] for (name, labels) in found
        if name == "membio_tls_handshakes_failed_total"
    } == set(FAILURE_KINDS)
    assert value(found, "membio_tls_plain_http_answered_total") == 1
    assert value(found, "membio_tls_handshake_duration_seconds_count") == 3
    assert value(found, "membio_tls_handshake_duration_seconds_bucket", le="+Inf") == 3
    assert 0 < value(found, "membio_tls_handshake_duration_seconds_sum") < 5
    assert value(found, "membio_tls_received_bytes_total") == stats.bytes_received > 0
    assert value(found, "membio_tls_sent_bytes_total") == stats.bytes_sent > 0
    assert value(found, "membio_tls_handshakes_resumed_total") == 0


def test_handshake_durations_are_measured_on_the_details_clock() -> None:
    now = [100.0]
    stats = TLSStats(detail=HandshakeDetails(now=lambda: now[0]))
    details = stats.detail
    assert isinstance(details, HandshakeDetails)

    class Connection:
        def get_protocol_version_name(self) -> str:
            return "TLSv1.3"

        def get_cipher_name(self) -> str:
            return "TLS_AES_128_GCM_SHA256"

        def get_group_name(self) -> None:
            return None  # a resumed TLS 1.2 session has no group

    for elapsed in (0.0005, 0.003, 0.003, 20.0):
        started = details.now()
        now[0] += elapsed
        details.handshake_completed(Connection(), started)  # type: ignore[arg-type]
    stats.handshakes = 4
    sources = MetricSources()
    sources.add_tls(stats)
    found = samples(sources)
    buckets = {
        dict(labels)["le"]: count for (name, labels), count in found.items()
        if name == "membio_tls_handshake_duration_seconds_bucket"
    }
    assert buckets["0.001"] == 1 and buckets["0.0025"] == 1 and buckets["0.005"] == 3
    assert buckets["10.0"] == 3 and buckets["+Inf"] == 4
    assert len(buckets) == len(DURATION_BUCKETS) + 1
    assert value(found, "membio_tls_handshake_duration_seconds_sum") == pytest.approx(20.0065)
    assert value(
        found, "membio_tls_handshakes_total",
        version="TLSv1.3", cipher="TLS_AES_128_GCM_SHA256", group="none",
    ) == 4


def test_handshakes_before_details_were_on_count_as_unknown() -> None:
    stats = TLSStats(handshakes=7)
    sources = MetricSources()
    sources.add_tls(stats)
    assert isinstance(stats.detail, HandshakeDetails)
    found = samples(sources)
    assert value(
        found, "membio_tls_handshakes_total", version="unknown", cipher="unknown",
        group="unknown",
    ) == 7


def test_a_handshake_under_way_when_details_are_installed_is_not_timed() -> None:
    """
    Its start was never read from the details' clock: it counts among the
    handshakes without details, not as one that took the clock's reading.
    """
    stats = TLSStats()
    server = Server(stats)
    client = MemoryBIOTLSFactory(
        client_options(PKI), True, protocol.Factory.forProtocol(App), server.clock
    )
    sp, cp = server.factory.buildProtocol(None), client.buildProtocol(None)
    pump = iosim.connect(
        sp, iosim.makeFakeServer(sp), cp, iosim.makeFakeClient(cp), greet=False,
        clock=server.clock,
    )
    assert stats.connections == 1 and stats.handshakes == 0
    sources = MetricSources()
    sources.add_tls(stats)  # an exporter added while the handshake is under way
    pump.flush()
    assert stats.handshakes == 1
    found = samples(sources)
    assert value(found, "membio_tls_handshake_duration_seconds_count") == 0
    assert value(found, "membio_tls_handshake_duration_seconds_sum") == 0
    assert value(
        found, "membio_tls_handshakes_total", version="unknown", cipher="unknown",
        group="unknown",
    ) == 1
    # The next connection starts with details on: timed and labelled.
    server.handshake(client_options(PKI))
    found = samples(sources)
    assert value(found, "membio_tls_handshake_duration_seconds_count") == 1
    assert 0 <= value(found, "membio_tls_handshake_duration_seconds_sum") < 5


def test_details_cost_nothing_until_an_exporter_asks() -> None:
    assert TLSStats().detail is None
    stats = TLSStats()
    Server(stats).handshake(client_options(PKI))
    assert stats.handshakes == 1 and stats.detail is None


@pytest.mark.parametrize(
    ("reason", "kind"),
    [
        ("handshake timeout", "timeout"),
        ("plain HTTP on the TLS port", "plain_http"),
        ("http request", "plain_http"),
        ("not TLS", "not_tls"),
        ("wrong version number", "not_tls"),
        ("connection closed without close_notify during the handshake", "peer_closed"),
        ("unsupported protocol", "protocol_version"),
        ("tlsv1 alert protocol version", "protocol_version"),
        ("no shared cipher", "no_shared_cipher"),
        ("no suitable signature algorithm", "no_shared_cipher"),
        ("tlsv1 alert no application protocol", "no_application_protocol"),
        ("peer did not return a certificate", "no_client_certificate"),
        ("tlsv13 alert certificate required", "no_client_certificate"),
        ("certificate verify failed: unable to get local issuer certificate",
         "certificate_verify_failed"),
        ("tlsv1 alert unknown ca", "peer_rejected_certificate"),
        ("sslv3 alert certificate expired", "peer_rejected_certificate"),
        ("sslv3 alert bad certificate", "peer_rejected_certificate"),
        ("tlsv1 alert decode error", "peer_alert"),
        # A callback's message may say anything: the callback rule comes first.
        ("no certificate for 'x.test': handshake timeout (LookupError in a TLS callback)",
         "callback_error"),
        ("something OpenSSL 5 will say", "other"),
    ],
)
def test_failure_reasons_map_to_a_fixed_vocabulary(reason: str, kind: str) -> None:
    assert failure_kind(reason) == kind
    assert kind in FAILURE_KINDS


def test_limits_reloads_and_certificates() -> None:
    limit = SimpleNamespace(maximum=100, refused=3)
    reloader = SimpleNamespace(reloads=4, failures=1, renewals=2, renewal_failures=1)
    expiry = datetime.datetime(2031, 5, 4, 12, 0, tzinfo=datetime.UTC)

    def certificate(path: str, *names: str) -> ServerCertificate:
        return ServerCertificate(
            cert_path=Path(path), key_path=Path(path + ".key"), trust_path=Path(path),
            fingerprint_sha256="AB", names=names, not_after=expiry, generated=False,
        )

    sources = MetricSources()
    sources.add_limit(limit)
    sources.add_reloader(reloader)
    sources.add_certificates(
        lambda: [certificate("/etc/tls/a.pem", "a.test", "www.a.test"),
                 certificate("/etc/tls/b.pem", "b.test"),
                 certificate("/etc/tls/a.pem", "a.test", "www.a.test")]  # once only
    )
    found = samples(sources)
    assert value(found, "membio_connections_refused_total") == 3
    assert value(found, "membio_connections_max") == 100
    assert value(found, "membio_certificate_reloads_total", result="ok") == 4
    assert value(found, "membio_certificate_reloads_total", result="failed") == 1
    assert value(found, "membio_certificate_renewals_total", result="ok") == 2
    assert value(found, "membio_certificate_renewals_total", result="failed") == 1
    assert value(
        found, "membio_certificate_not_after_timestamp_seconds",
        file="/etc/tls/a.pem", names="a.test,www.a.test",
    ) == expiry.timestamp()
    assert value(
        found, "membio_certificate_not_after_timestamp_seconds",
        file="/etc/tls/b.pem", names="b.test",
    ) == expiry.timestamp()
    limit.refused = 5
    assert value(samples(sources), "membio_connections_refused_total") == 5, "read at scrape"


# -- --workers: the parent's sum ---------------------------------------------------


class FakeReactor(Clock):
    """A clock that also keeps readers and system event triggers."""

    def __init__(self) -> None:
        super().__init__()
        self.readers: list[Any] = []
        self.triggers: list[Any] = []

    def addReader(self, reader: Any) -> None:
        self.readers.append(reader)

    def removeReader(self, reader: Any) -> None:
        # As real reactors: removing a reader that is not there is harmless.
        if reader in self.readers:
            self.readers.remove(reader)

    def addSystemEventTrigger(self, phase: str, event: str, call: Any) -> None:
        self.triggers.append((phase, event, call))


def worker_collector(stats: TLSStats) -> MetricSources:
    sources = MetricSources()
    sources.add_tls(stats)
    return sources


def read_until(reader: _Reader, condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "nothing from the worker in time"
        select.select([reader.fileno()], [], [], 0.1)
        reader.doRead()


def in_process_link(metrics: WorkerMetrics) -> tuple[WorkerLink, _Reader, socket.socket]:
    """A link whose 'worker' is this process: the parent end read by hand."""
    link = metrics.before_fork()
    link.pid = 1
    return link, _Reader(link), link._worker_end


def test_the_parent_sums_its_workers_and_keeps_the_counters_of_ended_ones() -> None:
    metrics = WorkerMetrics(reactor=FakeReactor())
    parent = MetricSources()
    parent.add_families(metrics)
    one, two = TLSStats(), TLSStats()
    _, reader1, end1 = in_process_link(metrics)
    _, reader2, end2 = in_process_link(metrics)
    for stats, connections, active, failures in ((one, 10, 2, 1), (two, 5, 1, 2)):
        stats.connections, stats.active = connections, active
        stats.failed["handshake timeout"] = failures
    end1.send(encode_snapshot(worker_collector(one)))
    end2.send(encode_snapshot(worker_collector(two)))
    reader1.doRead()
    reader2.doRead()
    found = samples(parent)
    assert value(found, "membio_workers_reporting") == 2
    assert value(found, "membio_tls_connections_total") == 15
    assert value(found, "membio_tls_connections_active") == 3
    assert value(found, "membio_tls_handshakes_failed_total", reason="timeout") == 3
    assert value(found, "membio_tls_handshake_duration_seconds_bucket", le="+Inf") == 0

    # Worker 1 reports once more, then dies: its counters stay, its gauges go.
    one.connections, one.active = 12, 0
    end1.send(encode_snapshot(worker_collector(one)))
    end1.close()
    read_until(reader1, lambda: metrics.reporting == 1)
    found = samples(parent)
    assert value(found, "membio_workers_reporting") == 1
    assert value(found, "membio_tls_connections_total") == 17
    assert value(found, "membio_tls_connections_active") == 1
    assert value(found, "membio_tls_handshakes_failed_total", reason="timeout") == 3

    # Its replacement starts from zero: the sum never goes down.
    _, reader3, end3 = in_process_link(metrics)
    end3.send(encode_snapshot(worker_collector(TLSStats(connections=1, active=1))))
    reader3.doRead()
    found = samples(parent)
    assert value(found, "membio_tls_connections_total") == 18
    assert value(found, "membio_tls_connections_active") == 2
    for end in (end2, end3):
        end.close()


def test_a_bad_snapshot_is_ignored_with_one_line() -> None:
    from twisted.logger import LogEvent, globalLogPublisher

    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    try:
        metrics = WorkerMetrics(reactor=FakeReactor())
        _, reader, end = in_process_link(metrics)
        end.send(b"not json")
        end.send(b"[[1]]")
        reader.doRead()
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert metrics.reporting == 0
    assert [event.get("event_name") for event in events] == ["metrics_snapshot_invalid"]
    end.close()


def test_a_forked_worker_reports_until_it_exits() -> None:
    """A real fork(): the worker's snapshots, its last one at shutdown, then EOF."""
    reactor = FakeReactor()
    metrics = WorkerMetrics(reactor=reactor)
    parent = MetricSources()
    parent.add_families(metrics)
    link = metrics.before_fork()
    pid = os.fork()
    if pid == 0:  # the worker
        status = 1
        try:
            worker_reactor = FakeReactor()
            stats = TLSStats(connections=3, active=3)
            reporter = link.in_worker(worker_collector(stats), worker_reactor, interval=1.0)
            assert isinstance(reporter, SnapshotReporter)
            stats.connections, stats.active = 8, 1
            worker_reactor.advance(1.0)  # the second snapshot
            stats.connections, stats.active = 9, 0
            for phase, event, call in worker_reactor.triggers:
                assert (phase, event) == ("after", "shutdown")
                call()  # the last snapshot, then the channel closes
            status = 0
        finally:
            os._exit(status)
    link.in_parent(pid)
    (reader,) = reactor.readers
    seen: list[float] = []

    def collect() -> bool:
        found = samples(parent)
        key = ("membio_tls_connections_total", ())
        if key in found and (not seen or seen[-1] != found[key]):
            seen.append(found[key])
        return not reactor.readers  # EOF: the worker is gone

    read_until(reader, collect)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    found = samples(parent)
    assert value(found, "membio_tls_connections_total") == 9, "the last snapshot counts"
    assert value(found, "membio_workers_reporting") == 0
    # No worker left to say how many connections it holds: no gauge at all.
    assert ("membio_tls_connections_active", ()) not in found
    assert seen and seen[-1] == 9


# -- /metrics over HTTP ---------------------------------------------------------------


@pytest.fixture
def running_service() -> Iterator[list[Any]]:
    started: list[Any] = []
    yield started
    for service in started:
        if service.running:
            service.stopService()


@pytest_twisted.inlineCallbacks
def test_metrics_service_serves_the_registry_on_an_endpoint(
    running_service: list[Any],
) -> Any:
    from twisted.internet import reactor
    from twisted.internet.threads import deferToThread

    stats = TLSStats(connections=42)
    sources = MetricSources()
    sources.add_tls(stats)
    service = metrics_service("tcp:0:interface=127.0.0.1", sources.registry())
    service.startService()
    running_service.append(service)
    port = yield service._waitingForPort
    number = port.getHost().port

    def fetch(path: str) -> tuple[str, str]:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{number}{path}", timeout=10) as reply:
            return reply.headers.get("Content-Type", ""), reply.read().decode()

    content_type, text = yield deferToThread(fetch, "/metrics")
    assert content_type.startswith("text/plain")
    found = {
        sample.name: sample.value
        for family in text_string_to_metric_families(text) for sample in family.samples
    }
    assert found["membio_tls_connections_total"] == 42
    _, root = yield deferToThread(fetch, "/")
    assert "/metrics" in root
    yield service.stopService()
    assert reactor.running


def test_metrics_service_rejects_a_bad_endpoint_description() -> None:
    with pytest.raises(ValueError):
        metrics_service("nonsense-endpoint:1", MetricSources().registry())


def test_a_collector_is_what_prometheus_client_expects() -> None:
    collector: Collector = MetricSources()
    assert list(collector.collect()) == []
