"""Where the keep-alive tail latency comes from: wrk percentiles with and without the cyclic GC,
and the server's GC pauses and reactor turns during the run.

    python benchmarks/profiles/keepalive_p99.py [--rounds N] [--seconds S] [--servers ours,twisted]

Written for issue #14, whose runs showed our keep-alive p99 above Twisted's (10.7 vs 6.3 ms,
16.1 vs 11.4 ms) with the same p50.  Each server of benchmarks/stacks.py named runs twice per
round, pinned like the stacks suite (server on one CPU, wrk on the other): as is, and with
Python's cyclic garbage collector disabled (``gc.disable()`` once started).  A ``sitecustomize``
module put on the servers' ``PYTHONPATH`` records, while wrk runs (between two SIGUSR2 signals):

* every GC collection: generation, pause (ms), objects collected;
* every reactor turn (``runUntilCurrent`` + ``doIteration`` on Twisted's reactor): how many took
  over 2 and 5 ms, the longest, and how many delayed calls ran per turn;
* for every request, how many reactor turns passed between the turn that read it from the
  socket and the turn that handed the response to the TCP transport (``lag``): a number that
  does not depend on the machine's load, unlike the latencies.

wrk: one thread, 16 keep-alive connections, the 14-byte file, ``--latency`` (p50/p90/p99).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import endtoend, stacks  # noqa: E402

SITECUSTOMIZE = r'''
"""Installed by benchmarks/profiles/keepalive_p99.py: GC pauses and reactor turns, on demand."""
import gc, json, os, signal, time

_out = os.environ.get("P99_PROBE_OUT")
if _out:
    _state = {"on": False, "gc": [], "turns": [], "calls": [], "lag": {}}
    _turn = [0]
    _start = [0.0]

    def _gc(phase, info):
        if not _state["on"]:
            return
        if phase == "start":
            _start[0] = time.perf_counter()
        else:
            _state["gc"].append(
                [info["generation"], (time.perf_counter() - _start[0]) * 1e3, info["collected"]]
            )

    gc.callbacks.append(_gc)

    def _toggle(signum, frame):
        if not _state["on"]:
            _state.update(on=True, gc=[], turns=[], calls=[], lag={})
            if os.environ.get("P99_NO_GC"):
                gc.disable()
            _wrap_reactor()
        else:
            _state["on"] = False
            with open(_out, "w") as f:
                json.dump({k: _state[k] for k in ("gc", "turns", "calls", "lag")}, f)

    signal.signal(signal.SIGUSR2, _toggle)

    def _wrap_reactor():
        import sys
        reactor = sys.modules.get("twisted.internet.reactor")
        if reactor is None or getattr(reactor, "_p99_wrapped", False):
            return
        reactor._p99_wrapped = True
        run_until, iterate = reactor.runUntilCurrent, reactor.doIteration
        last = [time.perf_counter()]

        def runUntilCurrent():
            now = time.perf_counter()
            n = len(reactor._pendingTimedCalls) + len(reactor._newTimedCalls)
            run_until()
            if _state["on"]:
                left = len(reactor._pendingTimedCalls) + len(reactor._newTimedCalls)
                _state["calls"].append(n - left)
            last[0] = now

        from twisted.internet import abstract, tcp

        read, write = tcp.Connection.doRead, abstract.FileDescriptor.write

        def doRead(self):
            if _state["on"] and not hasattr(self, "_p99_read"):
                self._p99_read = _turn[0]
            return read(self)

        def fd_write(self, data):
            started = self.__dict__.pop("_p99_read", None)
            if _state["on"] and started is not None:
                lag = str(_turn[0] - started)
                _state["lag"][lag] = _state["lag"].get(lag, 0) + 1
            return write(self, data)

        tcp.Connection.doRead = doRead
        abstract.FileDescriptor.write = fd_write

        def doIteration(delay):
            _turn[0] += 1
            before = time.perf_counter()
            iterate(delay)
            after = time.perf_counter()
            if _state["on"]:
                # Busy time of the turn: from the start of runUntilCurrent to the end of the
                # work done after the poll, minus nothing (poll with work pending returns at once).
                _state["turns"].append((after - last[0]) * 1e3)

        reactor.runUntilCurrent = runUntilCurrent
        reactor.doIteration = doIteration
'''


def _percentiles(output: str) -> dict[str, float]:
    found = {}
    for pct in ("50", "90", "99"):
        match = re.search(rf"^\s*{pct}%\s+(\S+)", output, re.MULTILINE)
        if match:
            found[pct] = endtoend._wrk_ms(match.group(1))
    done = re.search(r"Requests/sec:\s+([\d.]+)", output)
    found["rate"] = float(done.group(1)) if done else 0.0
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--servers", default="ours,twisted")
    parser.add_argument(
        "--package",
        type=Path,
        metavar="DIR",
        help="serve ours from DIR/membio_transport (a prototype) instead of the checkout's",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        metavar="DIR",
        help="also serve ours from DIR/membio_transport as server ours-before (the same run)",
    )
    parser.add_argument(
        "--idle-before",
        type=int,
        default=0,
        metavar="N",
        help="first open N TLS connections, hold them idle, close them (as the stacks and "
        "end-to-end suites do before their keep-alive workload)",
    )
    args = parser.parse_args(argv)
    extra = [stacks.baseline_stack(args.baseline.resolve())] if args.baseline else []
    kinds = {k.name: k for k in stacks.server_kinds([*stacks.STACKS, *stacks.VARIANTS, *extra])}
    if args.baseline and "ours-before" not in args.servers.split(","):
        args.servers += ",ours-before"
    pin = endtoend.pinning()
    results: dict[tuple[str, bool], list[dict[str, object]]] = {}
    with tempfile.TemporaryDirectory(prefix="membio-p99-") as tmp:
        probe_dir = Path(tmp) / "probe"
        probe_dir.mkdir()
        (probe_dir / "sitecustomize.py").write_text(SITECUSTOMIZE)
        files = stacks.prepare_files(Path(tmp), replace(stacks.TINY, small_bytes=14))
        if args.package is not None:
            shutil.rmtree(files.source / "membio_transport")
            shutil.copytree(
                args.package / "membio_transport",
                files.source / "membio_transport",
                ignore=shutil.ignore_patterns("__pycache__"),
            )
        for round_number in range(args.rounds):
            for name in args.servers.split(","):
                for no_gc in (False, True):
                    out = Path(tmp) / f"{name}-{no_gc}-{round_number}.json"
                    saved = {
                        k: os.environ.get(k) for k in ("PYTHONPATH", "P99_PROBE_OUT", "P99_NO_GC")
                    }
                    os.environ["PYTHONPATH"] = str(probe_dir)
                    os.environ["P99_PROBE_OUT"] = str(out)
                    if no_gc:
                        os.environ["P99_NO_GC"] = "1"
                    else:
                        os.environ.pop("P99_NO_GC", None)
                    try:
                        with stacks._servers([kinds[name]], files, pin, print) as servers:
                            server = servers[name]
                            url = server.url("small.txt").replace(endtoend.HOSTNAME, "127.0.0.1")
                            command = [
                                *pin.client, "wrk", "-t1", f"-c{stacks.CONNECTIONS}",
                                f"-d{args.seconds}s", "--latency", url,
                            ]  # fmt: skip
                            if args.idle_before and server.kind.tls:
                                endtoend.measure_idle(
                                    server, files, pin, replace(
                                        stacks.TINY, idle_connections=args.idle_before
                                    ),
                                )  # fmt: skip
                            # An unmeasured second first: buffers, caches, the first GCs.
                            warm = [*pin.client, "wrk", "-t1", "-c16", "-d1s", url]
                            endtoend.run_client(warm, 60, files.client_env())
                            os.kill(server.pid, signal.SIGUSR2)
                            time.sleep(0.2)
                            wrk = endtoend.run_client(
                                command, args.seconds + 60, files.client_env()
                            )
                            os.kill(server.pid, signal.SIGUSR2)
                            deadline = time.monotonic() + 10
                            while not out.exists() and time.monotonic() < deadline:
                                time.sleep(0.1)
                            time.sleep(0.3)
                    finally:
                        for k, v in saved.items():
                            if v is None:
                                os.environ.pop(k, None)
                            else:
                                os.environ[k] = v
                    probe = (
                        json.loads(out.read_text())
                        if out.exists()
                        else {"gc": [], "turns": [], "calls": [], "lag": {}}
                    )
                    results.setdefault((name, no_gc), []).append(
                        {"wrk": _percentiles(wrk.stdout), **probe}
                    )
    c, seconds = stacks.CONNECTIONS, args.seconds
    print(
        f"wrk -t1 -c{c} -d{seconds}s, 14-byte file; medians of {args.rounds} rounds; "
        f"{args.idle_before} idle TLS connections opened and closed before"
    )
    print(
        f"{'server':<9} {'GC':<4} {'req/s':>7} {'p50':>6} {'p90':>6} {'p99':>6}  "
        f"{'gen2 GCs':>8} {'gen2 ms max':>11} {'gen0/1 GCs':>10}  {'turns>2ms':>9} "
        f"{'turns>5ms':>9} {'max turn':>8} {'calls/turn':>10}"
    )
    for (name, no_gc), runs in results.items():

        def med(f, runs=runs):  # type: ignore[no-untyped-def]
            return statistics.median(f(r) for r in runs)

        gen2 = [g for r in runs for g in r["gc"] if g[0] == 2]
        print(
            f"{name:<9} {'off' if no_gc else 'on':<4} {med(lambda r: r['wrk']['rate']):7.0f} "
            f"{med(lambda r: r['wrk']['50']):6.2f} {med(lambda r: r['wrk']['90']):6.2f} "
            f"{med(lambda r: r['wrk']['99']):6.2f}  "
            f"{med(lambda r: sum(1 for g in r['gc'] if g[0] == 2)):8.1f} "
            f"{max((g[1] for g in gen2), default=0.0):11.2f} "
            f"{med(lambda r: sum(1 for g in r['gc'] if g[0] < 2)):10.1f}  "
            f"{med(lambda r: sum(1 for t in r['turns'] if t > 2)):9.1f} "
            f"{med(lambda r: sum(1 for t in r['turns'] if t > 5)):9.1f} "
            f"{med(lambda r: max(r['turns'], default=0.0)):8.2f} "
            f"{med(lambda r: statistics.mean(r['calls']) if r['calls'] else 0.0):10.2f}"
        )
    print("reactor turns from reading a request to writing its response (share of requests):")
    for (name, no_gc), runs in results.items():
        lags: dict[str, int] = {}
        for r in runs:
            for k, v in r["lag"].items():
                lags[k] = lags.get(k, 0) + v
        total = sum(lags.values()) or 1
        shares = ", ".join(
            f"{k} turns {100 * v / total:.1f}%"
            for k, v in sorted(lags.items(), key=lambda kv: int(kv[0]))
        )
        print(f"  {name:<9} GC {'off' if no_gc else 'on':<4} {shares}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
