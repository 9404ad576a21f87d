"""
The command line of ``twistd membio-https``: `Options` (the app's own
options on top of the TLS settings table, `serving.TLSOptions`), its help
text, and the checks that turn a command line into listeners, a resource
and the server's TLS (`serving.TLSServing`) -- or into one line on standard
error and exit status 1 -- before anything listens.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Final, TypeVar

from twisted.python import usage
from twisted.web.resource import Resource

from ..certs import KEY_PASSWORD_ENV
from ..serving import (
    DEFAULT_BACKLOG,
    DEFAULT_INTERFACE,
    DEFAULT_PORT,
    TLS_PREFIXES,
    ConfigurationError,
    Listener,
    TLSOptions,
    TLSServing,
    endpoint_from,
    names_for_interface,
    parse_interface,
    parse_port,
    tcp_endpoint,
)
from ..tls import format_host_port
from ..workers import LISTEN_BACKLOG, WORKER_OPTIONS, parse_worker_options
from ._info_page import TLSInfoPage
from ._web import check_http_alpn, default_alpn, hsts_arguments, hsts_max_age

_F = TypeVar("_F", bound=Callable[..., Any])


_DESCRIPTION: Final = f"""\
HTTPS server on membio-transport's TLS.  With no options it serves, on
https://localhost:{DEFAULT_PORT}/, a page showing the visitor's TLS version,
cipher, key-exchange group, SNI name, ALPN protocol and client certificate
(plain text for curl, HTML for browsers).  --path DIR serves files instead.

Without --cert, a certificate for localhost, 127.0.0.1, ::1, this host's name
and every --hostname is generated in the certificate directory, signed by a
local CA created there on first use, reused on later runs and renewed while
the server runs.  Trust the CA once: the start-up log says how for curl,
Python, the system store, Chromium and Firefox.  The password of an
encrypted --key comes from --key-password-file or the {KEY_PASSWORD_ENV}
environment variable.  Certificates are reloaded on SIGHUP and when their
files change.

Examples:
  twistd -n membio-https
  twistd -n membio-https --path ~/site --interface 0.0.0.0 --hostname box.lan
  twistd -n membio-https --cert chain.pem --key key.pem --port 443 \\
      --redirect-http 80
  twistd -n membio-https --listen unix:/run/web.sock --listen haproxy:tcp:8443
  twistd -n membio-https --port 8443 --workers 2 --grace 10
