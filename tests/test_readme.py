"""
The README's tables against the code and the test suite: every row of the
tables that make promises (secure defaults, deliberate differences from
Twisted, limits) names the tests that defend it, those tests exist, and the
default values the tables state are the code's constants.
"""

from __future__ import annotations

import ast
import functools
import json
import re
from pathlib import Path

import pytest

from membio_transport.https import DEFAULT_HSTS_MAX_AGE
from membio_transport.serving import DEFAULT_BACKLOG, DEFAULT_POLL_INTERVAL
from membio_transport.tls import DEFAULT_CLOSE_TIMEOUT, DEFAULT_SEND_BUFFER_LIMIT, HARDENED, TWISTED
from membio_transport.tls import DRAIN_THRESHOLD as _DRAIN_THRESHOLD
from membio_transport.tls import HARDENED_HANDSHAKE_TIMEOUT as DEFAULT_HANDSHAKE_TIMEOUT

from ._readme import README, named_tests, section, table

TESTS = Path(__file__).resolve().parent

#: The tables whose rows are promises, each with the column naming tests.
PROMISES = {
    "Secure defaults": "tested by",
    "Where it deliberately differs from Twisted's TLS layer": "tested by",
    "Limits, policies and counters": "tested by",
    "Public certificates (ACME)": "tested by",
    "Operations: metrics, expiry warnings, JSON logs": "tested by",
}


@functools.cache
def _definitions(file: str) -> dict[str, set[str]]:
    """Test functions of C{file} ("" key) and the methods of each class, bases included."""
    tree = ast.parse((TESTS.parent / file).read_text())
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}

    def methods(name: str) -> set[str]:
        node = classes[name]
        found = {item.name for item in node.body if isinstance(item, ast.FunctionDef)}
        for base in node.bases:
            if isinstance(base, ast.Name) and base.id in classes:
                found |= methods(base.id)
        return found

    functions = {
        node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
    }
    return {"": functions, **{name: methods(name) for name in classes}}


def _exists(reference: str) -> bool:
    file, *parts = reference.split("::")
    if not (TESTS.parent / file).is_file():
        return False
    definitions = _definitions(file)
    if len(parts) == 1:
        return parts[0] in definitions[""]
    if len(parts) == 2:
        return parts[1] in definitions.get(parts[0], set())
    return False


@pytest.mark.parametrize("heading", sorted(PROMISES))
def test_every_promise_names_tests_that_exist(heading: str) -> None:
    rows = table(heading)
    assert rows, heading
    for row in rows:
        references = named_tests(row[PROMISES[heading]])
        what = next(iter(row.values()))
        assert references, f"{heading}: the row {what!r} names no test"
        missing = [reference for reference in references if not _exists(reference)]
        assert not missing, f"{heading}: the row {what!r} names tests that do not exist: {missing}"


def test_the_state_table_is_read_by_its_test() -> None:
    assert "`tests/test_state.py`" in section("Connection states")
    assert 'table("Connection states")' in (TESTS / "test_state.py").read_text()


def _row(heading: str, first_cell: str) -> dict[str, str]:
    for row in table(heading):
        if next(iter(row.values())) == first_cell:
            return row
    raise AssertionError(f"{heading}: no row {first_cell!r}")


def _seconds(cell: str) -> float:
    match = re.search(r"(\d+(?:\.\d+)?) s\b", cell)
    assert match, cell
    return float(match.group(1))


def test_secure_defaults_state_the_code_s_values() -> None:
    heading = "Secure defaults"
    assert _seconds(_row(heading, "handshake timeout")["default"]) == DEFAULT_HANDSHAKE_TIMEOUT
    assert _row(heading, "listen backlog")["default"] == str(DEFAULT_BACKLOG)
    assert f"`--hsts` alone: {DEFAULT_HSTS_MAX_AGE} s" in _row(heading, "HSTS")["default"]
    assert _row(heading, "HSTS")["default"].startswith("off")
    reload = _row(heading, "certificate reload")["default"]
    assert f"every {DEFAULT_POLL_INTERVAL:g} s" in reload
    assert _row(heading, "idle timeout")["default"] == "off"
    assert _row(heading, "max connections")["default"] == "unlimited"


