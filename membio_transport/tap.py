"""
``twistd membio-https``: a zero-config HTTPS server on membio-transport TLS.

``twistd -n membio-https`` serves a page describing the visitor's TLS
connection on https://localhost:8443/, with a certificate generated on the
first run (and reused afterwards) that clients trust once.  ``--path``
serves files instead, ``--cert``/``--key`` use your own certificate.

Configuration errors (missing or unsafe files, wrong key password, a port
in use or needing privileges) end the program with one line on standard
error and exit status 1, not with a traceback.
"""

from __future__ import annotations

import atexit
import errno
import ipaddress
import os
import shlex
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Final, NoReturn, TypeVar, cast

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, DeferredList, maybeDeferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from ._certs import CertificateError, ServerCertificate, default_cert_dir
from ._endpoint import (
    DEFAULT_BACKLOG,
    KEY_PASSWORD_ENV,
    TLSServerEndpoint,
    key_is_encrypted,
    read_key_password,
    resolve_certificate,
)
from ._hardening import HardeningOptions, default_alpn
from ._info_page import TLSInfoPage
from ._options import PROFILES
from ._site import SecureSite
from ._sni import is_ip_address

__all__ = ["DEFAULT_PORT", "HTTPSService", "Options", "StartupError", "makeService"]

_log = Logger(namespace="membio_transport.tap")

_F = TypeVar("_F", bound=Callable[..., Any])

#: Unprivileged, and the customary alternative HTTPS port.
DEFAULT_PORT: Final = 8443
#: Only this machine can connect unless told otherwise: a development
#: server should not publish a directory to the whole network by surprise.
DEFAULT_INTERFACE: Final = "127.0.0.1"
#: What the log lines are tagged with.
_SYSTEM: Final = "membio-https"
#: Endpoint types that already do TLS: wrapping them again makes no sense.
_TLS_PREFIXES: Final = frozenset({"ssl", "tls", "membio"})


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


#: The protocols offered without --alpn (h2 only when twisted.web has it).
_alpn_protocols = default_alpn


class StartupError(Exception):
    """The server cannot start; the message is one line saying why and what to do."""


# ---------------------------------------------------------------------- options


def _parse_interface(text: str) -> str:
    value = text.strip()
    if value.startswith("[") and value.endswith("]"):
        value = value[1:-1]
    if value == "localhost":
        return "127.0.0.1"
    if value in ("", "*"):
        return "0.0.0.0"
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise usage.UsageError(
            f"--interface {text!r} is not an IP address; use e.g. 127.0.0.1 (this machine "
            "only), 0.0.0.0 (all IPv4 interfaces) or :: (all IPv4 and IPv6 interfaces)"
        ) from None


