"""
Our counters as Prometheus metrics, read when Prometheus asks.

`MetricSources` is a registry of the objects a server already keeps
counters in, and a ``prometheus_client`` collector over them: the TLS
factories' `TLSStats` (one object shared by every listener of a server),
the connection limit, the certificate reloader, the certificates being
served, and (in a ``--workers`` parent) what the workers reported.  Nothing
is counted twice and nothing on the per-record path changes: each scrape
reads the integers those objects already keep and turns them into metric
families.  Only the per-handshake details (version, cipher, group,
duration) need recording, by the `HandshakeDetails` that `add_tls`
installs.

Scrapes run in a thread of the reactor's pool (``MetricsResource`` is a
WSGI application): every read here is a single attribute load or a copy of
a dict or list, which CPython makes atomic, so a scrape never sees a
container change size under it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Final, Protocol

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import CollectorRegistry
from prometheus_client.utils import floatToGoString

from ..certs import ServerCertificate
from ..tls import TLSStats
from ._handshakes import HandshakeDetails, details_of
from ._vocabulary import FAILURE_KINDS, failure_kind

__all__ = ["PREFIX", "FamilySource", "MetricSources", "RefusalCounter", "ReloadCounters"]

#: Every metric name starts with this (Prometheus' convention: the
#: exporter's name, so that metrics from different programs never clash).
PREFIX: Final = "membio"

#: The label value of handshakes completed before details were recorded.
UNKNOWN: Final = "unknown"


class RefusalCounter(Protocol):
    """A connection limit (``_limits.ConnectionLimit``)."""

    maximum: int
    refused: int


class ReloadCounters(Protocol):
    """A certificate source (``serving.CertificateSource``) and its reload counters."""

    reloads: int
    failures: int
    renewals: int
    renewal_failures: int


class FamilySource(Protocol):
    """Anything that yields ready metric families (the workers' sums)."""

    def families(self) -> Iterable[Metric]: ...


class MetricSources:
    """
    What a server exports, and the collector that exports it.

    Add sources once, when the server is built; `registry` gives the
    ``CollectorRegistry`` to serve (see `metrics_service`).
    """

    def __init__(self) -> None:
        self._tls: list[TLSStats] = []
        self._limits: list[RefusalCounter] = []
        self._reloaders: list[ReloadCounters] = []
        self._certificates: list[Callable[[], Iterable[ServerCertificate]]] = []
        self._families: list[FamilySource] = []

    # -- registering -----------------------------------------------------------

    def add_tls(self, stats: TLSStats) -> None:
        """
        Export C{stats} (add each shared object once) and start recording
        per-handshake details in it.
        """
        details_of(stats)
        if not any(known is stats for known in self._tls):
            self._tls.append(stats)

    def add_limit(self, limit: RefusalCounter) -> None:
        """Export the connections C{limit} refused, and its maximum."""
        self._limits.append(limit)

    def add_reloader(self, reloader: ReloadCounters) -> None:
        """Export C{reloader}'s reloads and renewals."""
        self._reloaders.append(reloader)

    def add_certificates(self, certificates: Callable[[], Iterable[ServerCertificate]]) -> None:
        """Export the expiry of the certificates C{certificates()} returns at each scrape."""
        self._certificates.append(certificates)

    def add_families(self, source: FamilySource) -> None:
        """Export whatever C{source} yields (a ``--workers`` parent: its workers' sums)."""
        self._families.append(source)

    def registry(self) -> CollectorRegistry:
        """A registry holding only this collector (no process or Python metrics)."""
        registry = CollectorRegistry()
        registry.register(self)
        return registry

    # -- the collector ---------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        if self._tls:
            yield from _tls_families(self._tls)
        if self._limits:
            yield from _limit_families(self._limits)
        if self._reloaders:
            yield from _reload_families(self._reloaders)
        if self._certificates:
            yield _certificate_family(self._certificates)
        for source in self._families:
            yield from source.families()


def _name(suffix: str) -> str:
    return f"{PREFIX}_{suffix}"


def _tls_families(all_stats: list[TLSStats]) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        _name("tls_connections_active"), "TLS connections open now.",
        value=sum(stats.active for stats in all_stats),
    )
    yield CounterMetricFamily(
        _name("tls_connections"), "TLS connections accepted since the start.",
        value=sum(stats.connections for stats in all_stats),
    )
    details = [details_of(stats) for stats in all_stats]
    yield _handshakes(all_stats, details)
    yield CounterMetricFamily(
        _name("tls_handshakes_resumed"),
        "Completed handshakes that resumed an earlier session (ticket or session id).",
        value=sum(stats.resumed for stats in all_stats),
    )
    failed = CounterMetricFamily(
        _name("tls_handshakes_failed"),
        "Failed handshakes by kind of reason (a fixed set: see README, 'other' for the rest).",
        labels=["reason"],
    )
    by_kind: Counter[str] = Counter({kind: 0 for kind in FAILURE_KINDS})
    for stats in all_stats:
        for reason, count in dict(stats.failed).items():
            by_kind[failure_kind(reason)] += count
    for kind in FAILURE_KINDS:
        failed.add_metric([kind], by_kind[kind])
    yield failed
    yield _durations(details)
    yield CounterMetricFamily(
        _name("tls_received_bytes"), "Ciphertext bytes read from the network.",
        value=sum(stats.bytes_received for stats in all_stats),
    )
    yield CounterMetricFamily(
        _name("tls_sent_bytes"), "Ciphertext bytes written to the network.",
        value=sum(stats.bytes_sent for stats in all_stats),
    )
    yield CounterMetricFamily(
        _name("tls_plain_http_answered"),
        "Plain-HTTP requests on the TLS port answered with the https:// URL "
        "(also counted as failed handshakes, reason plain_http).",
        value=sum(stats.plain_http_answered for stats in all_stats),
    )


