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
and `Options` (from `_options`).  The parts live in their own modules: the
command line in `_options` (the TLS options come from the serving layer's
settings table), HSTS and the HTTP ALPN protocols in `_web`, the service in
`_service` (with its `Plan` in `_plan`), the start-up log in
`_startup_log`, the HTTP-to-HTTPS redirect in `_redirect`, the site in
`_site` and `_info_page`, and ``--workers`` in `_workers`.
"""

from __future__ import annotations

from twisted.application.service import IService, Service

from ..certs import ServerCertificate
from ..observe import with_log_format
from ..serving import DEFAULT_PORT, Listener, StartupError, TLSServing
from ._options import Options
from ._plan import Plan
from ._redirect import RedirectToHTTPS, redirect_host
from ._service import HTTPSService
from ._site import SecureSite

__all__ = ["DEFAULT_PORT", "HTTPSService", "Options", "StartupError", "makeService", "site_of"]


def makeService(options: Options) -> IService:
    """Build the service twistd runs from parsed L{Options} (logging as --log-format says)."""
    serving: TLSServing = options["serving"]
    return with_log_format(_service(options), serving.settings.log_format)


def _service(options: Options) -> Service:
    if options["workers"]:
        from ._workers import https_service

        return https_service(options, lambda: site_of(options))
    parent = getattr(options, "parent", None)
    daemon = bool(parent is not None and not parent.get("nodaemon", True))
    serving: TLSServing = options["serving"]
    certificate: ServerCertificate = serving.certificate
    settings = serving.settings
    generated_in = None if serving.own_certificate else certificate.cert_path.parent
    redirect_listener: Listener | None = options["redirect_listener"]
    interface = options["interface"]
    plan = Plan(
        listeners=options["listeners"],
        redirect=redirect_listener,
        certificate=certificate,
        generated_in=generated_in,
        profile=settings.profile,
        content=(
            "the TLS information page" if options["path"] is None
            else f"files from {options['path']}"
        ),
        interface=interface,
        command=options.command_name(),
        daemon=daemon,
        alpn=list(settings.alpn),
        notes=notes_of(options),
        own_label=serving.certificate_label,
    )
    redirect = (
        None if redirect_listener is None else RedirectToHTTPS(redirect_host(interface))
    )
    return HTTPSService(plan, site_of(options), redirect, http_root=serving.http_resource)


def notes_of(options: Options) -> list[str]:
    """Start-up log lines about the TLS settings, and HSTS."""
    serving: TLSServing = options["serving"]
    notes = serving.summary()
    if options["hsts_max_age"] is not None:
        notes.insert(-1, f"Strict-Transport-Security: max-age={options['hsts_max_age']}")
    return notes


def site_of(options: Options) -> SecureSite:
    """The site a process serves: the resource behind the security headers."""
    return SecureSite(options["resource"], hsts_max_age=options["hsts_max_age"])