"""


def _doc(text: str) -> Callable[[_F], _F]:
    """Set a one-line docstring: Twisted prints opt_ docstrings verbatim."""

    def set_doc(function: _F) -> _F:
        function.__doc__ = text
        return function

    return set_doc


class Options(TLSOptions):
    synopsis = "[options]"
    entry_point = "membio-https"
    command: ClassVar[str] = "twistd membio-https"

    longdesc = ""  # see getUsage: Twisted would reflow paragraphs and examples into one

    optParameters: ClassVar[list[list[Any]]] = [
        [
            "port", "p", None,
            f"TCP port for HTTPS [default: {DEFAULT_PORT}; not used when --listen is given "
            "unless --port is too]. Ports below 1024 need privileges.",
        ],
        [
            "interface", "i", DEFAULT_INTERFACE,
            "IP address to listen on for --port and --redirect-http: 127.0.0.1 serves this "
            "machine only, 0.0.0.0 all IPv4 interfaces, :: all IPv4 and IPv6 interfaces.",
        ],
        ["path", None, None, "Serve the files in this directory instead of the TLS info page."],
        [
            "redirect-http", None, None,
            "Also serve plain HTTP on this port (on --interface), or on this endpoint "
            "description, redirecting every request to HTTPS.",
        ],
        [
            "hsts", None, None,
            "--hsts or --hsts=SECONDS: send Strict-Transport-Security with this max-age "
            "[--hsts alone: two years]. Browsers remember it: not for names other servers "
            "use too (localhost).",
        ],
        *WORKER_OPTIONS,
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []

    @_doc(
        "Also serve HTTPS on this Twisted server endpoint description (repeatable), "
        "e.g. unix:/run/web.sock, haproxy:tcp:8443, tcp6:8443:interface=\\:\\:1; TLS "
        "is added, so not ssl:, tls: or membio:."
    )
    def opt_listen(self, description: str) -> None:
        self["listen"].append(description)

    def getUsage(self, width: int | None = None) -> str:
        usage_text = super().getUsage(width)
        return f"{usage_text}\n{_DESCRIPTION}"

    def arguments(self, given: Sequence[str]) -> list[str]:
        return hsts_arguments(given)

    def postOptions(self) -> None:
        """Check everything, then build the server's TLS and listeners (or one line, exit 1)."""
        settings = self.tls_settings(defaults={"alpn": tuple(default_alpn())})
        check_http_alpn(settings.alpn)
        self["settings"] = settings
        self["hsts_max_age"] = hsts_max_age(self["hsts"])
        parse_worker_options(self)
        self["interface"] = parse_interface(self["interface"])
        explicit_port = self["port"] is not None
        self["port"] = parse_port("--port", self["port"]) if explicit_port else DEFAULT_PORT
        self["serve_port"] = explicit_port or not self["listen"]
        # Everything that can be checked without side effects comes first:
        # no certificate is generated for a command line that cannot work.
        self["resource"] = self._resource()
        plain_listeners = self._plain_listeners()
        self["redirect_listener"] = self._redirect_listener()
        self["shared"] = self._shared(plain_listeners)
        from twisted.internet import reactor

        serving = TLSServing(
            settings,
            names=names_for_interface(self["interface"]),
            clock=None,  # the global reactor when needed: a forked worker has its own
            log_system="membio-https",
            http01=self["redirect_listener"] is not None,
        )
        self["serving"] = serving
        self["certificate"] = serving.certificate
        for listener in plain_listeners:
            listener.endpoint = serving.wrap(listener.endpoint, clock=reactor)
        self["listeners"] = plain_listeners

    def _resource(self) -> Resource:
        if self["path"] is None:
            return TLSInfoPage()
        with warnings.catch_warnings():
            # Its module-level error pages use classes Twisted deprecated itself.
            warnings.simplefilter("ignore", DeprecationWarning)
            from twisted.web.static import File

        path = Path(self["path"]).expanduser().absolute()
        if not path.exists():
            raise ConfigurationError(f"--path {path} does not exist")
        if not os.access(path, os.R_OK):
            raise ConfigurationError(f"--path {path} is not readable by this user")
        self["path"] = path
        return File(os.fspath(path))

    def _backlog(self) -> int:
        """--port's listen queue: --backlog, else ours (the pool's with --workers)."""
        backlog: int | None = self["settings"].backlog
        if backlog is not None:
            return backlog
        return LISTEN_BACKLOG if self["workers"] else DEFAULT_BACKLOG

    def _plain_listeners(self) -> list[Listener]:
        """The HTTPS listeners, before TLS is added to their endpoints."""
        from twisted.internet import reactor

        listeners = []
        if self["serve_port"]:
            listeners.append(
                Listener(
                    format_host_port(self["interface"], self["port"]),
                    tcp_endpoint(reactor, self["interface"], self["port"], self._backlog()),
                    "--port",
                )
            )
        for description in self["listen"]:
            prefix = description.split(":", 1)[0].lower()
            if prefix in TLS_PREFIXES:
                raise usage.UsageError(
                    f"--listen {description}: {prefix}: is a TLS endpoint already; give a plain "
                    "one such as tcp:8443 or unix:/run/web.sock and membio-https adds TLS"
                )
            inner = endpoint_from(reactor, "--listen", description, self._backlog())
            listeners.append(Listener(description, inner, "--listen"))
        return listeners

    def _redirect_listener(self) -> Listener | None:
        value = self["redirect-http"]
        if value is None:
            return None
        from twisted.internet import reactor

        if value.isdigit():
            port = parse_port("--redirect-http", value)
            endpoint = tcp_endpoint(reactor, self["interface"], port, self._backlog())
            return Listener(format_host_port(self["interface"], port), endpoint, "--redirect-http")
        endpoint = endpoint_from(reactor, "--redirect-http", value, self._backlog())
        return Listener(value, endpoint, "--redirect-http")

    def _shared(self, listeners: list[Listener]) -> list[Any]:
        """With --workers: how each listener is shared (or a one-line refusal)."""
        if not self["workers"]:
            return []
        from ..workers import SharingRefused, share

        every = [*listeners, *filter(None, [self["redirect_listener"]])]
        try:
            return [share(item.endpoint, item.label, item.port_option) for item in every]
        except SharingRefused as error:
            raise usage.UsageError(str(error)) from None
