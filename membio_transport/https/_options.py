"""
The command line of ``twistd membio-https``: `Options` (on top of the
`HardeningOptions`), its help text, and the checks that turn a command line
into listeners, a resource and a TLS setup -- or into one line on standard
error and exit status 1 -- before anything listens.
"""

from __future__ import annotations

import ipaddress
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Final, TypeVar

from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.python import usage
from twisted.web.resource import Resource

from ..certs import (
    KEY_PASSWORD_ENV,
    CertificateError,
    ServerCertificate,
    check_key_passwords,
    default_cert_dir,
    read_key_password,
)
from ..serving import (
    DEFAULT_INTERFACE,
    DEFAULT_PORT,
    TLS_PREFIXES,
    Listener,
    TLSServerEndpoint,
    endpoint_from,
    parse_interface,
    parse_port,
    resolve_certificate,
    tcp_endpoint,
)
from ..tls import PROFILES, format_host_port
from ._hardening import HardeningOptions
from ._info_page import TLSInfoPage

_F = TypeVar("_F", bound=Callable[..., Any])


_DESCRIPTION: Final = f"""\
HTTPS server on membio-transport's TLS.  With no options it serves, on
https://localhost:{DEFAULT_PORT}/, a page showing the visitor's TLS version,
cipher, key-exchange group, SNI name, ALPN protocol and client certificate
(plain text for curl, HTML for browsers).  --path DIR serves files instead.

Without --cert, a certificate for localhost, 127.0.0.1, ::1, this host's name
and every --hostname is generated in the certificate directory, signed by a
local CA created there on first use, and reused (and renewed) on later runs.
Trust the CA once: the start-up log says how for curl, Python, the system
store, Chromium and Firefox.  The password of an encrypted --key comes from
--key-password-file or the {KEY_PASSWORD_ENV} environment variable.

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


class Options(HardeningOptions):
    synopsis = "[options]"
    #: How users start us, for error messages (``python -m`` changes it).
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
        [
            "key-password-file", None, None,
            f"File whose first line is the --key password [default: ${KEY_PASSWORD_ENV}].",
        ],
        [
            "cert-dir", None, None,
            f"Directory for the generated certificate and local CA [default: "
            f"{default_cert_dir()}].",
        ],
        ["path", None, None, "Serve the files in this directory instead of the TLS info page."],
        [
            "redirect-http", None, None,
            "Also serve plain HTTP on this port (on --interface), or on this endpoint "
            "description, redirecting every request to HTTPS.",
        ],
        [
            "profile", None, "intermediate",
            "TLS settings: 'intermediate' (TLS 1.2 and 1.3, ECDHE with AES-GCM or "
            "ChaCha20-Poly1305) or 'modern' (TLS 1.3 only).",
        ],
        [
            "workers", None, "0",
            "Serve --port from N worker processes sharing its socket and one TLS context "
            "(sessions resume on any worker; a crashed worker is restarted); 0 serves from "
            "this process.",
        ],
        ["grace", None, "10", "With --workers: seconds open connections get to finish on SIGTERM."],
    ]
    optFlags: ClassVar[list[list[Any]]] = [
        [
            "request-client-cert", None,
            "Ask clients for a certificate (optional, not verified) so that the info page "
            "can show it.",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["hostnames"] = []

    @_doc(
        "Also serve HTTPS on this Twisted server endpoint description (repeatable), "
        "e.g. unix:/run/web.sock, haproxy:tcp:8443, tcp6:8443:interface=\\:\\:1; TLS "
        "is added, so not ssl:, tls: or membio:."
    )
    def opt_listen(self, description: str) -> None:
        self["listen"].append(description)

    @_doc(
        "Extra DNS name or IP address for the generated certificate (repeatable, or "
        "comma-separated)."
    )
    def opt_hostname(self, name: str) -> None:
        self["hostnames"].extend(part.strip() for part in name.split(",") if part.strip())

    def command_name(self) -> str:
        """How the user started us: twistd, twist or python -m (for messages)."""
        parent = getattr(self, "parent", None)
        if parent is not None and ".twist." in f"{type(parent).__module__}.":
            return "twist membio-https"
        return self.command

    def getUsage(self, width: int | None = None) -> str:
        usage_text = super().getUsage(width)
        return f"{usage_text}\n{_DESCRIPTION}"

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        """
        Parse, and turn any usage error into one line on standard error and
        exit status 1 (twistd would print its whole help text first).
        """
        try:
            super().parseOptions(options)
        except usage.UsageError as error:
            command = self.command_name()
            hint = "" if isinstance(error, _ConfigurationError) else f" (see: {command} --help)"
            raise SystemExit(f"{command}: error: {error}{hint}") from None

    def postOptions(self) -> None:
        try:
            self._check()
        except CertificateError as error:
            raise _ConfigurationError(str(error)) from None

    def _check(self) -> None:
        if self["profile"] not in PROFILES:
            raise usage.UsageError(
                f"--profile {self['profile']!r} is unknown; use {' or '.join(PROFILES)}"
            )
        self.check_hardening()
        from ._workers import check_https_options

        check_https_options(self)
        self["interface"] = parse_interface(self["interface"])
        explicit_port = self["port"] is not None
        self["port"] = parse_port("--port", self["port"]) if explicit_port else DEFAULT_PORT
        self["serve_port"] = explicit_port or not self["listen"]
        # Everything that can be checked without side effects comes first:
        # no certificate is generated for a command line that cannot work.
        self["resource"] = self._resource()
        plain_listeners = self._plain_listeners()
        self["redirect_listener"] = self._redirect_listener()
        own = self["cert"] is not None or self["key"] is not None
        if self["key-password-file"] is not None and not own and self["sni-dir"] is None:
            raise usage.UsageError("--key-password-file applies to --key, which was not given")
        keys = own or self["sni-dir"] is not None
        password = read_key_password(self["key-password-file"]) if keys else None
        self["tls_setup"] = self.tls_setup(lambda: self._certificate(password), password)
        self["tls_options"], self["certificates"] = self["tls_setup"].options()
        self["certificate"] = self["certificates"].default
        for listener in plain_listeners:
            listener.endpoint = self._wrap(listener.endpoint)
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
            raise _ConfigurationError(f"--path {path} does not exist")
        if not os.access(path, os.R_OK):
            raise _ConfigurationError(f"--path {path} is not readable by this user")
        self["path"] = path
        return File(os.fspath(path))

    def _certificate(self, password: bytes | None) -> ServerCertificate:
        own = self["cert"] is not None or self["key"] is not None
        if own:
            if self["cert"] is None:
                raise usage.UsageError("--key needs --cert (the certificate for that key)")
            for option in ("cert-dir", "hostnames"):
                if self[option]:
                    name = "--hostname" if option == "hostnames" else f"--{option}"
                    raise usage.UsageError(
                        f"{name} applies to generated certificates, not to --cert"
                    )
            check_key_passwords(
                [self["key"] or self["cert"]], password, "--key-password-file FILE"
            )
            return resolve_certificate(
                cert_file=self["cert"], key_file=self["key"], password=password
            )
        names = list(self["hostnames"])
        address = ipaddress.ip_address(self["interface"])
        if not address.is_unspecified and not address.is_loopback:
            names.append(self["interface"])
        return resolve_certificate(cert_dir=self["cert-dir"], hostnames=names)

    def _plain_listeners(self) -> list[Listener]:
        """The HTTPS listeners, before TLS is added to their endpoints."""
        from twisted.internet import reactor

        listeners = []
        if self["serve_port"]:
            listeners.append(
                Listener(
                    format_host_port(self["interface"], self["port"]),
                    tcp_endpoint(reactor, self["interface"], self["port"]),
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
            inner = endpoint_from(reactor, "--listen", description)
            listeners.append(Listener(description, inner, "--listen"))
        return listeners

    def _wrap(self, endpoint: IStreamServerEndpoint) -> TLSServerEndpoint:
        from twisted.internet import reactor

        limit = self.connection_limit()
        return TLSServerEndpoint(
            endpoint if limit is None else limit.wrap(endpoint),
            self["tls_options"],
            clock=reactor,
            certificate=self["certificate"],
            factory_options=self.factory_options(),
        )

    def _redirect_listener(self) -> Listener | None:
        value = self["redirect-http"]
        if value is None:
            return None
        from twisted.internet import reactor

        if value.isdigit():
            port = parse_port("--redirect-http", value)
            endpoint = tcp_endpoint(reactor, self["interface"], port)
            return Listener(format_host_port(self["interface"], port), endpoint, "--redirect-http")
        endpoint = endpoint_from(reactor, "--redirect-http", value)
        return Listener(value, endpoint, "--redirect-http")


class _ConfigurationError(usage.UsageError):
    """A usage error about the environment (files, certificates): no --help hint."""
