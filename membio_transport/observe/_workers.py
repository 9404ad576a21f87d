"""
Metrics under ``--workers N``: the parent serves the sum over its workers.

Each worker process keeps its own counters (its own `TLSStats`, limit,
handshake details), while Prometheus scrapes one address, served by the
parent, which has no connections of its own.  Three ways to bring the
numbers together were weighed:

* ``prometheus_client``'s multiprocess mode: every process writes its
  metric objects to memory-mapped files that the scraping process sums.
  It works only for its own ``Counter``/``Gauge``/``Histogram`` objects,
  updated on every event (our counters are plain integers read at scrape
  time: "no new cost on the per-record path"), not for custom collectors,
  and needs a directory cleaned up after each dead worker.  Rejected.
* One series per worker, with a ``worker`` label: every family (the
  handshake table by version, cipher and group, the histogram's buckets)
  multiplied by N; and since a certificate reload replaces *every* worker,
  a pid label would start N new sets of series per reload, while a slot
  label would make each counter reset at each replacement.  What operators
  ask ("handshakes per second, failures by reason") is per server: the
  kernel picks the worker, and workers are interchangeable.  Rejected.
* **Chosen: workers push snapshots to the parent, which sums them.**  Each
  worker sends its collector's families every `SNAPSHOT_INTERVAL` over its
  own ``SOCK_SEQPACKET`` socket pair (one message per snapshot, so no
  framing, and end-of-file when the worker dies, whatever killed it); the
  parent keeps the latest snapshot of each worker and adds them up at
  scrape time.  When a worker ends, its last counters are kept ("retired")
  so that every ``_total`` stays monotonic across restarts and reloads,
  and its gauges leave the sum.  A scrape is at most one interval behind
  the workers, and a worker killed with SIGKILL loses at most its last
  interval of counts.  ``membio_workers_reporting`` says how many workers
  the sum covers.

How a pool uses it: ``link = metrics.before_fork()`` in the parent before
each ``fork()``; then ``link.in_parent(pid)`` in the parent and
``link.in_worker(sources, reactor)`` in the child, once its fresh reactor
is installed.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IReadDescriptor
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ._collector import PREFIX

__all__ = [
    "MAX_SNAPSHOT_BYTES",
    "SNAPSHOT_INTERVAL",
    "SnapshotReporter",
    "WorkerLink",
    "WorkerMetrics",
    "decode_snapshot",
    "encode_snapshot",
]

_log = Logger(namespace="membio_transport.observe")

#: Seconds between two snapshots of a worker.  Prometheus scrapes every
#: 15 s by default (rarely under 5 s), so a scrape is at most this far
#: behind; a snapshot of a few KiB per second per worker costs nothing.
SNAPSHOT_INTERVAL: Final = 1.0
#: Largest snapshot accepted.  Ours are a few KiB (a dozen families; the
#: handshake table grows with the versions, ciphers and groups a server
#: accepts, the failures table is fixed); this leaves room for hundreds of
#: SNI certificates and stays under the socket's default send buffer.
MAX_SNAPSHOT_BYTES: Final = 128 * 1024
#: Seconds a stopping worker may wait to hand over its last snapshot.
_FINAL_SEND_TIMEOUT: Final = 1.0
#: Family types whose samples only grow: kept after their worker ends.
_MONOTONIC: Final = frozenset({"counter", "histogram", "summary"})

_SampleKey = tuple[str, tuple[tuple[str, str], ...]]


@dataclass
class _Family:
    name: str
    kind: str
    documentation: str
    unit: str
    samples: dict[_SampleKey, float] = field(default_factory=dict)


def encode_snapshot(collector: Collector) -> bytes:
    """C{collector}'s families now, as one message."""
    families = [
        [
            metric.name, metric.type, metric.documentation, metric.unit,
            [[sample.name, sample.labels, sample.value] for sample in metric.samples],
        ]
        for metric in collector.collect()
    ]
    return json.dumps(families, separators=(",", ":")).encode()


