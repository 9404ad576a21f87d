"""
`AcmeServing`: public certificates (``membio_transport.acme``) wired into one
server's certificate source, the same under every entry point.

The dependency goes one way: the serving layer uses the ACME layer's face
(`AcmeManager`, `ChallengeBoard`, `TLSALPNResponder`, `ChallengeGate`,
`HTTP01Resource`), and the ACME layer knows nothing of serving: it hands over
"here is a certificate to serve" through ``on_certificate``.  What this module
does with it:

* **at start-up** (`AcmeServing.__init__`, before anything listens): the
  preflight, unless a valid certificate from this CA is stored already.  The
  CA's directory is fetched once, with a short timeout: a URL
  that answers but is not an ACME directory, or terms of service nobody agreed
  to, end start-up with one line (only a new command line can fix them); a CA
  that cannot be reached does not (a network hiccup or a CA outage at boot must
  not take the server down): the server starts on its stored or local
  certificate and the manager retries with backoff.  A stored certificate that
  is still valid is served from the first connection on (`AcmeManager.stored`):
  restarts place no order.
* **every context** the source builds, now and after each reload, gets the
  tls-alpn-01 responder in front of its ALPN protocols (`add_context_hook`), and
  every listener's application factory is wrapped in the `ChallengeGate`, so a
  validation connection never reaches the application.
* **each certificate** the manager delivers becomes the source's default,
  read again from the state directory's files at each reload (a renewal written
  there is picked up by the source's polling too), and served to new
  connections; under ``--workers`` the parent's reload forks new workers with it.
* **the manager runs with the lifecycle** (`start`/`stop`): while a port
  listens, or in a ``--workers`` parent, never in a worker.  One process
  orders: the parent, under the state directory's order lock.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from ..certs import CertificateError, ServerCertificate, default_cert_dir
from ._acme_settings import acme_layer, acme_trigger
from ._values import SettingError, said

if TYPE_CHECKING:
    from twisted.web.resource import IResource

    from ..acme import AcmeConfig, AcmeManager, ChallengeBoard
    from ._settings import TLSSettings
    from ._source import CertificateSource, DefaultCertificate

__all__ = ["PREFLIGHT_TIMEOUT", "AcmeServing"]

_log = Logger(namespace="membio_transport.acme")

#: Seconds the start-up look at the CA's directory may take: a CA that has
#: not answered by then is treated as unreachable (the server starts anyway
#: and the manager retries), so start-up never hangs on the network.
PREFLIGHT_TIMEOUT: Final = 10.0


class AcmeServing:
    """
    The ACME side of one `TLSServing`; see the module docstring.

    @param http01: the server has a plain-HTTP listener that can answer
        http-01 (``membio-https --redirect-http``).
    @param reactor: the manager's reactor (threads, timers); None: the global one.
    @param preflight: fetch the CA's directory now (tests of the wiring alone
        turn it off).
    @raise SettingError: a setting that cannot work, in one line.
    """

    def __init__(
        self,
        settings: TLSSettings,
        *,
        http01: bool = False,
        reactor: Any = None,
        log_system: str = "membio",
        preflight: bool = True,
    ) -> None:
        acme = acme_layer()
        assert settings.acme
        spell = settings.spell
        #: The setting that turned ACME on, as the user spelled it.
        self._trigger = spell(acme_trigger(settings)).rstrip("=")
        challenges = settings.acme_challenges or ("tls-alpn-01",)
        if "http-01" in challenges and not http01:
            raise SettingError(
                f"{said(spell('acme_challenges'), ','.join(challenges))}: http-01 is answered "
                "on port 80, which only membio-https --redirect-http serves; use tls-alpn-01 "
                "(answered on this TLS port)"
            )
        cert_dir = settings.cert_dir if settings.cert_dir is not None else default_cert_dir()
        try:
            self.config: AcmeConfig = acme.AcmeConfig(
                names=settings.hostname,
                email=settings.acme_email,
                directory_url=settings.acme_directory or acme.LETS_ENCRYPT_DIRECTORY,
                agree_tos=settings.acme_agree_tos,
                challenges=challenges,
                directory_ca=settings.acme_directory_ca,
                state_dir=Path(cert_dir) / "acme",
                spell=spell,
            )
        except acme.AcmeError as error:
            raise SettingError(str(error)) from None
        self.log_system = log_system
        self.source: CertificateSource | None = None
        #: Set when the preflight could not reach the CA: said once at start.
        self.unreachable: str | None = None
        self.manager: AcmeManager = acme.AcmeManager(
            self.config, self._deliver, reactor=reactor, log_system=log_system
        )
        self.responder = acme.TLSALPNResponder(self.manager.board)
        # With the terms agreed and a valid certificate stored, this CA has issued to us
        # before: a restart then depends on no network at all.
        if preflight and not (self.config.agree_tos and self.stored() is not None):
            self._preflight(acme, spell)

    # -- start-up -------------------------------------------------------------------

    def _preflight(self, acme: Any, spell: Callable[[str], str]) -> None:
        config = self.config
        try:
            terms = acme.preflight(config, timeout=PREFLIGHT_TIMEOUT)
        except acme.CAUnreachable as error:
            if not config.agree_tos:
                raise SettingError(
                    f"{self._trigger} needs {spell('acme_agree_tos').rstrip('=')}: "
                    f"agree to the terms of service of the ACME CA {config.directory_url} "
                    f"(which cannot be reached now to name them: {error})"
                ) from None
            self.unreachable = str(error)
            return
        except acme.AcmeError as error:
            if error.retry:
                self.unreachable = str(error)
                return
            raise SettingError(str(error)) from None
        if terms is not None and not config.agree_tos:
            agree = spell("acme_agree_tos")
            agree = f"{agree}yes" if agree.endswith("=") else agree
            raise SettingError(
                f"the ACME CA {config.directory_url} requires agreeing to its terms of "
                f"service before the first order: read {terms}, then add {agree}"
            )

    @property
    def board(self) -> ChallengeBoard:
        return self.manager.board

    @property
    def names(self) -> tuple[str, ...]:
        return self.config.names

    def stored(self) -> ServerCertificate | None:
        """The stored certificate, if still valid: served from the first connection on."""
        return self.manager.stored()

    def default_certificate(self) -> DefaultCertificate:
        """
        What the source's default becomes for an ACME certificate: its files,
        read again (and checked) at each reload, with the store's tolerance
        for a CA that does not backdate notBefore.
        """
        store = self.manager.store
        url, names = self.config.directory_url, self.config.names

        def load(now: datetime.datetime) -> ServerCertificate:
            found = store.load_certificate(url, names, now)
            if isinstance(found, str):
                raise CertificateError(f"the ACME certificate for {', '.join(names)}: {found}")
            return found

        return load

    def attach(self, source: CertificateSource, alpn: Sequence[bytes]) -> None:
        """Answer tls-alpn-01 on every context of C{source}, and deliver to it."""
        self.source = source
        protocols = list(alpn)
        source.add_context_hook(lambda context: self.responder.install(context, protocols))

    def gate(self, factory: Any) -> Any:
        """The application factory behind the gate that closes validation connections."""
        return acme_layer().ChallengeGate(factory)

    def http_resource(self, fallback: IResource) -> IResource:
        """The plain-HTTP port's root: http-01 answers, then C{fallback} (the redirect)."""
        if "http-01" not in self.config.challenges:
            return fallback
        resource: IResource = acme_layer().HTTP01Resource(self.board, fallback)
        return resource

    # -- the lifecycle ----------------------------------------------------------------

    def start(self) -> None:
        config = self.config
        names = ", ".join(config.names)
        current = self.source.current.default if self.source is not None else None
        challenges = ", ".join(
            "tls-alpn-01 on this TLS port" if kind == "tls-alpn-01"
            else "http-01 on the plain-HTTP port" for kind in config.challenges
        )
        lines = [
            f"ACME: certificate for {names} from {config.directory_url}, answering "
            f"{challenges}; state in {self.manager.store.root}"
        ]
        if self.unreachable is not None:
            lines.append(
                f"ACME: the CA cannot be reached now ({self.unreachable}); serving the "
                "certificate below meanwhile and retrying with backoff"
            )
        if current is not None and self.stored() is None:
            lines.append(
                f"ACME: no certificate stored yet: serving the generated local certificate "
                f"(SHA-256 {current.fingerprint_sha256}) until the CA issues one"
            )
        for line in lines:
            _log.info("{line}", line=line, log_system=self.log_system, event_name="acme")
        self.manager.startService()

    def stop(self) -> Deferred[None]:
        if not self.manager.running:
            return succeed(None)
        return self.manager.stopService()

    # -- delivery -----------------------------------------------------------------------

    def _deliver(self, certificate: ServerCertificate) -> None:
        """on_certificate: serve it to new connections (the source logs the reload)."""
        source = self.source
        if source is None:
            return
        served = source.current.default
        if served.fingerprint_sha256 == certificate.fingerprint_sha256:
            return  # the stored certificate, served since start-up
        source.default = self.default_certificate()
        source.reload(f"ACME certificate for {', '.join(self.config.names)} installed")
