"""
``twistd membio-https``: a zero-config HTTPS server on membio-transport TLS.

``twistd -n membio-https`` serves a page describing the visitor's TLS
connection on https://localhost:8443/, with a certificate generated on the
first run (and reused afterwards) that clients trust once.  ``--path``
serves files instead, ``--cert``/``--key`` use your own certificate.

Configuration errors (missing or unsafe files, wrong key password, a port
in use or needing privileges) end the program with one line on standard
error and exit status 1, not with a traceback.

This is the module the plugin's ServiceMaker names: it holds `makeService`
and re-exports `Options`.  The parts live in their own modules: the command
line in `_https_options`, the listeners in `_listeners`, the service in
`_https_service` (with its `_Plan` in `_https_plan`), the start-up log in
`_startup_log`, the one-line start-up errors in `_startup_errors` and the
HTTP-to-HTTPS redirect in `_http_redirect`.
"""

from __future__ import annotations

import ipaddress

from twisted.application.service import Service

from ._certs import ServerCertificate
from ._http_redirect import _RedirectToHTTPS as _RedirectToHTTPS
from ._https_options import Options
from ._https_plan import _alpn_protocols as _alpn_protocols
from ._https_plan import _Plan
from ._https_service import HTTPSService
from ._listeners import _TLS_PREFIXES as _TLS_PREFIXES
from ._listeners import DEFAULT_PORT
from ._listeners import _endpoint_from as _endpoint_from
from ._listeners import _Listener as _Listener
from ._listeners import _parse_interface as _parse_interface
from ._listeners import _parse_port as _parse_port
from ._listeners import _tcp_endpoint as _tcp_endpoint
from ._listeners import _tcp_label as _tcp_label
from ._site import SecureSite
from ._startup_errors import StartupError
from ._startup_errors import _exit_status_one as _exit_status_one
from ._startup_errors import _exit_with_message as _exit_with_message
from ._startup_errors import _listen_error as _listen_error

__all__ = ["DEFAULT_PORT", "HTTPSService", "Options", "StartupError", "makeService"]


def makeService(options: Options) -> Service:
    """Build the service twistd runs from parsed L{Options}."""
    if options["workers"]:
        from ._workers_cli import https_service

        return https_service(options)
    parent = getattr(options, "parent", None)
    daemon = bool(parent is not None and not parent.get("nodaemon", True))
    certificate: ServerCertificate = options["certificate"]
    generated_in = None if options["cert"] else certificate.cert_path.parent
    redirect_listener: _Listener | None = options["redirect_listener"]
    interface = options["interface"]
    # Where redirects point when a request has no usable Host header.
    address = ipaddress.ip_address(interface)
    if address.is_loopback or address.is_unspecified:
        default_host = "localhost"
    else:
        default_host = f"[{address}]" if address.version == 6 else str(address)
    plan = _Plan(
        listeners=options["listeners"],
        redirect=redirect_listener,
        certificate=certificate,
        generated_in=generated_in,
        profile=options["profile"],
        content=(
            "the TLS information page" if options["path"] is None
            else f"files from {options['path']}"
        ),
        interface=interface,
        command=options.command_name(),
        daemon=daemon,
        alpn=options["alpn_list"],
        notes=options.hardening_summary(),
        helpers=options.hardening_services(),
    )
    site = SecureSite(options["resource"], hsts_max_age=options["hsts_max_age"])
    redirect = None if redirect_listener is None else _RedirectToHTTPS(default_host)
    return HTTPSService(plan, site, redirect)
