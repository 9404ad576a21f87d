"""
The state table is the documentation of a connection's lifecycle: these
tests read it from the README ("Connection states") and hold the code's
table, its guard and the engine to it.  The oracle is the documented table,
never `TRANSITIONS` itself, so a change to the code's table that the
documentation does not share fails here.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from membio_transport import TLSConnectionError, TLSState, TLSStateError
from membio_transport.tls import TLSEngine, _engine
from membio_transport.tls._state import CAN_RECEIVE, CAN_SEND, TRANSITIONS, check_transition

from ._engines import Side, engine_pair
from ._pki import make_pki
from ._readme import table


def _states(cell: str) -> frozenset[TLSState]:
    if cell == "nothing":
        return frozenset()
    return frozenset(TLSState(name.strip().strip("`")) for name in cell.split(","))


_ROWS = {TLSState(row["state"].strip("`")): row for row in table("Connection states")}
#: The documented legal moves, as the README states them.
DOCUMENTED: dict[TLSState, frozenset[TLSState]] = {
    state: _states(row["may move to"]) for state, row in _ROWS.items()
}
#: States in which the README says the application may send / data may arrive.
MAY_SEND = frozenset(s for s, row in _ROWS.items() if row["application may send"].startswith("yes"))
MAY_RECEIVE = frozenset(s for s, row in _ROWS.items() if row["peer data may arrive"] == "yes")

ALL_PAIRS = list(itertools.product(TLSState, TLSState))


def test_the_readme_documents_every_state_once() -> None:
    assert set(_ROWS) == set(TLSState)
    assert len(table("Connection states")) == len(TLSState)


def test_the_code_table_is_the_documented_table() -> None:
    assert dict(TRANSITIONS) == DOCUMENTED
    assert CAN_SEND == MAY_SEND
    assert CAN_RECEIVE == MAY_RECEIVE


@pytest.mark.parametrize(("current", "new"), ALL_PAIRS, ids=lambda s: s.value)
def test_the_guard_allows_exactly_the_documented_moves(current: TLSState, new: TLSState) -> None:
    if new in DOCUMENTED[current]:
        assert check_transition(current, new) is new
    else:
        expected = f"^illegal TLS state transition {current.value} -> {new.value}$"
        with pytest.raises(TLSStateError, match=expected):
            check_transition(current, new)


def test_closed_and_failed_are_terminal_and_every_state_can_end() -> None:
    assert DOCUMENTED[TLSState.CLOSED] == frozenset()
    assert DOCUMENTED[TLSState.FAILED] == frozenset()
    for state in TLSState:
        reachable = {state}
        frontier = [state]
        while frontier:
            for nxt in DOCUMENTED[frontier.pop()]:
                if nxt not in reachable:
                    reachable.add(nxt)
                    frontier.append(nxt)
        assert reachable & {TLSState.CLOSED, TLSState.FAILED}, state


OPERATIONS = ["client_send", "server_send", "client_close", "server_close", "client_abort",
              "server_abort", "pump", "client_eof", "server_eof"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(OPERATIONS), min_size=1, max_size=12))
def test_no_sequence_of_calls_drives_the_engine_off_the_table(operations: list[str]) -> None:
    """
    Whatever the application and the network do, in any order, the engine
    only moves along the documented table.  The guard never fires (an
    "illegal transition" is a bug in the engine, never an acceptable
    outcome), sending raises `TLSStateError` exactly in the states where the
    table says the application may not send, and the peer's misbehaviour is
    a `TLSConnectionError` that leaves the engine FAILED, never anything else.
    """
    client, server = engine_pair(make_pki("ecdsa"))
    sides = {"client": client, "server": server}
    moves: list[tuple[TLSState, TLSState]] = []

    def guard(current: TLSState, new: TLSState) -> TLSState:
        # Every move the engine makes, one by one, against the documentation.
        moves.append((current, new))
        return check_transition(current, new)

    def record() -> None:
        off_table = [(a.value, b.value) for a, b in moves if b not in DOCUMENTED[a]]
        assert not off_table, (off_table, operations)

    def drain(side: Side) -> None:
        if side.engine.state is TLSState.FAILED:
            return
        try:
            side.drain_events()
        except TLSStateError as error:
            raise AssertionError(f"the engine broke its own table: {error}") from error
        except TLSConnectionError:  # the peer-error family: the engine failed
            assert side.engine.state is TLSState.FAILED

    with mock.patch.object(_engine, "check_transition", guard):
        _run(operations, sides, drain, record)
    assert {side.engine.state for side in sides.values()} <= {b for _a, b in moves} | {
        TLSState.HANDSHAKING
    }


def _run(
    operations: list[str],
    sides: dict[str, Side],
    drain: Callable[[Side], None],
    record: Callable[[], None],
) -> None:
    client, server = sides["client"], sides["server"]
    for op in operations:
        who, _, action = op.partition("_")
        if action == "":
            for a, b in ((client, server), (server, client)):
                drain(a)
                out = a.engine.data_to_send()
                if out:
                    b.engine.receive(out)
                drain(b)
                record()
            continue
        engine: TLSEngine = sides[who].engine
        before = engine.state
        try:
            if action == "send":
                engine.send(b"payload")
                assert before in MAY_SEND, f"sent in {before.value}"
            elif action == "close":
                engine.close()
            elif action == "abort":
                engine.abort()
            elif action == "eof":
                engine.receive_eof()
                drain(sides[who])
        except TLSStateError as error:
            # The one misuse the table defines: sending where it says "no".
            assert action == "send", error
            assert before not in MAY_SEND, error
            assert str(error) == f"cannot send application data in state {before.value}"
        except TLSConnectionError:
            assert engine.state is TLSState.FAILED
        record()
