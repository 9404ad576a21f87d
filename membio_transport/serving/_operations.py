"""
What a server tells the people who run it, wired the same way under every
entry point: Prometheus metrics (the ``metrics`` setting) and certificate
expiry warnings, from the ``observe`` layer.

`Operations` belongs to one `TLSServing` and runs with its lifecycle
(from the first listening port to the last, or as the ``--workers``
parent's service):

* **expiry**: an `ExpiryWatch` over every certificate the server holds now
  (the default one, generated or the user's, the other ``cert``/``key``
  pairs and the SNI directory's), at start, daily, at each threshold, and
  again after every reload or renewal;
* **metrics**: with ``metrics`` set, ``/metrics`` on that endpoint, with
  the server's TLS counters, its connection limit, its certificate source
  (reloads, renewals) and the expiry of every certificate it holds.  In a
  ``--workers`` parent, which serves no connection itself, the TLS and
  limit counters are the sum of what the workers report (`WorkerMetrics`);
  each worker sends its own (`fork_link`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..certs import ServerCertificate
from ..observe import ExpiryWatch, MetricSources, WorkerLink, WorkerMetrics, listen_metrics
from ..tls import TLSStats
from ._limits import ConnectionLimit
from ._source import CertificateSource

__all__ = ["ForkLink", "Operations"]

_log = Logger(namespace="membio_transport.observe")


class Operations:
    """
    Metrics and expiry warnings of one server.

    @param held: every certificate the server holds now.
    @param metrics: the endpoint description of ``/metrics``, or None.
    """

    def __init__(
        self,
        source: CertificateSource,
        stats: TLSStats,
        limit: ConnectionLimit | None,
        held: Callable[[], Iterable[ServerCertificate]],
        *,
        metrics: str | None,
        clock: Any,
        log_system: str,
    ) -> None:
        self.source = source
        self.stats = stats
        self.limit = limit
        self.held = held
        self.metrics = metrics
        self._clock = clock
        self._log_system = log_system
        self.expiry = ExpiryWatch(held, clock=clock, log_system=log_system)
        source.add_reload_hook(self.expiry.recheck)
        #: Set when this process is a ``--workers`` parent reporting its workers' sums.
        self.workers: WorkerMetrics | None = None
        self.port: IListeningPort | None = None
        self._listening: Deferred[IListeningPort] | None = None
        if metrics is not None:
            # Record handshake details from the start (before any fork, too).
            MetricSources().add_tls(stats)

    def for_workers(self) -> None:
        """This process forks workers that serve: export their sums, not our own counters."""
        if self.metrics is not None and self.workers is None:
            self.workers = WorkerMetrics(self._clock)

    # -- what is exported --------------------------------------------------------------

    def sources(self) -> MetricSources:
        """Everything this process exports at ``/metrics``."""
        sources = MetricSources()
        if self.workers is None:
            sources.add_tls(self.stats)
            if self.limit is not None:
                sources.add_limit(self.limit)
        else:
            sources.add_families(self.workers)
        sources.add_reloader(self.source)
        sources.add_certificates(self.held)
        return sources

    def worker_sources(self) -> MetricSources:
        """What a worker reports to its parent: its connections' counters, nothing else."""
        sources = MetricSources()
        sources.add_tls(self.stats)
        if self.limit is not None:
            sources.add_limit(self.limit)
        return sources

    # -- the lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        self.expiry.startService()
        if self.metrics is None or self._listening is not None:
            return
        listening = listen_metrics(
            self.metrics, self.sources().registry(), reactor=self._clock,
            system=self._log_system,
        )
        self._listening = listening
        listening.addCallbacks(self._listened, self._failed)

    def _listened(self, port: IListeningPort) -> None:
        if self._listening is None:  # stopped meanwhile
            port.stopListening()
            return
        self.port = port

    def _failed(self, failure: Failure) -> None:
        self._listening = None
        _log.error(
            "cannot serve metrics on {description}: {reason}",
            description=self.metrics, reason=failure.getErrorMessage(),
            log_system=self._log_system, event_name="metrics_listen_failed",
        )

    def stop(self) -> None:
        if self.expiry.running:
            self.expiry.stopService()
        port, self.port, self._listening = self.port, None, None
        if port is not None:
            port.stopListening()

    def fork_link(self) -> ForkLink | None:
        """For a ``--workers`` pool, before each fork: the new worker's channel, if any."""
        if self.workers is None:
            return None
        return ForkLink(self.workers.before_fork(), self.worker_sources)


class ForkLink:
    """One worker's metrics channel, as the pool's fork sequence calls it."""

    def __init__(self, link: WorkerLink, sources: Callable[[], MetricSources]) -> None:
        self.link = link
        self.sources = sources

    def in_parent(self, pid: int) -> None:
        self.link.in_parent(pid)

    def leave_parent(self) -> None:
        self.link.leave_parent()

    def in_worker(self, reactor: Any) -> None:
        self.link.in_worker(self.sources(), reactor)

    def close(self) -> None:
        self.link.close()
