"""
What Prometheus metrics cost the TLS layer: our factory with metrics off
(``TLSStats.detail`` None, the default) against the same factory with
metrics on (`MetricSources.add_tls` installed `HandshakeDetails` on the
server's counters), in process and memory to memory, with the harness of
``benchmarks/inprocess.py``.

Metrics add work only where a handshake completes (one call recording the
version, cipher, group and duration) and where a connection starts (one
clock reading); the per-record path is untouched, which the echo workload
shows.  Timings on these shared machines move by several percent between
rounds, so the two variants alternate slice by slice and the table gives
medians of per-round ratios; for a repeatable answer count instructions::

    python benchmarks/metrics_cost.py                    # timings, both variants
    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        python benchmarks/metrics_cost.py --once on --count 400
    # ... and --once off, and --count 100 for each, to subtract the set-up

``--once`` runs one variant's full handshakes once (after a warm-up), and
prints nothing else, for callgrind; the difference between two counts
divided by their difference in handshakes is the cost per handshake.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.inprocess import (
    FactoryImplementation,
    Measurement,
    TLSSetup,
    total,
)

VARIANTS = ("off", "on")


def factory_type(metrics: bool) -> Callable[..., Any]:
    """Our factory, its server side exporting metrics when C{metrics}."""
    from membio_transport import MemoryBIOTLSFactory, TLSStats

    def build(context: Any, is_client: bool, wrapped: Any, clock: Any) -> Any:
        stats = TLSStats()
        if metrics and not is_client:
            from membio_transport.observe import MetricSources

            MetricSources().add_tls(stats)
        return MemoryBIOTLSFactory(context, is_client, wrapped, clock, stats=stats)

    return build


def workloads(count: int, round_trips: int) -> dict[str, Callable[..., Iterator[Measurement]]]:
    def full(impl: FactoryImplementation, tls: TLSSetup, slices: int) -> Iterator[Measurement]:
        return impl.connections(tls, tls.client_creator(), count, False, slices)

    def resumed(impl: FactoryImplementation, tls: TLSSetup, slices: int) -> Iterator[Measurement]:
        creator = tls.client_creator()
        total(impl.connections(tls, creator, 1, True, 1))  # a full one primes the session
        return impl.connections(tls, creator, count, True, slices)

    def echo(impl: FactoryImplementation, tls: TLSSetup, slices: int) -> Iterator[Measurement]:
        return impl.echo(tls, round_trips, 100, slices)

    return {"full handshakes": full, "resumed handshakes": resumed, "echo 100 B": echo}


def compare(rounds: int, count: int, round_trips: int, slices: int) -> None:
    tls = TLSSetup()
    impls = {
        name: FactoryImplementation(name, f"metrics {name}", factory_type(name == "on"))
        for name in VARIANTS
    }
    print(f"{rounds} rounds; {count} connections or {round_trips} round trips per measurement; "
          "rates per CPU second")
    print(f"{'workload':<20} {'off':>12} {'on':>12} {'on/off':>8}  per-round on/off")
    for label, run in workloads(count, round_trips).items():
        for impl in impls.values():  # warm-up
            total(run(impl, tls, 1))
        rates: dict[str, list[float]] = {name: [] for name in VARIANTS}
        ratios: list[float] = []
        for index in range(rounds):
            order = VARIANTS if index % 2 == 0 else VARIANTS[::-1]
            runs = {name: run(impls[name], tls, slices) for name in order}
            sums = {name: Measurement(0.0, 0.0, 0) for name in order}
            for _ in range(slices):
                for name in order:
                    sums[name] = sums[name] + next(runs[name])
            for name in order:
                for _ in runs[name]:
                    pass
                rates[name].append(sums[name].work / sums[name].cpu)
            ratios.append(rates["on"][-1] / rates["off"][-1])
        off, on = (statistics.median(rates[name]) for name in VARIANTS)
        print(f"{label:<20} {off:>12.1f} {on:>12.1f} {statistics.median(ratios):>8.3f}  "
              + " ".join(f"{ratio:.3f}" for ratio in ratios))


def once(variant: str, count: int) -> None:
    tls = TLSSetup()
    impl = FactoryImplementation(variant, variant, factory_type(variant == "on"))
    total(workloads(20, 0)["full handshakes"](impl, tls, 1))  # warm-up: imports, caches
    total(workloads(count, 0)["full handshakes"](impl, tls, 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--count", type=int, default=1000, help="connections per measurement")
    parser.add_argument("--round-trips", type=int, default=10_000)
    parser.add_argument("--slices", type=int, default=4)
    parser.add_argument("--once", choices=VARIANTS, help="one variant's handshakes, for callgrind")
    options = parser.parse_args()
    if options.once:
        once(options.once, options.count)
    else:
        compare(options.rounds, options.count, options.round_trips, options.slices)


if __name__ == "__main__":
    main()
