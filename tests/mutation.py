"""
Mutation testing of the TLS core, with cosmic-ray.

    .venv/bin/python -m tests.mutation                   # every module below, one after another
    .venv/bin/python -m tests.mutation --module _engine  # one module (a name from MODULES)
    .venv/bin/python -m tests.mutation --jobs 2          # two modules at a time
    .venv/bin/python -m tests.mutation --report          # print the last results again

Each mutant is one deliberate bug (a comparison flipped, a number moved by
one, an ``and`` made ``or``, a state dropped from or added to a set...).
The module's in-memory tests run against it; a mutant that no test fails
("survived") is a behaviour nothing defends, unless it is equivalent (the
program cannot tell), in which case it is explained in `EQUIVALENT` below.

Why cosmic-ray rather than mutmut: mutmut 3 only mutates code inside
functions, and what the audit behind issue #15 found undefended was mostly
module level (the state table, the default timeouts, buffer sizes and the
drain threshold).  cosmic-ray mutates the whole module and takes extra
operators in process: `_membio_operators` adds two that remove or add one
member of a set display, which is how the state table (and the engine's
sets of states) are mutated; cosmic-ray's own operators have nothing for
sets.

How it runs: every module is mutated in a private copy of the checkout
(under ``--workdir``, default ``/tmp/membio-mutation``), so the working tree
and anything importing it are never touched; each mutant runs ``pytest -x``
over `MODULES`' test files, in-memory tests only (``-m "not
integration"``): tests that start twistd or openssl would not see the
mutant, and cost minutes.  Mutations inside annotations are skipped, not
counted (``from __future__ import annotations``: never evaluated).  Slow:
run it in the background with ``nice`` (about 20-30 minutes per module on
two cores).  The score is killed / (total - skipped); results stay in the
work directory's ``*.sqlite`` sessions and ``*.report.txt``.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

#: The in-memory test files of the Twisted transport: the parity suite
#: (ours against Twisted's), the transport's own rules, the server
#: policies, the pinned defaults, buffer reclaim, startTLS, the drop-in
#: behaviour of the bare factory, callback errors and the counters the
#: transport keeps (one of its tests serves /metrics over loopback TCP
#: and one forks, both quick).
_TRANSPORT_TESTS = (
    "tests/test_parity.py", "tests/test_transport.py", "tests/test_server_policies.py",
    "tests/test_defaults.py", "tests/test_reclaim.py", "tests/test_starttls.py",
    "tests/test_dropin.py", "tests/test_callback_errors.py", "tests/test_observe_metrics.py",
    "tests/test_freed_without_gc.py",
)

#: Module to mutate -> the in-memory test files that defend it, fastest
#: killers first (pytest -x stops at the first failure).  A later layout
#: moves these files: only this table changes.
MODULES: dict[str, tuple[str, ...]] = {
    "membio_transport/tls/_state.py": ("tests/test_state.py", "tests/test_engine.py"),
    "membio_transport/tls/_engine.py": (
        "tests/test_state.py", "tests/test_engine.py", "tests/test_defaults.py",
        "tests/test_reclaim.py", "tests/test_parity.py", "tests/test_callback_errors.py",
    ),
    "membio_transport/tls/_record_io.py": ("tests/test_engine.py", "tests/test_reclaim.py"),
    # What a callback raises during a handshake, captured for the engine.
    "membio_transport/tls/_callbacks.py": (
        "tests/test_callback_errors.py", "tests/test_engine.py",
    ),
    # The transport class, the four pieces it is made of (issue #11 split
    # the old _protocol.py), the reasons its log lines give and the
    # factory's policies (issue #10): the same tests defend all of them.
    **{
        f"membio_transport/tls/{name}.py": _TRANSPORT_TESTS
        for name in (
            "_protocol", "_aggregate", "_timers", "_sniff", "_failures", "_reasons", "_policy",
        )
    },
}

#: What the private copy needs: the package, its tests, the README the
#: tests read, and the metadata pytest reads.
_COPIED = ("membio_transport", "tests", "twisted", "pyproject.toml", "README.md")

#: Why some mutants are not run (they are counted apart, not in the score).
ANNOTATION = "annotation: never evaluated (from __future__ import annotations)"
IDENTITY = (
    "equivalent by construction: `is` -> `==` (`is not` -> `!=`); these modules compare "
    "only enum members, None and types with `is`, for which equality is identity"
)

#: Survivors the program cannot tell from the original: (module, or
#: "module:function"; text of the original line; text of the mutated line;
#: why).  A survivor matches when both texts are contained in its lines;
#: the report counts it as equivalent and prints the reason.
_REC, _ENG, _PRO = "_record_io.py", "_engine.py", "_protocol.py"
_AGG, _TIM, _SNF, _FAI = "_aggregate.py", "_timers.py", "_sniff.py", "_failures.py"
#: The mixins declare, for mypy only, the protocol methods they call.
_STUBS = (
    "the stubs it guards are declarations for mypy: MemoryBIOTLSProtocol defines each of "
    "them itself, and its own methods come first"
)
_NEVER_MORE = "OpenSSL never takes (or a BIO never returns) more than it was given or asked for"
_PERF = "only how much work is done changes (a copy, an allocation, a call), not what is sent"
EQUIVALENT: list[tuple[str, str, str, str]] = [
    # -- record I/O
    (_REC, "can_release = False", "can_release = True",
     "the engine would ask the public path for a release at every drain; it always says no"),
    (_REC, "if written < size:", "if written != size:", _NEVER_MORE),
    (_REC, "if len(first) < _PUBLIC_BIO_READ_SIZE:", "if len(first) != _PUBLIC_BIO_READ_SIZE:",
     _NEVER_MORE),
    (_REC, "if self.write(piece) < len(piece):", "if self.write(piece) != len(piece):",
     _NEVER_MORE),
    (_REC, "while written < len(view):", "while written != len(view):",
     "pieces end exactly at the end of the view, so `written` never passes it"),
    (_REC, '"SSL_ERROR_WANT_READ", 2)', '"SSL_ERROR_WANT_READ",',
     "a fallback for a binding without the name; this binding has it"),
    (_REC, '"SSL_MODE_ENABLE_PARTIAL_WRITE", 1)', '"SSL_MODE_ENABLE_PARTIAL_WRITE",',
     "a fallback for a binding without the name; this binding has it"),
    (_REC, "self.size = 0", "self.size = -1", "any first request is larger than either"),
    (_REC, "if size > self.size:", "if size >= self.size:", _PERF),
    *(
        (_REC, "if size > self.size:", f"if size {operator} self.size:",
         "the drain asks the scratch buffer by a call only for more than it holds (it "
         "takes the buffer directly otherwise), where this is true as the original is")
        for operator in ("!=", "is not")
    ),
    *(
        (_REC, "scratch.buffer if pending <= scratch.size else",
         f"scratch.buffer if pending {operator} scratch.size",
         _PERF + " (a drain that fits the scratch buffer asks for it by a call, which returns "
         "the same buffer)")
        for operator in ("<", "==", "is")
    ),
    (_REC, "self.size = max(size, 2 * self.size, 65536)", "self.size = max(size,",
     _PERF + " (how the scratch buffer grows; it is never smaller than asked, which "
     "test_the_scratch_buffer_is_never_smaller_than_asked holds)"),
    (_REC, "should_clear_after_alloc=False", "should_clear_after_alloc=True",
     _PERF + " (zeroing buffers that are overwritten before they are read)"),
    (_REC, "if _BIO_write(self._incoming, data, len(data)) <= 0:", "if _BIO_write(",
     "writing to a memory BIO only fails without memory; the fallback then fails the same way"),
    (_REC, "if result > 0:", "if result >= 0:", "SSL_write reports every failure as -1"),
    (_REC, "if result > 0:", "if result > -1:", "SSL_write reports every failure as -1"),
    (_REC, "if _SSL_get_error(ssl, result) == _WANT_READ:",
     "if _SSL_get_error(ssl, result) >= _WANT_READ:",
     "over memory BIOs SSL_write fails with SSL_ERROR_SSL (1) or wants to read (2): nothing "
     "above 2 happens"),
    (_REC, "if new_in == _NULL or new_out == _NULL:", "new_out <= _NULL:",
     "no pointer is below NULL"),
    (_REC, "if pending <= 0:", "if pending",
     "BIO_get_mem_data never returns less than 0, one byte of ciphertext never waits alone "
     "(the smallest TLS record is 6 bytes), and copying and reading 0 bytes gives b'' too"),
    (_REC, "if bio != _NULL:", "if bio > _NULL:", "a pointer that is not NULL is above it"),
    (_REC, "if new_in == _NULL or", "if new_in <= _NULL or", "no pointer is below NULL"),
    (_REC, "def record_io(connection: SSL.Connection, *,",
     "def record_io(connection: SSL.Connection, /,",
     "every caller passes `direct` by keyword, which both signatures accept"),
    (_REC, "if _SSL_get_error(ssl, result) == _WANT_READ:", "is _WANT_READ:",
     "small integers are cached: identity and equality agree"),
    (_REC, "written = send(data if size <= MAX_WRITE else memoryview(data)[:MAX_WRITE])",
     "written = send(data if size",
     "a view of the first MAX_WRITE bytes of a write no longer than that is the whole write"),
    (_REC, "if written < size:", "if written is not size:",
     "the loop it guards does nothing once everything is written"),
    (_REC, "if written < size:", "if written <= size:",
     "the loop it guards does nothing once everything is written"),
    (_REC, "while written < size:", "while written != size:", _NEVER_MORE),
    (_REC, "if len(chunk) < _PUBLIC_BIO_READ_SIZE:", "if len(chunk) != _PUBLIC_BIO_READ_SIZE:",
     _NEVER_MORE),
    (_REC, "RECV_SIZE: Final = 16384", "RECV_SIZE: Final = 16385",
     "no record carries more than 16384 bytes of plaintext: one byte more is never used"),
    # -- engine
    (_ENG + ":__init__", "*,", "/,",
     "every caller passes server_side and the rest by keyword, which both signatures accept"),
    (_ENG, "((data[pos + 3] << 8) | data[pos + 4])", "((data[pos + 3] << 8) ^ data[pos + 4])",
     "the low byte and the shifted high byte share no bits: | and ^ agree"),
    (_ENG, "if pos < size:", "if pos != size:",
     "pos never exceeds size here, and at pos == size the kept header part is empty anyway"),
    (_ENG, "if not 20 <= data[pos] <= 24", "if not 20 <= data[pos] < 24",
     "type 24 (heartbeat) is never sent: OpenSSL 3 and later have no heartbeats; the "
     "shortcut would only switch itself off"),
    (_ENG + ":_count_records", "if pos > size:", "if pos >= size:",
     "at the end of the data (line 367): pos == size leaves nothing pending either way; the "
     "same change at line 356 is killed"),
    (_ENG, "if self._state in _READABLE and not self._saw_eof:",
     "if self._state in _READABLE or not self._saw_eof:",
     "telling a memory BIO about the end of input again, or after the end, changes nothing"),
    (_ENG, "if not 20 <= data[pos] <= 24", "if not 20 <= data[pos] <= 25",
     "no TLS record has content type 25"),
    (_ENG, "if not 20 <= data[pos] <= 24", "if not 20 <= data[pos] != 24",
     "type 24 (heartbeat) is never sent, and nothing above it exists"),
    (_ENG + ":_flush_pending", "self._head_is_retry = False", "self._head_is_retry = True",
     "a chunk taken for a retry is written alone instead of joined: " + _PERF),
    (_ENG + ":_abandon", "self._head_is_retry = False", "self._head_is_retry = True",
     "an abandoned engine writes nothing again"),
    (_ENG, "if self._conn.get_shutdown() & SSL.SENT_SHUTDOWN:", "% SSL.SENT_SHUTDOWN:",
     "the engine asks for close_notify once (close() with nothing pending, or the flush "
     "after it); the check is a guard that never finds it sent"),
    (_ENG, "self._release_due = False", "self._release_due = True",
     "before the handshake completes a release is refused (and retried), and completing "
     "it sets the flag anyway"),
    (_ENG, "self._head_is_retry = True", "self._head_is_retry = False",
     "the refused bytes stay first when joined with what follows, and pyOpenSSL sets "
     "SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER, under which OpenSSL accepts that longer retry"),
    (_ENG, "elif len(pending) > 1:", "elif len(pending) >= 1:",
     "joining a single chunk gives the same bytes"),
    (_ENG, "if get_result is None or describe_code is None or handle is None:",
     "if get_result is None",
     "the binding has both functions and every connection a handle"),
    (_ENG, "if code == 0:", "if code <= 0:", "verify results are never negative"),
    (_ENG, "self._records = 0", "self._records = -1",
     "the bound may err high; the first read that finds nothing resets it"),
    (_ENG, "self._records = 0", "self._records = 1",
     "the bound may err high (the handshake's records already make it); the first read that "
     "finds nothing resets it"),
    (_ENG, "while pos + 5 <= size:", "while pos + 6 <= size:",
     "a header that ends the data waits for the next bytes, and is counted then"),
    (_ENG, "while pos + 5 <= size:", "while pos + 5 < size:",
     "a header that ends the data waits for the next bytes, and is counted then"),
    (_ENG, "if not 20 <= data[pos] <= 24", "if not 19 <= data[pos] <= 24",
     "no TLS record has content type 19; OpenSSL refuses such a stream whatever the count"),
    (_ENG, "if not 20 <= data[pos] <= 24", "if not 20 <= data[pos] <= 23",
     "type 24 (heartbeat) is never sent: OpenSSL 3 and later have no heartbeats; the "
     "shortcut would only switch itself off"),
    (_ENG, "((data[pos + 3] << 8) | data[pos + 4])", "((data[pos + 3] << 8) + data[pos + 4])",
     "the low byte and the shifted high byte share no bits: | and + agree"),
    (_ENG, "if pos < size:", "if pos <= size:", "at pos == size the kept header part is empty"),
    (_ENG, "if pos < size:", "if pos is not size:",
     "pos never exceeds size here, and at pos == size the kept header part is empty anyway"),
    (_ENG, "if written == len(data):", "if written >= len(data):", _NEVER_MORE),
    (_ENG, "elif len(pending) > 1:", "elif len(pending) > 0:",
     "joining a single chunk gives the same bytes"),
    (_ENG, "elif len(pending) > 1:", "elif len(pending) != 1:",
     "the loop runs only while something is pending: != 1 and > 1 agree"),
    (_ENG, "if get_result is None or describe_code is None", "if get_result is None and",
     "the binding has both functions and every connection a handle"),
    (_ENG, "if code == 0:", "if code < 0:", "verify results are never negative"),
    (_ENG, "if code == 0:", "if code == -1:", "verify results are never negative"),
    (_ENG + ":_handshake_step", "self._abort_requested = False", "self._abort_requested = True",
     "only a handshake step reads the flag, and after this one the engine has failed or been "
     "abandoned: it takes no other"),
    # -- protocol
    (_AGG, "_COALESCE_LIMIT: Final = 16384", "_COALESCE_LIMIT: Final = 16385",
     "a write of exactly 16 KiB joins the batch instead of going alone: " + _PERF),
    (_PRO, "self._last_activity = 0.0", "self._last_activity = -1.0",
     "set again when the idle timer starts, before it is ever read"),
    (_AGG, "if len(data) < _COALESCE_LIMIT:", "if len(data) is not _COALESCE_LIMIT:",
     "large writes go through the batch too, and leave at the same moments: " + _PERF),
    (_AGG, "if self._batch_size < _COALESCE_LIMIT:", "if self._batch_size <= _COALESCE_LIMIT:",
     "a batch of exactly 16 KiB waits for the flush that ends the callback or the turn: "
     + _PERF),
    (_AGG, "if len(out) >= BURST_SIZE:", "if len(out) > BURST_SIZE:",
     "the edge of a heuristic: exactly 16 KiB of ciphertext in one write is not watched"),
    (_AGG, 'batch[0] if len(batch) == 1 else b"".join(batch)', "if len(batch) < 1 else",
     "joining a batch of one gives the same bytes"),
    (_AGG, 'batch[0] if len(batch) == 1 else b"".join(batch)', "if len(batch) == 0 else",
     "joining a batch of one gives the same bytes"),
    (_SNF, 'if kind is Preamble.HTTP and policy != "close":', 'policy > "close":',
     "the other policies, explain and redirect, both sort after close"),
    (_PRO, "self._batch_size = 0", "self._batch_size = -1",
     "the batch's size only decides when it is encrypted, at 16 KiB, not what is sent: "
     + _PERF),
    (_PRO, "self._batch_size = 0", "self._batch_size = 1",
     "the batch's size only decides when it is encrypted, at 16 KiB, not what is sent: "
     + _PERF),
    (_AGG, "self._batch_size = 0", "self._batch_size = -1",
     "the batch's size only decides when it is encrypted, at 16 KiB, not what is sent: "
     + _PERF),
    (_AGG, "self._batch_size = 0", "self._batch_size = 1",
     "the batch's size only decides when it is encrypted, at 16 KiB, not what is sent: "
     + _PERF),
    (_PRO, "self._last_activity = 0.0", "self._last_activity = 1.0",
     "set again when the idle timer starts, before it is ever read"),
    (_PRO, "bool(reused(handle)) if reused is not None and handle is not None else",
     "if reused is not None or handle is not None else",
     "the binding has SSL_session_reused and every connection a handle"),
    (_PRO, "bool(reused(handle)) if reused is not None and handle is not None else False",
     "else True", "the binding has SSL_session_reused and every connection a handle"),
    (_PRO, "self._busy = False", "self._busy = True",
     "makeConnection sets it, and clears it, before anything reads it"),
    (_PRO, "self.connected = 1", "self.connected = 2", "only its truth is ever read"),
    (_PRO + ":_handshake_completed", "self._half_close_pending = False",
     "self._half_close_pending = True",
     "read only here, when the handshake completes, which happens once per connection: the "
     "engine reports HANDSHAKE_COMPLETE only on leaving HANDSHAKING, which it never enters again"),
    (_PRO, "self._resume_pending = False", "self._resume_pending = True",
     "with nothing to deliver, the _process that flag asks for only flushes, as _flush does"),
    (_PRO, "break", "continue",
     "after the peer's close_notify the next event is NEED_DATA, which ends the loop too"),
    (_FAI, "self, error: TLSConnectionError, reason: str, *, log: bool = True",
     "self, error: TLSConnectionError, reason: str, /, log: bool = True",
     "every caller passes `log` by keyword, which both signatures accept"),
    # Inside `if TYPE_CHECKING:` nothing runs: any mutant of a stub survives.
    (_TIM + ":_handshake_failed", "", "", _STUBS),
    (_SNF + ":_handshake_failed", "", "", _STUBS),
    (_FAI, "if TYPE_CHECKING:", "if not TYPE_CHECKING:", _STUBS),
    (_TIM, "if TYPE_CHECKING:", "if not TYPE_CHECKING:", _STUBS),
    (_SNF, "if TYPE_CHECKING:", "if not TYPE_CHECKING:", _STUBS),
    (_AGG, "if TYPE_CHECKING:", "if not TYPE_CHECKING:", _STUBS),
    (_AGG, "if len(data) < _COALESCE_LIMIT:", "if len(data) != _COALESCE_LIMIT:",
     "large writes go through the batch too, and leave at the same moments: " + _PERF),
    (_AGG, 'batch[0] if len(batch) == 1 else b"".join(batch)', "batch[ -1] if len(batch) == 1",
     "a batch of one: its first chunk is its last"),
    (_AGG, "if out and self.connected:", "if out or self.connected:",
     "an empty write to a live transport sends nothing, and after connectionLost the engine "
     "is aborted and has nothing to send"),
    (_PRO + ":failVerification", "self.disconnecting = True", "self.disconnecting = False",
     "in failVerification: the handshake error that follows sets it before anything "
     "can look"),
    (_PRO, "_CLOSABLE = frozenset({TLSState.OPEN, TLSState.PEER_CLOSED})", "TLSState.HANDSHAKING})",
     "_begin_close deals with the handshake before it looks at this set"),
    (_PRO, "self._unsent = 0", "self._unsent =",
     "reset at every flush, and the first flush comes before the threshold can matter"),
    (_AGG, "self._unsent = 0", "self._unsent =",
     "reset at every flush, and the first flush comes before the threshold can matter"),
    (_PRO, "if len(data) >= BURST_SIZE:", "if len(data) > BURST_SIZE:",
     "the edge of a heuristic: exactly 16 KiB arriving in one read is not watched"),
    (_SNF + ":_request_parts", 'head = request.split(b"\\r\\n\\r\\n", 1)[0]',
     'head = request.split(b"\\r\\n\\r\\n", 2)[0]',
     "what comes before the first blank line is the same whatever the split's limit"),
    (_SNF + ":answer_plain_http", 'if policy == "redirect":', 'if policy >= "redirect":',
     "of the three policies the factory accepts (close, explain, redirect) only redirect "
     "sorts at or after itself"),
    (_SNF + ":_request_parts", "if len(parts) >= 2 and", "if len(parts) >= 1 and",
     "the request line holds the space after its method (classify made sure): it always "
     "splits in two parts at least"),
    (_SNF, "frozenset(range(0x80, 0x100))", "frozenset(range(0x80, 257))",
     "a byte is never above 255"),
    (_SNF + ":_request_parts", "for line in lines[1:]:", "for line in lines[ 0:]:",
     "the request line starts with a method (classify made sure), so it never reads as a "
     "Host header"),
    (_FAI, 'self._preamble == b""', 'self._preamble is b""',
     "the empty bytes object is a singleton"),
    (_TIM, "if timeout is None or not self.connected:", "if timeout is None and not",
     "the timer never starts without a timeout, and connectionLost cancels it"),
    (_AGG + ":_drop_batch", "self._flush_due = False", "self._flush_due = True",
     "the flag stays set only where it was set, and the connection still leaves the turn's "
     "flush; its later writes then schedule no flush, but _drop_batch runs only once nothing "
     "can be sent again (the engine failed or aborted, or the connection lost)"),
    (_TIM + ":_expire", "max(heap[0][0] - now, 0)", "max(heap[0][0] - now, -1)",
     "the loop above leaves the heap empty or its earliest entry later than now: the "
     "difference is positive, and max() takes it either way"),
    (_FAI + ":_where", "except Exception:", "except CosmicRayTestingException:",
     "pyOpenSSL's get_servername only reads SSL_get_servername's pointer (NULL gives None): "
     "on the engine's connection it never raises"),
    (_AGG, "if len(data) < _COALESCE_LIMIT:", "if len(data) <= _COALESCE_LIMIT:",
     "a write of exactly 16 KiB joins the batch instead of going alone: " + _PERF),
    (_AGG, "_COALESCE_LIMIT: Final = 16384", "_COALESCE_LIMIT: Final =",
     "where a write is big enough to skip the batch: " + _PERF),
    (_AGG, 'batch[0] if len(batch) == 1 else b"".join(batch)', "if len(batch) <= 1 else",
     "a flushed batch is never empty"),
    (_PRO, "if state is TLSState.CLOSED or state is TLSState.FAILED:",
     "if state is TLSState.CLOSED and state is TLSState.FAILED:",
     "for a closed or failed engine the end of input and the delivery loop do nothing anyway"),
    (_PRO, "if self.disconnecting or not self.connected:",
     "if self.disconnecting and not self.connected:",
     "a second loseConnection finds close_notify sent and the close timer running: "
     "closing again does nothing"),
]


# ------------------------------------------------------------------ operators


def _set_elements(node: Any) -> list[Any] | None:
    """The elements of a set display ``{a, b}``, or None if C{node} is none."""
    children = getattr(node, "children", None)
    if node.type != "atom" or not children or len(children) != 3:
        return None
    first, inner, last = children
    if getattr(first, "value", None) != "{" or getattr(last, "value", None) != "}":
        return None
    if inner.type == "dictorsetmaker":
        if any(c.type in ("comp_for", "sync_comp_for") for c in inner.children) or any(
            getattr(c, "value", None) in (":", "**") for c in inner.children
        ):
            return None
        return [c for c in inner.children if getattr(c, "value", None) != ","]
    return [inner]


def _is_empty_frozenset(node: Any) -> bool:
    children = getattr(node, "children", None)
    return (
        node.type == "atom_expr"
        and children is not None
        and len(children) == 2
        and getattr(children[0], "value", None) == "frozenset"
        and children[1].get_code() == "()"
    )


def _member(element: Any) -> tuple[str, str] | None:
    """("_S", "OPEN") for an element written ``_S.OPEN``."""
    text = element.get_code().strip()
    prefix, dot, name = text.rpartition(".")
    if dot and prefix.isidentifier() and name.isupper():
        return prefix, name
    return None


def _parse_expression(code: str, like: Any) -> Any:
    """An expression node for C{code}, with the whitespace before C{like}."""
    import parso

    node = parso.parse(code).children[0]
    if node.type == "simple_stmt":
        node = node.children[0]
    node.get_first_leaf().prefix = like.get_first_leaf().prefix
    return node


def _membio_operators() -> dict[str, type]:
    """Two operators cosmic-ray lacks: drop one member of a set, add one."""
    from cosmic_ray.operators.operator import Example, Operator

    class RemoveSetMember(Operator):  # type: ignore[misc]
        """``{a, b, c}`` -> ``{a, c}`` (and ``{a}`` -> ``set()``)."""

        def mutation_positions(self, node: Any) -> Iterator[tuple[Any, Any]]:
            for _ in _set_elements(node) or ():
                yield node.start_pos, node.end_pos

        def mutate(self, node: Any, index: int) -> Any:
            elements = _set_elements(node)
            assert elements is not None
            kept = [e.get_code().strip() for i, e in enumerate(elements) if i != index]
            code = "{" + ", ".join(kept) + "}" if kept else "set()"
            return _parse_expression(code, node)

        @classmethod
        def examples(cls) -> tuple[Any, ...]:
            return (Example("x = {a.B, a.C}", "x = {a.C}"),)

    class AddSetMember(Operator):  # type: ignore[misc]
        """
        ``{S.A, S.B}`` -> ``{S.A, S.B, S.C}`` for every other ``S.*`` member
        the module names in its sets (an enum's states); ``frozenset()``
        gains each of them in turn too.
        """

        def __init__(self) -> None:
            self._known: dict[int, dict[str, list[str]]] = {}

        def _members(self, node: Any) -> dict[str, list[str]]:
            root = node.get_root_node()
            known = self._known.get(id(root))
            if known is None:
                found: dict[str, set[str]] = {}
                for candidate in _walk(root):
                    for element in _set_elements(candidate) or ():
                        member = _member(element)
                        if member is not None:
                            found.setdefault(member[0], set()).add(member[1])
                known = self._known[id(root)] = {p: sorted(n) for p, n in found.items()}
            return known

        def _additions(self, node: Any) -> list[str]:
            known = self._members(node)
            if _is_empty_frozenset(node):
                if len(known) != 1:
                    return []
                [(prefix, names)] = known.items()
                return [f"{prefix}.{name}" for name in names]
            elements = _set_elements(node)
            if not elements:
                return []
            members = [_member(e) for e in elements]
            prefixes = {m[0] for m in members if m is not None}
            if None in members or len(prefixes) != 1:
                return []
            [prefix] = prefixes
            present = {m[1] for m in members if m is not None}
            return [f"{prefix}.{n}" for n in known.get(prefix, []) if n not in present]

        def mutation_positions(self, node: Any) -> Iterator[tuple[Any, Any]]:
            for _ in self._additions(node):
                yield node.start_pos, node.end_pos

        def mutate(self, node: Any, index: int) -> Any:
            added = self._additions(node)[index]
            if _is_empty_frozenset(node):
                return _parse_expression(f"frozenset({{{added}}})", node)
            elements = [e.get_code().strip() for e in _set_elements(node) or ()]
            return _parse_expression("{" + ", ".join([*elements, added]) + "}", node)

        @classmethod
        def examples(cls) -> tuple[Any, ...]:
            return (Example("x = {a.B}\ny = {a.C}", "x = {a.B, a.C}\ny = {a.C}"),)

    return {"RemoveSetMember": RemoveSetMember, "AddSetMember": AddSetMember}


def _walk(node: Any) -> Iterator[Any]:
    yield node
    for child in getattr(node, "children", ()):
        yield from _walk(child)


class _Provider:
    def __init__(self) -> None:
        self._operators = _membio_operators()

    def __iter__(self) -> Iterator[str]:
        return iter(self._operators)

    def __getitem__(self, name: str) -> type:
        return self._operators[name]


def register_operators() -> None:
    """Make ``membio/RemoveSetMember`` and ``membio/AddSetMember`` available in this process."""
    import cosmic_ray.plugins

    cosmic_ray.plugins.OPERATOR_PROVIDERS.setdefault("membio", _Provider())


# ------------------------------------------------------------------ sessions


def _in_annotation(source: str, start: tuple[int, int], end: tuple[int, int]) -> bool:
    """Whether the span lies inside an annotation expression."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        spans: list[ast.expr | None] = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            arguments = node.args
            spans.append(node.returns)
            spans += [a.annotation for a in [*arguments.posonlyargs, *arguments.args,
                                              *arguments.kwonlyargs, arguments.vararg,
                                              arguments.kwarg] if a is not None]
        elif isinstance(node, ast.AnnAssign):
            spans.append(node.annotation)
        for span in spans:
            if span is None:
                continue
            first = (span.lineno, span.col_offset)
            last = (span.end_lineno or span.lineno, span.end_col_offset or 0)
            if first <= tuple(start) and tuple(end) <= last:
                return True
    return False


def _copy_checkout(destination: Path) -> None:
    if destination.exists():
        shutil.rmtree(destination)
    destination.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", ".hypothesis", "*.pyc", "dropin.cache")
    for name in _COPIED:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, destination / name, ignore=ignore)
        else:
            shutil.copy2(source, destination / name)