def decode_snapshot(data: bytes) -> dict[str, _Family]:
    """
    The families of one message.

    @raise ValueError: not a snapshot (a bug, or a process we did not start).
    """
    try:
        raw = json.loads(data)
        families: dict[str, _Family] = {}
        for name, kind, documentation, unit, samples in raw:
            family = _Family(str(name), str(kind), str(documentation), str(unit))
            for sample_name, labels, value in samples:
                key = (str(sample_name), tuple(sorted((str(k), str(v)) for k, v in labels.items())))
                family.samples[key] = float(value)
            families[family.name] = family
    except (TypeError, ValueError, AttributeError) as error:
        raise ValueError(f"not a metrics snapshot: {error}") from error
    return families


class WorkerMetrics:
    """
    The parent's side: the sum of what its workers report, as metric
    families (add it to the parent's `MetricSources` with ``add_families``).
    """

    def __init__(self, reactor: Any = None) -> None:
        self._reactor = reactor
        self._lock = threading.Lock()
        self._links: list[WorkerLink] = []
        self._latest: dict[int, dict[str, _Family]] = {}  # by id(link)
        self._retired: dict[str, _Family] = {}
        self._complained = False

    @property
    def reactor(self) -> Any:
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor
        return self._reactor

    def before_fork(self) -> WorkerLink:
        """The channel of the worker about to be forked (parent, before ``fork()``)."""
        parent_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        parent_end.setblocking(False)
        worker_end.setblocking(False)
        link = WorkerLink(self, parent_end, worker_end)
        self._links.append(link)
        return link

    @property
    def reporting(self) -> int:
        """Workers whose snapshots are in the sum now."""
        with self._lock:
            return len(self._latest)

    # -- called by links, in the reactor thread ------------------------------

    def _received(self, link: WorkerLink, data: bytes) -> None:
        try:
            families = decode_snapshot(data)
        except ValueError as error:
            if not self._complained:
                self._complained = True
                _log.warn(
                    "ignoring a bad metrics snapshot from worker pid {pid}: {reason}",
                    pid=link.pid, reason=str(error), event_name="metrics_snapshot_invalid",
                )
            return
        with self._lock:
            self._latest[id(link)] = families

    def _ended(self, link: WorkerLink) -> None:
        """C{link}'s worker is gone: keep its counters, drop its gauges."""
        with self._lock:
            last = self._latest.pop(id(link), {})
            for family in last.values():
                if family.kind not in _MONOTONIC:
                    continue
                kept = self._retired.setdefault(
                    family.name,
                    _Family(family.name, family.kind, family.documentation, family.unit),
                )
                for key, value in family.samples.items():
                    kept.samples[key] = kept.samples.get(key, 0.0) + value
        if link in self._links:
            self._links.remove(link)

    def _forget_all(self) -> None:
        """In a new worker: close the parent's ends it inherited, touching no reactor."""
        for link in self._links:
            link._parent_end.close()
        self._links = []
        self._latest = {}
        self._retired = {}

    # -- FamilySource ---------------------------------------------------------

    def families(self) -> Iterator[Metric]:
        with self._lock:
            sources = [self._retired, *self._latest.values()]
            reporting = len(self._latest)
            totals: dict[str, _Family] = {}
            for source in sources:
                for family in source.values():
                    total = totals.setdefault(
                        family.name,
                        _Family(family.name, family.kind, family.documentation, family.unit),
                    )
                    for key, value in family.samples.items():
                        total.samples[key] = total.samples.get(key, 0.0) + value
        yield GaugeMetricFamily(
            f"{PREFIX}_workers_reporting",
            "Worker processes whose counters the other metrics sum (ended workers' counters "
            "are kept).",
            value=reporting,
        )
        for family in totals.values():
            metric = Metric(family.name, family.documentation, family.kind, family.unit)
            for (sample_name, labels), value in family.samples.items():
                metric.add_sample(sample_name, dict(labels), value)
            yield metric


