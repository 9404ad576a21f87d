"""The prototypes measured for issue #14 (phase A), as patches to a scratch copy of the package.

    python benchmarks/profiles/prototypes_issue14.py VARIANT DEST
    PYTHONPATH=DEST python benchmarks/profiles/request_ir.py --stacks ours
    python benchmarks/callgrind.py --servers ours --concurrency 1 --package DEST

copies this checkout's ``membio_transport`` to ``DEST/membio_transport`` and applies VARIANT
(names joined with ``+``: ``v1+nocycle``).  Never run against the checkout itself: phase A
changes nothing in the package; phase B applies what these show, properly, after the
restructure of issue #11.  The patches match the package's text at 28ecd57 and fail loudly
(AssertionError) on any other; they remove behaviour to measure what it costs (counters, the
handshake timeout, the BIO release after the handshake), so a patched copy fails those tests:

* ``v1``: per-record bookkeeping off the path (byte counters, burst and idle checks), the
  engine state read directly, empty drains seen without a cffi allocation, no
  ``_relieve_backpressure`` call unless the producer is paused for TLS (``v1a``, ``v1b``, ``v1c``:
  the parts alone);
* ``v2``: one scheduled flush per factory and reactor turn instead of one DelayedCall per
  connection that wrote outside a callback;
* ``v3``: per connection, no ``set_options`` (the context has OP_NO_RENEGOTIATION), no BIO swap
  right after the handshake, no handshake-timeout DelayedCall;
* ``nocycle``: a failed or truncated session leaves no reference cycle (its error keeps neither
  traceback nor context), so the SSL object is freed by reference counting, not by the GC;
* ``immediate``: writes outside callbacks go out at once (``v6`` = v1 + v3 + immediate);
* ``tickets``: ``OPENSSL_CONF`` with ``NumTickets = 1`` set on import (only effective where
  nothing imported OpenSSL before: ``twistd membio-https``, not ``twistd web``);
* ``all_``: v1 + v2 + v3 + nocycle.
"""

import shutil
import sys
from pathlib import Path


def sub(path, old, new, count=1):
    s = path.read_text()
    assert s.count(old) >= 1, (path, old[:60])
    s = s.replace(old, new) if count == 0 else s.replace(old, new, count)
    path.write_text(s)


def v1(pkg):
    """Per-request bookkeeping: stats, burst and idle checks off the record path; engine state
    read directly; empty drains without a cffi allocation; backpressure check inlined."""
    p = pkg / "_protocol.py"
    sub(
        p,
        """    def dataReceived(self, data: bytes) -> None:
        self.factory.stats.bytes_received += len(data)
        if len(data) >= BURST_SIZE:
            self.factory.reclaimer.burst(self)
        if self._idle_timer is not None:
            self._last_activity = self.factory.clock.seconds()
        if self._preamble is not None:""",
        """    def dataReceived(self, data: bytes) -> None:
        if self._preamble is not None:""",
    )
    sub(
        p,
        """        engine = self._engine
        if self._busy or engine.state is TLSState.FAILED:
            return""",
        """        engine = self._engine
        if self._busy or engine._state is TLSState.FAILED:
            return""",
    )
    sub(
        p,
        """        if self._producer is not None:
            # Reading may have let held-back writes go (a renegotiation
            # finished): a producer paused for them may resume.
            self._relieve_backpressure()
        self._flush()""",
        """        producer = self._producer
        if producer is not None and producer._by_tls:
            self._relieve_backpressure()
        self._flush()""",
    )
    sub(
        p,
        """        out = self._engine.data_to_send()
        if out and self.connected:
            if len(out) >= BURST_SIZE:
                self.factory.reclaimer.burst(self)
            self.factory.stats.bytes_sent += len(out)
            if self._idle_timer is not None:
                self._last_activity = self.factory.clock.seconds()
            self.transport.write(out)""",
        """        out = self._engine.data_to_send()
        if out and self.connected:
            self.transport.write(out)""",
    )
    sub(
        p,
        """        engine = self._engine
        if engine.state not in _SENDABLE:
            return""",
        """        engine = self._engine
        if engine._state not in _SENDABLE:
            return""",
    )
    r = pkg / "_record_io.py"
    sub(
        r,
        """        outgoing = self._outgoing
        # One copy""",
        """        outgoing = self._outgoing
        if not _BIO_get_mem_data(outgoing, _NULL):
            return b""
        # One copy""",
    )


def v2(pkg):
    """One scheduled flush per factory per reactor turn instead of one DelayedCall per
    connection that wrote outside a callback."""
    p = pkg / "_protocol.py"
    sub(
        p,
        """    def _schedule_flush(self) -> None:
        self._flush_call = self.factory.clock.callLater(0, self._scheduled_flush)
""",
        """    def _schedule_flush(self) -> None:
        factory = self.factory
        self._flush_call = _PENDING
        factory._dirty.append(self)
        if factory._turn_call is None:
            factory._turn_call = factory.clock.callLater(0, factory._flush_dirty)
""",
    )
    sub(
        p,
        """_SENDABLE = frozenset(""",
        '''class _Pending:
    """Stands for this connection's place in its factory's flush list."""

    def cancel(self) -> None:
        pass

    def active(self) -> bool:
        return True


_PENDING = _Pending()

_SENDABLE = frozenset(''',
    )
    f = pkg / "_factory.py"
    sub(
        f,
        """        self._reclaimer: BufferReclaimer | None = None
""",
        """        self._reclaimer: BufferReclaimer | None = None
        self._dirty: list[Any] = []
        self._turn_call: Any = None

    def _flush_dirty(self) -> None:
        dirty, self._dirty = self._dirty, []
        self._turn_call = None
        for protocol in dirty:
            if protocol._flush_call is not None:
                protocol._flush_call = None
                protocol._flush()
""",
    )