PYTEST_ARGS = ("-x", "-q", "-p", "no:cacheprovider", "-m", "not integration",
               "--hypothesis-seed=0")


def test_command(
    module: str, only: tuple[str, ...] | None = None, runner: Path | None = None
) -> str:
    """
    The command cosmic-ray runs per mutant: pytest over the module's test
    files, through the warm runner at C{runner} when there is one.
    """
    tests = " ".join(only or MODULES[module])
    pytest_args = " ".join(shlex.quote(arg) for arg in PYTEST_ARGS)
    if runner is None:
        return f"{sys.executable} -m pytest {pytest_args} {tests}"
    return f"{sys.executable} -m tests.mutation --run-tests {runner} -- {pytest_args} {tests}"


# ------------------------------------------------------------------ warm runner
#
# Most of a mutant's test run is Python importing Twisted, pyOpenSSL,
# cryptography, Hypothesis and pytest.  The runner imports them once, then
# forks a child per mutant that runs pytest in the mutant's directory: the
# package under test is imported fresh in every child, never in the runner.

#: Imported once by the runner.  Nothing of membio_transport or tests.
_WARM = (
    "pytest", "hypothesis", "pytest_twisted", "OpenSSL.SSL", "service_identity",
    "cryptography.x509", "cryptography.hazmat.primitives.asymmetric.ec",
    "cryptography.hazmat.primitives.asymmetric.rsa", "twisted.internet.defer",
    "twisted.internet.protocol", "twisted.internet.ssl", "twisted.internet.task",
    "twisted.internet.testing", "twisted.protocols.tls", "twisted.test.iosim",
    "twisted.trial.unittest", "twisted.web.server", "twisted.logger", "parso",
)