class WorkerLink:
    """One worker's channel; made by `WorkerMetrics.before_fork`."""

    pid: int | None = None

    def __init__(
        self, owner: WorkerMetrics, parent_end: socket.socket, worker_end: socket.socket
    ) -> None:
        self._owner = owner
        self._parent_end = parent_end
        self._worker_end = worker_end

    def in_parent(self, pid: int) -> None:
        """After ``fork()``, in the parent: listen to worker C{pid}."""
        self.pid = pid
        self._worker_end.close()
        self._owner.reactor.addReader(_Reader(self))

    def leave_parent(self) -> None:
        """
        After ``fork()``, in the worker, before its fresh reactor replaces
        the parent's: close the parent's ends of every channel inherited
        (the fresh reactor then closes nothing of ours twice).
        """
        self._owner._forget_all()

    def in_worker(
        self,
        collector: Collector,
        reactor: Any,
        interval: float = SNAPSHOT_INTERVAL,
    ) -> SnapshotReporter:
        """
        After ``fork()``, in the worker, with its fresh reactor installed:
        send C{collector}'s snapshots to the parent from now until the
        reactor shuts down (a last one then).  Calls `leave_parent` if that
        was not done yet.
        """
        self._owner._forget_all()
        reporter = SnapshotReporter(self._worker_end, collector, reactor, interval)
        reporter.start()
        return reporter

    def close(self) -> None:
        """The fork failed: release both ends."""
        self._parent_end.close()
        self._worker_end.close()
        self._owner._ended(self)


@implementer(IReadDescriptor)
class _Reader:
    """Reads a worker's snapshots in the parent's reactor until the worker ends."""

    def __init__(self, link: WorkerLink) -> None:
        self.link = link
        self.sock = link._parent_end

    def fileno(self) -> int:
        return self.sock.fileno()

    def logPrefix(self) -> str:
        return "membio-worker-metrics"

    def doRead(self) -> None:
        while True:
            try:
                data = self.sock.recv(MAX_SNAPSHOT_BYTES)
            except BlockingIOError:
                return
            except OSError as error:
                self._end(Failure(error))
                return
            if not data:
                self._end(Failure(ConnectionDone("the worker ended")))
                return
            self.link._owner._received(self.link, data)

    def _end(self, reason: Failure) -> None:
        self.link._owner.reactor.removeReader(self)
        self.connectionLost(reason)

    def connectionLost(self, reason: Failure) -> None:
        """The worker ended (or the reactor is shutting down)."""
        if self.sock.fileno() < 0:
            return
        self.sock.close()
        self.link._owner._ended(self.link)


class SnapshotReporter:
    """The worker's side: a snapshot every C{interval} seconds, and one at the end."""

    def __init__(
        self, sock: socket.socket, collector: Collector, reactor: Any, interval: float
    ) -> None:
        self.sock = sock
        self.collector = collector
        self.reactor = reactor
        self._loop = LoopingCall(self.send)
        self._loop.clock = reactor
        self.interval = interval
        self._warned = False

    def start(self) -> None:
        self._loop.start(self.interval, now=True)
        # "after": the connections the worker drained on its way out are counted.
        self.reactor.addSystemEventTrigger("after", "shutdown", self.stop)

    def send(self, *, final: bool = False) -> None:
        """Send a snapshot now (dropped if the parent is not keeping up)."""
        if self.sock.fileno() < 0:
            return
        data = encode_snapshot(self.collector)
        if len(data) > MAX_SNAPSHOT_BYTES:
            if not self._warned:
                self._warned = True
                _log.warn(
                    "metrics snapshot of {size} bytes is over {limit}: not reported to the "
                    "parent", size=len(data), limit=MAX_SNAPSHOT_BYTES,
                    event_name="metrics_snapshot_too_large",
                )
            return
        try:
            if final:
                self.sock.settimeout(_FINAL_SEND_TIMEOUT)
            self.sock.send(data)
        except BlockingIOError:
            pass  # the parent is busy: the next snapshot supersedes this one
        except OSError:
            # The parent is gone (EPIPE, ECONNRESET) or too slow for the last one.
            self._shut()

    def stop(self) -> None:
        """Send the last snapshot and close the channel."""
        if self._loop.running:
            self._loop.stop()
        self.send(final=True)
        self._shut()

    def _shut(self) -> None:
        if self._loop.running:
            self._loop.stop()
        self.sock.close()
