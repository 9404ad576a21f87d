"""New TLS connections per second from ``membio-https`` with 1, 2... worker processes.

    python benchmarks/workers.py [--workers 0,1,2] [--rounds 5] [--seconds 5] [--threads 8]

Each measurement starts ``twistd -n membio-https --port P --workers N`` (0: no workers, the
server runs in the twistd process itself), waits until it serves, and drives it for
``--seconds`` with client threads that each connect, complete a full (never
resumed) TLS handshake with Python's ``ssl`` and close, over and over (``--processes``
client processes of ``--threads`` threads each).  The configurations
alternate within every round, because these machines are noisy; the table gives the median
over rounds of connections per wall second and per second of server CPU (parent and workers,
from /proc), and the CPU the clients used, which competes with the servers on a small machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import re
import resource
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
#: Clock ticks per second, for /proc/PID/stat CPU times.
_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Measurement:
    workers: int
    connections: int
    seconds: float
    server_cpu: float
    client_cpu: float
    errors: int

    @property
    def per_second(self) -> float:
        return self.connections / self.seconds

    @property
    def per_server_cpu_second(self) -> float:
        return self.connections / self.server_cpu if self.server_cpu else 0.0


def _cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / _TICKS


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            found += [int(child) for child in (task / "children").read_text().split()]
    return found


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Server:
    """One membio-https process tree, started and stopped around a measurement."""

    def __init__(self, workers: int, home: Path) -> None:
        self.port = _free_port()
        env = dict(os.environ, HOME=str(home), XDG_STATE_HOME=str(home / "state"),
                   PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
                   PYTHONUNBUFFERED="1")
        twistd = Path(sys.executable).parent / "twistd"
        command = [str(twistd), "-n", "--pidfile=", "membio-https", "--port", str(self.port),
                   "--cert-dir", str(home / "certs")]
        if workers:
            command += ["--workers", str(workers)]
        self.log = home / f"server-{workers}-{self.port}.log"
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=env)
        self.workers = workers
        deadline = time.monotonic() + 30
        while True:
            text = self.log.read_text(errors="replace")
            started = len(re.findall(r"worker \d+ started", text))
            if "ready: open" in text and started >= workers and self._serves():
                break
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server did not start:\n{text}")
            time.sleep(0.1)
        self.ca = home / "certs" / "local-ca.pem"

    def _serves(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def pids(self) -> list[int]:
        return [self.process.pid, *_children(self.process.pid)]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def _hammer(port: int, context: ssl.SSLContext, until: float, counts: list[int],
            errors: list[int], index: int) -> None:
    while time.monotonic() < until:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                    context.wrap_socket(raw, server_hostname="localhost"):
                counts[index] += 1
        except OSError:
            errors[index] += 1


def measure(server: Server, seconds: float, processes: int, threads: int) -> Measurement:
    # Warm up (imports, first handshakes, worker start-up) outside the measurement.
    _load(server, 0.5, processes, threads)
    pids = server.pids()
    cpu_before = _cpu_seconds(pids)
    started = time.monotonic()
    connections, errors, client_cpu = _load(server, seconds, processes, threads)
    elapsed = time.monotonic() - started
    server_cpu = _cpu_seconds(pids) - cpu_before
    return Measurement(server.workers, connections, elapsed, server_cpu, client_cpu, errors)


def _load(server: Server, seconds: float, processes: int, threads: int) -> tuple[int, int, float]:
    """
    Run the clients: C{processes} processes of C{threads} threads each (one
    process's threads share a GIL, and Python code between handshakes would
    make them wait for each other).  Returns connections, errors, client CPU.
    """
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    pool = [
        context.Process(target=_client_process, args=(server.port, str(server.ca), seconds,
                                                      threads, queue))
        for _ in range(processes)
    ]
    for process in pool:
        process.start()
    results = [queue.get(timeout=seconds + 60) for _ in pool]
    for process in pool:
        process.join(10)
    return (sum(r[0] for r in results), sum(r[1] for r in results), sum(r[2] for r in results))


def _client_process(port: int, ca: str, seconds: float, threads: int, queue: Any) -> None:
    context = ssl.create_default_context(cafile=ca)
    counts, errors = [0] * threads, [0] * threads
    until = time.monotonic() + seconds
    before = resource.getrusage(resource.RUSAGE_SELF)
    pool = [threading.Thread(target=_hammer, args=(port, context, until, counts, errors, i))
            for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    queue.put((sum(counts), sum(errors), cpu))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="1,2", help="comma-separated counts (0: none)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--processes", type=int, default=4, help="client processes")
    parser.add_argument("--threads", type=int, default=2, help="threads per client process")
    parser.add_argument("--json", type=Path, help="write every measurement here")
    args = parser.parse_args(argv)
    configs = [int(part) for part in args.workers.split(",")]
    results: dict[int, list[Measurement]] = {count: [] for count in configs}
    with tempfile.TemporaryDirectory(prefix="membio-workers-") as directory:
        home = Path(directory)
        for round_number in range(args.rounds):
            order = configs if round_number % 2 == 0 else configs[::-1]
            for count in order:
                server = Server(count, home)
                try:
                    result = measure(server, args.seconds, args.processes, args.threads)
                finally:
                    server.stop()
                results[count].append(result)
                print(f"round {round_number + 1}: workers={count}: "
                      f"{result.per_second:.0f} conn/s, "
                      f"{result.per_server_cpu_second:.0f} per server CPU s, "
                      f"server CPU {result.server_cpu / result.seconds:.2f} cores, "
                      f"client CPU {result.client_cpu / result.seconds:.2f} cores, "
                      f"{result.errors} errors", flush=True)
    print(f"\n{os.cpu_count()} CPUs; {args.processes} client processes x {args.threads} "
          f"threads, {args.seconds:g} s per "
          f"measurement, medians of {args.rounds} rounds")
    print(f"{'workers':>8} {'conn/s':>8} {'per server CPU s':>17} {'server cores':>13} "
          f"{'client cores':>13}")
    base = None
    for count in configs:
        rows = results[count]
        rate = statistics.median(r.per_second for r in rows)
        per_cpu = statistics.median(r.per_server_cpu_second for r in rows)
        cores = statistics.median(r.server_cpu / r.seconds for r in rows)
        client = statistics.median(r.client_cpu / r.seconds for r in rows)
        base = base or rate
        print(f"{count:>8} {rate:>8.0f} {per_cpu:>17.0f} {cores:>13.2f} {client:>13.2f}"
              f"   x{rate / base:.2f}")
    if args.json:
        args.json.write_text(json.dumps(
            {str(count): [vars(r) for r in rows] for count, rows in results.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
