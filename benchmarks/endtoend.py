"""End-to-end benchmark: real `twistd` HTTPS servers over loopback, driven by real clients.

The same static directory is served by three `twistd` processes:

* ``twisted``: ``twistd web --listen ssl:...``, Twisted's own TLS layer (``TLSMemoryBIOFactory``
  under the ``ssl:`` endpoint, Twisted's default ``CertificateOptions``);
* ``ours``: ``twistd membio-https`` from this checkout (its code, not an installed copy): the
  package and its twistd plugin are copied when the run starts and that copy comes first on the
  servers' ``PYTHONPATH``, so that every round measures the same code even while the working tree
  changes;
* ``no-tls``: ``twistd web --listen tcp:...``, plain HTTP, the ceiling for the other two.

Both TLS servers use one ECDSA P-256 certificate generated for the run (clients trust it as their
only CA) and, whatever their own preference, the same TLS 1.3 cipher suite: every client runs with
an ``OPENSSL_CONF`` that offers only ``TLS_AES_256_GCM_SHA384`` (curl also gets
``--tls13-ciphers``), and the suite each client negotiated is checked.  Key exchange is the
client OpenSSL's first choice (X25519 with the system's OpenSSL 3.0), also checked.

Workloads, each measured on every server in turn (A B C), in several rounds, each round on
servers started afresh:

* ``e2e-idle``: 2,000 idle TLS connections (handshake done, then nothing): growth of the server's
  VmRSS divided by the number of connections.  It gets servers of its own, so that memory freed
  by earlier workloads cannot hide the cost, and later ones do not inherit its 2,000 connections.
* ``e2e-bulk``: curl downloading a 64 MiB file, several times, over HTTP/1.1 (both TLS servers
  would pick h2 by ALPN, and Twisted's HTTP/2 data path is several times slower than its
  HTTP/1.1 one: that would measure HTTP/2, not TLS).
* ``e2e-keepalive``: wrk, one thread, 8 keep-alive connections, a small file; req/s and p99.
* ``e2e-handshake``: new connections per second, each a full TLS 1.3 handshake (benchmarks/
  loadgen.py: Python's ssl, 8 in flight, never offering a session; wrk would silently resume);
  on ``no-tls`` each is a TCP connect and close, the ceiling.
* ``e2e-resumed``: the same, every connection offering a session ticket from a priming
  connection; ``session_reused`` is checked per connection and the resumed share reported.

The server runs on one core and every client on another (``taskset``).  Rates are given per wall
second and per server CPU second (utime + stime of the server process from /proc/PID/stat around
each measurement), the latter being the fair comparison: it does not depend on how fast the client
is.  CPU times have the resolution of a clock tick (10 ms), hence the sizes below.

Every server and client runs with a timeout and is killed when the run fails or is interrupted;
the servers also die with this process (PR_SET_PDEATHSIG).  ``python benchmarks/endtoend.py
--profile SERVER --only WORKLOAD`` samples one server with py-spy during one workload (for
``e2e-idle``: tracemalloc snapshots instead, see benchmarks/tracemalloc_twistd.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import resource
import selectors
import shutil
import signal
import socket
import ssl
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

from benchmarks.results import OURS, PLAIN, TWISTED, Row, RunOptions, Verdict, paired

SUITE = "end-to-end"
ROOT = Path(__file__).resolve().parents[1]
LOADGEN = Path(__file__).resolve().with_name("loadgen.py")

KiB = 1 << 10
MiB = 1 << 20
HOSTNAME = "localhost"
CIPHERSUITE = "TLS_AES_256_GCM_SHA384"
#: Debian packages providing the external clients (for messages and CI).
APT_PACKAGES = {"curl": "curl", "wrk": "wrk", "openssl": "openssl", "taskset": "util-linux"}


@dataclass(frozen=True)
class Sizes:
    rounds: int
    bulk_bytes: int
    #: curl downloads of the big file per measurement.
    downloads: int
    #: wrk -d, whole seconds.
    keepalive_seconds: int
    #: Length of each handshake measurement (full and resumed), seconds.
    handshake_seconds: float
    idle_connections: int
    small_bytes: int = 256
    #: Measure idle memory on servers of its own (see `collect`); off only for the smoke test.
    separate_idle: bool = True


FULL = Sizes(
    rounds=4,
    bulk_bytes=64 * MiB,
    downloads=6,
    keepalive_seconds=5,
    handshake_seconds=1.5,
    idle_connections=2000,
)
QUICK = Sizes(
    rounds=1,
    bulk_bytes=16 * MiB,
    downloads=2,
    keepalive_seconds=1,
    handshake_seconds=0.5,
    idle_connections=200,
)
#: For the smoke test: every code path, a few seconds in all.
TINY = Sizes(
    rounds=1,
    bulk_bytes=2 * MiB,
    downloads=1,
    keepalive_seconds=1,
    handshake_seconds=0.3,
    idle_connections=50,
    separate_idle=False,
)

#: wrk's connections and threads, fixed by the issue (-t1 -c8).
WRK_CONNECTIONS = 8
#: Timeouts (seconds) for things that take milliseconds when they work.
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
CLIENT_SLACK = 60.0


class BenchmarkError(RuntimeError):
    """A server, a client or the harness did not do what it was asked."""


# --------------------------------------------------------------------------- files


def _write_certificate(directory: Path) -> tuple[Path, Path]:
    """
    A self-signed ECDSA P-256 leaf for localhost and 127.0.0.1 (clients use
    it as CA), made by the project's own certificate factory.
    """
    from membio_transport.certs import ensure_certificate

    made = ensure_certificate(directory / "state", [HOSTNAME, "127.0.0.1"], mode="self-signed")
    return made.cert_path, made.key_path


@dataclass(frozen=True)
class Files:
    """Everything the servers and clients share, in one temporary directory."""

    directory: Path
    cert: Path
    key: Path
    www: Path
    #: OpenSSL configuration for every client: TLS 1.3 with the one cipher suite.
    client_conf: Path
    big_bytes: int
    small: bytes
    #: A copy of the checkout's package and twistd plugin, taken when the run started.
    source: Path

    @classmethod
    def create(cls, directory: Path, sizes: Sizes) -> Files:
        cert, key = _write_certificate(directory)
        www = directory / "www"
        www.mkdir()
        block = os.urandom(MiB)
        with open(www / "big.bin", "wb") as f:
            for offset in range(0, sizes.bulk_bytes, MiB):
                f.write(block[: min(MiB, sizes.bulk_bytes - offset)])
        small = os.urandom(sizes.small_bytes // 4 * 3).hex().encode()[: sizes.small_bytes]
        (www / "small.txt").write_bytes(small)
        conf = directory / "client-openssl.cnf"
        conf.write_text(
            "openssl_conf = openssl_init\n"
            "[openssl_init]\nssl_conf = ssl_sect\n"
            "[ssl_sect]\nsystem_default = system_default_sect\n"
            "[system_default_sect]\n"
            "MinProtocol = TLSv1.3\n"
            f"Ciphersuites = {CIPHERSUITE}\n"
        )
        source = directory / "source"
        shutil.copytree(
            ROOT / "membio_transport",
            source / "membio_transport",
            ignore=shutil.ignore_patterns("__pycache__"),
        )
        plugins = source / "twisted" / "plugins"  # no __init__.py: Twisted's namespace
        plugins.mkdir(parents=True)
        for plugin in (ROOT / "twisted" / "plugins").glob("*.py"):
            shutil.copy2(plugin, plugins)
        return cls(directory, cert, key, www, conf, sizes.bulk_bytes, small, source)

    def client_env(self) -> dict[str, str]:
        return {**os.environ, "OPENSSL_CONF": str(self.client_conf)}


# --------------------------------------------------------------------------- processes


@dataclass(frozen=True)
class Pinning:
    server: tuple[str, ...]
    client: tuple[str, ...]
    description: str


def pinning() -> Pinning:
    """taskset prefixes: the server on the first allowed CPU, the clients on the second."""
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) >= 2 and shutil.which("taskset"):
        server, client = allowed[0], allowed[1]
        return Pinning(
            ("taskset", "-c", str(server)),
            ("taskset", "-c", str(client)),
            f"server pinned to CPU {server}, clients to CPU {client}",
        )
    return Pinning((), (), "NOT pinned (needs taskset and 2 CPUs): server and clients share")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, seconds, at clock-tick resolution."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    fields = data[data.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise BenchmarkError(f"no VmRSS for process {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


#: One tick: the floor for a CPU-time delta, so that tiny runs give a (meaningless but finite)
#: rate instead of dividing by zero.
TICK = 1.0 / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def run_client(
    command: Sequence[str], timeout: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a client to completion; killed (by subprocess.run) if it overruns its timeout."""
    try:
        result = subprocess.run(
            list(command),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchmarkError(f"{command[0]}: timed out after {timeout:.0f} s") from exc
    if result.returncode != 0:
        raise BenchmarkError(
            f"{' '.join(command)} exited with {result.returncode}: "
            f"{(result.stderr or result.stdout).strip()[-500:]}"
        )
    return result


@dataclass(frozen=True)
class ServerKind:
    name: str
    tls: bool
    label: str
    args: Callable[[int, Files], list[str]]
    #: The program and its leading arguments when the server is not `twistd -n` (the asyncio
    #: servers of benchmarks/stacks.py); `args` follow it.
    program: Callable[[], list[str]] | None = None
    #: Variables added to the server's environment (after OPENSSL_CONF is removed and
    #: PYTHONPATH set): ours as `membio-https` runs it, another copy of the package.
    env: Callable[[Files], dict[str, str]] | None = None


def _twistd() -> list[str]:
    script = Path(sys.executable).with_name("twistd")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from twisted.scripts.twistd import run; run()"]


SERVERS: tuple[ServerKind, ...] = (
    ServerKind(
        TWISTED,
        True,
        "twistd web --listen ssl:",
        lambda port, f: [
            "web",
            "--listen",
            f"ssl:{port}:interface=127.0.0.1:privateKey={f.key}:certKey={f.cert}",
            "--path",
            str(f.www),
        ],
    ),
    ServerKind(
        OURS,
        True,
        "twistd membio-https",
        lambda port, f: [
            "membio-https",
            "--port",
            str(port),
            "--interface",
            "127.0.0.1",
            "--cert",
            str(f.cert),
            "--key",
            str(f.key),
            "--path",
            str(f.www),
        ],
    ),
    ServerKind(
        PLAIN,
        False,
        "twistd web --listen tcp:",
        lambda port, f: [
            "web",
            "--listen",
            f"tcp:{port}:interface=127.0.0.1",
            "--path",
            str(f.www),
        ],
    ),
)


_PR_SET_PDEATHSIG = 1
_prctl: Callable[..., int] | None
try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux
    _prctl = None


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the benchmark process dies, however it dies."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class Server:
    """One running `twistd -n` server, pinned, logging to a file; stop() always reaps it."""

    def __init__(self, kind: ServerKind, files: Files, pin: Pinning, wrapper: Sequence[str] = ()):
        self.kind = kind
        self.files = files
        self.port = _free_port()
        self.log = files.directory / f"{kind.name}-{self.port}.log"
        env = dict(os.environ)
        env.pop("OPENSSL_CONF", None)
        # The checkout's membio_transport first, as for the in-process suite.
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(files.source), env.get("PYTHONPATH", "")) if p
        )
        if kind.env is not None:
            env.update(kind.env(files))
        if kind.program is not None:
            command = [*pin.server, *wrapper, *kind.program(), *kind.args(self.port, files)]
        else:
            command = [
                *pin.server,
                *(wrapper or _twistd()),
                "-n",
                "--pidfile=",
                "--logfile",
                str(self.log),
                *kind.args(self.port, files),
            ]
        self.command = command
        self.process = subprocess.Popen(
            command,
            preexec_fn=_die_with_parent,
            cwd=files.directory,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def scheme(self) -> str:
        return "https" if self.kind.tls else "http"

    def url(self, path: str) -> str:
        host = HOSTNAME if self.kind.tls else "127.0.0.1"
        return f"{self.scheme}://{host}:{self.port}/{path}"

    def wait_ready(self, deadline: float) -> None:
        while True:
            if self.process.poll() is not None:
                raise BenchmarkError(f"{self.kind.name} server exited: {self.failure_text()}")
            with socket.socket() as s:
                s.settimeout(1.0)
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            if time.monotonic() > deadline:
                raise BenchmarkError(f"{self.kind.name} server not listening after start-up")
            time.sleep(0.05)

    def failure_text(self) -> str:
        stderr = ""
        if self.process.poll() is not None and self.process.stderr is not None:
            stderr = self.process.stderr.read().decode(errors="replace")
        log = self.log.read_text(errors="replace") if self.log.exists() else ""
        return (stderr.strip() or log.strip())[-800:] or f"exit status {self.process.returncode}"

    def problems(self) -> list[str]:
        """Tracebacks and unhandled errors in the server's log."""
        if not self.log.exists():
            return []
        text = self.log.read_text(errors="replace")
        found = [
            line
            for line in text.splitlines()
            if "Traceback" in line or "Unhandled Error" in line or "CRITICAL" in line
        ]
        return found

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(STOP_TIMEOUT)
        if self.process.stderr is not None:
            self.process.stderr.close()


@contextlib.contextmanager
def running(
    kinds: Sequence[ServerKind],
    files: Files,
    pin: Pinning,
    log: Callable[[str], None],
    wrapper: Sequence[str] = (),
) -> Iterator[dict[str, Server]]:
    """Start the servers (in parallel), yield those that came up; stop every one on exit.

    Twisted's servers are the reference: one failing to start is an error.  Ours failing is
    logged and ours is left out."""
    servers: list[Server] = []
    try:
        for kind in kinds:
            servers.append(Server(kind, files, pin, wrapper))
        up: dict[str, Server] = {}
        deadline = time.monotonic() + START_TIMEOUT
        for server in servers:
            try:
                server.wait_ready(deadline)
                warm_up(server)
            except BenchmarkError as exc:
                if server.kind.name != OURS:
                    raise
                log(f"[{SUITE}] ours did not start: {exc}")
                continue
            up[server.kind.name] = server
        yield up
    finally:
        for server in servers:
            server.stop()
        for server in servers:
            for line in server.problems()[:5]:
                log(f"[{SUITE}] {server.kind.name} server log: {line.strip()[:200]}")


def _client_context(files: Files) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(files.cert))
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    return context


