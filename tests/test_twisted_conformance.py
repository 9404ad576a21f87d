"""
The conformance run under pytest: Twisted's own TLS test classes, with our
classes substituted, collected as the unittest cases they are.  See
`tests.twisted_conformance` for what runs, what is excluded and why.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .twisted_conformance import conformance_cases

# The plugin runs these cases first (before any test starts pytest-twisted's
# reactor, which trial's cases run themselves) and prints the summary line.
pytest_plugins = ["tests.twisted_conformance_plugin"]

# Real sockets and reactors, as in Twisted's own suite.
pytestmark = pytest.mark.integration

_cases, _ = conformance_cases()
globals().update(_cases)


@pytest.fixture(autouse=True)
def _in_a_scratch_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    # Trial's mktemp() makes its directories under the working directory,
    # which trial itself points at _trial_temp; here it would be the checkout.
    monkeypatch.chdir(tmp_path)
    yield
