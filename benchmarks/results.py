"""Result rows shared by every benchmark suite, and the reports built from them.

Suites measure; this module only reports.  Keeping the row type, the medians, the ratios, the
table and the chart in one place means the in-process suite and the end-to-end suite are
summarised identically by `run.py`, and a suite never formats output itself.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

#: Implementation names every suite should use for the comparison it makes.
TWISTED = "twisted"
OURS = "ours"
BARE = "bare"
#: End-to-end only: the same HTTP server with no TLS at all, the ceiling for both TLS layers.
PLAIN = "no-tls"

#: Ratio columns of the table: (numerator, denominator).  A row shows its own rate divided by
#: the baseline's, so the "ours" row carries ours/twisted and ours/bare.  Each suite's table
#: shows only the baselines that suite measured.
BASELINES: tuple[str, ...] = (TWISTED, BARE, PLAIN)

#: Row kinds: a rate (higher is better), a cost (lower is better: KiB per connection, latency),
#: or information (a percentage) whose ratios are shown in the table but not charted.
RATE = "rate"
COST = "cost"
INFO = "info"


@dataclass(frozen=True)
class RunOptions:
    """What the user asked `run.py` for; each suite interprets it for its own workloads."""

    quick: bool = False
    #: Rounds of interleaved measurements; None means the suite's default.
    rounds: int | None = None
    #: Workload names to run; empty means all of them.
    only: tuple[str, ...] = ()


@dataclass(frozen=True)
class Row:
    """One implementation on one workload: a rate per round, per wall and per CPU second."""

    suite: str
    workload: str
    description: str
    implementation: str
    #: "MB/s" (10**6 bytes per second) or "ops/s".
    unit: str
    #: Work done in each round, in bytes or operations, as verified by the suite.
    work: int
    #: Rate per wall-clock second, one value per round.
    wall: tuple[float, ...]
    #: Rate per CPU second (user + system) of the process doing the work under test: the
    #: benchmarking process in-process, the server process end-to-end.  One value per round;
    #: empty where it means nothing (memory, latency).
    cpu: tuple[float, ...] = ()
    #: RATE, COST or INFO (see above); for COST rows `wall` holds the cost itself.
    kind: str = RATE

    @property
    def wall_median(self) -> float:
        return statistics.median(self.wall)

    @property
    def cpu_median(self) -> float | None:
        return statistics.median(self.cpu) if self.cpu else None

    @property
    def wall_spread(self) -> float:
        """(max - min) / median of the wall rates: a crude noise indicator, 0 for one round."""
        median = self.wall_median
        return (max(self.wall) - min(self.wall)) / median if median else 0.0


def paired(values: Sequence[float], baseline: Sequence[float]) -> float | None:
    """Median over rounds of value / baseline in the same round, or, when the two were not
    measured in the same rounds, the ratio of their medians."""
    if not values or not baseline or not all(baseline):
        return None
    if len(values) == len(baseline):
        return statistics.median(v / b for v, b in zip(values, baseline, strict=True))
    return statistics.median(values) / statistics.median(baseline)


def ratio(rows: Sequence[Row], row: Row, baseline: str) -> tuple[float | None, float | None]:
    """`row`'s rates relative to the same workload's `baseline` implementation, (wall, cpu).

    Suites interleave the implementations within each round, so a round's rates are a
    matched pair: the ratio is taken round by round and its median reported, which cancels
    the machine's round-to-round speed changes much better than a ratio of medians."""
    base = next(
        (
            r
            for r in rows
            if r.suite == row.suite and r.workload == row.workload and r.implementation == baseline
        ),
        None,
    )
    if base is None:
        return None, None
    return paired(row.wall, base.wall), paired(row.cpu, base.cpu)


def _num(value: float | None, width: int, digits: int) -> str:
    if value is None:
        return "-".rjust(width)
    return f"{value:{width}.{digits}f}"


def format_table(rows: Sequence[Row]) -> str:
    """The medians-and-ratios table, one line per row, grouped by suite and workload; each
    suite gets its own header with the ratio columns of the baselines it measured."""
    sections = []
    for suite in dict.fromkeys(r.suite for r in rows):
        sections.append(_format_suite([r for r in rows if r.suite == suite]))
    return "\n\n".join(sections)


def _format_suite(rows: Sequence[Row]) -> str:
    names = {r.implementation for r in rows}
    baselines = [b for b in BASELINES if b in names]
    head1 = (
        f"{rows[0].suite + ':':<34} {'impl':<8} {'unit':<5} {'wall':>9} {'cpu':>9} {'spread':>6}"
        + "".join(f"   {'/' + b:^13}" for b in baselines)
    )
    head2 = f"{'':<34} {'':<8} {'':<5} {'median':>9} {'median':>9} {'':>6}" + "".join(
        f"   {'wall':>6} {'cpu':>6}" for _ in baselines
    )
    lines = [head1, head2, "-" * len(head2)]
    previous: tuple[str, str] | None = None
    for row in rows:
        key = (row.suite, row.workload)
        label = row.description if key != previous else ""
        # Sub-rows of one measurement (p99, resumed share) follow without a blank line.
        if previous is not None and key != previous and not row.description.startswith(" "):
            lines.append("")
        previous = key
        line = (
            f"{label[:34]:<34} {row.implementation:<8} {row.unit:<5} "
            f"{_num(row.wall_median, 9, 1 if row.wall_median >= 10 else 2)} "
            f"{_num(row.cpu_median, 9, 1)} "
            f"{row.wall_spread * 100:5.1f}%"
        )
        for baseline in baselines:
            wall, cpu = ratio(rows, row, baseline)
            line += f"   {_num(wall, 6, 2)} {_num(cpu, 6, 2)}"
        lines.append(line)
    return "\n".join(lines)


