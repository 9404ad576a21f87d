"""
pytest hooks for the conformance run (`tests.test_twisted_conformance`).

* Its cases run first.  Trial's asynchronous cases run the global reactor
  themselves, start to stop, for each test; once a pytest-twisted test has
  started that reactor in its greenlet, it never stops and they could not.
* One summary line, ``twisted conformance: N passed, M excluded``, among
  pytest's closing summaries (pytest's own last line stays last).
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.twisted_conformance import EXCLUDED_PREFIX, summary_line

_MODULE = "test_twisted_conformance.py"
_counts = {"passed": 0, "excluded": 0, "other": 0}


def _is_ours(nodeid: str) -> bool:
    return nodeid.split("::", 1)[0].endswith(_MODULE)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: not _is_ours(item.nodeid))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if not _is_ours(report.nodeid):
        return
    if report.skipped and EXCLUDED_PREFIX in str(report.longrepr):
        if report.when in ("setup", "call"):
            _counts["excluded"] += 1
    elif report.when == "call":
        _counts["passed" if report.passed else "other"] += 1
    elif report.failed:
        _counts["other"] += 1


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if any(_counts.values()):
        terminalreporter.write_line(
            summary_line(_counts["passed"], _counts["excluded"], _counts["other"])
        )