def _get(server: Server, path: str, timeout: float = 10.0) -> bytes:
    """One GET on a fresh connection from this process, the whole body returned."""
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=timeout)
    with contextlib.ExitStack() as stack:
        conn: socket.socket = stack.enter_context(raw)
        if server.kind.tls:
            conn = stack.enter_context(
                _client_context(server.files).wrap_socket(raw, server_hostname=HOSTNAME)
            )
        conn.sendall(
            f"GET /{path} HTTP/1.1\r\nHost: {HOSTNAME}\r\nConnection: close\r\n\r\n".encode()
        )
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise BenchmarkError(f"{server.kind.name}: GET /{path}: {head[:80]!r}")
    return body


def warm_up(server: Server) -> None:
    """A few requests on fresh connections (imports, first-use allocations), and a check that
    the server serves the shared directory."""
    for _ in range(3):
        if _get(server, "small.txt") != server.files.small:
            raise BenchmarkError(f"{server.kind.name}: wrong content for /small.txt")


# --------------------------------------------------------------------------- probing


def probe(server: Server, files: Files, pin: Pinning) -> str:
    """What the TLS server negotiates with the benchmark's clients (and by default), checked."""
    if not server.kind.tls:
        return "plain HTTP"

    def s_client(env: dict[str, str] | None) -> dict[str, str]:
        command = [
            "openssl", "s_client", "-brief", "-connect", f"127.0.0.1:{server.port}",
            "-servername", HOSTNAME, "-CAfile", str(files.cert), "-alpn", "http/1.1",
        ]  # fmt: skip
        result = subprocess.run(
            command,
            input="",
            capture_output=True,
            text=True,
            timeout=CLIENT_SLACK,
            env=env,
        )
        fields = {}
        for line in (result.stdout + result.stderr).splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields[key.strip()] = value.strip()
        return fields

    forced = s_client(files.client_env())
    default = s_client(None)
    version = forced.get("Protocol version")
    cipher = forced.get("Ciphersuite")
    group = forced.get("Server Temp Key") or forced.get("Negotiated TLS1.3 group", "?")
    if version != "TLSv1.3" or cipher != CIPHERSUITE or forced.get("Verification") != "OK":
        raise BenchmarkError(f"{server.kind.name}: openssl s_client got {forced}")
    if _children(server.pid):
        raise BenchmarkError(f"{server.kind.name}: runs worker processes; one was expected")
    curl = run_client(
        curl_command(server, files, pin, "-v", "--http2", server.url("small.txt")),
        CLIENT_SLACK,
        files.client_env(),
    )
    match = re.search(r"SSL connection using (\S+) / (\S+)", curl.stderr)
    if not match or match.groups() != ("TLSv1.3", CIPHERSUITE):
        raise BenchmarkError(f"{server.kind.name}: curl negotiated {match and match.groups()}")
    alpn = re.search(r"ALPN: server accepted (\S+)", curl.stderr)
    return (
        f"{version} {cipher} {group} (s_client, curl; wrk and loadgen use the same OpenSSL "
        f"config); with a default client offer it picks {default.get('Ciphersuite', '?')}; "
        f"ALPN offered h2,http/1.1: accepts {alpn.group(1) if alpn else 'none'} "
        "(curl is run with --http1.1: wrk and loadgen speak HTTP/1.1 only)"
    )


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


