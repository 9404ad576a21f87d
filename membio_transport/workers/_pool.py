"""
Scaling out on one machine: worker processes sharing one listening socket.

Our TLS is Python code, so one process uses one core.  `WorkerPool` runs
``N`` worker processes that all accept connections from one listening
socket, and supervises them from the parent:

* The parent creates the socket (non-blocking: a worker blocked in
  ``accept()`` would never see its SIGTERM) and everything expensive or
  shared, above all the TLS context.  OpenSSL creates a context's session
  ticket keys with the context, so workers forked afterwards encrypt and
  decrypt tickets with the same keys: a session resumes on whichever worker
  the kernel hands the next connection to.
* Each worker is a ``fork()`` of the parent that throws away the parent's
  reactor without touching it and installs a fresh one (``_fork``), then
  adopts the shared socket with ``adoptStreamPort``.  What the worker
  serves is built after that, so that every timer and connection in it
  belongs to the new reactor.
* The parent restarts a worker that dies (with a growing delay when one
  keeps dying at start-up) and stops gracefully on SIGTERM: it closes its
  copy of the socket and sends SIGTERM to every worker, which stops
  accepting, closes idle connections, lets the others finish for
  ``grace`` seconds, and exits; the parent sends SIGKILL to any worker
  still alive a few seconds after that.
* A certificate reload happens in the parent and makes a new context: the
  parent then forks a new set of workers, which share it, and retires the
  old ones as gracefully as on SIGTERM.

``_cli`` checks the ``--workers``/``--grace`` options and binds the shared sockets;
each app decides what its workers serve (``https/_workers``, ``proxy/tap``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, NoReturn, Protocol

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, execute, succeed
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from ._fork import STOP_SIGNALS, fresh_reactor, leave_parent_signals, stop_once_on_signals

__all__ = [
    "DEFAULT_GRACE",
    "MAX_WORKERS",
    "AdoptedSocketEndpoint",
    "WorkerPool",
    "listening_socket",
]

_log = Logger(namespace="membio_transport.workers")

#: Seconds open connections may take to finish after SIGTERM.  Long enough
#: for a request in progress or a modest download; short enough for a
#: deployment or a service manager (systemd waits 90 s before SIGKILL).
DEFAULT_GRACE: Final = 10.0
#: More processes than this on one machine is a configuration mistake.
MAX_WORKERS: Final = 256
#: Listen queue of the shared socket: a burst of new connections waits
#: here while every worker is busy (Twisted's default of 50 overflows at a
#: few hundred simultaneous handshakes; the kernel caps it at somaxconn).
LISTEN_BACKLOG: Final = 1024
#: How often the parent looks for workers that ended.
_REAP_INTERVAL: Final = 0.2
#: How often a stopping worker looks at its remaining connections.
_DRAIN_INTERVAL: Final = 0.1
#: A worker that dies sooner than this after starting is restarted after a
#: delay that doubles each time, up to the maximum, so that a worker that
#: cannot start (a broken configuration) does not fork in a tight loop.
_QUICK_DEATH: Final = 2.0
_FIRST_DELAY: Final = 0.5
_MAX_DELAY: Final = 30.0
#: What the parent adds to the grace period before it kills workers.
_KILL_MARGIN: Final = 5.0


def listening_socket(interface: str, port: int, backlog: int = LISTEN_BACKLOG) -> socket.socket:
    """
    A bound, listening, non-blocking TCP socket for workers to share.

    @raise OSError: the address is in use, needs privileges, etc.
    """
    family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((interface, port))
        sock.listen(backlog)
        # Shared by every worker's accept loop: non-blocking, or a worker
        # that loses the race for a connection blocks in accept() for good.
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


@implementer(IStreamServerEndpoint)
class AdoptedSocketEndpoint:
    """A server endpoint that listens on a socket someone else already bound."""

    def __init__(self, reactor: Any, sock: socket.socket) -> None:
        self.reactor = reactor
        self.sock = sock

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        return execute(
            self.reactor.adoptStreamPort, self.sock.fileno(), self.sock.family, protocolFactory
        )


#: What a worker runs: given its own reactor and the shared sockets, start
#: listening and return the listening ports.
StartWorker = Callable[[Any, Sequence[socket.socket]], Sequence[Deferred[IListeningPort]]]


class ForkLink(Protocol):
    """
    A channel between the parent and one worker (its metrics), made before
    the fork and finished on each side after it.
    """

    def in_parent(self, pid: int) -> None: ...

    def leave_parent(self) -> None:
        """In the worker, before its fresh reactor: drop what is the parent's."""

    def in_worker(self, reactor: Any) -> None:
        """In the worker, with its fresh reactor installed, before it serves."""

    def close(self) -> None:
        """The fork failed."""


