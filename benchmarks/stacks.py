"""Each TLS stack against its own plain-TCP twin: what TLS costs per unit of work (issue #14).

    python benchmarks/run.py --suite stacks [--quick] [--rounds N]
    python benchmarks/stacks.py --callgrind [--quick]    # instructions: benchmarks/callgrind.py

A user choosing a TLS stack for a Python server compares what each one adds to the same server
without TLS.  This suite runs, over loopback, the server process pinned to one CPU and every
client to the other (``taskset``):

======== ======================================= ==========================================
stack    TLS server                              its plain-TCP twin
======== ======================================= ==========================================
twisted  ``twistd web --listen ssl:``            ``twistd web --listen tcp:``
ours     ``twistd web --listen membio:``         ``twistd web --listen tcp:`` (the same one)
asyncio  benchmarks/asyncio_http.py, stdlib       the same server without ``ssl=``
         ``asyncio.sslproto``
uvloop   the same on uvloop's Cython sslproto    the same on uvloop without ``ssl=``
         (only where ``import uvloop`` works)
======== ======================================= ==========================================

Ours runs under ``twistd web`` like Twisted's, so both TLS servers and their twin serve the
same ``twisted.web`` ``Site`` and only the TLS layer differs (``twistd membio-https`` adds HSTS,
a different access log and security headers; the end-to-end suite measures that one).

Workloads, every server measured in turn in each round (the order rotates from round to round),
each round on servers started afresh; every value is server CPU time (the scheduler's nanosecond
count, /proc/PID/task/*/schedstat) per unit of work:

* ``idle``: VmRSS growth per idle connection (``--idle`` connections, handshake done; first in
  the round, on fresh servers), KiB;
* ``bulk``: curl downloading a large file over HTTP/1.1, ms of server CPU per MB;
* ``keepalive``: wrk, one thread, 16 keep-alive connections, a 14-byte file, us per request
  (wrk's p50 and p99 are reported beside it);
* ``handshake``: benchmarks/loadgen.py, 16 connections in flight, each a TCP connect, a full
  TLS 1.3 handshake offering no session, one ``GET`` with ``Connection: close``, read to the
  end; us per connection (the twin: the same without TLS);
* ``resumed``: the same, every connection offering a ticket from a priming connection; the share
  that really resumed is checked (each stack's own session handling: Twisted's ``ssl:`` server
  issues tickets it cannot resume, so its row is a full handshake, reported as such).

Every client offers one TLS 1.3 suite, ``TLS_AES_256_GCM_SHA384``, and one group, X25519
(``OPENSSL_CONF`` for wrk, curl and Python's ``ssl``): ours would otherwise pick AES-128-GCM and
the others AES-256-GCM.  The negotiated suite is checked on every handshake connection.  Twisted's
and ours run on the OpenSSL that ``cryptography`` bundles; asyncio and uvloop on the system's
OpenSSL that Python's ``ssl`` module links (both printed).

The table printed is the issue's: per unit, each TLS server's cost minus its twin's, medians of
the per-round differences; then the absolute per-unit costs of every server.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

if __name__ == "__main__" and not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import endtoend
from benchmarks.endtoend import (
    CIPHERSUITE,
    CLIENT_SLACK,
    BenchmarkError,
    Files,
    Pinning,
    Server,
    ServerKind,
    Sizes,
    curl_command,
    measure_idle,
    run_client,
)
from benchmarks.results import COST, INFO, Row, RunOptions

SUITE = "stacks"
ASYNCIO_HTTP = Path(__file__).resolve().with_name("asyncio_http.py")
MiB = 1 << 20

#: wrk's connections and handshake concurrency, fixed by the issue.
CONNECTIONS = 16
GROUP = "X25519"

FULL = Sizes(
    rounds=3,
    bulk_bytes=64 * MiB,
    downloads=3,
    keepalive_seconds=3,
    handshake_seconds=1.5,
    idle_connections=1000,
    small_bytes=14,
)
QUICK = Sizes(
    rounds=1,
    bulk_bytes=16 * MiB,
    downloads=2,
    keepalive_seconds=1,
    handshake_seconds=0.5,
    idle_connections=200,
    small_bytes=14,
)
#: For the smoke test: every code path, a few seconds in all.
TINY = Sizes(
    rounds=1,
    bulk_bytes=2 * MiB,
    downloads=1,
    keepalive_seconds=1,
    handshake_seconds=0.2,
    idle_connections=30,
    small_bytes=14,
)


def cpu_seconds(pid: int) -> float:
    """Server CPU time, nanosecond resolution where the kernel keeps schedstat (see loadgen)."""
    from benchmarks.loadgen import server_cpu_seconds

    return server_cpu_seconds(pid)


# --------------------------------------------------------------------------- servers


def _asyncio(uvloop: bool) -> Callable[[], list[str]]:
    def program() -> list[str]:
        return [sys.executable, str(ASYNCIO_HTTP), *(["--uvloop"] if uvloop else [])]

    return program


def _asyncio_args(tls: bool) -> Callable[[int, Files], list[str]]:
    def args(port: int, f: Files) -> list[str]:
        return [
            "--port", str(port), "--root", str(f.www),
            *(["--cert", str(f.cert), "--key", str(f.key)] if tls else []),
        ]  # fmt: skip

    return args


TWISTED_TLS = endtoend.SERVERS[0]
TWISTED_TCP = replace(endtoend.SERVERS[2], name="twisted-tcp")
def one_ticket_env(files: Files) -> dict[str, str]:
    """What `twistd membio-https` sets before OpenSSL starts: one TLS 1.3 ticket per handshake."""
    conf = files.source / "membio_transport" / "one-ticket.cnf"
    return {"OPENSSL_CONF": str(conf)} if conf.exists() else {}


OURS_TLS = ServerKind(
    "ours",
    True,
    "twistd web --listen membio: (one ticket, as membio-https)",
    lambda port, f: [
        "web",
        "--listen",
        f"membio:{port}:interface=127.0.0.1:certKey={f.cert}:privateKey={f.key}",
        "--path",
        str(f.www),
    ],
    env=one_ticket_env,
)
#: Ours as `twistd web --listen membio:` runs it for anyone: OpenSSL's default of two tickets.
OURS_TWO_TICKETS = replace(
    OURS_TLS, name="ours-2t", label="twistd web --listen membio: (OpenSSL's two tickets)", env=None
)
ASYNCIO_TLS = ServerKind(
    "asyncio", True, "asyncio_http.py (stdlib sslproto)", _asyncio_args(True), _asyncio(False)
)
ASYNCIO_TCP = ServerKind(
    "asyncio-tcp", False, "asyncio_http.py, no TLS", _asyncio_args(False), _asyncio(False)
)
UVLOOP_TLS = ServerKind(
    "uvloop", True, "asyncio_http.py --uvloop (Cython sslproto)", _asyncio_args(True),
    _asyncio(True),
)  # fmt: skip
UVLOOP_TCP = ServerKind(
    "uvloop-tcp", False, "asyncio_http.py --uvloop, no TLS", _asyncio_args(False), _asyncio(True)
)


@dataclass(frozen=True)
class Stack:
    """A TLS server and its plain-TCP twin: the table's columns."""

    name: str
    title: str
    tls: ServerKind
    plain: ServerKind