def curl_command(server: Server, files: Files, pin: Pinning, *args: str) -> list[str]:
    """curl on the client CPU, trusting only the benchmark certificate, TLS 1.3 with the one
    suite (also forced by the OpenSSL configuration), HTTP/1.1 unless `args` say otherwise."""
    command = [*pin.client, "curl", "-sS", "-o", "/dev/null", "--http1.1"]
    if server.kind.tls:
        command += [
            "--cacert", str(files.cert),
            "--resolve", f"{HOSTNAME}:{server.port}:127.0.0.1",
            "--tls13-ciphers", CIPHERSUITE,
        ]  # fmt: skip
    return [*command, *args]


# --------------------------------------------------------------------------- workloads


@dataclass(frozen=True)
class Sample:
    """One measurement of one server: per row key, (wall value, cpu value or None, work)."""

    values: dict[str, tuple[float, float | None, int]]


@dataclass(frozen=True)
class RowSpec:
    key: str
    unit: str
    kind: str
    describe: Callable[[Sizes], str]


@dataclass(frozen=True)
class Workload:
    name: str
    tls_only: bool
    rows: tuple[RowSpec, ...]
    measure: Callable[[Server, Files, Pinning, Sizes], Sample]


def measure_bulk(server: Server, files: Files, pin: Pinning, sizes: Sizes) -> Sample:
    """curl downloads of the big file, one connection each, after one unmeasured download
    (the first one on a fresh server grows its buffers).  wall: curl's own time_total."""
    command = curl_command(
        server, files, pin, "-w", "%{http_code} %{size_download} %{time_total}",
        server.url("big.bin"),
    )  # fmt: skip

    def download() -> float:
        out = run_client(command, CLIENT_SLACK, files.client_env()).stdout.split()
        code, size, seconds = out[0], int(out[1]), float(out[2])
        if code != "200" or size != files.big_bytes:
            raise BenchmarkError(f"{server.kind.name}: curl got {code}, {size} bytes")
        return seconds

    download()
    wall = 0.0
    cpu0 = cpu_seconds(server.pid)
    for _ in range(sizes.downloads):
        wall += download()
    cpu = max(cpu_seconds(server.pid) - cpu0, TICK)
    total = sizes.downloads * files.big_bytes
    return Sample({"e2e-bulk": (total / wall / 1e6, total / cpu / 1e6, total)})


