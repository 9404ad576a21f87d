"""Smoke test for the end-to-end benchmark (benchmarks/endtoend.py).

Not a timing test: it runs the whole end-to-end suite once with tiny sizes (real `twistd`
servers, curl, wrk and the load generator over loopback) and checks that every workload produced
a sane value for every server, that ours resumed every offered session, and that no process was
left behind.  It keeps the benchmark from rotting while the transport changes under it.

wrk is a benchmark-only tool: without it the test is skipped on a developer machine, but fails
under CI (environment variable CI set), where it must be installed (Debian package `wrk`).
"""

from __future__ import annotations

import math
import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import endtoend  # noqa: E402
from benchmarks.results import (  # noqa: E402
    COST,
    INFO,
    OURS,
    PLAIN,
    TWISTED,
    Row,
    RunOptions,
    format_table,
)


def _children() -> list[str]:
    """Processes whose parent is this one (what the suite must not leave running)."""
    found = []
    me = str(os.getpid())
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[1] == me and fields[0] != "Z":
            found.append(stat[: stat.rindex(")") + 1])
    return found


@pytest.fixture(scope="module")
def rows() -> list[Row]:
    missing = [tool for tool in ("wrk", "curl", "openssl") if shutil.which(tool) is None]
    if missing:
        packages = " ".join(endtoend.APT_PACKAGES[t] for t in missing)
        message = f"{', '.join(missing)} not installed (apt-get install {packages})"
        if os.environ.get("CI"):
            pytest.fail(f"{message}: required under CI")
        pytest.skip(message)
    messages: list[str] = []
    before = _children()
    result = endtoend.collect(RunOptions(quick=True), sizes=endtoend.TINY, log=messages.append)
    assert _children() == before, "the suite left processes running"
    assert not any("dropped" in m or "did not start" in m for m in messages), messages
    assert not any("server log" in m for m in messages), messages
    return result


def _find(rows: list[Row], workload: str, impl: str) -> Row:
    for row in rows:
        if row.workload == workload and row.implementation == impl:
            return row
    raise AssertionError(f"no {workload} row for {impl}: {format_table(rows)}")


@pytest.mark.integration
def test_every_workload_measured_every_server(rows: list[Row]) -> None:
    for workload in endtoend.WORKLOADS:
        servers = [TWISTED, OURS] if workload.tls_only else [TWISTED, OURS, PLAIN]
        for spec in workload.rows:
            for impl in servers:
                row = _find(rows, spec.key, impl)
                assert len(row.wall) == endtoend.TINY.rounds
                assert all(math.isfinite(v) for v in row.wall + row.cpu), row
                if spec.kind == INFO:
                    assert all(0.0 <= v <= 100.0 for v in row.wall), row
                elif spec.key == "e2e-idle":
                    # VmRSS growth per idle connection: positive with TLS, under 1 MiB anyway.
                    assert all(v < 1024 for v in row.wall), row
                    if impl != PLAIN:
                        assert all(v > 0 for v in row.wall), row
                else:
                    assert all(v > 0 for v in row.wall), row
                if spec.kind == COST or spec.kind == INFO:
                    assert row.cpu == (), row
                else:
                    assert len(row.cpu) == len(row.wall) and all(v > 0 for v in row.cpu), row
                assert row.work > 0, row


@pytest.mark.integration
def test_work_done(rows: list[Row]) -> None:
    sizes = endtoend.TINY
    for impl in (TWISTED, OURS, PLAIN):
        assert _find(rows, "e2e-bulk", impl).work == sizes.bulk_bytes * sizes.downloads
        assert _find(rows, "e2e-idle", impl).work == sizes.idle_connections


@pytest.mark.integration
def test_ours_resumes_every_offered_session(rows: list[Row]) -> None:
    assert _find(rows, "e2e-resumed-pct", OURS).wall == (100.0,)


@pytest.mark.integration
def test_report(rows: list[Row]) -> None:
    table = format_table(rows)
    assert "end-to-end" in table and "/no-tls" in table
    verdicts = endtoend.targets(rows)
    assert {v.name for v in verdicts} == {
        "bulk download",
        "full handshakes",
        "resumption",
        "resumed handshakes",
        "small keep-alive",
        "keep-alive p99",
        "idle memory",
    }


def test_parse_wrk() -> None:
    output = """Running 1s test @ https://127.0.0.1:1/small.txt
  1 threads and 8 connections
  Latency Distribution
     50%  610.00us
     75%    1.20ms
     90%    3.10ms
     99%    1.02s
  5120 requests in 1.00s, 2.68MB read
Requests/sec:   5119.55
"""
    assert endtoend.parse_wrk(output) == (5120, 1.0, 1020.0, [])
    errors = output + "  Socket errors: connect 0, read 2, write 0, timeout 0\n"
    assert endtoend.parse_wrk(errors)[3] == ["Socket errors: connect 0, read 2, write 0, timeout 0"]
    with pytest.raises(endtoend.BenchmarkError):
        endtoend.parse_wrk("wrk: connection refused")
