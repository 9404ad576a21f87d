"""Smoke test for the in-process benchmark (benchmarks/inprocess.py).

Not a timing test: it runs every workload on every implementation available in this checkout
with tiny sizes and checks that each moved exactly the bytes, round trips or connections it was
asked to, so that the benchmark cannot silently rot while the transport changes under it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import inprocess  # noqa: E402
from benchmarks.results import BARE, OURS, TWISTED, RunOptions, format_table  # noqa: E402

SIZES = inprocess.TINY


@pytest.fixture(scope="module")
def tls() -> inprocess.TLSSetup:
    return inprocess.TLSSetup()


def _implementation(name: str) -> inprocess.Implementation:
    impls, notes = inprocess.implementations()
    for impl in impls:
        if impl.name == name:
            return impl
    pytest.skip("; ".join(notes) or f"{name} unavailable")


@pytest.mark.parametrize("name", [TWISTED, OURS, BARE])
@pytest.mark.parametrize("workload", inprocess.WORKLOADS, ids=lambda w: w.name)
def test_workload_does_the_work_asked(
    tls: inprocess.TLSSetup, name: str, workload: inprocess.Workload
) -> None:
    impl = _implementation(name)
    measured = workload.run(impl, tls, SIZES)
    assert measured.work == workload.expected(SIZES)
    assert measured.wall > 0 and measured.cpu >= 0


def test_bulk_slices_add_up(tls: inprocess.TLSSetup) -> None:
    impl = _implementation(TWISTED)
    slices = list(impl.bulk(tls, 5 * 16 * 1024, 16 * 1024, 2))
    assert [m.work for m in slices] == [3 * 16 * 1024, 2 * 16 * 1024]


def test_split() -> None:
    assert inprocess.split(10, 4) == [3, 3, 2, 2]
    assert inprocess.split(2, 8) == [1, 1]


@pytest.mark.parametrize("name", [TWISTED, BARE])
def test_resumed_workload_detects_full_handshakes(name: str) -> None:
    """The resumption check must fail when the server cannot resume (no session tickets)."""
    no_tickets = inprocess.TLSSetup(session_tickets=False)
    with pytest.raises(inprocess.BenchmarkError, match="not resumed"):
        inprocess.WORKLOADS[-1].run(_implementation(name), no_tickets, SIZES)


def test_collect_quick_mode_reports_every_implementation() -> None:
    messages: list[str] = []
    rows = inprocess.collect(RunOptions(quick=True), sizes=SIZES, log=messages.append)
    impls, _ = inprocess.implementations()
    names = {impl.name for impl in impls}
    for workload in inprocess.WORKLOADS:
        got = {r.implementation: r for r in rows if r.workload == workload.name}
        assert set(got) == names, messages
        for row in got.values():
            assert row.work == workload.expected(SIZES)
            assert len(row.wall) == len(row.cpu) == SIZES.rounds
            assert all(rate > 0 for rate in row.wall)
    table = format_table(rows)
    assert all(w.name.split("-")[0] in table for w in inprocess.WORKLOADS)


def test_chart(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from benchmarks.results import Row, write_chart

    rows = [
        Row("in-process", "echo", "echo", impl, "ops/s", 10, (rate,), (rate,))
        for impl, rate in ((TWISTED, 1.0), (OURS, 2.0), (BARE, 4.0))
    ]
    write_chart(rows, tmp_path / "chart.png")
    assert (tmp_path / "chart.png").read_bytes().startswith(b"\x89PNG")


def test_ratios_are_paired_by_round() -> None:
    from benchmarks.results import Row, ratio

    base = Row("s", "w", "w", TWISTED, "ops/s", 1, (2.0, 4.0, 8.0), (2.0, 4.0, 8.0))
    ours = Row("s", "w", "w", OURS, "ops/s", 1, (3.0, 4.0, 16.0), ())
    assert ratio([base, ours], ours, TWISTED) == (1.5, None)
    assert ratio([base, ours], ours, BARE) == (None, None)