@dataclass(frozen=True)
class Verdict:
    """One performance target checked against a run."""

    name: str
    target: str
    measured: str
    met: bool


def format_verdicts(verdicts: Sequence[Verdict]) -> str:
    width = max(len(v.target) for v in verdicts)
    return "\n".join(
        f"  {'MET ' if v.met else 'MISS'}  {v.name:<20} {v.target:<{width}}  measured {v.measured}"
        for v in verdicts
    )


def chart_pairs(rows: Sequence[Row]) -> list[tuple[str, str]]:
    """Which (implementation, baseline) ratios the chart plots: ours against each baseline,
    or Twisted against the bare floor when ours was not measured."""
    names = {r.implementation for r in rows}
    if OURS in names:
        return [(OURS, b) for b in BASELINES if b in names]
    if TWISTED in names and BARE in names:
        return [(TWISTED, BARE)]
    return []


def write_chart(rows: Sequence[Row], path: Path) -> None:
    """Write a PNG bar chart of the ratios (wall and CPU) per workload, one panel per suite.

    Needs matplotlib, a benchmark-only dependency that is imported here and nowhere else.
    """
    try:
        import matplotlib
    except ImportError as exc:
        raise SystemExit(
            "--chart needs matplotlib (pip install matplotlib); it is only used by benchmarks"
        ) from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: list[tuple[str, list[tuple[str, str, str]], list[tuple[str, list[float]]]]] = []
    for suite in dict.fromkeys(r.suite for r in rows):
        suite_rows = [r for r in rows if r.suite == suite and r.kind != INFO]
        pairs = chart_pairs(suite_rows)
        if not pairs:
            continue
        workloads: list[tuple[str, str, str]] = []
        for r in suite_rows:
            label = r.description.strip()
            if r.kind == COST:
                label += f"\n[{r.unit} ratio, lower is better]"
            key = (r.suite, r.workload, label)
            if key not in workloads:
                workloads.append(key)
        series: list[tuple[str, list[float]]] = []
        for impl, baseline in pairs:
            for kind in ("wall", "cpu"):
                values: list[float] = []
                for suite_name, workload, _ in workloads:
                    row = next(
                        (
                            r
                            for r in suite_rows
                            if (r.suite, r.workload, r.implementation)
                            == (suite_name, workload, impl)
                        ),
                        None,
                    )
                    wall, cpu = ratio(rows, row, baseline) if row is not None else (None, None)
                    value = wall if kind == "wall" else cpu
                    if row is not None and row.kind == COST and baseline == PLAIN:
                        # Memory or latency against no TLS at all: a large number that says
                        # nothing about the TLS layers and squashes every other bar.
                        value = None
                    values.append(value if value is not None else float("nan"))
                series.append((f"{impl}/{baseline} ({kind})", values))
        panels.append((suite, workloads, series))
    if not panels:
        raise SystemExit("--chart: no two implementations to compare")

    heights = [max(2.5, 0.3 * len(w) * len(s) + 1.2) for _, w, s in panels]
    fig, axes = plt.subplots(
        len(panels),
        1,
        figsize=(12, sum(heights) + 0.5),
        gridspec_kw={"height_ratios": heights},
        squeeze=False,
    )
    for ax, (suite, workloads, series) in zip(axes[:, 0], panels, strict=True):
        bar = 0.8 / len(series)
        for i, (label, values) in enumerate(series):
            positions = [w + (i - (len(series) - 1) / 2) * bar for w in range(len(workloads))]
            bars = ax.barh(positions, values, height=bar, label=label)
            ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=2)
        ax.axvline(1.0, color="black", linewidth=0.8)
        finite = [v for _, values in series for v in values if v == v]
        ax.set_xlim(0, max([1.0, *finite]) * 1.15)
        ax.set_yticks(range(len(workloads)))
        ax.set_yticklabels([f"{desc}" for _, _, desc in workloads], fontsize=8)
        ax.invert_yaxis()
        ax.set_title(f"TLS transport benchmark, {suite}: ratios", fontsize=10)
        ax.set_xlabel(
            "median over rounds of the per-round ratio (above 1: numerator faster)", fontsize=8
        )
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_json(rows: Iterable[Row], path: Path, meta: dict[str, object]) -> None:
    """Dump every per-round sample, so runs can be compared later."""
    data = {"meta": meta, "rows": [asdict(r) for r in rows]}
    path.write_text(json.dumps(data, indent=2) + "\n")