def _parse_port(option: str, text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise usage.UsageError(f"{option} {text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise usage.UsageError(f"{option} {port} is out of range (0-65535; 0 picks a free port)")
    return port


@dataclass
class _Listener:
    """One listening endpoint and what to call it in messages."""

    label: str
    endpoint: IStreamServerEndpoint
    port_option: str  # the option to suggest changing when it cannot listen
    port: IListeningPort | None = None


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
        from ._workers_cli import check_https_options

        check_https_options(self)
        self["interface"] = _parse_interface(self["interface"])
        explicit_port = self["port"] is not None
        self["port"] = _parse_port("--port", self["port"]) if explicit_port else DEFAULT_PORT
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
            key_file = self["key"] or self["cert"]
            if password is None and key_is_encrypted(key_file):
                raise _ConfigurationError(
                    f"{key_file} is encrypted: give its password with --key-password-file FILE "
                    f"or the {KEY_PASSWORD_ENV} environment variable"
                )
            return resolve_certificate(
                cert_file=self["cert"], key_file=self["key"], password=password
            )
        names = list(self["hostnames"])
        address = ipaddress.ip_address(self["interface"])
        if not address.is_unspecified and not address.is_loopback:
            names.append(self["interface"])
        return resolve_certificate(cert_dir=self["cert-dir"], hostnames=names)

    def _plain_listeners(self) -> list[_Listener]:
        """The HTTPS listeners, before TLS is added to their endpoints."""
        from twisted.internet import reactor

        listeners = []
        if self["serve_port"]:
            listeners.append(
                _Listener(
                    _tcp_label(self["interface"], self["port"]),
                    _tcp_endpoint(reactor, self["interface"], self["port"]),
                    "--port",
                )
            )
        for description in self["listen"]:
            prefix = description.split(":", 1)[0].lower()
            if prefix in _TLS_PREFIXES:
                raise usage.UsageError(
                    f"--listen {description}: {prefix}: is a TLS endpoint already; give a plain "
                    "one such as tcp:8443 or unix:/run/web.sock and membio-https adds TLS"
                )
            inner = _endpoint_from(reactor, "--listen", description)
            listeners.append(_Listener(description, inner, "--listen"))
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

    def _redirect_listener(self) -> _Listener | None:
        value = self["redirect-http"]
        if value is None:
            return None
        from twisted.internet import reactor

        if value.isdigit():
            port = _parse_port("--redirect-http", value)
            endpoint = _tcp_endpoint(reactor, self["interface"], port)
            return _Listener(_tcp_label(self["interface"], port), endpoint, "--redirect-http")
        endpoint = _endpoint_from(reactor, "--redirect-http", value)
        return _Listener(value, endpoint, "--redirect-http")


class _ConfigurationError(usage.UsageError):
    """A usage error about the environment (files, certificates): no --help hint."""


def _endpoint_from(reactor: Any, option: str, description: str) -> IStreamServerEndpoint:
    from twisted.internet.endpoints import serverFromString

    prefix = description.split(":", 1)[0].lower()
    if prefix in ("tcp", "tcp6") and "backlog=" not in description:
        description += f":backlog={DEFAULT_BACKLOG}"  # room for bursts (Twisted: 50)
    try:
        endpoint: IStreamServerEndpoint = serverFromString(reactor, description)
    except (ValueError, TypeError, KeyError) as error:
        raise usage.UsageError(f"{option} {description}: {error}") from None
    return endpoint


def _tcp_endpoint(reactor: Any, interface: str, port: int) -> IStreamServerEndpoint:
    from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint

    if ":" in interface:
        return TCP6ServerEndpoint(reactor, port, DEFAULT_BACKLOG, interface)
    return TCP4ServerEndpoint(reactor, port, DEFAULT_BACKLOG, interface)


def _tcp_label(interface: str, port: int) -> str:
    host = f"[{interface}]" if ":" in interface else interface
    return f"{host}:{port}"


# ---------------------------------------------------------------------- redirects


class _RedirectToHTTPS(Resource):
    """Every request: 301 (308 for other methods than GET/HEAD) to the HTTPS URL."""

    isLeaf = True

    def __init__(self, default_host: str) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # twisted.web.resource is untyped
        self.default_host = default_host
        self.https_port = 0  # set once the HTTPS port listens

    def render(self, request: Request) -> bytes:
        host = _request_host(request.getHeader(b"host")) or self.default_host
        port = "" if self.https_port == 443 else f":{self.https_port}"
        uri = request.uri.decode("latin-1")
        if not uri.startswith("/"):
            uri = "/"  # absolute-form or garbage: go to the root
        location = f"https://{host}{port}{uri}"
        request.setResponseCode(301 if request.method in (b"GET", b"HEAD") else 308)
        request.setHeader(b"Location", location.encode("latin-1"))
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-store")
        body = f"This server only serves HTTPS: {location}\n".encode("latin-1")
        if request.method == b"HEAD":
            request.setHeader(b"Content-Length", b"%d" % len(body))
            return b""
        return body


def _request_host(header: bytes | None) -> str | None:
    """The host part of a Host header when it is a plausible name or address."""
    if not header:
        return None
    text = header.decode("latin-1").strip()
    if text.startswith("["):
        literal, _, _ = text[1:].partition("]")
        try:
            return f"[{ipaddress.IPv6Address(literal)}]"
        except ValueError:
            return None
    host = text.rsplit(":", 1)[0] if text.count(":") == 1 else text
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_")
    if host and len(host) <= 253 and set(host) <= allowed:
        return host
    return None


# ---------------------------------------------------------------------- the service


def _listen_error(error: BaseException | None, listener: _Listener) -> str:
    """One line saying why C{listener} cannot listen, and what to do about it."""
    where = f"cannot listen on {listener.label}"
    cause = getattr(error, "socketError", None) if isinstance(error, CannotListenError) else error
    code = getattr(cause, "errno", None)
    if code == errno.EADDRINUSE:
        return (
            f"{where}: the address is already in use (another server, or another "
            f"membio-https, is listening there); stop it or choose another {listener.port_option}"
        )
    if code in (errno.EACCES, errno.EPERM):
        port = getattr(error, "port", None)
        if isinstance(port, int) and 0 < port < _unprivileged_port_start():
            return (
                f"{where}: permission denied, ports below {_unprivileged_port_start()} need "
                f"privileges; use a port of 1024 or more (e.g. {listener.port_option} "
                f"{DEFAULT_PORT}), or allow it with 'sudo sysctl -w "
                f"net.ipv4.ip_unprivileged_port_start={port}' or the CAP_NET_BIND_SERVICE "
                "capability (systemd: AmbientCapabilities=CAP_NET_BIND_SERVICE)"
            )
        return f"{where}: permission denied ({os.strerror(code)})"
    if code == errno.EADDRNOTAVAIL:
        return f"{where}: that address does not belong to this machine; check --interface"
    if isinstance(cause, OSError) and cause.strerror:
        return f"{where}: {cause.strerror}"
    return f"{where}: {error}"


def _unprivileged_port_start() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as stream:
            return int(stream.read().strip())
    except (OSError, ValueError):
        return 1024


def _exit_with_message(command: str) -> None:
    """
    Make the StartupError about to escape from twistd print as one line:
    twistd lets exceptions from starting services end the process, and the
    interpreter would print a traceback.
    """
    previous = sys.excepthook

    def hook(
        kind: type[BaseException], value: BaseException, traceback: TracebackType | None
    ) -> None:
        if isinstance(value, StartupError):
            stream = sys.__stderr__ or sys.stderr
            stream.write(f"{command}: error: {value}\n")
            stream.flush()
        else:
            previous(kind, value, traceback)

    sys.excepthook = hook


def _exit_status_one() -> None:
    """End with status 1 (after twistd's own clean-up): the server never started."""
    for stream in (sys.__stdout__, sys.__stderr__):
        if stream is not None:
            stream.flush()
    os._exit(1)


@dataclass
class _Plan:
    listeners: list[_Listener]
    redirect: _Listener | None
    certificate: ServerCertificate
    generated_in: Path | None
    profile: str
    content: str
    interface: str
    command: str
    daemon: bool
    alpn: list[bytes] = field(default_factory=_alpn_protocols)
    #: Start-up log lines about hardening settings (SNI, client certificates...).
    notes: list[str] = field(default_factory=list)
    #: Run alongside the listeners (the certificate reloader).
    helpers: list[Service] = field(default_factory=list)


class HTTPSService(Service):
    """
    Listens on every configured endpoint before twistd drops privileges, then
    logs where to browse and how to trust the certificate.
    """

    name = "membio-https"

    def __init__(
        self,
        plan: _Plan,
        site: Site,
        redirect: _RedirectToHTTPS | None,
        reactor: Any = None,
        exit_status_hook: Callable[[Callable[[], None]], object] = atexit.register,
    ) -> None:
        self.plan = plan
        self.site = site
        self.redirect = redirect
        self._given_reactor = reactor
        self._exit_status_hook = exit_status_hook
        self._listening = False
        self._pending: list[Deferred[IListeningPort]] = []

    @property
    def _reactor(self) -> Any:
        if self._given_reactor is None:
            from twisted.internet import reactor

            return reactor
        return self._given_reactor

    def privilegedStartService(self) -> None:
        super().privilegedStartService()  # type: ignore[no-untyped-call]  # untyped in Twisted
        self._listen()

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]  # untyped in Twisted
        self._listen()  # when started without the privileged step
        for helper in self.plan.helpers:
            helper.startService()
        if not self._pending:
            self._announce()

    def stopService(self) -> Deferred[Any]:
        super().stopService()  # type: ignore[no-untyped-call]  # untyped in Twisted
        for helper in self.plan.helpers:
            if helper.running:
                helper.stopService()
        for pending in list(self._pending):
            pending.cancel()
        every = [self.plan.redirect, *self.plan.listeners]
        stopping = [
            maybeDeferred(listener.port.stopListening)
            for listener in every
            if listener is not None and listener.port is not None
        ]
        for listener in every:
            if listener is not None:
                listener.port = None
        self._listening = False
        return DeferredList(stopping)

    # -- listening --------------------------------------------------------------

    def _listen(self) -> None:
        if self._listening:
            return
        self._listening = True
        for listener in self.plan.listeners:
            self._start(listener, self.site)
        redirect = self.plan.redirect
        if redirect is not None and self.redirect is not None:
            self.redirect.https_port = self._https_port()
            self._start(redirect, Site(self.redirect))

    def _start(self, listener: _Listener, site: Site) -> None:
        listening = listener.endpoint.listen(site)
        immediate: list[object] = []
        waiting = False

        def settle(result: object) -> None:
            if waiting:
                self._listened_later(result, listener, listening)
            else:
                immediate.append(result)

        listening.addBoth(settle)
        if not immediate:
            # An endpoint that listens asynchronously (rare: tor:, le:, ...).
            waiting = True
            self._pending.append(listening)
            return
        result = immediate[0]
        if isinstance(result, Failure):
            self._fail(_listen_error(result.value, listener))
        listener.port = cast(IListeningPort, result)

    def _listened_later(
        self, result: object, listener: _Listener, listening: Deferred[IListeningPort]
    ) -> None:
        if listening in self._pending:
            self._pending.remove(listening)
        if isinstance(result, Failure):
            if result.check(CancelledError):
                return  # stopService gave up waiting
            message = _listen_error(result.value, listener)
            # Too late to fail start-up: say why, stop, and exit with status 1.
            _log.critical("{message}", message=message, log_system=_SYSTEM)
            stream = sys.__stderr__
            if not self.plan.daemon and stream is not None:
                stream.write(f"{self.plan.command}: error: {message}\n")
            self._exit_status_hook(_exit_status_one)
            self._reactor.stop()
            return
        listener.port = cast(IListeningPort, result)
        if not self._pending:
            self._announce()

    def _fail(self, message: str) -> NoReturn:
        for listener in [*self.plan.listeners, self.plan.redirect]:
            if listener is not None and listener.port is not None:
                listener.port.stopListening()
                listener.port = None
        if self.plan.daemon:
            _log.critical("{message}", message=message, log_system=_SYSTEM)
        _exit_with_message(self.plan.command)
        raise StartupError(message)

    def _https_port(self) -> int:
        for listener in self.plan.listeners:
            number = getattr(listener.port.getHost(), "port", None) if listener.port else None
            if isinstance(number, int):
                return number
        return DEFAULT_PORT

    # -- telling the user --------------------------------------------------------

    def _announce(self) -> None:
        plan = self.plan
        urls: list[str] = []
        lines: list[str] = []
        for listener in plan.listeners:
            if listener.port is None:
                continue
            listener_urls, where = self._urls(listener.port)
            urls += [url for url in listener_urls if url not in urls]
            if listener.port_option == "--port" and _is_loopback(plan.interface):
                where += " (this machine only: --interface 0.0.0.0 or :: serves the network)"
            lines.append(f"HTTPS on {where}")
        lines.append(
            f"TLS profile {plan.profile}, ALPN "
            f"{', '.join(p.decode() for p in plan.alpn) or 'none'}; serving {plan.content}"
        )
        lines += plan.notes
        redirect = plan.redirect
        if redirect is not None and redirect.port is not None:
            lines.append(f"plain HTTP on {self._where(redirect.port)} redirects to HTTPS")
        certificate = plan.certificate
        first_url = urls[0] if urls else f"https://localhost:{DEFAULT_PORT}/"
        if plan.generated_in is None:
            lines += [f"using your certificate: {line.strip()}" for line in certificate.summary()]
        else:
            state = "generated a new" if certificate.generated else "reusing the"
            lines.append(f"{state} certificate in {plan.generated_in}")
            if certificate.new_trust_anchor:
                lines.append(
                    f"new trust anchor {certificate.trust_path}: clients must trust it once"
                )
            lines += certificate.trust_instructions(first_url)
        lines += [f"ready: open {url}" for url in urls] or ["ready (no TCP listener)"]
        for line in lines:
            _log.info("{line}", line=line, log_system=_SYSTEM)

    def _where(self, port: IListeningPort) -> str:
        address = port.getHost()
        host, number = getattr(address, "host", None), getattr(address, "port", None)
        if isinstance(host, str) and isinstance(number, int):
            return _tcp_label(host, number)
        name = getattr(address, "name", None)
        if name is not None:
            path = os.fsdecode(name)
            return f"UNIX socket {path} (curl --unix-socket {shlex.quote(path)} https://localhost/)"
        return str(address)

    def _urls(self, port: IListeningPort) -> tuple[list[str], str]:
        address = port.getHost()
        host, number = getattr(address, "host", None), getattr(address, "port", None)
        where = self._where(port)
        if not isinstance(host, str) or not isinstance(number, int):
            return [], where
        suffix = "" if number == 443 else f":{number}"
        return [f"https://{name}{suffix}/" for name in _browse_names(host, self.plan)], where


def _browse_names(host: str, plan: _Plan) -> list[str]:
    """Names a browser can use for C{host} that the certificate covers."""
    names = list(plan.certificate.names)
    dns = [name for name in names if not is_ip_address(name) and not name.startswith("*.")]
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return [host]
    chosen: list[str] = []
    if address.is_loopback or address.is_unspecified:
        if "localhost" in names:
            chosen.append("localhost")
        if address.is_unspecified:
            chosen += [name for name in dns if name != "localhost"]
    elif str(address) in names:
        chosen.append(f"[{address}]" if address.version == 6 else str(address))
    if not chosen:
        # The certificate names none of our addresses (your own certificate
        # for a public name): its first name, which must resolve to us.
        chosen = dns[:1] or [f"[{address}]" if address.version == 6 else str(address)]
    return chosen


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


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