_WRK_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _wrk_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not match:
        raise BenchmarkError(f"wrk: cannot read latency {text!r}")
    return float(match.group(1)) * _WRK_UNITS[match.group(2)]


def parse_wrk(output: str) -> tuple[int, float, float, list[str]]:
    """(requests, seconds, p99 ms, problems) from wrk --latency output."""
    done = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m),", output)
    p99 = re.search(r"^\s*99%\s+(\S+)", output, re.MULTILINE)
    if not done or not p99:
        raise BenchmarkError(f"wrk: unexpected output: {output[-500:]}")
    seconds = _wrk_ms(done.group(2) + done.group(3)) / 1e3
    problems = [
        line.strip() for line in output.splitlines() if "Socket errors" in line or "Non-2xx" in line
    ]
    return int(done.group(1)), seconds, _wrk_ms(p99.group(1)), problems


def measure_keepalive(server: Server, files: Files, pin: Pinning, sizes: Sizes) -> Sample:
    url = server.url("small.txt").replace(HOSTNAME, "127.0.0.1")
    command = [
        *pin.client,
        "wrk",
        "-t1",
        f"-c{WRK_CONNECTIONS}",
        f"-d{sizes.keepalive_seconds}s",
        "--latency",
        "--timeout",
        "5s",
        url,
    ]
    cpu0 = cpu_seconds(server.pid)
    output = run_client(command, sizes.keepalive_seconds + CLIENT_SLACK, files.client_env()).stdout
    cpu = max(cpu_seconds(server.pid) - cpu0, TICK)
    requests, seconds, p99, problems = parse_wrk(output)
    if problems or requests == 0:
        raise BenchmarkError(f"{server.kind.name}: wrk: {'; '.join(problems) or 'no requests'}")
    return Sample(
        {
            "e2e-keepalive": (requests / seconds, requests / cpu, requests),
            "e2e-keepalive-p99": (p99, None, requests),
        }
    )


def _loadgen(pin: Pinning, *args: str) -> list[str]:
    return [*pin.client, sys.executable, str(LOADGEN), *args]


@dataclass(frozen=True)
class Handshakes:
    """What loadgen.py handshakes reports."""

    completed: int
    reused: int
    wall: float
    server_cpu: float


def _handshakes(
    server: Server, files: Files, pin: Pinning, sizes: Sizes, resume: bool
) -> Handshakes:
    command = _loadgen(
        pin,
        *("handshakes", "--port", str(server.port)),
        *(["--cafile", str(files.cert)] if server.kind.tls else ["--plain"]),
        *("--duration", str(sizes.handshake_seconds), "--server-pid", str(server.pid)),
        *(["--resume"] if resume else []),
    )
    output = run_client(command, sizes.handshake_seconds + CLIENT_SLACK, files.client_env())
    result = json.loads(output.stdout.splitlines()[-1])
    completed = int(result["completed"])
    if result["errors"] or not completed:
        raise BenchmarkError(f"{server.kind.name}: loadgen: {completed} done, {result['errors']}")
    if server.kind.tls and result["ciphers"] != {f"TLSv1.3 {CIPHERSUITE}": completed}:
        raise BenchmarkError(f"{server.kind.name}: negotiated {result['ciphers']}")
    return Handshakes(
        completed, int(result["reused"]), float(result["wall"]), float(result["server_cpu"])
    )


