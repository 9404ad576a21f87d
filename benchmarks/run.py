"""The one command that runs the benchmarks and prints medians and ratios.

    python benchmarks/run.py [--quick] [--rounds N] [--only WORKLOAD] [--chart out.png]
    python benchmarks/run.py --suite stacks [--quick]    # TLS cost above each stack's TCP twin
    python benchmarks/run.py --callgrind [--quick]       # the same per unit, in instructions

A thin driver on purpose: each suite module measures and returns `results.Row` objects, and this
file only chooses suites, prints the environment and the table, and writes the optional chart
and JSON.  Suites: in-process (benchmarks/inprocess.py, memory to memory), end-to-end
(benchmarks/endtoend.py, twistd servers over loopback driven by curl, wrk and loadgen.py), and,
when asked for with ``--suite stacks``, every TLS stack against its own plain-TCP twin
(benchmarks/stacks.py: Twisted's, ours, asyncio's and uvloop's).  ``--callgrind`` runs
benchmarks/callgrind.py instead: instructions per request and per handshake under callgrind.
A new suite is one more entry in `SUITES`.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

if not __package__:
    # Run as a script: make `benchmarks` and the checkout's `membio_transport` importable.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import endtoend, inprocess, stacks
from benchmarks.results import (
    Row,
    RunOptions,
    Verdict,
    format_table,
    format_verdicts,
    write_chart,
    write_json,
)


@dataclass(frozen=True)
class Suite:
    #: Runs the suite's own interleaved rounds; one Row per (workload, implementation).
    collect: Callable[[RunOptions], list[Row]]
    #: The names --only accepts for this suite.
    workloads: tuple[str, ...]
    #: What the table's columns mean for this suite.
    legend: str
    #: The performance targets this suite's rows are checked against, if any.
    targets: Callable[[Sequence[Row]], list[Verdict]] | None = None
    #: A table of its own instead of the medians-and-ratios one.
    report: Callable[[Sequence[Row]], str] | None = None
    #: Run when no --suite is given.
    default: bool = True


SUITES: dict[str, Suite] = {
    inprocess.SUITE: Suite(
        inprocess.collect,
        tuple(w.name for w in inprocess.WORKLOADS),
        "in-process: wall: rate per wall-clock second; cpu: rate per CPU second of this process.",
    ),
    endtoend.SUITE: Suite(
        endtoend.collect,
        tuple(w.name for w in endtoend.WORKLOADS),
        endtoend.LEGEND,
        endtoend.targets,
    ),
    stacks.SUITE: Suite(
        stacks.collect,
        tuple(w.name for w in stacks.WORKLOADS),
        stacks.LEGEND,
        report=stacks.report,
        default=False,
    ),
}


def environment() -> dict[str, object]:
    import cryptography
    import OpenSSL
    from OpenSSL import SSL

    import twisted

    return {
        "checkout": _checkout(),
        "cpu": _cpu_model(),
        "python": platform.python_version(),
        "twisted": twisted.__version__,
        "pyopenssl": OpenSSL.__version__,
        "cryptography": cryptography.__version__,
        "openssl": SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "load average": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def _checkout() -> str:
    """The commit benchmarked, and whether the package differs from it (others may be editing
    the working tree: both suites measure the checkout's files as they are)."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", "membio_transport", "twisted"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head} + {len(changed)} changed package files" if changed else head


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Benchmark membio_transport against Twisted's TLS layer and bare pyOpenSSL."
    )
    parser.add_argument(
        "--quick", action="store_true", help="small sizes: a seconds-long smoke run"
    )
    parser.add_argument("--rounds", type=int, metavar="N", help="interleaved rounds (median)")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="WORKLOAD",
        help="run only this workload (repeatable): "
        + ", ".join(name for suite in SUITES.values() for name in suite.workloads),
    )
    parser.add_argument(
        "--suite", action="append", choices=sorted(SUITES), help="run only this suite (repeatable)"
    )
    parser.add_argument("--chart", type=Path, metavar="PATH", help="also write a PNG of the ratios")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write every sample as JSON")
    parser.add_argument(
        "--callgrind",
        action="store_true",
        help="instructions per request and per handshake under callgrind (benchmarks/callgrind.py)",
    )
    args = parser.parse_args(argv)
    if args.callgrind:
        from benchmarks import callgrind

        return callgrind.main(["--quick"] if args.quick else [])
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be at least 1")

    known = {name for suite in SUITES.values() for name in suite.workloads}
    unknown = sorted(set(args.only) - known)
    if unknown:
        parser.error(
            f"unknown workload {', '.join(unknown)}; choose from {', '.join(sorted(known))}"
        )
    options = RunOptions(quick=args.quick, rounds=args.rounds)
    meta = environment()
    print("  ".join(f"{k}: {v}" for k, v in meta.items()))
    started = time.perf_counter()
    rows: list[Row] = []
    chosen = args.suite or [name for name, suite in SUITES.items() if suite.default]
    if args.only and not args.suite:
        chosen = [n for n, s in SUITES.items() if any(w in s.workloads for w in args.only)]
    for name in chosen:
        suite = SUITES[name]
        only = tuple(w for w in args.only if w in suite.workloads)
        if args.only and not only:
            continue
        try:
            rows.extend(suite.collect(replace(options, only=only)))
        except endtoend.BenchmarkError as exc:
            print(f"run.py: {name} suite failed: {exc}", file=sys.stderr)
            return 1
    elapsed = time.perf_counter() - started
    rounds = sorted({len(r.wall) for r in rows})
    ran = [name for name in SUITES if any(r.suite == name for r in rows)]
    print()
    print(
        f"medians of {'/'.join(map(str, rounds))} interleaved rounds; MB = 10^6 bytes.\n"
        + "\n".join(SUITES[name].legend for name in ran)
        + "\nspread: (max-min)/median of the wall values.  /<impl>: median over rounds of this "
        "row's value / <impl>'s value in the same round."
    )
    plain = [r for r in rows if SUITES[r.suite].report is None]
    if plain:
        print(format_table(plain))
    for name in ran:
        custom = SUITES[name].report
        if custom is not None:
            print(custom([r for r in rows if r.suite == name]))
    for name in ran:
        check = SUITES[name].targets
        verdicts = check(rows) if check else []
        if verdicts:
            print(f"\ntargets ({name}):")
            print(format_verdicts(verdicts))
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    meta["load average at end"] = load
    print(f"\ntotal {elapsed:.1f} s; load average at end {load} (1, 5, 15 min)")
    if args.chart:
        write_chart(rows, args.chart)
        print(f"chart written to {args.chart}")
    if args.json:
        meta["options"] = {"quick": args.quick, "rounds": args.rounds, "only": args.only}
        write_json(rows, args.json, meta)
        print(f"samples written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