def serve(path: Path) -> None:
    """Answer `run_tests` requests on the UNIX socket C{path} until killed."""
    import importlib
    import json
    import select
    import signal
    import socket

    for name in _WARM:
        importlib.import_module(name)
    os.environ["PYTHONDONTWRITEBYTECODE"] = "1"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen(1)
    while True:
        conn, _ = listener.accept()
        request = json.loads(conn.makefile("r").readline())
        pid = os.fork()
        if pid == 0:
            listener.close()
            conn.close()
            os.setsid()
            os.chdir(request["cwd"])
            sys.path.insert(0, request["cwd"])
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)
            os.dup2(null, 2)
            import pytest

            os._exit(int(pytest.main(request["args"])))
        status = None
        while status is None:
            done, code = os.waitpid(pid, os.WNOHANG)
            if done:
                status = os.waitstatus_to_exitcode(code)
                break
            readable, _, _ = select.select([conn], [], [], 0.05)
            if readable and not conn.recv(1):
                # The client was killed (cosmic-ray's timeout): so is the run.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                status = -9
        with contextlib.suppress(OSError):
            conn.sendall(f"{status}\n".encode())
        conn.close()


@contextlib.contextmanager
def warm_runner(copy: Path) -> Iterator[Path]:
    """A warm runner for the checkout copy C{copy}, stopped on leaving."""
    path = copy.parent / f".{copy.name}.runner"
    path.unlink(missing_ok=True)
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.mutation", "--serve", str(path)], cwd=copy
    )
    try:
        deadline = time.monotonic() + 60
        while not path.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the warm runner for {copy} did not start")
            time.sleep(0.1)
        yield path
    finally:
        process.kill()
        process.wait()
        path.unlink(missing_ok=True)


