"""
The lifecycle of one TLS connection, as an explicit state machine.

A TLS connection is in exactly one of the states below, and only the
transitions listed in `TRANSITIONS` are legal.  The engine moves between
states through `check_transition` alone, so this table is at once the
documentation of the lifecycle, the guard against impossible sequences and
an oracle that tests can enumerate.

Half-close is why there are two "closing" states: TLS lets each direction
be shut down on its own (our close_notify ends what we send, the peer's
ends what we receive), and an application that is half-closeable may keep
using the other direction.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Final

from ._errors import TLSStateError

__all__ = ["TRANSITIONS", "TLSState", "check_transition"]


class TLSState(enum.Enum):
    """Where a TLS connection is in its life."""

    #: Handshake messages are being exchanged; application data written now
    #: is held back until the handshake completes.
    HANDSHAKING = "handshaking"
    #: The handshake completed; data flows both ways.
    OPEN = "open"
    #: We sent close_notify: we send nothing more but still read until the
    #: peer's close_notify (or the transport's end).
    LOCAL_CLOSED = "local-closed"
    #: The peer sent close_notify: nothing more will be read, but we may
    #: still send (half-close) until we close too.
    PEER_CLOSED = "peer-closed"
    #: Both directions are finished, or the connection was abandoned.
    CLOSED = "closed"
    #: A TLS error ended the connection; any alert OpenSSL produced has
    #: already been handed out for the wire.
    FAILED = "failed"

    # Members are singletons, so identity hashing is correct, and it runs in
    # C: Enum's own __hash__ is Python code, paid on every `state in SET`
    # check on the per-record path.
    __hash__ = object.__hash__


_S = TLSState

#: Every legal move.  CLOSED and FAILED are terminal.  Reaching CLOSED from
#: HANDSHAKING or OPEN means the connection was abandoned (abort, or the
#: transport went away) rather than shut down with close_notify.
TRANSITIONS: Final[Mapping[TLSState, frozenset[TLSState]]] = {
    _S.HANDSHAKING: frozenset({_S.OPEN, _S.CLOSED, _S.FAILED}),
    _S.OPEN: frozenset({_S.LOCAL_CLOSED, _S.PEER_CLOSED, _S.CLOSED, _S.FAILED}),
    _S.LOCAL_CLOSED: frozenset({_S.CLOSED, _S.FAILED}),
    _S.PEER_CLOSED: frozenset({_S.CLOSED, _S.FAILED}),
    _S.CLOSED: frozenset(),
    _S.FAILED: frozenset(),
}

#: States in which the application may still hand us plaintext to send.
CAN_SEND: Final[frozenset[TLSState]] = frozenset({_S.HANDSHAKING, _S.OPEN, _S.PEER_CLOSED})

#: States in which application data may still arrive from the peer.
CAN_RECEIVE: Final[frozenset[TLSState]] = frozenset({_S.HANDSHAKING, _S.OPEN, _S.LOCAL_CLOSED})


def check_transition(current: TLSState, new: TLSState) -> TLSState:
    """
    Return C{new} if moving there from C{current} is legal.

    @raise TLSStateError: the move is not in L{TRANSITIONS}; this is always
        a bug in the caller, never something a peer can provoke.
    """
    if new not in TRANSITIONS[current]:
        raise TLSStateError(f"illegal TLS state transition {current.value} -> {new.value}")
    return new
