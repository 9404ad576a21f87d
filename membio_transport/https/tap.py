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
`_https_service` (with its `Plan` in `_https_plan`), the start-up log in
`_startup_log`, the one-line start-up errors in `_startup_errors` and the
HTTP-to-HTTPS redirect in `_http_redirect`.
"""

from __future__ import annotations

import ipaddress

from twisted.application.service import Service

from ..certs import ServerCertificate
from ..serving import DEFAULT_PORT, Listener, StartupError
from ..tls import format_host
from ._options import Options
from ._plan import Plan
from ._redirect import RedirectToHTTPS
from ._service import HTTPSService
from ._site import SecureSite

__all__ = ["DEFAULT_PORT", "HTTPSService", "Options", "StartupError", "makeService", "site_of"]


def makeService(options: Options) -> Service:
    """Build the service twistd runs from parsed L{Options}."""
    if options["workers"]:
        from ._workers import https_service

        return https_service(options, lambda: site_of(options))
    parent = getattr(options, "parent", None)
    daemon = bool(parent is not None and not parent.get("nodaemon", True))
    certificate: ServerCertificate = options["certificate"]
    generated_in = None if options["cert"] else certificate.cert_path.parent
    redirect_listener: Listener | None = options["redirect_listener"]
    interface = options["interface"]
    # Where redirects point when a request has no usable Host header.
    address = ipaddress.ip_address(interface)
    if address.is_loopback or address.is_unspecified:
        default_host = "localhost"
    else:
        default_host = format_host(str(address))
    plan = Plan(
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
    redirect = None if redirect_listener is None else RedirectToHTTPS(default_host)
    return HTTPSService(plan, site_of(options), redirect)


def site_of(options: Options) -> SecureSite:
    """The site a process serves: the resource behind the security headers."""
    return SecureSite(options["resource"], hsts_max_age=options["hsts_max_age"])
