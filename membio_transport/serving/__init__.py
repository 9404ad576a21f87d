"""
The serving layer: the one way this project serves TLS, under every entry
point (the ``membio:`` endpoint, ``twistd membio-https``, ``twistd
membio-tls`` and their ``--workers`` parents).

What this layer is for: from a server's TLS settings to listeners that
serve TLS.  ``_settings`` is the one table of settings (name, flag,
endpoint key, default, parser: ``_values``), turned into twistd options by
``_commandline``; `TLSServing` (``_server``) builds from them
the certificate source and its lifecycle (``_source``: generated leaf
renewed in process, files reloaded on change and on SIGHUP through
``_signals``, the SNI directory of ``_sni``), the contexts (``_context``),
the factory policy and the connection limit (``_limits``), the server's
operations (``_operations``: expiry warnings over every certificate it
holds, ``/metrics`` with the ``metrics`` setting, a ``--workers`` parent's
sums), and wraps endpoints (``_tlsendpoint``).  Listeners and the one-line start-up errors
(``_listeners``, ``_startup_errors``) and the ``membio:`` endpoint strings
(``_endpoint``) are here too.  Public certificates: the ACME rows of the
table (``_acme_settings``) and `AcmeServing` (``_acme``), which wires the
ACME layer's manager, responders and gate into the certificate source.  A
feature added here reaches all three entry points.

What it may import: the ``tls`` and ``certs`` layers, ``acme`` (only when
ACME is asked for, ``--acme-email`` or ``--acme-directory``: it is the
optional extra ``membio-transport[acme]``), and ``observe``, through their
faces; Twisted, pyOpenSSL and cryptography.  It never imports ``workers``,
``https`` or ``proxy``: those are built on it.
"""

from ._commandline import ConfigurationError, TLSOptions
from ._context import build_server_context
from ._endpoint import parse_client, parse_server
from ._limits import BURST_GAP, BURST_REPORT_EVERY, ConnectionLimit, LimitedEndpoint
from ._listeners import (
    DEFAULT_INTERFACE,
    DEFAULT_PORT,
    TLS_PREFIXES,
    Listener,
    endpoint_from,
    names_for_interface,
    parse_interface,
    parse_port,
    tcp_endpoint,
)
from ._server import TLSServing
from ._settings import (
    DEFAULT_BACKLOG,
    DEFAULT_POLL_INTERVAL,
    ENTRY_POINTS,
    SETTINGS,
    EntryPoint,
    Setting,
    TLSSettings,
    flag_of,
    key_of,
    parse_values,
    setting,
)
from ._signals import SIGHUP, SignalDispatcher
from ._sni import CertificateFiles, CertificateSet, load_client_ca, scan_sni_dir
from ._source import (
    RENEWAL_RETRY,
    CertificateSource,
    GeneratedCertificate,
    UserCertificate,
)
from ._startup_errors import StartupError, exit_status_one, exit_with_message, listen_error
from ._tlsendpoint import ServingPort, TLSServerEndpoint
from ._values import SettingError, said

__all__ = [
    "BURST_GAP",
    "BURST_REPORT_EVERY",
    "DEFAULT_BACKLOG",
    "DEFAULT_INTERFACE",
    "DEFAULT_POLL_INTERVAL",
    "DEFAULT_PORT",
    "ENTRY_POINTS",
    "RENEWAL_RETRY",
    "SETTINGS",
    "SIGHUP",
    "TLS_PREFIXES",
    "CertificateFiles",
    "CertificateSet",
    "CertificateSource",
    "ConfigurationError",
    "ConnectionLimit",
    "EntryPoint",
    "GeneratedCertificate",
    "LimitedEndpoint",
    "Listener",
    "ServingPort",
    "Setting",
    "SettingError",
    "SignalDispatcher",
    "StartupError",
    "TLSOptions",
    "TLSServerEndpoint",
    "TLSServing",
    "TLSSettings",
    "UserCertificate",
    "build_server_context",
    "endpoint_from",
    "exit_status_one",
    "exit_with_message",
    "flag_of",
    "key_of",
    "listen_error",
    "load_client_ca",
    "names_for_interface",
    "parse_client",
    "parse_interface",
    "parse_port",
    "parse_server",
    "parse_values",
    "said",
    "scan_sni_dir",
    "setting",
    "tcp_endpoint",
]