@dataclass
class _Worker:
    index: int
    pid: int
    started: float


class WorkerPool(Service):
    """
    Run C{count} worker processes serving C{sockets}, and keep them running.

    @param open_sockets: called once, when the service starts (before
        twistd drops privileges), to create the shared listening sockets.
    @param start_worker: called in each worker, with the worker's fresh
        reactor (already installed as the global one) and the sockets.
    @param close_idle: when stopping, called for each connection (the TLS
        protocol) until it ends: closes it if it is idle (between requests)
        and says whether it did; by default connections are given the whole
        grace period to end by themselves.
    @param announce: called in the parent once the sockets exist.
    @param helpers: services run in the parent alongside the pool (such as
        the certificate reloader, which replaces the TLS context).
    @param cleanup: called in the parent once it has closed the shared
        sockets (removes a UNIX socket's file).
    @param context_of: returns the TLS context workers are forked with;
        when it changes (a reload), every worker is replaced by one forked
        from the parent again, so that all of them share the new context
        and its ticket keys, and the old ones stop gracefully.
    @param fork_link: called before each fork: the new worker's channel to
        the parent (its metrics), or None.
    """

    name = "membio-workers"

    def __init__(
        self,
        open_sockets: Callable[[], list[socket.socket]],
        start_worker: StartWorker,
        count: int,
        *,
        grace: float = DEFAULT_GRACE,
        close_idle: Callable[[Any], bool] | None = None,
        announce: Callable[[Sequence[socket.socket]], None] | None = None,
        helpers: Sequence[Service] = (),
        context_of: Callable[[], object] | None = None,
        cleanup: Callable[[], None] | None = None,
        system: str = "membio",
        fork_link: Callable[[], ForkLink | None] | None = None,
    ) -> None:
        if not 1 <= count <= MAX_WORKERS:
            raise ValueError(f"worker count {count} is out of range (1-{MAX_WORKERS})")
        self._open_sockets = open_sockets
        self._start_worker = start_worker
        self.count = count
        self.grace = grace
        self._close_idle = close_idle
        self._announce = announce
        self._helpers = list(helpers)
        self._context_of = context_of
        self._context: object = None
        self._cleanup = cleanup
        self._system = system
        self._fork_link = fork_link
        self.sockets: list[socket.socket] = []
        #: The current worker of each index.
        self.workers: dict[int, _Worker] = {}
        #: Workers replaced after a reload, still finishing, by pid.
        self._retiring: dict[int, _Worker] = {}
        self._delays: dict[int, float] = {}
        self._restarts: dict[int, Any] = {}
        self._stopping = False
        self._stopped: Deferred[None] | None = None
        self._kill_call: Any = None
        self._reaper: LoopingCall | None = None
        self._parent_pid = os.getpid()

    @property
    def _reactor(self) -> Any:
        from twisted.internet import reactor

        return reactor

    # -- parent: starting ----------------------------------------------------

    def privilegedStartService(self) -> None:
        super().privilegedStartService()  # type: ignore[no-untyped-call]  # untyped in Twisted
        self._listen()

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]  # untyped in Twisted
        self._listen()
        self._parent_pid = os.getpid()  # twistd may have daemonized since
        self._context = self._context_of() if self._context_of is not None else None
        for index in range(self.count):
            self._spawn(index)
        for helper in self._helpers:
            helper.startService()
        self._reaper = LoopingCall(self._reap)
        self._reaper.clock = self._reactor
        self._reaper.start(_REAP_INTERVAL, now=False)

    def _listen(self) -> None:
        if self.sockets:
            return
        self.sockets = self._open_sockets()
        if self._announce is not None:
            self._announce(self.sockets)

    def _spawn(self, index: int) -> None:
        self._restarts.pop(index, None)
        if self._stopping:
            return
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        # Stop signals stay blocked in the new worker until its own reactor
        # handles them: one arriving while it starts then drains it too.
        link = self._fork_link() if self._fork_link is not None else None
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            pid = os.fork()
            if pid == 0:
                self._become_worker(index, link)
        except OSError:
            if link is not None:
                link.close()
            raise
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        if link is not None:
            link.in_parent(pid)
        self.workers[index] = _Worker(index, pid, time.monotonic())
        _log.info(
            "worker {index} started (pid {pid})", index=index, pid=pid, log_system=self._system
        )

    # -- parent: supervising -------------------------------------------------

    def _reap(self) -> None:
        for worker in [*self.workers.values(), *self._retiring.values()]:
            try:
                pid, status = os.waitpid(worker.pid, os.WNOHANG)
            except ChildProcessError:
                pid, status = worker.pid, 0
            if pid == 0:
                continue
            if self._retiring.pop(worker.pid, None) is not None:
                _log.info(
                    "replaced worker {index} (pid {pid}) {how}", index=worker.index,
                    pid=worker.pid, how=_describe_status(status), log_system=self._system,
                )
                continue
            del self.workers[worker.index]
            self._worker_ended(worker, status)
        if self._stopping:
            if not self.workers and not self._retiring:
                self._all_stopped()
            return
        if self._context_of is not None and self._context_of() is not self._context:
            self._context = self._context_of()
            self._replace_all()

    def _replace_all(self) -> None:
        """After a reload: fork new workers, stop the old ones gracefully."""
        _log.info(
            "TLS context reloaded: replacing {count} worker(s); the old ones finish their "
            "connections", count=len(self.workers), log_system=self._system,
        )
        old = list(self.workers.values())
        for worker in old:
            self._retiring[worker.pid] = worker
        self.workers.clear()
        for call in self._restarts.values():
            if call.active():
                call.cancel()  # a worker waiting to restart starts now
        self._restarts.clear()
        self._delays.clear()
        for index in range(self.count):
            self._spawn(index)
        for worker in old:
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signal.SIGTERM)

    def _worker_ended(self, worker: _Worker, status: int) -> None:
        how = _describe_status(status)
        if self._stopping:
            _log.info(
                "worker {index} (pid {pid}) {how}",
                index=worker.index, pid=worker.pid, how=how, log_system=self._system,
            )
            return
        lived = time.monotonic() - worker.started
        if lived < _QUICK_DEATH:
            delay = min(self._delays.get(worker.index, _FIRST_DELAY / 2) * 2, _MAX_DELAY)
        else:
            delay = 0.0
        self._delays[worker.index] = delay or _FIRST_DELAY / 2
        _log.warn(
            "worker {index} (pid {pid}) {how} after {lived:.1f}s; starting a new one"
            "{later}",
            index=worker.index, pid=worker.pid, how=how, lived=lived,
            later=f" in {delay:.1f}s" if delay else "", log_system=self._system,
        )
        self._restarts[worker.index] = self._reactor.callLater(delay, self._spawn, worker.index)

    # -- parent: stopping ----------------------------------------------------

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]  # untyped in Twisted
        self._stopping = True
        for helper in self._helpers:
            if helper.running:
                helper.stopService()
        for call in self._restarts.values():
            if call.active():
                call.cancel()
        self._restarts.clear()
        # Workers hold their own copies; once they stop listening too, new
        # connections are refused instead of waiting in a queue nobody reads.
        for sock in self.sockets:
            sock.close()
        if self.sockets and self._cleanup is not None:
            self._cleanup()
        self.sockets = []
        every = [*self.workers.values(), *self._retiring.values()]
        if not every:
            self._stop_reaper()
            return succeed(None)
        _log.info(
            "stopping {count} worker(s); open connections get {grace:g}s to finish",
            count=len(every), grace=self.grace, log_system=self._system,
        )
        for worker in every:
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signal.SIGTERM)
        self._stopped = Deferred()
        self._kill_call = self._reactor.callLater(self.grace + _KILL_MARGIN, self._kill_all)
        return self._stopped

    def _kill_all(self) -> None:
        self._kill_call = None
        for worker in [*self.workers.values(), *self._retiring.values()]:
            _log.warn(
                "worker {index} (pid {pid}) did not stop in time: killing it",
                index=worker.index, pid=worker.pid, log_system=self._system,
            )
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signal.SIGKILL)

    def _all_stopped(self) -> None:
        self._stop_reaper()
        if self._kill_call is not None and self._kill_call.active():
            self._kill_call.cancel()
        self._kill_call = None
        stopped, self._stopped = self._stopped, None
        if stopped is not None:
            stopped.callback(None)

    def _stop_reaper(self) -> None:
        if self._reaper is not None and self._reaper.running:
            self._reaper.stop()
        self._reaper = None

    # -- worker --------------------------------------------------------------

    def _become_worker(self, index: int, link: ForkLink | None) -> NoReturn:
        """Run as worker C{index} in the forked child; never returns."""
        status = 1
        try:
            status = self._serve(index, link)
        except BaseException:
            _log.failure("worker {index} failed", index=index, log_system=self._system)
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            os._exit(status)

    def _serve(self, index: int, link: ForkLink | None) -> int:
        system = f"{self._system}-worker-{index}"
        leave_parent_signals(self._parent_pid)
        if link is not None:
            link.leave_parent()
        reactor = fresh_reactor()
        if link is not None:
            link.in_worker(reactor)
        listening = self._start_worker(reactor, self.sockets)
        ports: list[IListeningPort] = []
        failures: list[Any] = []
        for pending in listening:
            pending.addCallbacks(ports.append, failures.append)
        for sock in self.sockets:
            # The adopted ports hold their own descriptors: this copy would
            # keep the socket accepting after the worker stops listening.
            sock.close()
        if failures:
            _log.error(
                "worker {index} cannot listen: {reason}",
                index=index, reason=failures[0].getErrorMessage(), log_system=system,
            )
            return 1
        reactor.addSystemEventTrigger("before", "shutdown", self._drain, reactor, ports, system)
        reactor.callWhenRunning(stop_once_on_signals, reactor)
        reactor.run()
        return 0

    def _drain(self, reactor: Any, ports: list[IListeningPort], system: str) -> Deferred[None]:
        """Stop accepting; close idle connections; give the rest `grace` seconds."""
        factories = [getattr(port, "factory", None) for port in ports]
        stopping = DeferredList([port.stopListening() for port in ports])  # type: ignore[misc]
        deadline = reactor.seconds() + self.grace
        done: Deferred[None] = Deferred()
        close_idle = self._close_idle
        closed: set[int] = set()

        def connections() -> list[Any]:
            found: list[Any] = []
            for factory in factories:
                found += list(getattr(factory, "protocols", {}) or {})
            return found

        announced = False

        def check() -> None:
            nonlocal announced
            remaining = connections()
            if close_idle is not None:
                for protocol in remaining:
                    if id(protocol) not in closed and close_idle(protocol):
                        closed.add(id(protocol))
            if not remaining:
                done.callback(None)
                return
            if not announced:
                announced = True
                _log.info(
                    "no longer accepting; waiting up to {grace:g}s for {count} connection(s)",
                    grace=self.grace, count=len(remaining), log_system=system,
                )
            if reactor.seconds() >= deadline:
                _log.warn(
                    "grace period over: aborting {count} connection(s)",
                    count=len(remaining), log_system=system,
                )
                for protocol in remaining:
                    protocol.abortConnection()
                done.callback(None)
                return
            reactor.callLater(_DRAIN_INTERVAL, check)

        stopping.addCallback(lambda _: check())
        return done


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        return f"was killed by {name}"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"