STACKS: tuple[Stack, ...] = (
    Stack("twisted", "Twisted TLS", TWISTED_TLS, TWISTED_TCP),
    Stack("asyncio", "asyncio (stdlib sslproto)", ASYNCIO_TLS, ASYNCIO_TCP),
    Stack("uvloop", "uvloop (Cython sslproto)", UVLOOP_TLS, UVLOOP_TCP),
    Stack("ours", "membio", OURS_TLS, TWISTED_TCP),
)


#: More columns for benchmarks/callgrind.py (``--servers ours-2t``): ours with OpenSSL's two
#: tickets, to tell what the one-ticket setting saves from what the code does.
VARIANTS: tuple[Stack, ...] = (
    Stack("ours-2t", "membio, two tickets", OURS_TWO_TICKETS, TWISTED_TCP),
)


def baseline_stack(package: Path) -> Stack:
    """Ours from another copy of the package (PACKAGE/membio_transport), OpenSSL's defaults."""

    def env(files: Files) -> dict[str, str]:
        rest = (str(files.source), os.environ.get("PYTHONPATH", ""))
        return {"PYTHONPATH": os.pathsep.join(p for p in (str(package), *rest) if p)}

    kind = replace(
        OURS_TLS, name="ours-before", label=f"twistd web --listen membio: from {package}", env=env
    )
    return Stack("ours-before", "membio before", kind, TWISTED_TCP)