def measure_handshake(server: Server, files: Files, pin: Pinning, sizes: Sizes) -> Sample:
    result = _handshakes(server, files, pin, sizes, resume=False)
    n = result.completed
    if result.reused:
        raise BenchmarkError(f"{server.kind.name}: resumed without being offered a session")
    return Sample({"e2e-handshake": (n / result.wall, n / max(result.server_cpu, TICK), n)})


def measure_resumed(server: Server, files: Files, pin: Pinning, sizes: Sizes) -> Sample:
    result = _handshakes(server, files, pin, sizes, resume=True)
    n = result.completed
    return Sample(
        {
            "e2e-resumed": (n / result.wall, n / max(result.server_cpu, TICK), n),
            "e2e-resumed-pct": (100.0 * result.reused / n, None, n),
        }
    )


def _wait_quiet(pid: int, timeout: float = 5.0, quiet: float = 0.3) -> None:
    """Until the process has used no CPU for `quiet` seconds (it finished the handshakes)."""
    deadline = time.monotonic() + timeout
    last = cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = cpu_seconds(pid)
        if now == last:
            return
        last = now


def measure_idle(
    server: Server,
    files: Files,
    pin: Pinning,
    sizes: Sizes,
    before: Callable[[], None] | None = None,
    held: Callable[[], None] | None = None,
) -> Sample:
    """VmRSS growth per idle connection.  `before` and `held` (for profiling) run right after
    the first and the second reading, the latter while the connections are still open."""
    n = sizes.idle_connections
    _wait_quiet(server.pid)
    rss0, fds0 = rss_kib(server.pid), open_fds(server.pid)
    if before:
        before()
    command = _loadgen(
        pin,
        "idle",
        "--port",
        str(server.port),
        "--connections",
        str(n),
        "--concurrency",
        "32",
        *(["--cafile", str(files.cert)] if server.kind.tls else ["--plain"]),
        *("--server-pid", str(server.pid)),
    )
    process = subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=files.client_env(),
        start_new_session=True,
    )
    try:
        assert process.stdout is not None and process.stdin is not None
        first = _read_line(process, CLIENT_SLACK)
        opened = json.loads(first)
        if opened["errors"] or opened["completed"] != n:
            raise BenchmarkError(f"{server.kind.name}: idle loadgen: {opened}")
        if server.kind.tls and opened["ciphers"] != {f"TLSv1.3 {CIPHERSUITE}": n}:
            raise BenchmarkError(f"{server.kind.name}: negotiated {opened['ciphers']}")
        # Plain TCP connections count as open for the client as soon as the kernel completed
        # them, possibly before the server accepted them (Twisted's backlog is 50): wait for
        # the server to hold them all, then for it to go quiet.
        deadline = time.monotonic() + 20.0
        while open_fds(server.pid) < fds0 + n and time.monotonic() < deadline:
            time.sleep(0.05)
        _wait_quiet(server.pid)
        rss1, fds1 = rss_kib(server.pid), open_fds(server.pid)
        if held:
            held()
        process.stdin.write("\n")
        process.stdin.flush()
        out, err = process.communicate(timeout=CLIENT_SLACK)
        if process.returncode != 0:
            raise BenchmarkError(f"idle loadgen exited {process.returncode}: {err[-500:]}")
        closed = json.loads(out.splitlines()[-1])
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    if fds1 - fds0 < n or closed["still_open"] != n:
        raise BenchmarkError(
            f"{server.kind.name}: {fds1 - fds0} new server fds, {closed['still_open']} of "
            f"{n} connections still open when measured"
        )
    return Sample({"e2e-idle": ((rss1 - rss0) / n, None, n)})


def _read_line(process: subprocess.Popen[str], timeout: float) -> str:
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise BenchmarkError(f"no answer from the load generator within {timeout:.0f} s")
    line = process.stdout.readline()
    if not line:
        err = process.stderr.read() if process.stderr else ""
        raise BenchmarkError(f"loadgen ended early: {err.strip()[-500:]}")
    return line


def _size(n: int) -> str:
    return f"{n // MiB} MiB" if n % MiB == 0 else f"{n // KiB} KiB"


WORKLOADS: tuple[Workload, ...] = (
    Workload(
        "e2e-idle",
        False,
        (
            RowSpec(
                "e2e-idle",
                "KiB",
                "cost",
                lambda s: f"idle conns: RSS/conn ({s.idle_connections})",
            ),
        ),
        measure_idle,
    ),
    Workload(
        "e2e-bulk",
        False,
        (
            RowSpec(
                "e2e-bulk",
                "MB/s",
                "rate",
                lambda s: f"curl GET {_size(s.bulk_bytes)} x{s.downloads}",
            ),
        ),
        measure_bulk,
    ),
    Workload(
        "e2e-keepalive",
        False,
        (
            RowSpec(
                "e2e-keepalive",
                "req/s",
                "rate",
                lambda s: f"wrk -c{WRK_CONNECTIONS} {s.keepalive_seconds}s GET {s.small_bytes} B",
            ),
            RowSpec("e2e-keepalive-p99", "ms", "cost", lambda s: "  wrk p99 latency"),
        ),
        measure_keepalive,
    ),
    Workload(
        "e2e-handshake",
        False,
        (RowSpec("e2e-handshake", "ops/s", "rate", lambda s: "new conns, full handshake"),),
        measure_handshake,
    ),
    Workload(
        "e2e-resumed",
        True,
        (
            RowSpec("e2e-resumed", "ops/s", "rate", lambda s: "new conns, offering a ticket"),
            RowSpec("e2e-resumed-pct", "%", "info", lambda s: "  of which resumed"),
        ),
        measure_resumed,
    ),
)

