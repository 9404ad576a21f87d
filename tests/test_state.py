"""
The state table is the documentation of a connection's lifecycle; these
tests hold the table and the engine to each other.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from membio_transport import Event, TLSState, TLSStateError
from membio_transport._engine import TLSEngine
from membio_transport._state import TRANSITIONS, check_transition

from ._engines import Side, engine_pair
from ._pki import make_pki

ALL_PAIRS = list(itertools.product(TLSState, TLSState))


@pytest.mark.parametrize(("current", "new"), ALL_PAIRS, ids=lambda s: s.value)
def test_only_the_listed_transitions_are_legal(current: TLSState, new: TLSState) -> None:
    if new in TRANSITIONS[current]:
        assert check_transition(current, new) is new
    else:
        with pytest.raises(TLSStateError, match=f"{current.value} -> {new.value}"):
            check_transition(current, new)


def test_closed_and_failed_are_terminal_and_every_state_can_end() -> None:
    assert TRANSITIONS[TLSState.CLOSED] == frozenset()
    assert TRANSITIONS[TLSState.FAILED] == frozenset()
    for state in TLSState:
        reachable = {state}
        frontier = [state]
        while frontier:
            for nxt in TRANSITIONS[frontier.pop()]:
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
    only moves along the table, and misuse is a TLSStateError, never an
    AttributeError or an OpenSSL error leaking out.
    """
    client, server = engine_pair(make_pki("ecdsa"))
    sides = {"client": client, "server": server}
    history: dict[str, list[TLSState]] = {"client": [], "server": []}

    def record() -> None:
        for name, side in sides.items():
            states = history[name]
            if not states or states[-1] is not side.engine.state:
                if states:
                    assert side.engine.state in TRANSITIONS[states[-1]], (states, operations)
                states.append(side.engine.state)

    def drain(side: Side) -> None:
        if side.engine.state is TLSState.FAILED:
            return
        try:
            while True:
                event = side.engine.next_event()
                # After every event: one read can cross several states (the
                # handshake's last flight followed by close_notify).
                record()
                if event is Event.NEED_DATA or event is Event.PEER_CLOSED:
                    return
        except Exception as error:  # the peer-error family only
            assert isinstance(error, TLSStateError) or hasattr(error, "reason"), error

    record()
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
        try:
            if action == "send":
                engine.send(b"payload")
            elif action == "close":
                engine.close()
            elif action == "abort":
                engine.abort()
            elif action == "eof":
                engine.receive_eof()
                drain(sides[who])
        except TLSStateError:
            pass
        except Exception as error:
            assert hasattr(error, "reason"), error
        record()