def uvloop_available() -> bool:
    result = subprocess.run(
        [sys.executable, "-c", "import uvloop"], capture_output=True, timeout=60, check=False
    )
    return result.returncode == 0


def stacks_available(log: Callable[[str], None]) -> list[Stack]:
    if uvloop_available():
        return list(STACKS)
    log(f"[{SUITE}] uvloop not installed (pip install uvloop): its column is left out")
    return [s for s in STACKS if s.name != "uvloop"]


def server_kinds(stacks: Sequence[Stack]) -> list[ServerKind]:
    kinds: dict[str, ServerKind] = {}
    for stack in stacks:
        kinds.setdefault(stack.tls.name, stack.tls)
        kinds.setdefault(stack.plain.name, stack.plain)
    return list(kinds.values())


def prepare_files(directory: Path, sizes: Sizes) -> Files:
    files = Files.create(directory, sizes)
    with open(files.client_conf, "a") as f:
        f.write(f"Groups = {GROUP}\n")
    return files


# --------------------------------------------------------------------------- workloads


@dataclass(frozen=True)
class Measured:
    """Per row key: (cost per unit, units of work)."""

    values: dict[str, tuple[float, int]]
    #: What the clients saw (cipher, group, latencies), for the report.
    notes: dict[str, str]


def measure_bulk(server: Server, files: Files, pin: Pinning, sizes: Sizes) -> Measured:
    command = curl_command(
        server, files, pin, "-w", "%{http_code} %{size_download}", server.url("big.bin")
    )

    def download() -> None:
        out = run_client(command, CLIENT_SLACK, files.client_env()).stdout.split()
        if out[0] != "200" or int(out[1]) != files.big_bytes:
            raise BenchmarkError(f"{server.kind.name}: curl got {out}")

    download()  # the first download on a fresh server grows its buffers
    cpu0 = cpu_seconds(server.pid)
    for _ in range(sizes.downloads):
        download()
    cpu = cpu_seconds(server.pid) - cpu0
    total = sizes.downloads * files.big_bytes
    return Measured({"bulk": (cpu * 1e3 / (total / 1e6), total)}, {})


def _percentile(output: str, pct: str) -> float:
    match = re.search(rf"^\s*{pct}%\s+(\S+)", output, re.MULTILINE)
    if not match:
        raise BenchmarkError(f"wrk: no {pct}% line: {output[-300:]}")
    return endtoend._wrk_ms(match.group(1))


def measure_keepalive(server: Server, files: Files, pin: Pinning, sizes: Sizes) -> Measured:
    url = server.url("small.txt").replace(endtoend.HOSTNAME, "127.0.0.1")
    command = [
        *pin.client, "wrk", "-t1", f"-c{CONNECTIONS}", f"-d{sizes.keepalive_seconds}s",
        "--latency", "--timeout", "5s", url,
    ]  # fmt: skip
    cpu0 = cpu_seconds(server.pid)
    output = run_client(command, sizes.keepalive_seconds + CLIENT_SLACK, files.client_env()).stdout
    cpu = cpu_seconds(server.pid) - cpu0
    requests, seconds, p99, problems = endtoend.parse_wrk(output)
    if problems or requests == 0:
        raise BenchmarkError(f"{server.kind.name}: wrk: {'; '.join(problems) or 'no requests'}")
    p50 = _percentile(output, "50")
    return Measured(
        {
            "keepalive": (cpu * 1e6 / requests, requests),
            "keepalive-p50": (p50, requests),
            "keepalive-p99": (p99, requests),
            "keepalive-rate": (requests / seconds, requests),
        },
        {},
    )