LEGEND = (
    "end-to-end: twistd servers over loopback; wall: rate per wall second seen by the client "
    "(curl time_total, wrk, loadgen); cpu: rate per CPU second (utime+stime) of the server "
    "process; KiB: VmRSS growth per idle connection; ms: wrk's p99 latency.\n"
    "new conns on no-tls: TCP connect and close only, the server's cost per connection without "
    "TLS (cpu column); its wall rate is not a ceiling: the client connects faster than twistd "
    "accepts, Twisted's listen backlog of 50 overflows and dropped SYNs wait 1 s."
)


def select_workloads(only: Sequence[str]) -> list[Workload]:
    names = [w.name for w in WORKLOADS]
    unknown = [n for n in only if n not in names]
    if unknown:
        raise SystemExit(f"unknown workload {', '.join(unknown)}; choose from {', '.join(names)}")
    return [w for w in WORKLOADS if not only or w.name in only]


def missing_tools(workloads: Sequence[Workload]) -> list[str]:
    needed = {"openssl", "curl"}
    if any(w.name == "e2e-keepalive" for w in workloads):
        needed.add("wrk")
    return sorted(t for t in needed if shutil.which(t) is None)


def _steal_ticks() -> dict[str, int]:
    """Per-CPU 'steal' ticks from /proc/stat: time the hypervisor ran something else."""
    found: dict[str, int] = {}
    with contextlib.suppress(OSError), open("/proc/stat") as f:
        for line in f:
            fields = line.split()
            if fields and fields[0].startswith("cpu") and fields[0] != "cpu" and len(fields) > 8:
                found[fields[0]] = int(fields[8])
    return found


def _steal_text(before: dict[str, int], after: dict[str, int], seconds: float) -> str:
    tick = os.sysconf("SC_CLK_TCK")
    return ", ".join(
        f"{cpu} {100 * (after[cpu] - before.get(cpu, after[cpu])) / tick / seconds:.1f}%"
        for cpu in sorted(after)
    )


def _raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise BenchmarkError(
            f"{needed} file descriptors needed for the idle connections, hard limit {hard}"
        )
    # Inherited by the servers and the load generator started after this.
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


# --------------------------------------------------------------------------- running


def collect(
    options: RunOptions,
    sizes: Sizes | None = None,
    log: Callable[[str], None] = print,
) -> list[Row]:
    """Run the end-to-end suite and return one Row per (row key, server).

    Each round starts the three servers afresh, then runs every workload on each server in
    turn.  Twisted's servers failing is a harness error and raises; ours failing is logged and
    ours left out of the rest of the run."""
    if sizes is None:
        sizes = QUICK if options.quick else FULL
    if options.rounds:
        sizes = replace(sizes, rounds=options.rounds)
    workloads = select_workloads(options.only)
    missing = missing_tools(workloads)
    if missing:
        raise BenchmarkError(
            f"missing {', '.join(missing)} (Debian: apt-get install "
            f"{' '.join(APT_PACKAGES[m] for m in missing)})"
        )
    if any(w.name == "e2e-idle" for w in workloads):
        _raise_fd_limit(sizes.idle_connections + 1024)
    pin = pinning()
    log(f"[{SUITE}] {pin.description}")
    with _terminate_as_exit():
        return _collect(workloads, sizes, pin, log)


@contextlib.contextmanager
def _terminate_as_exit() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so that the servers are stopped on the way out."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def leave(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, leave)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _collect(
    workloads: Sequence[Workload], sizes: Sizes, pin: Pinning, log: Callable[[str], None]
) -> list[Row]:
    kinds = list(SERVERS)
    walls: dict[tuple[str, str], list[float]] = {}
    cpus: dict[tuple[str, str], list[float]] = {}
    works: dict[tuple[str, str], list[int]] = {}
    with tempfile.TemporaryDirectory(prefix="membio-e2e-") as tmp:
        files = Files.create(Path(tmp), sizes)
        probed = False
        for round_number in range(sizes.rounds):
            started = time.perf_counter()
            steal0 = _steal_ticks()
            spent: dict[str, float] = {}
            # Idle memory on servers of its own, started fresh: memory that earlier workloads
            # allocated and freed would otherwise absorb the growth; and the other workloads
            # must not inherit whatever 2,000 connections leave behind.
            idle = [w for w in workloads if w.name == "e2e-idle"]
            busy = [w for w in workloads if w.name != "e2e-idle"]
            groups = [idle, busy] if sizes.separate_idle else [idle + busy]
            for group in groups:
                if not group:
                    continue
                with running(kinds, files, pin, log) as servers:
                    if OURS not in servers:
                        kinds = [k for k in kinds if k.name != OURS]
                    if not probed:
                        probed = True
                        for name, server in servers.items():
                            log(
                                f"[{SUITE}] {name:<8} {server.kind.label}: "
                                f"{probe(server, files, pin)}"
                            )
                    for workload in group:
                        workload_started = time.perf_counter()
                        for name, server in list(servers.items()):
                            if workload.tls_only and not server.kind.tls:
                                continue
                            try:
                                sample = workload.measure(server, files, pin, sizes)
                            except BenchmarkError as exc:
                                if name != OURS:
                                    raise
                                log(
                                    f"[{SUITE}] ours dropped: {workload.name} failed in round "
                                    f"{round_number + 1} ({exc})"
                                )
                                del servers[name]
                                kinds = [k for k in kinds if k.name != OURS]
                                continue
                            for row_key, (wall, cpu, work) in sample.values.items():
                                walls.setdefault((row_key, name), []).append(wall)
                                if cpu is not None:
                                    cpus.setdefault((row_key, name), []).append(cpu)
                                works.setdefault((row_key, name), []).append(work)
                        spent[workload.name] = time.perf_counter() - workload_started
            print(
                f"[{SUITE}] round {round_number + 1}/{sizes.rounds} "
                f"done in {time.perf_counter() - started:.1f} s ("
                + ", ".join(f"{name.removeprefix('e2e-')} {t:.1f}" for name, t in spent.items())
                + "); hypervisor steal "
                + _steal_text(steal0, _steal_ticks(), time.perf_counter() - started),
                file=sys.stderr,
            )

    names = {k.name for k in kinds}
    rows: list[Row] = []
    for workload in workloads:
        for spec in workload.rows:
            for server_kind in SERVERS:
                key = (spec.key, server_kind.name)
                if server_kind.name not in names or key not in walls:
                    continue
                rows.append(
                    Row(
                        suite=SUITE,
                        workload=spec.key,
                        description=spec.describe(sizes),
                        implementation=server_kind.name,
                        unit=spec.unit,
                        work=int(statistics.median(works[key])),
                        wall=tuple(walls[key]),
                        cpu=tuple(cpus.get(key, ())),
                        kind=spec.kind,
                    )
                )
    return rows


