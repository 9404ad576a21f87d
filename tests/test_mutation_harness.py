"""
A fast smoke of the mutation-testing harness (`tests/mutation.py`): its own
operators mutate what they should, annotations are recognised, and a tiny
real session kills two state-table mutants.  The full run is slow and not
part of every test run (see the README's "Mutation testing").
"""

from __future__ import annotations

from pathlib import Path

import parso
import pytest

from . import mutation


def _mutants(operator_name: str, code: str) -> list[str]:
    from cosmic_ray.mutating import mutate_code

    mutation.register_operators()
    import cosmic_ray.plugins

    operator = cosmic_ray.plugins.get_operator(f"membio/{operator_name}")()
    results = []
    occurrence = 0
    while True:
        mutated = mutate_code(code, operator, occurrence)
        if mutated is None:
            return results
        results.append(mutated)
        occurrence += 1


TABLE = """\
T = {
    _S.A: frozenset({_S.B, _S.C}),
    _S.B: frozenset(),
}
"""


def test_remove_set_member_drops_each_member_once() -> None:
    assert _mutants("RemoveSetMember", TABLE) == [
        TABLE.replace("{_S.B, _S.C}", "{_S.C}"),
        TABLE.replace("{_S.B, _S.C}", "{_S.B}"),
    ]
    assert _mutants("RemoveSetMember", "x = {a.B}\n") == ["x = set()\n"]
    assert _mutants("RemoveSetMember", "x = {1: 2}\ny = {a for a in b}\n") == []


def test_add_set_member_adds_every_other_member_the_module_names() -> None:
    mutants = _mutants("AddSetMember", TABLE)
    assert TABLE.replace("{_S.B, _S.C}", "{_S.B, _S.C, _S.A}") not in mutants  # A is no member
    # Members are those named inside sets: B and C.  The empty set gains each.
    assert mutants == [
        TABLE.replace("frozenset(),", "frozenset({_S.B}),"),
        TABLE.replace("frozenset(),", "frozenset({_S.C}),"),
    ]
    parso.parse(mutants[0])  # still Python


def test_mutations_inside_annotations_are_recognised() -> None:
    source = "def f(x: int | None) -> bytes | str:\n    return x | 1\n"
    assert mutation._in_annotation(source, (1, 9), (1, 19))
    assert mutation._in_annotation(source, (1, 24), (1, 35))
    assert not mutation._in_annotation(source, (2, 11), (2, 16))


def test_every_module_to_mutate_and_every_test_file_exists() -> None:
    for module, tests in mutation.MODULES.items():
        assert (mutation.REPO / module).is_file(), module
        assert all((mutation.REPO / test).is_file() for test in tests), tests


def test_a_small_session_kills_state_table_mutants(tmp_path: Path) -> None:
    session = mutation.run_module(
        "membio_transport/tls/_state.py", tmp_path, operators="AddSetMember", limit=2,
        only=("tests/test_state.py",),
    )
    report = mutation.describe("membio_transport/tls/_state.py", session)
    assert report.startswith("membio_transport/tls/_state.py: killed 2/2 (100.0%;"), report


@pytest.fixture(autouse=True)
def _keep_the_working_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(mutation.REPO)