def run_tests(runner: Path, args: list[str]) -> int:
    """Have the warm runner run pytest with C{args} here; its exit status."""
    import json
    import socket

    try:
        conn = socket.socket(socket.AF_UNIX)
        conn.connect(str(runner))
    except OSError:
        return subprocess.run([sys.executable, "-m", "pytest", *args], check=False).returncode
    conn.sendall((json.dumps({"cwd": os.getcwd(), "args": args}) + "\n").encode())
    answer = conn.makefile("r").readline().strip()
    return int(answer) if answer.lstrip("-").isdigit() else 1


def _baseline(copy: Path, module: str, only: tuple[str, ...] | None = None) -> float:
    start = time.monotonic()
    result = subprocess.run(
        test_command(module, only), shell=True, cwd=copy, capture_output=True, text=True,
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"{module}: the unmutated tests fail:\n{result.stdout[-3000:]}")
    return time.monotonic() - start


def run_module(
    module: str,
    workdir: Path,
    *,
    operators: str | None = None,
    limit: int | None = None,
    resume: bool = False,
    only: tuple[str, ...] | None = None,
) -> Path:
    """
    Mutate C{module} in a private copy; return the session database.  With
    C{resume}, go on with the mutants an interrupted session has not run
    (against the tests as they are now).  C{only} runs these test files
    instead of the module's own list (a quick smoke of the harness).
    """
    from cosmic_ray.commands import execute, init
    from cosmic_ray.config import ConfigDict
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    register_operators()
    name = Path(module).stem
    copy = workdir / name
    _copy_checkout(copy)
    session = workdir / f"{name}.sqlite"
    if not resume:
        session.unlink(missing_ok=True)
    baseline = _baseline(copy, module, only)
    timeout = max(30.0, 4 * baseline)
    print(f"{module}: baseline {baseline:.1f}s, timeout {timeout:.0f}s per mutant", flush=True)
    previous = Path.cwd()
    os.chdir(copy)  # cosmic-ray mutates paths relative to here: the copy
    try:
        source = Path(module).read_text()
        with warm_runner(copy) as runner, use_db(str(session), WorkDB.Mode.create) as db:
            if not resume:
                init([Path(module)], db, {})
            skipped = selected = 0
            pending = {item.job_id for item in db.pending_work_items}
            for item in db.work_items:
                if item.job_id not in pending:
                    continue
                mutation = item.mutations[0]
                reason = None
                if operators is not None and operators not in mutation.operator_name:
                    reason = f"not selected (--operators {operators})"
                elif _in_annotation(source, mutation.start_pos, mutation.end_pos):
                    reason = ANNOTATION
                elif mutation.operator_name.endswith(("_Is_Eq", "_IsNot_NotEq")):
                    reason = IDENTITY
                elif limit is not None and selected >= limit:
                    reason = f"not selected (--limit {limit})"
                else:
                    selected += 1
                if reason is not None:
                    skipped += 1
                    db.set_result(
                        item.job_id,
                        WorkResult(worker_outcome=WorkerOutcome.SKIPPED, output=reason),
                    )
            print(f"{module}: {db.num_work_items} mutants, {skipped} skipped", flush=True)
            config = ConfigDict(
                {
                    "module-path": module,
                    "timeout": timeout,
                    "test-command": test_command(module, only, runner),
                    "distributor": {"name": "local"},
                }
            )
            execute(db, config)
    finally:
        os.chdir(previous)
    report = workdir / f"{name}.report.txt"
    report.write_text(describe(module, session))
    return session


