"""
`HTTPSService`, what ``twistd membio-https`` runs: it listens on every
endpoint of its `Plan` (before twistd drops privileges), turns a listener
that cannot listen into a one-line error and exit status 1, stops them all
again, and logs where to browse once everything listens (the TLS lifecycle
runs with the ports: see ``serving.TLSServing``).
"""

from __future__ import annotations

import atexit
import sys
from collections.abc import Callable
from typing import Any, NoReturn, cast

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, DeferredList, maybeDeferred
from twisted.internet.interfaces import IListeningPort
from twisted.python.failure import Failure
from twisted.web.resource import IResource
from twisted.web.server import Site

from ..serving import (
    DEFAULT_PORT,
    Listener,
    StartupError,
    exit_status_one,
    exit_with_message,
    listen_error,
)
from ._plan import Plan
from ._redirect import RedirectToHTTPS
from ._startup_log import SYSTEM, StartupLog, log


class HTTPSService(StartupLog, Service):
    """
    Listens on every configured endpoint before twistd drops privileges, then
    logs where to browse and how to trust the certificate.
    """

    name = "membio-https"

    def __init__(
        self,
        plan: Plan,
        site: Site,
        redirect: RedirectToHTTPS | None,
        reactor: Any = None,
        exit_status_hook: Callable[[Callable[[], None]], object] = atexit.register,
        http_root: Callable[[IResource], IResource] | None = None,
    ) -> None:
        self.plan = plan
        #: What the plain-HTTP listener serves around the redirect (ACME http-01).
        self._http_root = http_root
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
        if not self._pending:
            self._announce()

    def stopService(self) -> Deferred[Any]:
        super().stopService()  # type: ignore[no-untyped-call]  # untyped in Twisted
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
            root: IResource = self.redirect
            if self._http_root is not None:
                root = self._http_root(root)
            self._start(redirect, Site(root))

    def _start(self, listener: Listener, site: Site) -> None:
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
            self._fail(listen_error(result.value, listener))
        listener.port = cast(IListeningPort, result)

    def _listened_later(
        self, result: object, listener: Listener, listening: Deferred[IListeningPort]
    ) -> None:
        if listening in self._pending:
            self._pending.remove(listening)
        if isinstance(result, Failure):
            if result.check(CancelledError):
                return  # stopService gave up waiting
            message = listen_error(result.value, listener)
            # Too late to fail start-up: say why, stop, and exit with status 1.
            log.critical("{message}", message=message, log_system=SYSTEM)
            stream = sys.__stderr__
            if not self.plan.daemon and stream is not None:
                stream.write(f"{self.plan.command}: error: {message}\n")
            self._exit_status_hook(exit_status_one)
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
            log.critical("{message}", message=message, log_system=SYSTEM)
        exit_with_message(self.plan.command)
        raise StartupError(message)

    def _https_port(self) -> int:
        for listener in self.plan.listeners:
            number = getattr(listener.port.getHost(), "port", None) if listener.port else None
            if isinstance(number, int):
                return number
        return DEFAULT_PORT
