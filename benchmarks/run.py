"""The one command that runs the benchmarks and prints medians and ratios.

    python benchmarks/run.py [--quick] [--rounds N] [--only WORKLOAD] [--chart out.png]

A thin driver on purpose: each suite module measures and returns `results.Row` objects, and this
file only chooses suites, prints the environment and the table, and writes the optional chart
and JSON.  A new suite (e.g. end-to-end over loopback) is one more entry in `SUITES`.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

if not __package__:
    # Run as a script: make `benchmarks` and the checkout's `membio_transport` importable.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import inprocess
from benchmarks.results import Row, RunOptions, format_table, write_chart, write_json


@dataclass(frozen=True)
class Suite:
    #: Runs the suite's own interleaved rounds; one Row per (workload, implementation).
    collect: Callable[[RunOptions], list[Row]]
    #: The names --only accepts for this suite.
    workloads: tuple[str, ...]


SUITES: dict[str, Suite] = {
    inprocess.SUITE: Suite(inprocess.collect, tuple(w.name for w in inprocess.WORKLOADS)),
}


def environment() -> dict[str, object]:
    import cryptography
    import OpenSSL
    from OpenSSL import SSL

    import twisted

    return {
        "python": platform.python_version(),
        "twisted": twisted.__version__,
        "pyopenssl": OpenSSL.__version__,
        "cryptography": cryptography.__version__,
        "openssl": SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "load average": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


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
    args = parser.parse_args(argv)
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
    for name in args.suite or list(SUITES):
        suite = SUITES[name]
        only = tuple(w for w in args.only if w in suite.workloads)
        if args.only and not only:
            continue
        rows.extend(suite.collect(replace(options, only=only)))
    elapsed = time.perf_counter() - started
    rounds = sorted({len(r.wall) for r in rows})
    print()
    print(
        f"medians of {'/'.join(map(str, rounds))} interleaved rounds. wall: rate per wall-clock "
        "second; cpu: rate per CPU second of this process; MB = 10^6 bytes.\n"
        "spread: (max-min)/median of the wall rates.  /<impl>: median over rounds of this row's "
        "rate / <impl>'s rate in the same round."
    )
    print(format_table(rows))
    print(f"\ntotal {elapsed:.1f} s")
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
