"""`AcmeManager`: keeps one certificate for a set of names, from an ACME CA, current.

The manager is a Twisted service.  On start, and whenever its timer fires, it runs one
*check* in its own thread (``acme`` blocks): under the state directory's order lock, it
reuses the stored certificate while it is not due for renewal, and otherwise registers
the account if needed, orders, answers the challenges through the `ChallengeBoard`,
stores the new chain and key, and hands the result to ``on_certificate`` on the reactor
thread.  The next check is scheduled at the renewal time (at most 12 hours away); a
failed check is retried with bounded exponential backoff, or not at all when only a
configuration change can help.  Nothing it does raises into the reactor: failures are
one log line each.

Time comes from the injected clock (``IReactorTime.seconds``), so tests can drive it;
the certificates themselves come from a real CA with real dates.
"""

from __future__ import annotations

import datetime
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from ..certs import ServerCertificate, generate_private_key
from ._board import ChallengeBoard
from ._client import AcmeSession
from ._config import AcmeConfig
from ._errors import AccountUnknown, AcmeError, OrderCancelled
from ._policy import MAX_SLEEP, renewal_time, retry_delay
from ._store import CHALLENGES_DIR, AcmeStore

__all__ = ["AcmeManager", "CheckResult"]

# A check never follows the previous one sooner than this, whatever a certificate's
# dates say: a CA issuing certificates already due must not make us order in a loop.
MIN_CHECK_INTERVAL: Final = 1.0

_log = Logger(namespace="membio_transport.acme")


@dataclass(frozen=True)
class CheckResult:
    """What one check found or did."""

    certificate: ServerCertificate
    renew_at: datetime.datetime
    ordered: bool  # False: the stored certificate was still good
    reason: str | None = None  # why it ordered (none stored, renewal due, ...)
    seconds: float = 0.0  # how long the order took


@dataclass
class _Counters:
    checks: int = 0
    orders: int = 0  # orders placed with the CA
    failures: int = 0  # consecutive failed checks
    accounts_registered: int = 0
    bad_nonces: int = 0  # badNonce answers absorbed by retrying
    errors: list[str] = field(default_factory=list)  # every failure line, oldest first


def _utc(seconds: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC)


