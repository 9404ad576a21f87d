"""Smoke test for the stack comparison (benchmarks/stacks.py) and its callgrind report.

Not a timing test: it runs every workload once with tiny sizes on every server (Twisted's TLS,
ours, asyncio's, uvloop's where installed, and their plain-TCP twins) and checks that each
produced a finite per-unit cost, that ours resumed every offered session, that the report has the
issue's table, and that no process was left behind.  The callgrind parser is checked on a
hand-written file (valgrind itself is too slow for a smoke test).
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import cgparse, stacks  # noqa: E402
from benchmarks.results import Row, RunOptions  # noqa: E402
from tests.test_benchmarks_e2e_smoke import _children  # noqa: E402


@pytest.fixture(scope="module")
def rows() -> list[Row]:
    missing = [tool for tool in ("wrk", "curl", "openssl") if shutil.which(tool) is None]
    if missing:
        message = f"{', '.join(missing)} not installed (apt-get install {' '.join(missing)})"
        if os.environ.get("CI"):
            pytest.fail(f"{message}: required under CI")
        pytest.skip(message)
    messages: list[str] = []
    before = _children()
    result = stacks.collect(RunOptions(quick=True), sizes=stacks.TINY, log=messages.append)
    assert _children() == before, "the suite left processes running"
    assert not any("server log" in m for m in messages), messages
    return result


@pytest.mark.integration
def test_every_server_measured(rows: list[Row]) -> None:
    servers = {r.implementation for r in rows}
    expected = {"twisted", "twisted-tcp", "ours", "asyncio", "asyncio-tcp"}
    assert expected <= servers
    for row in rows:
        assert len(row.wall) == stacks.TINY.rounds, row
        assert all(math.isfinite(v) and v >= 0 for v in row.wall), row
    for name in servers:
        for key in ("bulk", "keepalive", "handshake", "idle"):
            assert any(r.workload == key and r.implementation == name for r in rows), (key, name)


@pytest.mark.integration
def test_ours_resumes(rows: list[Row]) -> None:
    (pct,) = [r for r in rows if r.workload == "resumed-pct" and r.implementation == "ours"]
    assert pct.wall == (100.0,)


@pytest.mark.integration
def test_report_has_the_issue_table(rows: list[Row]) -> None:
    text = stacks.report(rows)
    assert "| TLS cost above its own plain-TCP twin" in text
    for line in stacks.LINES:
        assert line.label in text


def test_tls_cost_is_paired_by_round() -> None:
    def row(key: str, impl: str, values: tuple[float, ...]) -> Row:
        return Row(stacks.SUITE, key, key, impl, "us", 1, values, kind="cost")

    rows = [
        row("keepalive", "ours", (10.0, 30.0, 12.0)),
        row("keepalive", "twisted-tcp", (4.0, 20.0, 8.0)),
    ]
    (ours,) = [s for s in stacks.STACKS if s.name == "ours"]
    line = next(x for x in stacks.LINES if x.key == "keepalive")
    assert stacks.tls_cost(rows, ours, line) == 6.0


CALLGRIND_FILE = """# callgrind format
version: 1
positions: line
events: Ir
summary: 175

ob=(1) /usr/lib/libpython3.11.so
fl=(1) ceval.c
fn=(1) main_loop
0 100
cob=(2) /site-packages/cryptography/hazmat/bindings/_rust.abi3.so
cfi=(2) ???
cfn=(2) _cffi_f_SSL_read
calls=2 0
0 60
ob=(2)
fl=(2)
fn=(2)
0 50
cfn=(3) SSL_read
calls=2 0
0 10
fn=(3)
0 10
ob=(1)
fl=(1)
fn=(4) other
0 15
"""


def test_callgrind_parser(tmp_path: Path) -> None:
    path = tmp_path / "callgrind.out"
    path.write_text(CALLGRIND_FILE)
    profile = cgparse.parse(path)
    assert profile.total == 175
    python = "/usr/lib/libpython3.11.so"
    rust = "/site-packages/cryptography/hazmat/bindings/_rust.abi3.so"
    assert profile.self_cost[(python, "main_loop")] == 100
    assert profile.inclusive[(python, "main_loop")] == 160
    assert profile.inclusive[(rust, "_cffi_f_SSL_read")] == 60
    assert profile.calls[(rust, "_cffi_f_SSL_read")] == 2
    assert profile.entries[(rust, "_cffi_f_SSL_read")] == [60, 2]
    assert cgparse.object_name(rust).startswith("OpenSSL")
    assert profile.by_object[python] == 115


@pytest.mark.integration
def test_trace_calls_lists_our_layer() -> None:
    """benchmarks/profiles/trace_calls.py: a real server in process, one request traced."""
    script = ROOT / "benchmarks" / "profiles" / "trace_calls.py"
    result = subprocess.run(
        [sys.executable, str(script), "--stack", "ours"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "=== ours: one keep-alive request" in result.stdout
    assert "MemoryBIOTLSProtocol.dataReceived" in result.stdout
    assert "Lib.SSL_read()" in result.stdout


@pytest.mark.parametrize("stack", ["ours", "twisted", "plain"])
def test_request_ir_drives_every_stack(stack: str) -> None:
    """benchmarks/profiles/request_ir.py without valgrind: the driver itself works."""
    script = ROOT / "benchmarks" / "profiles" / "request_ir.py"
    result = subprocess.run(
        [sys.executable, str(script), "--ir", stack, "--requests", "3", "--connections", "2"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