# --------------------------------------------------------------------------- targets


def _row(rows: Sequence[Row], workload: str, impl: str) -> Row | None:
    return next(
        (
            r
            for r in rows
            if r.suite == SUITE and r.workload == workload and r.implementation == impl
        ),
        None,
    )


def targets(rows: Sequence[Row]) -> list[Verdict]:
    """The issue's targets, checked against this run (medians of per-round paired ratios,
    per server CPU second)."""
    verdicts: list[Verdict] = []

    def cpu_ratio(name: str, workload: str, minimum: float) -> None:
        ours, twisted = _row(rows, workload, OURS), _row(rows, workload, TWISTED)
        if ours is None or twisted is None:
            return
        value = paired(ours.cpu, twisted.cpu)
        verdicts.append(
            Verdict(
                name,
                f"ours/twisted per server CPU s >= {minimum:.2f}x",
                f"{value:.2f}x" if value else "-",
                bool(value and value >= minimum),
            )
        )

    cpu_ratio("bulk download", "e2e-bulk", 1.6)
    cpu_ratio("full handshakes", "e2e-handshake", 1.4)
    resumed, pct = _row(rows, "e2e-resumed", OURS), _row(rows, "e2e-resumed-pct", OURS)
    full = _row(rows, "e2e-handshake", OURS)
    if pct is not None:
        lowest = min(pct.wall)
        verdicts.append(
            Verdict(
                "resumption",
                "ours resumes 100% of offered tickets",
                f"{lowest:.1f}% (lowest round)",
                lowest == 100.0,
            )
        )
    if resumed is not None and full is not None:
        value = paired(resumed.cpu, full.cpu)
        verdicts.append(
            Verdict(
                "resumed handshakes",
                "ours resumed/ours full per server CPU s >= 1.10x",
                f"{value:.2f}x" if value else "-",
                bool(value and value >= 1.1),
            )
        )
    cpu_ratio("small keep-alive", "e2e-keepalive", 1.12)
    ours_p99, twisted_p99 = (
        _row(rows, "e2e-keepalive-p99", OURS),
        _row(rows, "e2e-keepalive-p99", TWISTED),
    )
    if ours_p99 is not None and twisted_p99 is not None:
        value = paired(ours_p99.wall, twisted_p99.wall)
        verdicts.append(
            Verdict(
                "keep-alive p99",
                "ours p99 / twisted p99 <= 1.00",
                f"{value:.2f} ({ours_p99.wall_median:.2f} vs {twisted_p99.wall_median:.2f} ms)"
                if value
                else "-",
                bool(value and value <= 1.0),
            )
        )
    idle = _row(rows, "e2e-idle", OURS)
    if idle is not None:
        verdicts.append(
            Verdict(
                "idle memory",
                "ours <= 16 KiB per connection",
                f"{idle.wall_median:.1f} KiB",
                idle.wall_median <= 16.0,
            )
        )
    return verdicts


# --------------------------------------------------------------------------- profiling


#: Twisted's own TLS layer, what ours replaces: protocols/tls.py and the glue around it.
_TWISTED_TLS = (
    "protocols/tls.py",
    "protocols/_tls_legacy.py",
    "internet/_newtls.py",
    "internet/_sslverify.py",
)


def _layer(frame: str) -> str | None:
    """Which layer a py-spy frame ("function (path:line)") belongs to, by its file."""
    if "membio_transport/" in frame:
        return "ours (membio_transport)"
    if "OpenSSL/" in frame or "_cffi_backend" in frame or "_rust.abi3" in frame:
        return "pyOpenSSL + OpenSSL (C)"
    if any(f"twisted/{m}" in frame for m in _TWISTED_TLS):
        return "Twisted's TLS layer"
    if "twisted/" in frame:
        return "Twisted (reactor, TCP, web)"
    return None


