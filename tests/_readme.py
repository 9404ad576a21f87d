"""
Read the README's tables, so tests can hold the code (and the test suite)
to what the documentation promises instead of to the code itself.
"""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def section(heading: str) -> str:
    """The text under the Markdown heading that contains C{heading}, up to the next heading."""
    text = README.read_text()
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if line.startswith("#") and heading in line and not line.startswith("#   "):
            level = len(line) - len(line.lstrip("#"))
            body: list[str] = []
            in_code = False
            for following in lines[index + 1 :]:
                if following.startswith("```"):
                    in_code = not in_code
                if not in_code and re.match(rf"#{{1,{level}}} ", following):
                    break
                body.append(following)
            return "\n".join(body)
    raise AssertionError(f"README has no heading containing {heading!r}")


def table(heading: str) -> list[dict[str, str]]:
    """
    The first table under C{heading}: one dict per row, keyed by the header
    cells.  Cells keep their Markdown (backticks) but lose outer spaces.
    """
    rows: list[list[str]] = []
    for line in section(heading).splitlines():
        if line.startswith("|"):
            rows.append([cell.strip() for cell in _split_row(line)])
        elif rows:
            break
    assert len(rows) >= 3, f"no table under {heading!r}"
    header, separator, *body = rows
    assert set("".join(separator)) <= set("-: "), separator
    return [dict(zip(header, row, strict=True)) for row in body]


def _split_row(line: str) -> list[str]:
    # GitHub's rule: a pipe inside a cell is written \|, even in backticks.
    inner = line.strip()[1:-1]
    return [cell.replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", inner)]


def named_tests(cell: str) -> list[str]:
    """The ``tests/test_x.py::name`` references in a table cell."""
    return re.findall(r"`(tests/test_\w+\.py(?:::\w+){0,2})`", cell)