def _loadgen_handshakes(
    server: Server, files: Files, pin: Pinning, seconds: float, resume: bool
) -> dict[str, object]:
    command = [
        *pin.client, sys.executable, str(endtoend.LOADGEN), "handshakes",
        "--port", str(server.port),
        *(["--cafile", str(files.cert)] if server.kind.tls else ["--plain"]),
        "--duration", str(seconds), "--concurrency", str(CONNECTIONS), "--request",
        "--server-pid", str(server.pid), *(["--resume"] if resume else []),
    ]  # fmt: skip
    output = run_client(command, seconds + CLIENT_SLACK, files.client_env())
    result: dict[str, object] = json.loads(output.stdout.splitlines()[-1])
    completed = int(result["completed"])  # type: ignore[call-overload]
    if result["errors"] or not completed:
        raise BenchmarkError(f"{server.kind.name}: loadgen: {completed} done, {result['errors']}")
    if server.kind.tls and result["ciphers"] != {f"TLSv1.3 {CIPHERSUITE}": completed}:
        raise BenchmarkError(f"{server.kind.name}: negotiated {result['ciphers']}")
    return result


def measure_handshake(server: Server, files: Files, pin: Pinning, sizes: Sizes) -> Measured:
    result = _loadgen_handshakes(server, files, pin, sizes.handshake_seconds, resume=False)
    n = int(result["completed"])  # type: ignore[call-overload]
    if result["reused"]:
        raise BenchmarkError(f"{server.kind.name}: resumed without being offered a session")
    cpu = float(result["server_cpu"])  # type: ignore[arg-type]
    return Measured({"handshake": (cpu * 1e6 / n, n)}, {})


def measure_resumed(server: Server, files: Files, pin: Pinning, sizes: Sizes) -> Measured:
    result = _loadgen_handshakes(server, files, pin, sizes.handshake_seconds, resume=True)
    n = int(result["completed"])  # type: ignore[call-overload]
    cpu = float(result["server_cpu"])  # type: ignore[arg-type]
    reused = int(result["reused"])  # type: ignore[call-overload]
    return Measured({"resumed": (cpu * 1e6 / n, n), "resumed-pct": (100.0 * reused / n, n)}, {})


def measure_idle_kib(server: Server, files: Files, pin: Pinning, sizes: Sizes) -> Measured:
    sample = measure_idle(server, files, pin, sizes)
    kib, _, n = sample.values["e2e-idle"]
    return Measured({"idle": (kib, n)}, {})


@dataclass(frozen=True)
class Workload:
    name: str
    tls_only: bool
    measure: Callable[[Server, Files, Pinning, Sizes], Measured]


WORKLOADS: tuple[Workload, ...] = (
    Workload("stack-idle", False, measure_idle_kib),
    Workload("stack-bulk", False, measure_bulk),
    Workload("stack-keepalive", False, measure_keepalive),
    Workload("stack-handshake", False, measure_handshake),
    Workload("stack-resumed", True, measure_resumed),
)


@dataclass(frozen=True)
class Line:
    """One line of the cost table: a row key measured on each server, and its unit."""

    key: str
    label: str
    unit: str
    #: The twin's row to subtract (None: not a cost above the twin).
    twin_key: str | None


LINES: tuple[Line, ...] = (
    Line("bulk", "bulk download, ms per MB", "ms/MB", "bulk"),
    Line("keepalive", "small keep-alive request, us per request", "us/req", "keepalive"),
    Line("handshake", "full TLS 1.3 handshake, us per connection", "us/conn", "handshake"),
    Line("resumed", "resumed handshake, us per connection", "us/conn", "handshake"),
    Line("idle", "idle connection, KiB", "KiB", "idle"),
)
#: Shown in the absolute table only.
EXTRA: tuple[Line, ...] = (
    Line("keepalive-rate", "keep-alive req/s (wall)", "req/s", None),
    Line("keepalive-p50", "keep-alive p50 latency", "ms", None),
    Line("keepalive-p99", "keep-alive p99 latency", "ms", None),
    Line("resumed-pct", "offered tickets resumed", "%", None),
)