def summarise_profile(raw: str, top: int) -> str:
    """Self time by layer (the innermost frame of a known layer), the top frames by self time,
    and the top Python functions by inclusive time, from py-spy's raw (collapsed) output."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    layers: dict[str, int] = {}
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        own[frames[-1]] = own.get(frames[-1], 0) + n
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + n
        layer = next((x for x in map(_layer, reversed(frames)) if x), "other (stdlib, idle)")
        layers[layer] = layers.get(layer, 0) + n
    if not total:
        return "no samples"

    def lines(counts: dict[str, int], keep: Callable[[str], bool], limit: int) -> list[str]:
        ranked = sorted(((n, k) for k, n in counts.items() if keep(k)), reverse=True)[:limit]
        return [f"  {100 * n / total:5.1f}%  {k[:140]}" for n, k in ranked]

    root = max(inclusive.values())  # the twistd/reactor frames every busy sample goes through
    out = [f"{total} samples", "self time by innermost known layer:"]
    out += lines(layers, lambda k: True, 10)
    out += ["top frames by self time:", *lines(own, lambda k: True, top)]
    out += [
        "top functions by inclusive time (below the reactor loop):",
        *lines(inclusive, lambda k: inclusive[k] < root * 0.95 and ".py:" in k, top),
    ]
    return "\n".join(out)


def profile(
    server_name: str, workload_name: str, quick: bool, top: int, native: bool, output: Path | None
) -> None:
    """Run one workload against one server while py-spy samples the server."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        raise SystemExit("--profile needs py-spy (pip install py-spy)")
    (workload,) = select_workloads([workload_name])
    kinds = [k for k in SERVERS if k.name == server_name]
    if not kinds:
        raise SystemExit(f"unknown server {server_name}")
    sizes = replace(QUICK if quick else FULL, rounds=1)
    _raise_fd_limit(sizes.idle_connections + 1024)
    pin = pinning()
    with tempfile.TemporaryDirectory(prefix="membio-e2e-profile-") as tmp:
        files = Files.create(Path(tmp), sizes)
        if workload.name == "e2e-idle":
            profile_memory(kinds[0], files, pin, sizes, top)
            return
        raw_path = output or Path(tmp) / "profile.txt"
        with running(kinds, files, pin, print) as servers:
            server = servers[server_name]
            command = [
                py_spy, "record", "--pid", str(server.pid), "--rate", "250",
                "--format", "raw", "--output", str(raw_path),
                *(["--native"] if native else ["--nonblocking"]),
            ]  # fmt: skip
            spy = subprocess.Popen(
                command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
            )
            try:
                time.sleep(1.0)  # py-spy attaches
                if spy.poll() is not None:
                    raise SystemExit(f"py-spy failed: {spy.stderr.read() if spy.stderr else ''}")
                sample = workload.measure(server, files, pin, sizes)
            finally:
                spy.send_signal(signal.SIGINT)
                try:
                    spy.communicate(timeout=30)
                except subprocess.TimeoutExpired:
                    spy.kill()
                    spy.communicate()
        for key, (wall, cpu, _) in sample.values.items():
            cpu_text = f", {cpu:.1f} per server CPU second" if cpu is not None else ""
            print(f"{server_name} {key}: {wall:.1f} per wall second{cpu_text} (under py-spy)")
        if not raw_path.exists():
            raise SystemExit("py-spy wrote no profile")
        print(summarise_profile(raw_path.read_text(), top))
        if output:
            print(f"raw py-spy samples (collapsed stacks) in {output}")


def profile_memory(kind: ServerKind, files: Files, pin: Pinning, sizes: Sizes, top: int) -> None:
    """Idle connections on a server running under tracemalloc (benchmarks/tracemalloc_twistd.py):
    Python allocations per connection by source line, and how much of the VmRSS growth they
    explain (tracemalloc's own bookkeeping inflates VmRSS, so compare with the benchmark's)."""
    import tracemalloc

    prefix = files.directory / "tracemalloc"
    wrapper = [sys.executable, str(Path(__file__).with_name("tracemalloc_twistd.py")), str(prefix)]
    taken: list[Path] = []

    def snapshot() -> None:
        path = Path(f"{prefix}.{len(taken)}")
        os.kill(server.pid, signal.SIGUSR2)
        deadline = time.monotonic() + 60
        size = -1
        while not (path.exists() and path.stat().st_size == size):  # written completely
            if time.monotonic() > deadline:
                raise BenchmarkError("no tracemalloc snapshot from the server")
            size = path.stat().st_size if path.exists() else -1
            time.sleep(0.2)
        taken.append(path)

    with running([kind], files, pin, print, wrapper) as servers:
        server = servers[kind.name]
        sample = measure_idle(server, files, pin, sizes, before=snapshot, held=snapshot)
    n = sizes.idle_connections
    rss = sample.values["e2e-idle"][0]
    first, second = (tracemalloc.Snapshot.load(str(p)) for p in taken)
    grouped = second.compare_to(first, "lineno")
    python = sum(d.size_diff for d in grouped) / n / 1024
    print(
        f"{kind.name}: {n} idle connections: VmRSS +{rss:.1f} KiB/conn under tracemalloc, of "
        f"which Python objects (tracemalloc) +{python:.1f} KiB/conn; the rest is outside "
        "Python's allocator (OpenSSL, libc) or tracemalloc's own bookkeeping"
    )
    print("Python allocations per connection by file:")
    for diff in second.compare_to(first, "filename")[:top]:
        print(f"  {diff.size_diff / n:8.0f} B  {diff.count_diff / n:6.1f} blocks  {diff.traceback}")
    print("by line:")
    for diff in grouped[:top]:
        print(f"  {diff.size_diff / n:8.0f} B  {diff.count_diff / n:6.1f} blocks  {diff.traceback}")


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        description="Profile one end-to-end workload on one server with py-spy "
        "(the benchmark itself runs through benchmarks/run.py)."
    )
    parser.add_argument(
        "--profile", metavar="SERVER", required=True, choices=[k.name for k in SERVERS]
    )
    parser.add_argument(
        "--only", metavar="WORKLOAD", required=True, choices=[w.name for w in WORKLOADS]
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--native", action="store_true", help="C frames too (pauses the server)")
    parser.add_argument("--output", type=Path, help="keep py-spy's raw samples here")
    args = parser.parse_args(argv)
    profile(args.profile, args.only, args.quick, args.top, args.native, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
