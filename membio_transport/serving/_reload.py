"""
Certificate reload without a restart.

Certificates are replaced while servers run: certbot renews every 60 days,
an operator swaps a leaked key, a generated leaf enters its renewal window.
`CertificateReloader` rebuilds every context from the files (see
``_sni.TLSSetup``) on ``SIGHUP``, when a watched file changes (their
mtimes are polled with a ``LoopingCall``: no inotify dependency, and it
works on every file system), and when a generated certificate is due for
renewal.  It then swaps ``ServerTLSOptions.context``: new connections get
the new certificate, while connections already open keep the
``SSL.Connection`` (and so the context) they were made with, undisturbed.

A reload that fails (a damaged file, a key that does not match, a
certificate written before its key) changes nothing: the previous
certificates stay in service, and one log line says why.  Files are often
written one after the other, so the next change retries.

Session tickets are encrypted with keys that belong to a context, and
pyOpenSSL cannot copy them: sessions from before a reload are not resumed
after it (clients just do a full handshake).
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, Final

from OpenSSL import SSL
from twisted.application.service import Service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from ..certs import CertificateError, os_reason
from ..tls import ServerTLSOptions, describe
from ._sni import CertificateSet, TLSSetup

__all__ = ["DEFAULT_POLL_INTERVAL", "CertificateReloader"]

_log = Logger(namespace="membio_transport.reload")

#: Seconds between two looks at the certificate files' mtimes.  A stat per
#: file every few seconds costs nothing, and a renewed certificate is in
#: service a few seconds after it is written.
DEFAULT_POLL_INTERVAL: Final = 5.0

#: What describes a file's version: changes when it is rewritten or
#: replaced by a rename; an error number when it is missing.
_Signature = tuple[int, int, int, int] | int


def _signature(path: Path) -> _Signature:
    try:
        status = os.stat(path)
    except OSError as error:
        return error.errno or -1
    return (status.st_mtime_ns, status.st_size, status.st_ino, status.st_dev)


class CertificateReloader(Service):
    """
    Keep C{options.context} built from the current files of C{setup}.

    @param current: the set C{options} serves now.
    @param interval: seconds between polls of the files, or None for no
        polling (SIGHUP only).
    @param clock: the reactor, or a test clock.
    @param handle_sighup: reload on SIGHUP while running (only possible
        from the main thread).
    """

    def __init__(
        self,
        setup: TLSSetup,
        options: ServerTLSOptions,
        current: CertificateSet,
        *,
        interval: float | None = DEFAULT_POLL_INTERVAL,
        clock: Any = None,
        handle_sighup: bool = True,
        log_system: str = "membio",
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.setup = setup
        self.options = options
        self.current = current
        self.interval = interval
        self._clock = clock
        self._handle_sighup = handle_sighup
        self._log_system = log_system
        self._now = now
        self._signatures = self._look()
        self._loop: LoopingCall | None = None
        self._previous_handler: Any = None
        self._renewal_tried: datetime | None = None
        #: How many reloads succeeded and failed (for tests and operators).
        self.reloads = 0
        self.failures = 0
        #: Of those, the ones made because a generated certificate was due.
        self.renewals = 0
        self.renewal_failures = 0

    @property
    def clock(self) -> Any:
        if self._clock is None:
            from twisted.internet import reactor

            self._clock = reactor
        return self._clock

    # -- service --------------------------------------------------------------

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]  # untyped in Twisted
        if self.interval is not None and self.interval > 0:
            self._loop = LoopingCall(self.poll)
            self._loop.clock = self.clock
            self._loop.start(self.interval, now=False)
        if self._handle_sighup and threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGHUP, self._on_sighup)

    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call]  # untyped in Twisted
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        if self._previous_handler is not None:
            signal.signal(signal.SIGHUP, self._previous_handler)
            self._previous_handler = None

    def _on_sighup(self, number: int, frame: FrameType | None) -> None:
        # A signal handler runs between two bytecodes of whatever the main
        # thread was doing: leave the work to the reactor loop.
        self.clock.callFromThread(self.reload, "SIGHUP")

    # -- watching -----------------------------------------------------------------

    def _look(self) -> dict[Path, _Signature]:
        return {path: _signature(path) for path in self.setup.watched(self.current)}

    def poll(self) -> None:
        """Reload when a watched file changed or a renewal is due."""
        signatures = self._look()
        if signatures != self._signatures:
            changed = sorted(
                str(path) for path in signatures.keys() | self._signatures.keys()
                if signatures.get(path) != self._signatures.get(path)
            )
            self.reload(f"{', '.join(changed)} changed")
            return
        renew_after = self.current.default.renew_after
        if (
            renew_after is not None
            and self._now() >= renew_after
            and self._renewal_tried != renew_after
        ):
            self._renewal_tried = renew_after  # one try per renewal date
            if self.reload("the generated certificate is due for renewal"):
                self.renewals += 1
            else:
                self.renewal_failures += 1

    # -- reloading -----------------------------------------------------------------

    def reload(self, why: str = "reload requested") -> bool:
        """
        Build everything again and serve it to new connections; on any
        error keep serving what was there, and log one line saying why.
        """
        old = self.current
        try:
            built = self.setup.load()
        except (CertificateError, SSL.Error, OSError, ValueError) as error:
            self.failures += 1
            self._signatures = self._look()  # retry on the next change, not every poll
            _log.warn(
                "certificate reload ({why}) failed, still serving SHA-256 {fingerprint}: "
                "{reason}",
                why=why, fingerprint=old.default.fingerprint_sha256,
                reason=_one_line(error), log_system=self._log_system,
                event_name="certificate_reload_failed",
            )
            return False
        self.options.context = built.context
        self.current = built
        self.reloads += 1
        self._signatures = self._look()
        default = built.default
        same = default.fingerprint_sha256 == old.default.fingerprint_sha256
        others = f", {len(built.others)} SNI certificate(s)" if built.others else ""
        _log.info(
            "certificates reloaded ({why}): new connections get SHA-256 {fingerprint}"
            "{unchanged} for {names}, valid until {expiry:%Y-%m-%d %H:%M:%S} UTC{others}",
            why=why, fingerprint=default.fingerprint_sha256,
            unchanged=" (unchanged)" if same else "",
            names=", ".join(default.names) or "(no names)", expiry=default.not_after,
            others=others, log_system=self._log_system,
            event_name="certificate_reloaded",
        )
        return True


def _one_line(error: BaseException) -> str:
    if isinstance(error, SSL.Error):
        text = describe(error)
    elif isinstance(error, OSError):
        text = f"{error.filename or ''}: {os_reason(error)}".lstrip(": ")
    else:
        text = str(error)
    return " ".join(text.split()) or type(error).__name__