def retest_survivors(module: str, workdir: Path) -> Path:
    """
    Run the survivors of an earlier session that are not explained as
    equivalent again, against the tests as they are now (after tests were
    added to kill them); killed ones are recorded as killed.  Mutants killed
    before stay killed: tests are only ever added for this.
    """
    from cosmic_ray.mutating import mutate_and_test
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    register_operators()
    name = Path(module).stem
    session = workdir / f"{name}.sqlite"
    copy = workdir / name
    _copy_checkout(copy)
    baseline = _baseline(copy, module)
    timeout = max(30.0, 4 * baseline)
    previous = Path.cwd()
    os.chdir(copy)
    try:
        with warm_runner(copy) as runner, use_db(str(session), WorkDB.Mode.open) as db:
            again = [
                item for item, result in db.completed_work_items
                if result.worker_outcome.value != "skipped"
                and (result.test_outcome is None or result.test_outcome.value != "killed")
                and _equivalence(module, item.mutations[0], result) is None
            ]
            print(f"{module}: retesting {len(again)} survivors", flush=True)
            for item in again:
                if item.mutations[0].operator_name.endswith(("_Is_Eq", "_IsNot_NotEq")):
                    result = WorkResult(worker_outcome=WorkerOutcome.SKIPPED, output=IDENTITY)
                else:
                    result = mutate_and_test(
                        item.mutations, test_command(module, runner=runner), timeout
                    )
                db.set_result(item.job_id, result)
    finally:
        os.chdir(previous)
    (workdir / f"{name}.report.txt").write_text(describe(module, session))
    return session