class AcmeManager(Service):
    """Obtains, stores, reuses and renews one certificate; see the module docstring.

    @param on_certificate: called on the reactor thread with each certificate to serve
        (the stored one at start, then each renewal); exceptions it raises are logged.
    @param board: where challenge answers go; by default shared through the state
        directory so that worker processes can answer too.  Give the same board to the
        `TLSALPNResponder` and `HTTP01Resource` that serve the ports.
    @param reactor: for the timer, the thread pool and the clock; the global one by
        default.
    @param clock: overrides the reactor as the source of time and timers (tests).
    @param threaded: False runs checks synchronously on the calling thread (tests with
        a fake clock and fake sessions).
    @param session_factory: makes the blocking ACME session (tests substitute fakes).
    @param log_system: what its log lines are tagged with (the server's, in an app).

    @ivar current: the certificate being served, once there is one.
    @ivar counters: checks, orders, consecutive failures, accounts registered.
    @ivar last_error: the most recent failure (an AcmeError), None after a success.
    """

    def __init__(
        self,
        config: AcmeConfig,
        on_certificate: Callable[[ServerCertificate], object],
        *,
        board: ChallengeBoard | None = None,
        reactor: Any = None,
        clock: IReactorTime | None = None,
        threaded: bool = True,
        session_factory: Callable[[AcmeConfig, threading.Event], AcmeSession] | None = None,
        log_system: str = "membio-acme",
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self.config = config
        self.log_system = log_system
        self.on_certificate = on_certificate
        self.store = AcmeStore(config.state_path)
        self.board = (
            board if board is not None else ChallengeBoard(self.store.root / CHALLENGES_DIR)
        )
        self._reactor = reactor
        self._clock: IReactorTime = clock if clock is not None else reactor
        self._threaded = threaded
        self._session_factory = session_factory or _default_session
        self._session: AcmeSession | None = None
        self._pool: ThreadPool | None = None
        self._shutdown: Any = None  # the reactor's shutdown trigger while running
        self._timer: IDelayedCall | None = None
        self._job: defer.Deferred[CheckResult | None] | None = None
        self._cancelled = threading.Event()
        self.current: ServerCertificate | None = None
        self.counters = _Counters()
        self.last_error: AcmeError | None = None
        self.next_check: datetime.datetime | None = None

    # -- what phase B's serving layer calls ------------------------------------------

    def stored(self) -> ServerCertificate | None:
        """The stored certificate when it is still valid (due or not), else None.

        Synchronous and offline: for serving the ACME certificate from the first
        connection on, before the first check has run.
        """
        found = self.store.load_certificate(
            self.config.directory_url, self.config.names, self._now()
        )
        return found if isinstance(found, ServerCertificate) else None

    def check_now(self) -> defer.Deferred[CheckResult | None]:
        """Run a check at once (or join the one running); fires with its result or None."""
        if self._job is not None:
            return _follow(self._job)
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        return _follow(self._run())

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self._cancelled.clear()
        self.board.clear()  # answers a crashed process left behind
        if self._threaded:
            self._pool = ThreadPool(minthreads=0, maxthreads=1, name="membio-acme")
            self._pool.start()
            # Like the reactor's own pool: a manager nobody stopped must not keep the
            # process alive after the reactor stops.
            self._shutdown = self._reactor.addSystemEventTrigger(
                "during", "shutdown", self._stop_pool
            )
        self._schedule(0.0)

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        self._cancelled.set()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._shutdown is not None:
            self._reactor.removeSystemEventTrigger(self._shutdown)
            self._shutdown = None
        job = _follow(self._job) if self._job is not None else defer.succeed(None)
        return job.addBoth(lambda _: self._stop_pool())

    def _stop_pool(self) -> None:
        self._cancelled.set()
        if self._pool is not None:
            self._pool.stop()  # joins the thread: at most one request in flight
            self._pool = None

    # -- the cycle -----------------------------------------------------------------

    def _now(self) -> datetime.datetime:
        return _utc(self._clock.seconds())

    def _schedule(self, delay: float) -> None:
        delay = min(max(delay, 0.0), MAX_SLEEP)
        self.next_check = _utc(self._clock.seconds() + delay)
        self._timer = self._clock.callLater(delay, self._tick)

    def _tick(self) -> None:
        self._timer = None
        self._run()

    def _run(self) -> defer.Deferred[CheckResult | None]:
        self.counters.checks += 1
        if self._threaded and self._pool is not None:
            job: defer.Deferred[CheckResult] = deferToThreadPool(
                self._reactor, self._pool, self._check
            )
        else:
            job = defer.maybeDeferred(self._check)
        self._job = job.addCallbacks(self._succeeded, self._failed)
        self._job.addBoth(self._finished)
        return self._job

    def _finished(self, result: CheckResult | None) -> CheckResult | None:
        self._job = None
        return result

    def _check(self) -> CheckResult:
        """One check, in the ACME thread; raises AcmeError."""
        config = self.config
        with self.store.order_lock(self._cancelled, self._waiting):
            # The time after the lock: another process may have just stored a certificate
            # that was not yet valid when this check was scheduled.
            now = self._now()
            stored = self.store.load_certificate(config.directory_url, config.names, now)
            if isinstance(stored, ServerCertificate):
                renew_at = self._renew_at(stored)
                if now < renew_at:
                    return CheckResult(stored, renew_at, ordered=False)
                reason = f"renewal due since {renew_at:%Y-%m-%d %H:%M:%S} UTC"
            else:
                reason = stored
            return self._order(reason)

    def _order(self, reason: str) -> CheckResult:
        config = self.config
        started = self._clock.seconds()
        self._say(
            f"ACME: ordering a certificate for {', '.join(config.names)} from "
            f"{config.directory_url} ({reason}); answering {', '.join(config.challenges)}"
        )
        session = self._session_now()
        if session.use_account(self.store, config.email, config.agree_tos) == "registered":
            self.counters.accounts_registered += 1
        key = generate_private_key("ecdsa")
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        self.counters.orders += 1
        try:
            try:
                chain = session.order(config.names, key, config.challenges, self.board)
            except AccountUnknown:
                session.forget_account(self.store, config.email)
                session.use_account(self.store, config.email, config.agree_tos)
                self.counters.accounts_registered += 1
                self.counters.orders += 1
                chain = session.order(config.names, key, config.challenges, self.board)
        finally:
            self.counters.bad_nonces = session.net.bad_nonces
        certificate = self.store.save_certificate(
            config.directory_url, config.names, chain, key, now=_utc(self._clock.seconds())
        )
        return CheckResult(
            certificate,
            self._renew_at(certificate, session),
            ordered=True,
            reason=reason,
            seconds=self._clock.seconds() - started,
        )

    def _renew_at(
        self, certificate: ServerCertificate, session: AcmeSession | None = None
    ) -> datetime.datetime:
        chain = certificate.cert_path.read_bytes()
        own = renewal_time(x509.load_pem_x509_certificate(chain))
        # ARI, where the CA offers it; advice only, so an unreachable CA changes nothing.
        suggested = (session or self._session_now()).suggested_renewal(chain)
        return suggested if suggested is not None else own

    def _session_now(self) -> AcmeSession:
        if self._session is None:
            self._session = self._session_factory(self.config, self._cancelled)
        return self._session

    def _waiting(self, holder: str) -> None:
        self._say(
            f"ACME: {holder} is ordering a certificate in {self.store.root}; waiting for it "
            "to finish"
        )

    def _say(self, line: str) -> None:
        """Log one line from the ACME thread (through the reactor) or the reactor's."""
        if self._threaded:
            self._reactor.callFromThread(
                _log.info, "{line}", line=line, log_system=self.log_system
            )
        else:
            _log.info("{line}", line=line, log_system=self.log_system)

    # -- results -------------------------------------------------------------------

    def _succeeded(self, result: CheckResult) -> CheckResult:
        self.counters.failures = 0
        self.last_error = None
        certificate = result.certificate
        names = ", ".join(self.config.names)
        changed = (
            self.current is None
            or self.current.fingerprint_sha256 != certificate.fingerprint_sha256
        )
        self.current = certificate
        if result.ordered:
            _log.info(
                "ACME: new certificate for {names} from {url} ({reason}; took {seconds:.1f} s), "
                "valid until {until:%Y-%m-%d %H:%M} UTC, renewal from {renew:%Y-%m-%d %H:%M} UTC",
                names=names, url=self.config.directory_url, reason=result.reason,
                seconds=result.seconds, until=certificate.not_after, renew=result.renew_at,
                log_system=self.log_system,
            )  # fmt: skip
        elif changed:
            _log.info(
                "ACME: using the stored certificate for {names}, valid until "
                "{until:%Y-%m-%d %H:%M} UTC, renewal from {renew:%Y-%m-%d %H:%M} UTC",
                names=names, until=certificate.not_after, renew=result.renew_at,
                log_system=self.log_system,
            )  # fmt: skip
        if changed:
            try:
                self.on_certificate(certificate)
            except Exception as error:  # the serving layer's failure must not stop renewals
                _log.error(
                    "ACME: serving the new certificate {path} failed: {error}",
                    path=certificate.cert_path, error=f"{type(error).__name__}: {error}",
                    log_system=self.log_system,
                )  # fmt: skip
        if self.running:
            delay = (result.renew_at - self._now()).total_seconds()
            self._schedule(max(delay, MIN_CHECK_INTERVAL))
        return result

    def _failed(self, failure: Failure) -> None:
        error = failure.value
        if isinstance(error, OrderCancelled) or self._cancelled.is_set():
            return None
        if not isinstance(error, AcmeError):
            error = AcmeError(
                f"unexpected {type(error).__name__}: {error} (please report this as a bug)"
            )
        self.counters.failures += 1
        self.counters.errors.append(str(error))
        self.last_error = error
        names = ", ".join(self.config.names)
        serving = ""
        if self.current is not None:
            until = f"{self.current.not_after:%Y-%m-%d %H:%M}"
            serving = f"; still serving the certificate valid until {until} UTC"
        if not error.retry:
            self.next_check = None
            _log.error(
                "ACME: no certificate for {names}: {error}{serving}; not retrying until restarted",
                names=names, error=str(error), serving=serving,
                log_system=self.log_system,
            )  # fmt: skip
            return None
        wait = 0.0
        if error.retry_at is not None:
            wait = (error.retry_at - self._now()).total_seconds()
        delay = retry_delay(
            self.counters.failures,
            initial=self.config.retry_initial,
            maximum=self.config.retry_maximum,
            not_before=wait,
        )
        _log.warn(
            "ACME: no certificate for {names} (attempt {attempt}): {error}{serving}; "
            "next attempt in {delay}",
            names=names, attempt=self.counters.failures, error=str(error), serving=serving,
            delay=_duration(delay),
            log_system=self.log_system,
        )  # fmt: skip
        if self.running:
            self._schedule(delay)
        return None


def _duration(seconds: float) -> str:
    """Seconds as a person reads them: "0.3 s", "45 s", "8 min", "6 h"."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _default_session(config: AcmeConfig, cancelled: threading.Event) -> AcmeSession:
    return AcmeSession(config.directory_url, cancelled=cancelled, ca_file=config.directory_ca)


def _follow(job: defer.Deferred[CheckResult | None]) -> defer.Deferred[CheckResult | None]:
    """A Deferred that fires with ``job``'s result without taking it from other waiters."""
    follower: defer.Deferred[CheckResult | None] = defer.Deferred()

    def relay(result: CheckResult | None) -> CheckResult | None:
        follower.callback(result)
        return result

    job.addCallback(relay)
    return follower
