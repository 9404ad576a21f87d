"""
Operations: what a server tells the people who run it.

What this layer is for: turning what the TLS and certificate layers
already know into the three things operators of Caddy, nginx or HAProxy
expect:

* **Prometheus metrics** (`MetricSources`, `metrics_service`): a collector
  over the counters the server keeps anyway (`TLSStats`, the connection
  limit, the certificate reloader, the certificates served), read at
  scrape time, plus per-handshake details recorded only when metrics are
  on; `WorkerMetrics` sums the counters of ``--workers`` processes in the
  parent.
* **Certificate expiry warnings** (`ExpiryWatch`): one log line per
  certificate at 30, 7 and 1 day(s) before it expires, an error once it
  has.
* **JSON logs** (`json_log_observer` for ``twistd --logger``,
  `with_log_format` for a ``--log-format`` option): one object per event
  with stable field names.

What it may import: the ``tls`` layer (its counters, `TLSStats`) and the
``certs`` layer, through their faces; Twisted and ``prometheus_client``.
It never imports the serving layer, the workers pool or the applications
(they import it, to wire these pieces to their options).  Connection limits and
reloaders are read through small protocols (`RefusalCounter`,
`ReloadCounters`), certificates through a callable returning
``ServerCertificate``s, so any certificate source can be watched.
"""

from ._collector import FamilySource, MetricSources, RefusalCounter, ReloadCounters
from ._expiry import CHECK_INTERVAL, EXPIRY_WARNINGS, ExpiryWatch
from ._handshakes import DURATION_BUCKETS, HandshakeDetails
from ._http import listen_metrics, metrics_resource, metrics_service
from ._jsonlog import LogFormat, format_json_event, json_log_observer, with_log_format
from ._vocabulary import FAILURE_KINDS, failure_kind
from ._workers import SNAPSHOT_INTERVAL, SnapshotReporter, WorkerLink, WorkerMetrics

__all__ = [
    "CHECK_INTERVAL",
    "DURATION_BUCKETS",
    "EXPIRY_WARNINGS",
    "FAILURE_KINDS",
    "SNAPSHOT_INTERVAL",
    "ExpiryWatch",
    "FamilySource",
    "HandshakeDetails",
    "LogFormat",
    "MetricSources",
    "RefusalCounter",
    "ReloadCounters",
    "SnapshotReporter",
    "WorkerLink",
    "WorkerMetrics",
    "failure_kind",
    "format_json_event",
    "json_log_observer",
    "listen_metrics",
    "metrics_resource",
    "metrics_service",
    "with_log_format",
]