def describe(module: str, session: Path) -> str:
    """The score and every survivor of one session, as text."""
    from cosmic_ray.work_db import WorkDB, use_db

    killed = survived_explained = 0
    survivors: list[str] = []
    skipped = incompetent = 0
    reasons: Counter[str] = Counter()
    with use_db(str(session), WorkDB.Mode.open) as db:
        for item, result in db.completed_work_items:
            if result.worker_outcome.value == "skipped":
                skipped += 1
                reasons[(result.output or "").split(":")[0]] += 1
                continue
            outcome = result.test_outcome.value if result.test_outcome else "none"
            if outcome == "killed":
                killed += 1
                continue
            if outcome == "incompetent" or result.worker_outcome.value != "normal":
                incompetent += 1
            mutation = item.mutations[0]
            original, mutated = _changed_lines(result.diff or "")
            why = _equivalence(module, mutation, result)
            if why is not None:
                survived_explained += 1
            survivors.append(
                f"  {'EQUIVALENT' if why else outcome.upper()} line {mutation.start_pos[0]} "
                f"{mutation.operator_name} in {mutation.definition_name or '<module>'}\n"
                f"    - {original}\n    + {mutated}" + (f"\n    why: {why}" if why else "")
            )
        pending = db.num_work_items - db.num_results
    total = killed + len(survivors)
    score = 100.0 * killed / total if total else 0.0
    real = total - survived_explained
    lines = [
        f"{module}: killed {killed}/{total} ({score:.1f}%; {killed}/{real} = "
        f"{100.0 * killed / real if real else 0.0:.1f}% of the non-equivalent); "
        f"survived {len(survivors)} "
        f"({survived_explained} explained as equivalent, {incompetent} incompetent); "
        f"{skipped} not run ({', '.join(f'{n} {r}' for r, n in sorted(reasons.items()))}); "
        f"{pending} pending"
    ]
    return "\n".join([*lines, *survivors]) + "\n"