def _handshakes(all_stats: list[TLSStats], details: list[HandshakeDetails]) -> Metric:
    family = CounterMetricFamily(
        _name("tls_handshakes"),
        "Completed handshakes by TLS version, cipher and key-exchange group.",
        labels=["version", "cipher", "group"],
    )
    parameters: Counter[tuple[str, str, str]] = Counter()
    for detail in details:
        parameters.update(dict(detail.parameters))
    # Handshakes completed before details were recorded keep the total right.
    unknown = sum(stats.handshakes for stats in all_stats) - sum(parameters.values())
    if unknown > 0:
        parameters[(UNKNOWN, UNKNOWN, UNKNOWN)] += unknown
    for labels, count in sorted(parameters.items()):
        family.add_metric(list(labels), count)
    return family


def _durations(details: list[HandshakeDetails]) -> Metric:
    bounds = details[0].bounds
    counts = [0] * (len(bounds) + 1)
    total = 0.0
    for detail in details:
        if detail.bounds != bounds:
            raise ValueError("every HandshakeDetails of one server must use the same buckets")
        for index, count in enumerate(list(detail.bucket_counts)):
            counts[index] += count
        total += detail.duration_sum
    buckets: list[tuple[str, float]] = []
    cumulative = 0
    for bound, count in zip((*bounds, float("inf")), counts, strict=True):
        cumulative += count
        le = floatToGoString(bound)  # type: ignore[no-untyped-call]  # untyped there
        buckets.append((le, cumulative))
    family = HistogramMetricFamily(
        _name("tls_handshake_duration_seconds"),
        "From connection start to handshake completion, for completed handshakes.",
    )
    family.add_metric([], buckets, sum_value=total)
    return family


def _limit_families(limits: list[RefusalCounter]) -> Iterator[Metric]:
    yield CounterMetricFamily(
        _name("connections_refused"),
        "Connections closed at once because the connection limit was reached.",
        value=sum(limit.refused for limit in limits),
    )
    yield GaugeMetricFamily(
        _name("connections_max"), "The connection limit (--max-connections).",
        value=sum(limit.maximum for limit in limits),
    )


def _reload_families(reloaders: list[ReloadCounters]) -> Iterator[Metric]:
    reloads = CounterMetricFamily(
        _name("certificate_reloads"),
        "Certificate reloads (SIGHUP, changed files, renewals) by result.",
        labels=["result"],
    )
    reloads.add_metric(["ok"], sum(reloader.reloads for reloader in reloaders))
    reloads.add_metric(["failed"], sum(reloader.failures for reloader in reloaders))
    yield reloads
    renewals = CounterMetricFamily(
        _name("certificate_renewals"),
        "Of the reloads, those renewing a certificate that was due, by result.",
        labels=["result"],
    )
    renewals.add_metric(["ok"], sum(reloader.renewals for reloader in reloaders))
    renewals.add_metric(["failed"], sum(reloader.renewal_failures for reloader in reloaders))
    yield renewals


def _certificate_family(
    sources: list[Callable[[], Iterable[ServerCertificate]]],
) -> Metric:
    family = GaugeMetricFamily(
        _name("certificate_not_after_timestamp_seconds"),
        "When each certificate being served expires (its notAfter), in Unix time.",
        labels=["file", "names"],
    )
    seen: set[tuple[str, str]] = set()
    for certificates in sources:
        for certificate in certificates():
            labels = (str(certificate.cert_path), ",".join(certificate.names))
            if labels not in seen:
                seen.add(labels)
                family.add_metric(list(labels), certificate.not_after.timestamp())
    return family
