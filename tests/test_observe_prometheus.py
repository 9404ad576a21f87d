"""
A real Prometheus server scrapes a real TLS server's ``/metrics``: after
curl's handshakes (TLS 1.3 and 1.2), a client that refuses our
certificate and a plain-HTTP request, Prometheus' own query API returns
the series with the right increases.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from membio_transport.certs import generate_leaf, generate_root_ca

from ._plugin_helpers import REPO, free_port, subprocess_env

pytestmark = pytest.mark.integration

#: Upper bound for any one wait: Prometheus starts in a second or two and
#: scrapes every second here.
WAIT: float = 20.0


def wait_for(what: str, condition: Callable[[], Any], timeout: float = WAIT) -> Any:
    """Poll C{condition} until it returns something true; fail after C{timeout}."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = condition()
        except OSError as error:  # not listening yet
            last = error
        if last and not isinstance(last, OSError):
            return last
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout}s (last: {last!r})")


@contextmanager
def process(
    command: list[str], directory: Path, name: str, *, cwd: Path | None = None, **kw: Any
) -> Iterator[Any]:
    """
    C{command}, its standard error in C{directory}/C{name}.err, stopped
    (SIGTERM, then SIGKILL) on leaving, whatever happened.
    """
    with open(directory / f"{name}.err", "wb") as err:
        child = subprocess.Popen(
            command, cwd=cwd or directory, stderr=err, stdin=subprocess.DEVNULL, **kw
        )
    try:
        yield child
    finally:
        if child.poll() is None:
            child.terminate()
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(10)
        if child.stdout is not None:
            child.stdout.close()


class Prometheus:
    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"

    def query(self, expression: str) -> dict[str, float]:
        """Instant query: value by the series' labels (as sorted JSON)."""
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': expression})}"
        with urllib.request.urlopen(url, timeout=5) as reply:
            answer = json.load(reply)
        assert answer["status"] == "success", answer
        return {
            json.dumps(item["metric"], sort_keys=True): float(item["value"][1])
            for item in answer["data"]["result"]
        }

    def scalar(self, expression: str) -> float | None:
        """The value of a query that yields one series, or None while it yields none."""
        found = self.query(expression)
        assert len(found) <= 1, found
        return next(iter(found.values()), None)


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[int], Prometheus]]:
    """Starts a real Prometheus on loopback scraping 127.0.0.1:PORT every second."""
    binary = shutil.which("prometheus")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("CI needs prometheus (Debian package: prometheus)")
        pytest.skip("prometheus is not installed (Debian package: prometheus)")
    started: list[Any] = []

    def start(target_port: int) -> Prometheus:
        directory = tmp_path / "prometheus"
        directory.mkdir()
        (directory / "prometheus.yml").write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: membio\n    scrape_timeout: 1s\n"
            f"    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n"
        )
        port = free_port()
        manager = process(
            [binary, "--config.file=prometheus.yml", f"--storage.tsdb.path={directory / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            directory, "prometheus", stdout=subprocess.DEVNULL,
        )
        child = manager.__enter__()
        started.append(manager)
        server = Prometheus(port)

        def ready() -> bool:
            assert child.poll() is None, (directory / "prometheus.err").read_text()
            with urllib.request.urlopen(f"{server.url}/-/ready", timeout=2) as reply:
                return bool(reply.status == 200)

        wait_for("Prometheus ready", ready)
        return server

    try:
        yield start
    finally:
        for manager in reversed(started):
            manager.__exit__(None, None, None)


def write_certificate(directory: Path) -> tuple[Path, Path, Path, float]:
    """A local root and a leaf for localhost: (ca, chain, key, the leaf's notAfter)."""
    root, root_key = generate_root_ca()
    leaf, key = generate_leaf(["localhost", "127.0.0.1"], issuer=(root, root_key))
    pem = serialization.Encoding.PEM
    ca, chain, key_file = directory / "ca.pem", directory / "chain.pem", directory / "key.pem"
    ca.write_bytes(root.public_bytes(pem))
    chain.write_bytes(leaf.public_bytes(pem))
    key_file.write_bytes(key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ))
    key_file.chmod(0o600)
    return ca, chain, key_file, leaf.not_valid_after_utc.timestamp()


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", "--max-time", "10", *args], capture_output=True, text=True,
        timeout=20, check=False,
    )


def test_prometheus_scrapes_handshakes_failures_and_plain_http(
    tmp_path: Path, prometheus: Callable[[int], Prometheus]
) -> None:
    ca, chain, key, not_after = write_certificate(tmp_path)
    command = [sys.executable, "-m", "tests._metrics_server", str(chain), str(key)]
    env = subprocess_env(tmp_path / "home")
    with process(command, tmp_path, "server", cwd=REPO, stdout=subprocess.PIPE, env=env) as server:
        assert server.stdout is not None
        ports = json.loads(server.stdout.readline())
        tls, metrics = ports["tls"], ports["metrics"]
        scraper = prometheus(metrics)

        def scraped() -> float | None:
            up = scraper.scalar('up{job="membio"}')
            if up != 1:
                return None
            return scraper.scalar("membio_tls_connections_total")

        wait_for("first scrape", lambda: scraped() is not None)
        base = {
            name: scraper.scalar(f"sum({name})") or 0.0
            for name in ("membio_tls_connections_total", "membio_tls_handshakes_total",
                         "membio_tls_handshake_duration_seconds_count",
                         "membio_tls_plain_http_answered_total")
        }

        url = f"https://localhost:{tls}/"
        for _ in range(3):
            ok = curl("--cacert", str(ca), url)
            assert ok.stdout == "hello over TLS\n", ok.stderr
        assert curl("--cacert", str(ca), "--tls-max", "1.2", url).returncode == 0
        assert curl(url).returncode == 60, "curl must refuse a certificate it does not trust"
        plain = curl("-o", "/dev/null", "-w", "%{http_code}", f"http://localhost:{tls}/")
        assert plain.stdout == "400"

        def counted() -> bool:
            total = scraper.scalar("sum(membio_tls_connections_total)")
            return total == base["membio_tls_connections_total"] + 6

        wait_for("Prometheus sees the six connections", counted)
        assert scraper.scalar("sum(membio_tls_handshakes_total)") == (
            base["membio_tls_handshakes_total"] + 4
        )
        by_version = scraper.query("sum by (version) (membio_tls_handshakes_total)")
        assert by_version == {'{"version": "TLSv1.2"}': 1.0, '{"version": "TLSv1.3"}': 3.0}
        assert scraper.scalar("sum(membio_tls_handshake_duration_seconds_count)") == (
            base["membio_tls_handshake_duration_seconds_count"] + 4
        )
        assert scraper.scalar(
            'membio_tls_handshakes_failed_total{reason="peer_rejected_certificate"}'
        ) == 1
        assert scraper.scalar('membio_tls_handshakes_failed_total{reason="plain_http"}') == 1
        assert scraper.scalar("sum(membio_tls_handshakes_failed_total)") == 2
        assert scraper.scalar("membio_tls_plain_http_answered_total") == (
            base["membio_tls_plain_http_answered_total"] + 1
        )
        assert scraper.scalar("membio_tls_connections_active") == 0
        assert scraper.scalar(
            f'membio_certificate_not_after_timestamp_seconds{{file="{chain}",'
            'names="localhost,127.0.0.1"}'
        ) == not_after
        assert (scraper.scalar("membio_tls_received_bytes_total") or 0) > 0