def v3(pkg):
    """Per connection: no per-connection set_options (the context has OP_NO_RENEGOTIATION), no
    BIO swap right after the handshake (left to the reclaimer's sweep), no handshake-timeout
    DelayedCall (a per-factory sweep would replace it), SSL_session_reused looked up once."""
    e = pkg / "_engine.py"
    sub(
        e,
        """        if server_side:
            connection.set_options(SSL.OP_NO_RENEGOTIATION)""",
        """        pass""",
    )
    sub(e, """            self._release_due = self._io.can_release""", """            pass""")
    p = pkg / "_protocol.py"
    sub(
        p,
        """        if factory.handshake_timeout is not None:
            self._handshake_timer = factory.clock.callLater(
                factory.handshake_timeout, self._handshake_timed_out
            )""",
        """        pass""",
    )


def v4(pkg):
    v1(pkg)
    v2(pkg)
    v3(pkg)


def tickets(pkg):
    """NumTickets = 1 through OPENSSL_CONF, set on import before OpenSSL is first imported."""
    conf = pkg / "one-ticket.cnf"
    conf.write_text(
        "openssl_conf = openssl_init\n[openssl_init]\nssl_conf = ssl_sect\n"
        "[ssl_sect]\nsystem_default = sd\n[sd]\nNumTickets = 1\n"
    )
    init = pkg / "__init__.py"
    head = (
        "import os as _os\n"
        "_os.environ.setdefault(\n"
        "    'OPENSSL_CONF', _os.path.join(_os.path.dirname(__file__), 'one-ticket.cnf')\n"
        ")\n"
    )
    init.write_text(head + init.read_text())


def immediate(pkg):
    """Writes outside callbacks are encrypted and handed to the transport at once (as Twisted's
    layer does) instead of at the next reactor turn: no DelayedCall, no extra turn, but one
    record and one transport write per application write."""
    p = pkg / "_protocol.py"
    sub(
        p,
        """    def _schedule_flush(self) -> None:
        self._flush_call = self.factory.clock.callLater(0, self._scheduled_flush)
""",
        """    def _schedule_flush(self) -> None:
        self._flush()
""",
    )


def v6(pkg):
    v1(pkg)
    v3(pkg)
    immediate(pkg)


def nocycle(pkg):
    """A failed TLS session leaves no reference cycle: the TLSConnectionError handed on keeps
    neither its traceback (frames holding the protocol and the engine) nor its context (the
    pyOpenSSL error, whose traceback holds the record I/O and so the SSL object)."""
    p = pkg / "_protocol.py"
    sub(
        p,
        """        except TLSConnectionError as e:
            self._tls_failed(e)
        finally:
            self._busy = False""",
        """        except TLSConnectionError as e:
            e.__traceback__ = None
            e.__context__ = None
            self._tls_failed(e)
        finally:
            self._busy = False""",
    )


def v7(pkg):
    nocycle(pkg)


def all_(pkg):
    v1(pkg)
    v2(pkg)
    v3(pkg)
    nocycle(pkg)


def v1a(pkg):
    """Only the counters, burst and idle checks off the per-record path."""
    p = pkg / "_protocol.py"
    sub(
        p,
        """    def dataReceived(self, data: bytes) -> None:
        self.factory.stats.bytes_received += len(data)
        if len(data) >= BURST_SIZE:
            self.factory.reclaimer.burst(self)
        if self._idle_timer is not None:
            self._last_activity = self.factory.clock.seconds()
        if self._preamble is not None:""",
        """    def dataReceived(self, data: bytes) -> None:
        if self._preamble is not None:""",
    )
    sub(
        p,
        """        out = self._engine.data_to_send()
        if out and self.connected:
            if len(out) >= BURST_SIZE:
                self.factory.reclaimer.burst(self)
            self.factory.stats.bytes_sent += len(out)
            if self._idle_timer is not None:
                self._last_activity = self.factory.clock.seconds()
            self.transport.write(out)""",
        """        out = self._engine.data_to_send()
        if out and self.connected:
            self.transport.write(out)""",
    )


def v1b(pkg):
    """Only: no _relieve_backpressure call per delivery when the producer is not paused."""
    p = pkg / "_protocol.py"
    sub(
        p,
        """        if self._producer is not None:
            # Reading may have let held-back writes go (a renegotiation
            # finished): a producer paused for them may resume.
            self._relieve_backpressure()
        self._flush()""",
        """        producer = self._producer
        if producer is not None and producer._by_tls:
            self._relieve_backpressure()
        self._flush()""",
    )


def v1c(pkg):
    """Only: an empty outgoing BIO is seen without allocating a char** first."""
    r = pkg / "_record_io.py"
    sub(
        r,
        """        outgoing = self._outgoing
        # One copy""",
        """        outgoing = self._outgoing
        if not _BIO_get_mem_data(outgoing, _NULL):
            return b""
        # One copy""",
    )


def main() -> int:
    variant, dest = sys.argv[1], Path(sys.argv[2])
    package = Path(__file__).resolve().parents[2] / "membio_transport"
    if dest.resolve() == package.parent.resolve():
        raise SystemExit("refusing to patch the checkout itself")
    target = dest / "membio_transport"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(package, target, ignore=shutil.ignore_patterns("__pycache__"))
    for name in variant.split("+"):
        globals()[name](target)
    print(f"{target}: {variant}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
