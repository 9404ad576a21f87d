"""
Warnings before a certificate expires.

A certificate the user brings (or one a renewal failed to replace) gives no
sign of its age until clients refuse it.  `ExpiryWatch` looks at every
certificate the server holds at start, daily, and at the moment the next
threshold is crossed, and logs one line per certificate and threshold: a
warning 30, 7 and 1 day(s) before ``notAfter``, an error once it has
expired.  Each threshold is logged once per certificate (the 7-day warning
is not repeated every day), and the record starts again when a new
certificate (another fingerprint) takes the file's place.  A certificate
found already past several thresholds gets one line, the most urgent.

Certificates this process renews by itself (a generated leaf: its
``renew_after`` is set) are not worth a warning before their renewal is
due; after that date, each threshold means a renewal that did not happen.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from twisted.application.service import Service
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from ..certs import ServerCertificate

__all__ = ["CHECK_INTERVAL", "EXPIRY_WARNINGS", "ExpiryWatch"]

_log = Logger(namespace="membio_transport.observe")

#: Warning thresholds before notAfter: a month leaves time to order and
#: deploy a certificate by hand; a week and a day are the last calls.
EXPIRY_WARNINGS: Final = (
    datetime.timedelta(days=30),
    datetime.timedelta(days=7),
    datetime.timedelta(days=1),
)
#: Seconds between two regular checks (thresholds are days apart; the
#: exact crossing moments are scheduled as well).
CHECK_INTERVAL: Final = 86400.0
#: The smallest delay before the next check, so that a certificate whose
#: threshold is this very instant cannot make the watch spin.
_MIN_DELAY: Final = 1.0

#: The stage of a certificate: index into EXPIRY_WARNINGS, or EXPIRED.
EXPIRED: Final = len(EXPIRY_WARNINGS)


@dataclass
class _Seen:
    fingerprint: str
    #: The most urgent stage logged so far (-1: none).
    stage: int = -1


class ExpiryWatch(Service):
    """
    Log expiry warnings for C{certificates()}, which returns every
    certificate the server holds now (they may change between calls).

    @param clock: the reactor, or a test clock: its ``seconds()`` is the
        time, in Unix seconds, and it schedules the checks.
    """

    def __init__(
        self,
        certificates: Callable[[], Iterable[ServerCertificate]],
        *,
        clock: Any = None,
        thresholds: tuple[datetime.timedelta, ...] = EXPIRY_WARNINGS,
        interval: float = CHECK_INTERVAL,
        log_system: str = "membio",
    ) -> None:
        if list(thresholds) != sorted(thresholds, reverse=True):
            raise ValueError("expiry thresholds must be given from the longest to the shortest")
        self.certificates = certificates
        self.thresholds = thresholds
        self.interval = interval
        self._clock = clock
        self._log_system = log_system
        self._seen: dict[Path, _Seen] = {}
        self._call: IDelayedCall | None = None

    @property
    def clock(self) -> Any:
        if self._clock is None:
            from twisted.internet import reactor

            self._clock = reactor
        return self._clock

    def _now(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self.clock.seconds(), datetime.UTC)

    # -- service ------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]  # untyped in Twisted
        self._run()

    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call]  # untyped in Twisted
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def recheck(self) -> None:
        """
        Look again now (the certificates were reloaded) and schedule the
        next look for the new certificates' next threshold.
        """
        if not self.running:
            return
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._run()

    def _run(self) -> None:
        self._call = None
        try:
            upcoming = self.check()
        except Exception:
            # The source is ours; a bug there must not end the daily checks.
            _log.failure(
                "certificate expiry check failed", log_system=self._log_system,
                event_name="certificate_expiry_check_failed",
            )
            upcoming = None
        delay = self.interval
        if upcoming is not None:
            delay = min(delay, max((upcoming - self._now()).total_seconds(), _MIN_DELAY))
        if self.running:
            self._call = self.clock.callLater(delay, self._run)

    # -- checking -------------------------------------------------------------------

    def check(self) -> datetime.datetime | None:
        """
        Look at every certificate now and log what is due; return when the
        next threshold is crossed (None if never).  Call it after a reload
        too: a replaced certificate starts a new record.
        """
        now = self._now()
        current: dict[Path, ServerCertificate] = {}
        for certificate in self.certificates():
            current.setdefault(certificate.cert_path, certificate)
        # Files no longer served are forgotten: if they come back, they start over.
        for path in [path for path in self._seen if path not in current]:
            del self._seen[path]
        upcoming: datetime.datetime | None = None
        for path, certificate in current.items():
            seen = self._seen.get(path)
            if seen is None or seen.fingerprint != certificate.fingerprint_sha256:
                seen = self._seen[path] = _Seen(certificate.fingerprint_sha256)
            stage = self._stage(certificate, now)
            if stage > seen.stage:
                seen.stage = stage
                self._log(certificate, stage, now)
            crossing = self._next_crossing(certificate, stage, now)
            if crossing is not None and (upcoming is None or crossing < upcoming):
                upcoming = crossing
        return upcoming

    def _stage(self, certificate: ServerCertificate, now: datetime.datetime) -> int:
        """The most urgent stage reached now (-1: none)."""
        if now >= certificate.not_after:
            return EXPIRED
        if certificate.renew_after is not None and now < certificate.renew_after:
            return -1  # this process renews it before anything is worth saying
        left = certificate.not_after - now
        stage = -1
        for index, threshold in enumerate(self.thresholds):
            if left <= threshold:
                stage = index
        return stage

    def _next_crossing(
        self, certificate: ServerCertificate, stage: int, now: datetime.datetime
    ) -> datetime.datetime | None:
        if stage == EXPIRED:
            return None
        moments = [certificate.not_after - t for t in self.thresholds[stage + 1:]]
        moments.append(certificate.not_after)
        if certificate.renew_after is not None:
            moments = [max(moment, certificate.renew_after) for moment in moments]
        future = [moment for moment in moments if moment > now]
        return min(future) if future else None

    def _log(self, certificate: ServerCertificate, stage: int, now: datetime.datetime) -> None:
        names = ", ".join(certificate.names) or "(no names)"
        expiry = certificate.not_after
        fields: dict[str, Any] = {
            "file": str(certificate.cert_path),
            "names": names,
            "not_after": expiry.isoformat(),
            "fingerprint": certificate.fingerprint_sha256,
            "log_system": self._log_system,
        }
        if stage == EXPIRED:
            _log.error(
                "TLS certificate {file} for {names} expired on {expiry:%Y-%m-%d %H:%M} UTC: "
                "clients refuse it; replace it and reload (SIGHUP)",
                expiry=expiry, event_name="certificate_expired", **fields,
            )
            return
        fix = (
            "its renewal is overdue: see the reload lines above"
            if certificate.renew_after is not None
            else "renew it and replace the file (it is reloaded on change or SIGHUP)"
        )
        _log.warn(
            "TLS certificate {file} for {names} expires in {left} (on {expiry:%Y-%m-%d %H:%M} "
            "UTC): {fix}",
            left=_duration(certificate.not_after - now), expiry=expiry, fix=fix,
            event_name="certificate_expiring", days_left=(expiry - now).days, **fields,
        )


def _duration(left: datetime.timedelta) -> str:
    """'20 days', '5 days', '12 hours', '40 minutes'."""
    if left >= datetime.timedelta(days=2):
        return f"{left.days} days"
    hours = int(left.total_seconds() // 3600)
    if hours >= 2:
        return f"{hours} hours"
    minutes = max(int(left.total_seconds() // 60), 1)
    return f"{minutes} minute{'s' if minutes != 1 else ''}"
