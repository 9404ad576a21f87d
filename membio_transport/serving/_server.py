"""
`TLSServing`: from one server's `TLSSettings` to everything that serves
them, the same for ``membio:``, ``membio-https`` and ``membio-tls``.

It builds, once per server (however many listeners it has):

* the certificate source (`CertificateSource`): the default certificate
  (generated, or the first cert/key), the other cert/key pairs and the SNI
  directory, the profile, ALPN and client certificates, and their lifecycle;
* the connection creator every listener uses (the source swaps its context);
* the factory policy: the hardened defaults of ``tls.HARDENED`` with this
  server's handshake and idle timeouts, plain-HTTP answer and one `TLSStats`
  for all its listeners;
* the connection limit, below TLS;
* with ``acme`` set, public certificates (`_acme.AcmeServing`): the
  preflight, the stored certificate as the default, the tls-alpn-01
  responder on every context, the gate in front of every application, and
  the ACME manager running with the lifecycle.
* its operations (``_operations``): expiry warnings over every certificate
  it holds, and ``/metrics`` when the ``metrics`` setting asks.

`wrap` puts all that around a plain server endpoint.  The lifecycle (file
polling, SIGHUP, renewal, the limit's burst report, expiry warnings,
metrics) runs while at least one listener of the server listens: an
endpoint made by `wrap` starts it when its port listens and stops it when
the last port stops listening, so any Twisted program that takes endpoint
strings gets it without a service of ours.  A ``--workers`` parent, which
listens in no endpoint, runs `service()` instead, and its pool calls
`fork_link` before each fork.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IStreamServerEndpoint

from ..certs import ServerCertificate, check_key_passwords, read_key_password
from ..tls import HARDENED, ClientAuth, TLSStats
from ._limits import ConnectionLimit
from ._operations import ForkLink, Operations
from ._settings import TLSSettings
from ._sni import CertificateFiles, CertificateSet
from ._source import (
    CertificateSource,
    DefaultCertificate,
    GeneratedCertificate,
    UserCertificate,
)
from ._tlsendpoint import TLSServerEndpoint

if TYPE_CHECKING:
    from twisted.web.resource import IResource

    from ._acme import AcmeServing

__all__ = ["TLSServing"]


class TLSServing:
    """
    One server's TLS, built from its settings.

    @param names: extra names for a generated certificate that come from
        where the server listens (a specific ``--interface``), besides the
        settings' ``hostname``.
    @param clock: the reactor, or a test clock; None: the global reactor,
        looked up when needed (a forked worker gets its own).
    @param log_system: what this server's log lines are tagged with.
    @param http01: the server has a plain-HTTP listener that can answer
        ACME http-01 challenges (``membio-https --redirect-http``).
    @param acme_preflight: with ``acme``, look at the CA's directory now
        (off only in tests of the wiring).
    @raise CertificateError: a certificate, key or client CA cannot be used.
    @raise SettingError: an ACME setting cannot work (the preflight's refusals).
    """

    def __init__(
        self,
        settings: TLSSettings,
        *,
        names: Sequence[str] = (),
        clock: Any = None,
        log_system: str = "membio",
        http01: bool = False,
        acme_preflight: bool = True,
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._users = 0
        self.acme: AcmeServing | None = None
        if settings.acme:
            from ._acme import AcmeServing

            self.acme = AcmeServing(
                settings, http01=http01, reactor=clock, log_system=log_system,
                preflight=acme_preflight,
            )  # fmt: skip
        files = [
            CertificateFiles(cert, key)
            for cert, key in zip(settings.cert, settings.key, strict=True)
        ]
        keys = bool(files) or settings.sni_dir is not None
        password = read_key_password(settings.key_password_file) if keys else None
        spelled = settings.spell("key_password_file")
        check_key_passwords(
            [entry.key or entry.cert for entry in files],
            password,
            spelled if spelled.endswith("=") else f"{spelled} FILE",
        )
        default: DefaultCertificate = (
            UserCertificate(files[0], password)
            if files
            else GeneratedCertificate(
                settings.cert_dir, tuple(dict.fromkeys([*names, *settings.hostname]))
            )
        )
        stored = self.acme.stored() if self.acme is not None else None
        if self.acme is not None and stored is not None:
            default = self.acme.default_certificate()  # restarts place no order
        self.source = CertificateSource(
            default,
            extra=files[1:],
            sni_dir=settings.sni_dir,
            password=password,
            profile=settings.profile,
            alpn=settings.alpn,
            client_auth=_client_auth(settings),
            interval=settings.reload_interval,
            clock=clock,
            log_system=log_system,
        )
        if self.acme is not None:
            self.acme.attach(self.source, settings.alpn)
        self.limit = (
            None
            if settings.max_connections is None
            else ConnectionLimit(settings.max_connections, clock=clock, log_system=log_system)
        )
        #: The counters of every listener of this server.
        self.stats = self.limit.stats if self.limit is not None else TLSStats()
        #: Expiry warnings and metrics.
        self.operations = Operations(
            self.source, self.stats, self.limit, self.held, metrics=settings.metrics,
            clock=clock, log_system=log_system,
        )

    @property
    def creator(self) -> Any:
        """The connection creator of every listener (its context follows reloads)."""
        return self.source.options

    @property
    def certificates(self) -> CertificateSet:
        return self.source.current

    @property
    def certificate(self) -> ServerCertificate:
        """The default certificate served now."""
        return self.source.current.default

    def held(self) -> list[ServerCertificate]:
        """Every certificate served now: the default one, then the others (SNI)."""
        current = self.source.current
        return [current.default, *(certificate for certificate, _ in current.others)]

    @property
    def client_auth(self) -> ClientAuth | None:
        return self.source.client_auth

    @property
    def own_certificate(self) -> bool:
        """The default certificate is not the generated one: the user's files, or the CA's."""
        if self.settings.own_certificate:
            return True
        return not isinstance(self.source.default, GeneratedCertificate)

    @property
    def certificate_label(self) -> str:
        """What start-up logs call a certificate that is not the generated one."""
        if self.acme is not None and self.own_certificate:
            return "the ACME certificate"
        return "your certificate"

    def http_resource(self, fallback: IResource) -> IResource:
        """The root of a plain-HTTP listener: ACME http-01 answers first, if enabled."""
        return fallback if self.acme is None else self.acme.http_resource(fallback)

    def factory_options(self) -> dict[str, Any]:
        """Keyword arguments for every `MemoryBIOTLSFactory` of this server."""
        settings = self.settings
        return {
            **HARDENED.keywords(),
            "handshake_timeout": settings.handshake_timeout,
            "idle_timeout": settings.idle_timeout,
            "plain_http": settings.plain_http,
            "stats": self.stats,
        }

    def wrap(
        self,
        endpoint: IStreamServerEndpoint,
        *,
        clock: Any = None,
        announce: bool = False,
        lifecycle: bool = True,
    ) -> TLSServerEndpoint:
        """
        C{endpoint} with the connection limit and TLS around it.

        @param clock: the reactor for its connections' timers; None: the
            global reactor, looked up now.
        @param announce: log where it listens and how to trust the
            certificate once it listens (``membio:``; the apps log their own).
        @param lifecycle: its ports run this server's lifecycle (not in a
            ``--workers`` worker: the parent reloads).
        """
        if clock is None:
            clock = self._clock
        if clock is None:
            from twisted.internet import reactor

            clock = reactor
        inner = endpoint if self.limit is None else self.limit.wrap(endpoint)
        return TLSServerEndpoint(
            inner,
            self.creator,
            clock=clock,
            announce=announce,
            factory_options=self.factory_options(),
            serving=self if lifecycle else None,
            gate=None if self.acme is None else self.acme.gate,
        )

    # -- the lifecycle, counted over the listening ports -------------------------------

    def acquire(self) -> None:
        """A port listens: the first one starts the lifecycle."""
        self._users += 1
        if self._users == 1:
            self.source.startService()
            self.operations.start()
            if self.acme is not None:
                self.acme.start()

    def release(self) -> Deferred[None] | None:
        """
        A port stopped listening: the last one stops the lifecycle; the
        result fires once the ACME manager's thread has stopped, if any.
        """
        if self._users == 0:
            return None
        self._users -= 1
        if self._users == 0:
            self.operations.stop()
            self.source.stopService()
            if self.limit is not None:
                self.limit.stop()
            if self.acme is not None:
                return self.acme.stop()
        return None

    def service(self, *, workers: bool = False) -> Service:
        """
        The lifecycle as a twistd service, for a process that listens in no
        endpoint: a ``--workers`` parent (C{workers}), whose metrics are the
        sums its workers report through `fork_link`.
        """
        if workers:
            self.operations.for_workers()
        return _ServingService(self)

    def fork_link(self) -> ForkLink | None:
        """For the ``--workers`` pool, before each fork: the worker's metrics channel."""
        return self.operations.fork_link()

    # -- what the start-up log says --------------------------------------------------

    def summary(self) -> list[str]:
        """Start-up log lines: SNI certificates, client certificates, limits, reloading."""
        settings = self.settings
        lines = self.certificates.summary()[1:]  # the default certificate is described anyway
        auth = self.client_auth
        if auth is not None:
            lines.append(f"client certificates: {auth.describe()}")
        timeout = settings.handshake_timeout
        limits = [f"handshake timeout {timeout:g}s" if timeout else "no handshake timeout"]
        if settings.idle_timeout is not None:
            limits.append(f"idle timeout {settings.idle_timeout:g}s")
        if settings.max_connections is not None:
            limits.append(f"at most {settings.max_connections} connections")
        if settings.metrics is not None:
            limits.append(f"Prometheus metrics on {settings.metrics}")
        interval = settings.reload_interval
        limits.append(
            "certificates reloaded on SIGHUP"
            + (f" and checked for changes every {interval:g}s" if interval else "")
        )
        if self.certificate.renew_after is not None:
            limits.append(
                f"the generated certificate renewed from {self.certificate.renew_after:%Y-%m-%d} "
                "while running"
            )
        lines.append("; ".join(limits))
        return lines


def _client_auth(settings: TLSSettings) -> ClientAuth | None:
    if settings.client_ca is not None:
        return ClientAuth(settings.client_ca, required=settings.client_cert != "optional")
    return ClientAuth(None) if settings.request_client_cert else None


class _ServingService(Service):
    """`TLSServing`'s lifecycle while this service runs (the ``--workers`` parent)."""

    name = "membio-certificates"

    def __init__(self, serving: TLSServing) -> None:
        self.serving = serving

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]  # untyped in Twisted
        self.serving.acquire()

    def stopService(self) -> Deferred[None] | None:
        super().stopService()  # type: ignore[no-untyped-call]  # untyped in Twisted
        return self.serving.release()