def table_row(module: str, session: Path) -> str:
    """One Markdown table row: mutants, not run, killed, equivalent, other survivors, scores."""
    first = describe(module, session).splitlines()[0]
    match = re.search(
        r"killed (\d+)/(\d+) .*survived (\d+) \((\d+) explained as equivalent, \d+ "
        r"incompetent\); (\d+) not run",
        first,
    )
    assert match, first
    killed, run, survived, equivalent, not_run = (int(n) for n in match.groups())
    real = run - equivalent
    return (
        f"| `{Path(module).name}` | {run + not_run} | {not_run} | {run} | {killed} | "
        f"{equivalent} | {survived - equivalent} | {100.0 * killed / run:.1f}% | "
        f"{100.0 * killed / real:.1f}% |"
    )


def _equivalence(module: str, mutation: Any, result: Any) -> str | None:
    """Why a surviving mutant is equivalent (from `EQUIVALENT`), or None."""
    original, mutated = _changed_lines(result.diff or "")
    return next(
        (
            reason for where, before, after, reason in EQUIVALENT
            if _at(where, module, mutation.definition_name)
            and before in original and after in mutated
        ),
        None,
    )


def _at(where: str, module: str, definition: str | None) -> bool:
    """Whether an `EQUIVALENT` entry's place ("_x.py" or "_x.py:function") is this one."""
    suffix, _, function = where.partition(":")
    return module.endswith(suffix) and (not function or function == definition)