def select(only: Sequence[str]) -> list[Workload]:
    names = [w.name for w in WORKLOADS]
    unknown = [n for n in only if n not in names]
    if unknown:
        raise SystemExit(f"unknown workload {', '.join(unknown)}; choose from {', '.join(names)}")
    return [w for w in WORKLOADS if not only or w.name in only]


# --------------------------------------------------------------------------- running


@contextlib.contextmanager
def _servers(
    kinds: Sequence[ServerKind], files: Files, pin: Pinning, log: Callable[[str], None]
) -> Iterator[dict[str, Server]]:
    """Every server started (in parallel), each one required: no column may go missing."""
    servers: list[Server] = []
    try:
        for kind in kinds:
            servers.append(Server(kind, files, pin))
        deadline = time.monotonic() + endtoend.START_TIMEOUT * 2
        for server in servers:
            server.wait_ready(deadline)
            endtoend.warm_up(server)
        yield {s.kind.name: s for s in servers}
    finally:
        for server in servers:
            server.stop()
        for server in servers:
            for line in server.problems()[:5]:
                log(f"[{SUITE}] {server.kind.name} server log: {line.strip()[:200]}")


def describe_servers(servers: dict[str, Server], files: Files, pin: Pinning) -> list[str]:
    lines = []
    for name, server in servers.items():
        what = endtoend.probe(server, files, pin) if server.kind.tls else "plain HTTP"
        lines.append(f"[{SUITE}] {name:<11} {server.kind.label}: {what.split(' (s_client')[0]}")
    return lines


def collect(
    options: RunOptions, sizes: Sizes | None = None, log: Callable[[str], None] = print
) -> list[Row]:
    """Run the suite; one Row per (row key, server), the per-round values in `wall`."""
    if sizes is None:
        sizes = QUICK if options.quick else FULL
    if options.rounds:
        sizes = replace(sizes, rounds=options.rounds)
    workloads = select(options.only)
    missing = [t for t in ("wrk", "curl", "openssl") if shutil.which(t) is None]
    if missing:
        tools = ", ".join(missing)
        raise BenchmarkError(f"missing {tools} (Debian: apt-get install {' '.join(missing)})")
    if any(w.name == "stack-idle" for w in workloads):
        endtoend._raise_fd_limit(sizes.idle_connections * 2 + 1024)
    stacks = stacks_available(log)
    kinds = server_kinds(stacks)
    pin = endtoend.pinning()
    log(f"[{SUITE}] {pin.description}")
    with endtoend._terminate_as_exit():
        return _collect(workloads, stacks, kinds, sizes, pin, log)


def _collect(
    workloads: Sequence[Workload],
    stacks: Sequence[Stack],
    kinds: Sequence[ServerKind],
    sizes: Sizes,
    pin: Pinning,
    log: Callable[[str], None],
) -> list[Row]:
    values: dict[tuple[str, str], list[float]] = {}
    works: dict[tuple[str, str], list[int]] = {}
    with tempfile.TemporaryDirectory(prefix="membio-stacks-") as tmp:
        files = prepare_files(Path(tmp), sizes)
        for round_number in range(sizes.rounds):
            started = time.perf_counter()
            # Rotate the order, so that no server always runs first or last in a round.
            shift = round_number % len(kinds)
            order = [*kinds[shift:], *kinds[:shift]]
            spent: dict[str, float] = {}
            with _servers(order, files, pin, log) as servers:
                if round_number == 0:
                    for line in describe_servers(servers, files, pin):
                        log(line)
                for workload in workloads:
                    t0 = time.perf_counter()
                    for kind in order:
                        if workload.tls_only and not kind.tls:
                            continue
                        measured = workload.measure(servers[kind.name], files, pin, sizes)
                        for key, (value, work) in measured.values.items():
                            values.setdefault((key, kind.name), []).append(value)
                            works.setdefault((key, kind.name), []).append(work)
                    spent[workload.name] = time.perf_counter() - t0
            print(
                f"[{SUITE}] round {round_number + 1}/{sizes.rounds} done in "
                f"{time.perf_counter() - started:.1f} s ("
                + ", ".join(f"{name} {t:.1f}" for name, t in spent.items())
                + f"); load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
                file=sys.stderr,
            )
    rows = []
    for (key, name), per_round in values.items():
        line = next((x for x in (*LINES, *EXTRA) if x.key == key), None)
        rows.append(
            Row(
                suite=SUITE,
                workload=key,
                description=line.label if line else key,
                implementation=name,
                unit=line.unit if line else "",
                work=int(statistics.median(works[(key, name)])),
                wall=tuple(per_round),
                kind=INFO if line is None or line.twin_key is None else COST,
            )
        )
    return rows


