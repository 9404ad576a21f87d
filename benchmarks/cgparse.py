"""Reading callgrind output files: cost per function (self and inclusive) and per object file.

callgrind_annotate prints per-function costs but not a breakdown by shared object, which is the
one that says where a Python server's instructions go (the interpreter, OpenSSL, cffi, libc), so
benchmarks/callgrind.py reads the files itself.  Only the parts of the format that callgrind
writes with its default options are handled (``events: Ir``, compressed names, ``positions:
line``).
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

_NAMED = re.compile(r"^(ob|fl|fi|fe|fn|cob|cfi|cfl|cfn)=(?:\((\d+)\))?\s*(.*)$")


@dataclass
class Profile:
    #: Instructions per object file, counted in the functions themselves (exclusive).
    by_object: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    #: (object, function) -> exclusive instructions.
    self_cost: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    #: (object, function) -> inclusive instructions (self + everything it called).
    inclusive: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    #: (object, function) -> calls received.
    calls: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    #: Calls that cross from one object file into another, by callee: (callee object, callee
    #: function) -> [inclusive instructions, calls].  For a Python server these are the C entry
    #: points: SSL_read called from cffi, epoll_wait from the select module...
    entries: dict[tuple[str, str], list[int]] = field(
        default_factory=lambda: defaultdict(lambda: [0, 0])
    )
    total: int = 0

    def function(self, name: str) -> tuple[int, int, int]:
        """(inclusive, self, calls) of every function called `name`, summed over objects."""
        inc = sum(v for (_, f), v in self.inclusive.items() if f == name)
        own = sum(v for (_, f), v in self.self_cost.items() if f == name)
        calls = sum(v for (_, f), v in self.calls.items() if f == name)
        return inc, own, calls


def parse(path: Path) -> Profile:
    """Read one callgrind output file (one part)."""
    names: dict[str, dict[str, str]] = defaultdict(dict)
    profile = Profile()
    ob = fn = cob = cfn = ""
    pending_call: int | None = None
    with open(path, errors="replace") as f:
        for raw in f:
            line = raw.rstrip("\n")
            if not line:
                continue
            first = line[0]
            if first.isdigit() or first in "+-*":
                value = int(line.split()[-1]) if len(line.split()) > 1 else 0
                if pending_call is not None:
                    # The cost of the call just announced: inclusive for the caller.
                    profile.inclusive[(ob, fn)] += value
                    callee_ob = cob or ob
                    profile.calls[(callee_ob, cfn)] += pending_call
                    if callee_ob != ob:
                        entry = profile.entries[(callee_ob, cfn)]
                        entry[0] += value
                        entry[1] += pending_call
                    pending_call = None
                    cob = ""
                else:
                    profile.self_cost[(ob, fn)] += value
                    profile.inclusive[(ob, fn)] += value
                    profile.by_object[ob] += value
                    profile.total += value
                continue
            match = _NAMED.match(line)
            if match:
                kind, ident, text = match.groups()
                table = names["ob" if kind in ("ob", "cob") else kind.lstrip("c")]
                if ident is not None:
                    if text:
                        table[ident] = text
                    text = table.get(ident, text)
                if kind == "ob":
                    ob = text
                elif kind == "fn":
                    fn = text
                elif kind == "cob":
                    cob = text
                elif kind == "cfn":
                    cfn = text
                continue
            if line.startswith("calls="):
                pending_call = int(line[6:].split()[0])
    return profile


def object_name(path: str) -> str:
    """A short, stable name for a shared object: libpython3.11, _rust.abi3 (cryptography's
    OpenSSL), _cffi_backend, libc, libssl/libcrypto (the system's OpenSSL)..."""
    base = path.rsplit("/", 1)[-1]
    if base.startswith("python3") or base == "python":
        return "python (interpreter)"
    for prefix, label in (
        ("libpython", "python (interpreter)"),
        ("_rust.abi3", "OpenSSL (cryptography's, + its Rust)"),
        ("_cffi_backend", "cffi"),
        ("libc.so", "libc"),
        ("libssl.so", "OpenSSL (system libssl)"),
        ("libcrypto.so", "OpenSSL (system libcrypto)"),
        ("_ssl.", "_ssl module"),
        ("loop.cpython", "uvloop"),
        ("libuv", "uvloop"),
        ("_asyncio", "_asyncio module"),
        ("ld-linux", "ld.so"),
        ("libm.so", "libm"),
    ):
        if base.startswith(prefix):
            return label
    if base.startswith("vgpreload"):
        return "valgrind preload"
    return "other: " + base if base and base != "???" else "unknown (JIT/anonymous)"