def _changed_lines(diff: str) -> tuple[str, str]:
    minus = [line[1:].strip() for line in diff.splitlines()
             if line.startswith("-") and not line.startswith("---")]
    plus = [line[1:].strip() for line in diff.splitlines()
            if line.startswith("+") and not line.startswith("+++")]
    return " / ".join(minus), " / ".join(plus)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--serve"]:
        serve(Path(argv[1]))
        return 0
    if argv[:1] == ["--run-tests"]:
        return run_tests(Path(argv[1]), argv[3:] if argv[2:3] == ["--"] else argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--module", action="append", help="a module name such as _engine")
    parser.add_argument("--jobs", type=int, default=1, help="modules mutated at the same time")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/membio-mutation"))
    parser.add_argument("--operators", help="only operators whose name contains this")
    parser.add_argument("--limit", type=int, help="only the first N mutants (a smoke run)")
    parser.add_argument("--report", action="store_true", help="print the last results only")
    parser.add_argument("--table", action="store_true", help="the results as a Markdown table")
    parser.add_argument(
        "--retest", action="store_true", help="run the last session's survivors again"
    )
    parser.add_argument(
        "--resume", action="store_true", help="go on with an interrupted session's mutants"
    )
    args = parser.parse_args(argv)
    chosen = [
        module for module in MODULES
        if not args.module or Path(module).stem in args.module or module in args.module
    ]
    if not chosen:
        parser.error(f"no such module; choose from {', '.join(Path(m).stem for m in MODULES)}")
    args.workdir.mkdir(parents=True, exist_ok=True)
    args.report = args.report or args.table
    if args.retest:
        for module in chosen:
            retest_survivors(module, args.workdir)
    elif not args.report and (args.jobs <= 1 or len(chosen) == 1):
        for module in chosen:
            run_module(
                module, args.workdir, operators=args.operators, limit=args.limit,
                resume=args.resume,
            )
    elif not args.report:
        # One process per module: cosmic-ray works in the current directory.
        def child(module: str) -> int:
            command = [sys.executable, "-m", "tests.mutation", "--module", module,
                       "--workdir", str(args.workdir)]
            if args.operators:
                command += ["--operators", args.operators]
            if args.limit is not None:
                command += ["--limit", str(args.limit)]
            if args.resume:
                command.append("--resume")
            return subprocess.run(command, cwd=REPO, check=False).returncode

        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            list(pool.map(child, chosen))
    if args.table:
        print("| module | mutants | not run | run | killed | equivalent | other survivors "
              "| killed / run | killed / non-equivalent |")
        print("|---|---|---|---|---|---|---|---|---|")
    for module in chosen:
        session = args.workdir / f"{Path(module).stem}.sqlite"
        if session.exists():
            print(table_row(module, session) if args.table else describe(module, session).rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
