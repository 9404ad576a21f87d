"""Idle TLS connections on a real ``twistd`` server, with one allocator setting varied.

    python benchmarks/memory/e2e_idle.py [--server ours|twisted] [--variant NAME ...] [--n 2000]

Starts ``twistd membio-https`` (or ``twistd web --listen ssl:``) on loopback, opens ``--n``
idle TLS 1.3 connections with benchmarks/loadgen.py (handshake done, then nothing), and reports
the server's VmRSS growth per connection, then again after ``malloc_trim(0)`` run inside the
server through gdb (what glibc could give back: free holes left by handshake temporaries).
Server on CPU 0, client on CPU 1, as benchmarks/endtoend.py does.

Variants (the BIO swaps this script once patched in are now the package's own behaviour:
membio_transport/_reclaim.py):

* ``base``: the code as it is.
* ``arena-max``: ``MALLOC_ARENA_MAX=1`` (one malloc arena; twistd's thread pool can open more).
* ``+mmap`` after a name: also ``MALLOC_MMAP_THRESHOLD_=131072``, so that glibc unmaps freed
  blocks of 128 KiB or more at once instead of keeping them in its heap.

``--fetch BYTES``: instead of idling right after the handshake, each connection first downloads
a file of that size over HTTP/1.1 keep-alive (connections opened one after the other), then
idles for 5 s, long enough for quiet connections to give back their buffers: what a browser's
connection costs after it fetched something.

Why it exists: to check end to end, on the number the benchmark reports, what
benchmarks/memory/idle_probe.py measures in-process.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
LOADGEN = HERE.parent / "loadgen.py"

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def wait_quiet(pid: int, settle: float = 1.0) -> None:
    last = -1
    while True:
        now = rss_kib(pid)
        if now == last:
            return
        last = now
        time.sleep(settle)


def gdb_malloc_trim(pid: int) -> None:
    subprocess.run(
        ["gdb", "-p", str(pid), "-batch", "-ex", "call (int) malloc_trim(0)"],
        capture_output=True, timeout=120, check=False,
    )  # fmt: skip


def fetch_and_hold(port: int, cert: Path, n: int, size: int) -> list[object]:
    """Open C{n} TLS connections one after the other, each fetching /big (C{size} bytes) with
    HTTP/1.1 keep-alive and reading all of it, and keep them open."""
    import ssl

    context = ssl.create_default_context(cafile=str(cert))
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    held = []
    request = b"GET /big HTTP/1.1\r\nHost: localhost\r\n\r\n"
    for _ in range(n):
        conn = context.wrap_socket(
            socket.create_connection(("127.0.0.1", port)), server_hostname="localhost"
        )
        conn.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            data += conn.recv(65536)
        head, body = data.split(b"\r\n\r\n", 1)
        length = int(
            next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")).split(
                b":"
            )[1]
        )
        got = len(body)
        while got < length:
            got += len(conn.recv(262144))
        held.append(conn)
    return held


def measure(
    server: str, variant: str, n: int, directory: Path, cert: Path, key: Path, fetch: int = 0
) -> dict:
    port = free_port()
    www = directory / "www"
    www.mkdir(exist_ok=True)
    (www / "index.html").write_text("hello\n")
    if fetch:
        (www / "big").write_bytes(os.urandom(fetch))
    env = dict(os.environ)
    if variant == "arena-max":
        env["MALLOC_ARENA_MAX"] = "1"
    if variant.endswith("+mmap"):
        # A fixed mmap threshold: glibc serves every block of 128 KiB or more with its own
        # mmap and unmaps it on free, instead of raising the threshold after the first free.
        env["MALLOC_MMAP_THRESHOLD_"] = "131072"
    if server == "ours":
        args = ["membio-https", "--port", str(port), "--interface", "127.0.0.1",
                "--cert", str(cert), "--key", str(key), "--path", str(www)]  # fmt: skip
    else:
        args = ["web", "--listen",
                f"ssl:{port}:interface=127.0.0.1:privateKey={key}:certKey={cert}",
                "--path", str(www)]  # fmt: skip
    launcher = (
        "import sys\nfrom twisted.scripts.twistd import run\n"
        "sys.argv = ['twistd'] + sys.argv[1:]\nrun()\n"
    )
    command = ["taskset", "-c", "0", sys.executable, "-c", launcher, "-n", "--pidfile=",
               "--logfile", str(directory / f"{server}-{variant}.log"), *args]  # fmt: skip
    proc = subprocess.Popen(command, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"{server} did not start") from None
                time.sleep(0.2)
        time.sleep(1.0)
        wait_quiet(proc.pid)
        rss0, fds0 = rss_kib(proc.pid), fds(proc.pid)
        if fetch:
            held = fetch_and_hold(port, cert, n, fetch)
            time.sleep(5.0)  # the reclaimer releases 1-2 periods (2 s) after the last burst
            wait_quiet(proc.pid)
            rss1 = rss_kib(proc.pid)
            gdb_malloc_trim(proc.pid)
            wait_quiet(proc.pid)
            rss2 = rss_kib(proc.pid)
            for conn in held:
                conn.close()
            return {
                "server": server, "variant": variant, "n": n, "ciphers": f"fetched {fetch} B each",
                "rss_per_conn": (rss1 - rss0) / n, "after_trim_per_conn": (rss2 - rss0) / n,
            }  # fmt: skip
        client = subprocess.Popen(
            ["taskset", "-c", "1", sys.executable, str(LOADGEN), "idle", "--port", str(port),
             "--cafile", str(cert), "--connections", str(n), "--concurrency", "32",
             "--server-pid", str(proc.pid)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert client.stdout is not None and client.stdin is not None
        opened = json.loads(client.stdout.readline())
        while fds(proc.pid) < fds0 + n:
            time.sleep(0.05)
        wait_quiet(proc.pid)
        rss1 = rss_kib(proc.pid)
        gdb_malloc_trim(proc.pid)
        wait_quiet(proc.pid)
        rss2 = rss_kib(proc.pid)
        client.stdin.write("\n")
        client.stdin.flush()
        client.communicate(timeout=60)
        return {
            "server": server, "variant": variant, "n": n, "ciphers": opened["ciphers"],
            "rss_per_conn": (rss1 - rss0) / n, "after_trim_per_conn": (rss2 - rss0) / n,
        }  # fmt: skip
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", choices=("ours", "twisted"), default="ours")
    parser.add_argument(
        "--variant",
        action="append",
        choices=("base", "arena-max", "base+mmap"),
    )
    parser.add_argument(
        "--fetch",
        type=int,
        default=0,
        help="each connection first GETs a file of this many bytes (keep-alive), then idles",
    )
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    if shutil.which("gdb") is None:
        raise SystemExit("needs gdb (for malloc_trim inside the server)")
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, args.n + 1024), hard))
    directory = Path(tempfile.mkdtemp(prefix="membio-e2e-idle-"))
    from membio_transport.certs import ensure_certificate

    made = ensure_certificate(directory / "state", ["localhost", "127.0.0.1"], mode="self-signed")
    try:
        run_rounds(args, directory, made.cert_path, made.key_path)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def run_rounds(args: argparse.Namespace, directory: Path, cert: Path, key: Path) -> None:
    for _ in range(args.rounds):
        for variant in args.variant or ["base"]:
            result = measure(args.server, variant, args.n, directory, cert, key, args.fetch)
            print(
                f"{result['server']:8} {result['variant']:10} n={result['n']}: "
                f"VmRSS +{result['rss_per_conn']:.2f} KiB/conn, "
                f"+{result['after_trim_per_conn']:.2f} after malloc_trim(0); {result['ciphers']}",
                flush=True,
            )


if __name__ == "__main__":
    main()
