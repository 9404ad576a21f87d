"""Instructions per keep-alive request and per handshake, server side, under callgrind.

    python benchmarks/callgrind.py [--quick] [--servers twisted,ours,twisted-tcp,...]
                                   [--requests N] [--handshakes N] [--keep DIR]
    python benchmarks/run.py --callgrind [--quick]           # the same

Timings on a shared 2-core VM move by 30-40% from run to run; instruction counts do not.  Each
server of benchmarks/stacks.py (Twisted's TLS, ours, their plain-TCP twin, the asyncio server
with and without TLS; uvloop's with ``--servers``) runs under ``valgrind --tool=callgrind``
with instrumentation off; the real clients of the stacks suite (benchmarks/loadgen.py) drive
it, and instrumentation is switched on (``callgrind_control -i on``) only around:

* ``--requests`` keep-alive requests for the 14-byte file on 16 connections already open
  (handshakes and warm-up requests done before), one outstanding per connection;
* ``--handshakes`` new connections, 16 in flight, each a full TLS 1.3 handshake offering no
  ticket, one GET with ``Connection: close`` and the close (the twin: the same without TLS);
* the same number offering a ticket (TLS servers only).

Each window is dumped (``callgrind_control -d``) and divided by its unit count.  Only user-space
instructions of the server process are counted: the kernel's share (TCP, epoll) and time spent
waiting are not, which is the point: what remains is the code each stack runs per request and
per connection.  Instructions are also split by shared object (the interpreter, OpenSSL,
cffi, libc...) and the C functions called across objects (``SSL_read`` from cffi, say) are listed
per unit, inclusive.

The server runs about 50 times slower under callgrind, so the clients are never the bottleneck
here: every server is saturated, which is also when per-unit costs are lowest (events batch
in one reactor turn).  The timed suite (benchmarks/stacks.py) runs at whatever rate the client
core reaches.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

if __name__ == "__main__" and not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import endtoend, stacks
from benchmarks.cgparse import Profile, object_name, parse
from benchmarks.endtoend import BenchmarkError, Files, Pinning, Server, ServerKind

DEFAULT_SERVERS = ("twisted", "ours", "twisted-tcp", "asyncio", "asyncio-tcp")

#: Ours with ``/metrics`` on (``--servers ours,ours-metrics``): what the ``metrics=``
#: setting costs per request and per connection through an entry point (the
#: ``membio:`` endpoint, as "ours"), nobody scraping during the windows.
OURS_METRICS = ServerKind(
    "ours-metrics",
    True,
    "twistd web --listen membio:...:metrics=tcp\\:0",
    lambda port, f: [
        "web",
        "--listen",
        f"membio:{port}:interface=127.0.0.1:certKey={f.cert}:privateKey={f.key}"
        ":metrics=tcp\\:0\\:interface=127.0.0.1",
        "--path",
        str(f.www),
    ],
    # As "ours": the one-ticket setting, so that the difference is what metrics cost.
    env=stacks.one_ticket_env,
)


@dataclass(frozen=True)
class Window:
    """One instrumented window on one server: what it measured and its profile."""

    server: str
    what: str
    units: int
    profile: Profile

    @property
    def per_unit(self) -> float:
        return self.profile.total / self.units


#: --baseline DIR: a column for ours from DIR/membio_transport (the same run, before/after).
BASELINE: list[stacks.Stack] = []


def _all_stacks() -> list[stacks.Stack]:
    return [*stacks.STACKS, *stacks.VARIANTS, *BASELINE]


def _kinds() -> dict[str, ServerKind]:
    kinds = {k.name: k for k in stacks.server_kinds(_all_stacks())}
    kinds[OURS_METRICS.name] = OURS_METRICS
    return kinds


class Callgrind:
    """A server under callgrind, instrumentation off until asked."""

    def __init__(self, kind: ServerKind, files: Files, out: Path, env: Sequence[str] = ()) -> None:
        self.out = out
        pattern = out / f"{kind.name}.%p.out"
        valgrind = [
            *(["env", *env] if env else []),
            "valgrind", "--tool=callgrind", "--instr-atstart=no",
            f"--callgrind-out-file={pattern}", "--trace-children=no",
        ]  # fmt: skip
        if kind.program is None:
            twistd = endtoend._twistd()
            if twistd[0] != sys.executable:  # the twistd script: run by this Python
                twistd = [sys.executable, *twistd]
            wrapper = [*valgrind, *twistd]
        else:
            wrapper = valgrind
        self.kind = kind
        self.server = Server(kind, files, Pinning((), (), "not pinned"), wrapper)
        self.dumps = 0

    def control(self, *args: str) -> None:
        result = subprocess.run(
            ["callgrind_control", *args, str(self.server.pid)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        text = result.stdout + result.stderr
        if result.returncode != 0 or "Error" in text:
            raise BenchmarkError(f"callgrind_control {' '.join(args)}: {text.strip()}")

    @contextlib.contextmanager
    def window(self) -> Iterator[list[Profile]]:
        """Instrument what runs inside; the profile is appended to the yielded list on exit."""
        found: list[Profile] = []
        self.control("-i", "on")
        try:
            yield found
        finally:
            self.control("-d")
            self.control("-i", "off")
        self.dumps += 1
        path = self.out / f"{self.kind.name}.{self.server.pid}.out.{self.dumps}"
        deadline = time.monotonic() + 60
        while not path.exists():
            if time.monotonic() > deadline:
                raise BenchmarkError(f"no callgrind dump {path}")
            time.sleep(0.1)
        time.sleep(0.5)  # written completely
        found.append(parse(path))


def _wait_idle(pid: int, quiet: float = 0.5, timeout: float = 60.0) -> None:
    """Until the server has used no CPU for `quiet` seconds (it finished closing connections)."""
    deadline = time.monotonic() + timeout
    last = stacks.cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = stacks.cpu_seconds(pid)
        if now - last < 0.002:
            return
        last = now


def _loadgen(*args: str) -> list[str]:
    return [sys.executable, str(endtoend.LOADGEN), *args]


#: Connections in flight (keep-alive connections, handshakes): 16 as in the timed suite; 1 makes
#: the counts repeatable to a fraction of a percent (no batching of several connections' events
#: in one reactor turn, which varies with the machine's load), for comparing two versions.
CONCURRENCY = [stacks.CONNECTIONS]


def measure_requests(cg: Callgrind, files: Files, count: int) -> Window:
    server = cg.server
    command = _loadgen(
        "requests", "--port", str(server.port), "--connections", str(CONCURRENCY[0]),
        "--count", str(count), "--warm", "5", "--timeout", "120",
        *(["--cafile", str(files.cert)] if server.kind.tls else ["--plain"]),
    )  # fmt: skip
    process = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=files.client_env(),
    )  # fmt: skip
    try:
        assert process.stdin is not None
        ready = json.loads(endtoend._read_line(process, 600))
        if server.kind.tls and ready["ciphers"] != {
            f"TLSv1.3 {endtoend.CIPHERSUITE}": CONCURRENCY[0]
        }:
            raise BenchmarkError(f"{server.kind.name}: negotiated {ready['ciphers']}")
        _wait_idle(server.pid)
        with cg.window() as found:
            process.stdin.write("\n")
            process.stdin.flush()
            result = json.loads(endtoend._read_line(process, 1800))
        process.stdin.write("\n")
        process.stdin.flush()
        process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    if result["completed"] != count:
        raise BenchmarkError(f"{server.kind.name}: {result}")
    return Window(server.kind.name, "keep-alive request", count, found[0])


def measure_connections(cg: Callgrind, files: Files, count: int, resume: bool) -> Window:
    server = cg.server
    base = [
        "handshakes", "--port", str(server.port), "--concurrency", str(CONCURRENCY[0]),
        "--request", "--timeout", "120",
        *(["--cafile", str(files.cert)] if server.kind.tls else ["--plain"]),
        *(["--resume"] if resume else []),
    ]  # fmt: skip
    # Unmeasured connections first: first-use allocations, caches.
    endtoend.run_client(_loadgen(*base, "--count", "16"), 600, files.client_env())
    _wait_idle(server.pid)
    with cg.window() as found:
        out = endtoend.run_client(_loadgen(*base, "--count", str(count)), 1800, files.client_env())
        _wait_idle(server.pid)
    result = json.loads(out.stdout.splitlines()[-1])
    if result["errors"] or result["completed"] != count:
        raise BenchmarkError(f"{server.kind.name}: loadgen: {result}")
    if server.kind.tls:
        if result["ciphers"] != {f"TLSv1.3 {endtoend.CIPHERSUITE}": count}:
            raise BenchmarkError(f"{server.kind.name}: negotiated {result['ciphers']}")
        if resume and result["reused"] != count:
            print(
                f"[callgrind] {server.kind.name}: {result['reused']} of {count} resumed",
                file=sys.stderr,
            )
    what = "resumed connection" if resume else "full handshake connection"
    if not server.kind.tls:
        what = "plain connection"
    # The priming connection of --resume is one more full handshake inside the window.
    return Window(server.kind.name, what, count, found[0])


def run(
    names: Sequence[str],
    requests: int,
    handshakes: int,
    keep: Path | None,
    package: Path | None = None,
    resumed: bool = True,
    env: Sequence[str] = (),
) -> list[Window]:
    kinds = _kinds()
    unknown = [n for n in names if n not in kinds]
    if unknown:
        raise SystemExit(f"unknown server {', '.join(unknown)}; choose from {', '.join(kinds)}")
    missing = [t for t in ("valgrind", "callgrind_control") if shutil.which(t) is None]
    if missing:
        raise BenchmarkError("callgrind mode needs valgrind (Debian: apt-get install valgrind)")
    windows: list[Window] = []
    sizes = replace(stacks.TINY, small_bytes=14)
    with tempfile.TemporaryDirectory(prefix="membio-callgrind-") as tmp:
        out = keep or Path(tmp) / "callgrind"
        out.mkdir(parents=True, exist_ok=True)
        files = stacks.prepare_files(Path(tmp), sizes)
        if package is not None:
            # Another copy of the package (a prototype, another branch) as "ours".
            shutil.rmtree(files.source / "membio_transport")
            shutil.copytree(
                package / "membio_transport",
                files.source / "membio_transport",
                ignore=shutil.ignore_patterns("__pycache__"),
            )
        with endtoend._terminate_as_exit():
            for name in names:
                started = time.perf_counter()
                cg = Callgrind(kinds[name], files, out, env)
                try:
                    cg.server.wait_ready(time.monotonic() + 300)
                    endtoend.warm_up(cg.server)
                    windows.append(measure_requests(cg, files, requests))
                    windows.append(measure_connections(cg, files, handshakes, resume=False))
                    if cg.kind.tls and resumed:
                        windows.append(measure_connections(cg, files, handshakes, resume=True))
                finally:
                    cg.server.stop()
                print(
                    f"[callgrind] {name}: {time.perf_counter() - started:.0f} s",
                    file=sys.stderr,
                )
    return windows


# --------------------------------------------------------------------------- report


def tls_calls(w: Window) -> list[tuple[str, float, float]]:
    """The TLS library's functions called from outside it, per unit: (name, inclusive
    instructions, calls).  pyOpenSSL's binding calls OpenSSL through cffi wrappers named
    ``_cffi_f_<function>`` (inside cryptography's library); Python's ``_ssl`` module calls
    libssl directly."""
    found = []
    for (ob, fn), inc in w.profile.inclusive.items():
        if fn.startswith("_cffi_f_"):
            calls = w.profile.calls.get((ob, fn), 0)
            found.append((fn.removeprefix("_cffi_f_"), inc / w.units, calls / w.units))
    for (ob, fn), (inc, calls) in w.profile.entries.items():
        if "libssl" in ob or "libcrypto" in ob:
            found.append((fn, inc / w.units, calls / w.units))
    return found


def _k(value: float) -> str:
    return f"{value / 1000:,.1f}k"


def report(windows: Sequence[Window], top: int = 12) -> str:
    servers = list(dict.fromkeys(w.server for w in windows))
    kinds = _kinds()
    by: dict[tuple[str, str], Window] = {(w.server, w.what): w for w in windows}

    def get(server: str, what: str) -> Window | None:
        if not kinds[server].tls and what != "keep-alive request":
            what = "plain connection"
        return by.get((server, what))

    whats = ("keep-alive request", "full handshake connection", "resumed connection")
    lines = ["server-side user-space instructions per unit (callgrind):"]
    header = ["", *servers]
    body = []
    for what in whats:
        cells = [what]
        for server in servers:
            w = get(server, what)
            cells.append(_k(w.per_unit) if w else "-")
        body.append(cells)
    lines.append(stacks._markdown(header, body))

    lines += ["", "TLS instructions above the plain-TCP twin, per unit:"]
    tls_stacks = [s for s in _all_stacks() if s.tls.name in servers and s.plain.name in servers]
    body = []
    for what in whats:
        cells = [what]
        for s in tls_stacks:
            tls, twin = get(s.tls.name, what), get(s.plain.name, what)
            cells.append(_k(tls.per_unit - twin.per_unit) if tls and twin else "-")
        body.append(cells)
    lines.append(stacks._markdown(["", *(s.title for s in tls_stacks)], body))

    for what in whats:
        present = [s for s in servers if get(s, what) is not None]
        if not present:
            continue
        lines += ["", f"by object file, per {what}:"]
        totals: dict[str, dict[str, float]] = defaultdict(dict)
        for server in present:
            w = get(server, what)
            assert w is not None
            for ob, value in w.profile.by_object.items():
                label = object_name(ob)
                totals[label][server] = totals[label].get(server, 0.0) + value / w.units
        ranked = sorted(totals.items(), key=lambda kv: -max(kv[1].values()))
        body = [
            [label, *(_k(v[s]) if s in v else "-" for s in present)]
            for label, v in ranked
            if max(v.values()) >= 500
        ]
        lines.append(stacks._markdown(["object", *present], body))

    for what in whats:
        for server in servers:
            w = get(server, what)
            if w is None or not kinds[server].tls:
                continue
            entries = tls_calls(w)
            entries.sort(key=lambda e: -e[1])
            if not entries:
                continue
            lines += ["", f"{server}: TLS library calls per {what} (inclusive, calls):"]
            lines += [f"  {_k(inc):>9}  {calls:6.2f}  {fn}" for fn, inc, calls in entries[:top]]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer requests and connections")
    parser.add_argument("--servers", default=",".join(DEFAULT_SERVERS))
    parser.add_argument("--requests", type=int)
    parser.add_argument("--handshakes", type=int)
    parser.add_argument("--keep", type=Path, help="keep the callgrind files in this directory")
    parser.add_argument(
        "--package",
        type=Path,
        metavar="DIR",
        help="measure DIR/membio_transport as ours (a prototype) instead of the checkout's",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        metavar="DIR",
        help="also measure DIR/membio_transport as server ours-before (add it to --servers)",
    )
    parser.add_argument("--no-resumed", action="store_true", help="skip resumed handshakes")
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set this in the servers' environment (e.g. OPENSSL_CONF=one-ticket.cnf)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=stacks.CONNECTIONS,
        help="connections in flight (default 16; 1 for repeatable A/B comparisons)",
    )
    parser.add_argument("--top", type=int, default=12, help="TLS library calls listed per unit")
    parser.add_argument("--json", type=Path, help="write the per-unit totals here")
    args = parser.parse_args(argv)
    requests = args.requests or (200 if args.quick else 1000)
    handshakes = args.handshakes or (48 if args.quick else 160)
    names = [n for n in args.servers.split(",") if n]
    if args.baseline is not None:
        BASELINE.append(stacks.baseline_stack(args.baseline.resolve()))
        if "ours-before" not in names:
            names.append("ours-before")
    CONCURRENCY[0] = args.concurrency
    windows = run(
        names,
        requests,
        handshakes,
        args.keep,
        args.package,
        resumed=not args.no_resumed,
        env=args.server_env,
    )
    print(report(windows, args.top))
    if args.json:
        data = [
            {"server": w.server, "what": w.what, "units": w.units, "per_unit": w.per_unit}
            for w in windows
        ]
        args.json.write_text(json.dumps(data, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
