"""
The serving layer: the one way this project serves TLS, under every entry
point (the ``membio:`` endpoint, ``twistd membio-https``, ``twistd
membio-tls`` and their ``--workers`` parents).

What this layer is for: from a server's TLS settings to listeners that
serve TLS -- where the certificates come from and how they are reloaded,
how a certificate becomes an SSL context, SNI, connection limits, the
listening endpoints and the one-line start-up errors, and the ``membio:``
endpoint strings.  A feature added here reaches all three entry points.

What it may import: the ``tls`` and ``certs`` layers (through their faces),
Twisted, pyOpenSSL and cryptography.  It never imports ``workers``,
``https`` or ``proxy``: those are built on it.
"""

from ._context import build_server_context
from ._endpoint import (
    DEFAULT_BACKLOG,
    TLSServerEndpoint,
    parse_client,
    parse_server,
    resolve_certificate,
)
from ._limits import BURST_GAP, BURST_REPORT_EVERY, ConnectionLimit, LimitedEndpoint
from ._listeners import (
    DEFAULT_INTERFACE,
    DEFAULT_PORT,
    TLS_PREFIXES,
    Listener,
    endpoint_from,
    parse_interface,
    parse_port,
    tcp_endpoint,
)
from ._reload import DEFAULT_POLL_INTERVAL, CertificateReloader
from ._sni import CertificateFiles, CertificateSet, TLSSetup, load_client_ca, scan_sni_dir
from ._startup_errors import StartupError, exit_status_one, exit_with_message, listen_error

__all__ = [
    "BURST_GAP",
    "BURST_REPORT_EVERY",
    "DEFAULT_BACKLOG",
    "DEFAULT_INTERFACE",
    "DEFAULT_POLL_INTERVAL",
    "DEFAULT_PORT",
    "TLS_PREFIXES",
    "CertificateFiles",
    "CertificateReloader",
    "CertificateSet",
    "ConnectionLimit",
    "LimitedEndpoint",
    "Listener",
    "StartupError",
    "TLSServerEndpoint",
    "TLSSetup",
    "build_server_context",
    "endpoint_from",
    "exit_status_one",
    "exit_with_message",
    "listen_error",
    "load_client_ca",
    "parse_client",
    "parse_interface",
    "parse_port",
    "parse_server",
    "resolve_certificate",
    "scan_sni_dir",
    "tcp_endpoint",
]