# --------------------------------------------------------------------------- report


def _find(rows: Sequence[Row], key: str, name: str) -> Row | None:
    return next((r for r in rows if r.workload == key and r.implementation == name), None)


def tls_cost(rows: Sequence[Row], stack: Stack, line: Line) -> float | None:
    """Median over rounds of (TLS server's cost - twin's cost), same round."""
    tls = _find(rows, line.key, stack.tls.name)
    twin = _find(rows, line.twin_key or line.key, stack.plain.name)
    if tls is None or twin is None or len(tls.wall) != len(twin.wall):
        return None
    return statistics.median(a - b for a, b in zip(tls.wall, twin.wall, strict=True))


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _markdown(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in (header, *body)) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(header, widths, strict=True)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in body:
        rest = (c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True))
        cells = [r[0].ljust(widths[0]), *rest]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(rows: Sequence[Row]) -> str:
    """The issue's table (TLS cost above the twin), then every server's absolute costs."""
    present = {r.implementation for r in rows if r.suite == SUITE}
    stacks = [s for s in STACKS if s.tls.name in present]
    rows = [r for r in rows if r.suite == SUITE]
    rounds = max((len(r.wall) for r in rows), default=0)
    cost = [
        [line.label, *(_fmt(tls_cost(rows, s, line)) for s in stacks)]
        for line in LINES
        if any(_find(rows, line.key, s.tls.name) for s in stacks)
    ]
    out = [
        f"TLS cost above its own plain-TCP twin (server CPU per unit; medians of {rounds} "
        "per-round differences):",
        _markdown(["TLS cost above its own plain-TCP twin", *(s.title for s in stacks)], cost),
        "",
        "every server, absolute (server CPU per unit; medians over rounds, min-max):",
    ]
    servers = [k.name for k in server_kinds(stacks)]
    body = []
    for line in (*LINES, *EXTRA):
        label = f"{line.label} [{line.unit}]"
        for name in servers:
            row = _find(rows, line.key, name)
            if row is None:
                continue
            body.append(
                [
                    label,
                    name,
                    _fmt(row.wall_median),
                    f"{_fmt(min(row.wall))}-{_fmt(max(row.wall))}",
                    str(row.work),
                ]
            )
            label = ""
    out.append(_markdown(["measurement", "server", "median", "range", "units/round"], body))
    return "\n".join(out)


LEGEND = (
    "stacks: each TLS server against its own plain-TCP twin over loopback, server pinned to one "
    "CPU, clients to the other; values are server CPU time (schedstat) per unit, idle memory is "
    "VmRSS growth per connection; clients offer TLS_AES_256_GCM_SHA384 and X25519 only."
)


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--only", action="append", default=[], metavar="WORKLOAD")
    parser.add_argument("--json", type=Path, help="write every per-round value here")
    parser.add_argument(
        "--callgrind", action="store_true", help="instruction counts (benchmarks/callgrind.py)"
    )
    args = parser.parse_args(argv)
    if args.callgrind:
        from benchmarks import callgrind

        return callgrind.main(["--quick"] if args.quick else [])
    rows = collect(RunOptions(quick=args.quick, rounds=args.rounds, only=tuple(args.only)))
    print(LEGEND)
    print(report(rows))
    if args.json:
        from benchmarks.results import write_json

        write_json(rows, args.json, {"suite": SUITE})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