def test_the_limits_table_states_the_code_s_values() -> None:
    heading = "Limits, policies and counters"
    column = "default (bare; `HARDENED`)"
    bare, hardened = (TWISTED.keywords(), HARDENED.keywords())
    timeout = _row(heading, "`handshake_timeout`")[column]
    assert bare["handshake_timeout"] is None and timeout.startswith("none; ")
    assert _seconds(timeout) == hardened["handshake_timeout"] == DEFAULT_HANDSHAKE_TIMEOUT
    assert _seconds(_row(heading, "`close_timeout`")[column]) == DEFAULT_CLOSE_TIMEOUT
    limit = _row(heading, "`send_buffer_limit`")[column]
    assert limit == f"{bare['send_buffer_limit']} byte; {hardened['send_buffer_limit'] // 1024} KiB"
    assert hardened["send_buffer_limit"] == DEFAULT_SEND_BUFFER_LIMIT
    assert _row(heading, "`plain_http`")[column] == (
        f"`{bare['plain_http']}`; `\"{hardened['plain_http']}\"`"
    )
    for switch in ("refuse_renegotiation", "log_handshake_failures"):
        assert (bare[switch], hardened[switch]) == (False, True)
        assert _row(heading, f"`{switch}`")[column] == "off; on"
    assert _row(heading, "`idle_timeout`")[column] == "off"


def test_the_differences_table_states_the_code_s_values() -> None:
    heading = "Where it deliberately differs from Twisted's TLS layer"
    close = _row(heading, "`loseConnection` and a peer that never sends close_notify")["ours"]
    assert f"`close_timeout` ({DEFAULT_CLOSE_TIMEOUT:g} s)" in close
    stalled = _row(heading, "stalled handshake")["ours"]
    assert f"`handshake_timeout` ({DEFAULT_HANDSHAKE_TIMEOUT:g} s)" in stalled
    large = _row(heading, "large writes (a file being served)")["ours"]
    assert f"{_DRAIN_THRESHOLD // 1024} KiB" in large


def test_the_api_table_states_the_code_s_values() -> None:
    api = section("Using it from Python")
    expected = {
        "handshake_timeout": DEFAULT_HANDSHAKE_TIMEOUT,
        "close_timeout": DEFAULT_CLOSE_TIMEOUT,
        "send_buffer_limit": DEFAULT_SEND_BUFFER_LIMIT / 1024,  # written in KiB
    }
    stated = {
        name: float(value)
        for name, value in re.findall(r"\b(\w+_(?:timeout|limit))=([\d.]+)", api)
        if name in expected
    }
    assert stated, "the section states no limit"
    assert stated == {name: expected[name] for name in stated}


def test_the_readme_exists_where_the_tests_read_it() -> None:
    assert README.is_file()


def _code_blocks(heading: str, language: str = "") -> list[str]:
    """The fenced code blocks of a section written in C{language} ("" for none)."""
    blocks: list[str] = []
    current: list[str] | None = None
    keep = False
    for line in section(heading).splitlines():
        if not line.startswith("```"):
            if current is not None:
                current.append(line)
        elif current is None:
            current, keep = [], line[3:].strip() == language
        else:
            if keep:
                blocks.append("\n".join(current))
            current = None
    return blocks


def test_the_json_log_example_parses_with_the_stable_fields() -> None:
    (block,) = _code_blocks("# JSON logs", "json")
    record = json.loads(block)
    assert list(record)[:4] == ["time", "level", "event", "message"]
    assert record["event"] == "tls_handshake_failed"
    documented = {
        name for row in table("# JSON logs") for name in re.findall(r"`(\w+)`", row["field"])
    }
    assert set(record) <= documented, set(record) - documented
    assert {"peer", "reason", "server_name", "listener"} <= set(record)


def test_the_scrape_example_shows_only_documented_metrics() -> None:
    blocks = [b for b in _code_blocks("Prometheus metrics") if b.startswith("membio_")]
    (scrape,) = blocks
    documented = {
        name
        for row in table("Prometheus metrics")
        for name in re.findall(r"`(\w+)`", row["metric"])
    }
    shown = {re.split(r"[{ ]", line)[0] for line in scrape.splitlines()}
    for name in shown:
        base = re.sub(r"_(bucket|count|sum)$", "", name)
        assert name in documented or base in documented, name
