"""
Operations on every entry point, as real processes: ``twistd membio-https``,
``twistd membio-tls`` and a ``membio:`` endpoint under ``twistd web``.

* A real Prometheus scrapes ``--metrics`` / ``metrics=`` of each, after
  handshakes over TLS 1.3 and 1.2, a client that refuses the certificate
  and a plain-HTTP request; its query API returns the increases, the
  connection limit and every certificate's expiry.  With ``--workers 2``,
  one scrape of the parent is the sum over both workers.
* Certificates that expire in 20 days, 5 days and 12 hours (the user's
  files and the SNI directory's) are each warned about at start, and a
  certificate replaced by one that expires sooner is warned about after
  the reload.
* ``--log-format json`` on both apps, and ``twistd --logger`` with ours
  (also for a ``membio:`` endpoint, whose program chooses its logging),
  write every line as a JSON object; the failed handshake's line is parsed
  back, with its peer, reason, listener and server name.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import socket
import ssl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet.endpoints import quoteStringArgument

from membio_transport.certs import generate_root_ca
from membio_transport.serving import flag_of, key_of

from ._deploy_helpers import backend, echo_handler, membio_tls_command, socket_owner
from ._expiring import ExpiringCA
from ._plugin_helpers import (
    HTTPS_READY,
    TLS_ON_LOOPBACK,
    Server,
    listening_port,
    running,
    subprocess_env,
    twistd_command,
)
from .test_observe_prometheus import Prometheus, prometheus, wait_for  # noqa: F401 (a fixture)
from .test_workers import spread_over, wait_for_workers, worker_pids

pytestmark = pytest.mark.integration

ENTRY_POINTS = ("membio:", "membio-https", "membio-tls")
#: What the metrics service logs once it listens, with its port.
METRICS_ON = r"Prometheus metrics on 127\.0\.0\.1:(\d+) at /metrics"
#: Where /metrics listens, in each spelling.
METRICS_ENDPOINT = "tcp:0:interface=127.0.0.1"


# ------------------------------------------------------------------ certificates


def not_after(chain: Path) -> float:
    return x509.load_pem_x509_certificate(chain.read_bytes()).not_valid_after_utc.timestamp()


# ------------------------------------------------------------------ the entry points


@dataclass
class Running:
    server: Server
    port: int
    entry: str


@contextmanager
def serve(
    entry: str,
    tmp_path: Path,
    certificates: list[tuple[Path, Path]],
    settings: dict[str, str],
    *,
    twistd_options: tuple[str, ...] = (),
    app_options: tuple[str, ...] = (),
) -> Iterator[Running]:
    """
    Run C{entry} on a free loopback port with C{certificates} (cert and key
    files, in order) and the TLS C{settings} (by name, spelled as the entry
    point spells them).
    """
    env = subprocess_env(tmp_path / "home")
    twistd = [*twistd_command(), "-n", "--pidfile=", *twistd_options]
    if entry == "membio:":
        keys = ["membio:0:interface=127.0.0.1"]
        if certificates:
            keys += [
                "cert=" + ",".join(quoteStringArgument(str(c)) for c, _ in certificates),
                "key=" + ",".join(quoteStringArgument(str(k)) for _, k in certificates),
            ]
        keys += [f"{key_of(name)}={quoteStringArgument(value)}" for name, value in settings.items()]
        command = [*twistd, "web", "--listen", ":".join(keys), "--path", str(tmp_path)]
        with running(command, tmp_path, env, "web") as server:
            yield Running(server, listening_port(server, TLS_ON_LOOPBACK), entry)
        return
    options = ["--port", "0", "--interface", "127.0.0.1", *app_options]
    for cert, key in certificates:
        options += ["--cert", str(cert), "--key", str(key)]
    for name, value in settings.items():
        options += [flag_of(name), value]
    if entry == "membio-https":
        with running([*twistd, "membio-https", *options], tmp_path, env, "https") as server:
            yield Running(server, listening_port(server, HTTPS_READY), entry)
        return
    with backend(echo_handler) as echo:
        command = membio_tls_command(twistd, *options, "--backend", echo.endpoint)
        with running(command, tmp_path, env, "tls") as server:
            yield Running(server, listening_port(server, TLS_ON_LOOPBACK), entry)


# ------------------------------------------------------------------ clients


def handshake(port: int, ca: Path | None, *, tls12: bool = False) -> str | None:
    """
    One TLS connection, closed after the handshake: the TLS version, or
    None if this client refused the server's certificate (no C{ca}).
    """
    context = ssl.create_default_context(cafile=str(ca) if ca else None)
    if ca is None:
        context.load_verify_locations(cadata=_unrelated_root())
    if tls12:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        try:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                return tls.version()
        except ssl.SSLCertVerificationError:
            return None


def _unrelated_root() -> str:
    root, _ = generate_root_ca()
    return root.public_bytes(serialization.Encoding.PEM).decode()


def plain_http(port: int) -> bytes:
    """A plain-HTTP request to the TLS port: the status line of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        answer = b""
        while b"\r\n" not in answer and (chunk := sock.recv(4096)):
            answer += chunk
    return answer.split(b"\r\n", 1)[0]


# ------------------------------------------------------------------ metrics


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_prometheus_scrapes_every_entry_point(
    entry: str, tmp_path: Path, prometheus: Callable[[int], Prometheus]  # noqa: F811
) -> None:
    pki = ExpiringCA(tmp_path)
    chain, key = pki.leaf("server", datetime.timedelta(days=60))
    settings = {"metrics": METRICS_ENDPOINT, "max_connections": "50"}
    with serve(entry, tmp_path, [(chain, key)], settings) as served:
        metrics_port = listening_port(served.server, METRICS_ON)
        scraper = prometheus(metrics_port)
        wait_for("first scrape", lambda: scraper.scalar('up{job="membio"}') == 1)
        wait_for(
            "the counters", lambda: scraper.scalar("membio_tls_connections_total") is not None
        )
        assert scraper.scalar("membio_tls_connections_total") == 0

        assert handshake(served.port, pki.ca) == "TLSv1.3"
        assert handshake(served.port, pki.ca, tls12=True) == "TLSv1.2"
        assert handshake(served.port, None) is None, "this client refuses our certificate"
        assert plain_http(served.port) == b"HTTP/1.1 400 Bad Request"

        wait_for(
            "Prometheus sees the four connections",
            lambda: scraper.scalar("membio_tls_connections_total") == 4,
        )
        by_version = scraper.query("sum by (version) (membio_tls_handshakes_total)")
        assert by_version == {'{"version": "TLSv1.2"}': 1.0, '{"version": "TLSv1.3"}': 1.0}
        assert scraper.scalar("membio_tls_handshake_duration_seconds_count") == 2
        failed = scraper.query("membio_tls_handshakes_failed_total > 0")
        assert {json.loads(labels)["reason"]: value for labels, value in failed.items()} == {
            "peer_rejected_certificate": 1.0, "plain_http": 1.0,
        }
        assert scraper.scalar("membio_tls_plain_http_answered_total") == 1
        assert scraper.scalar("membio_tls_connections_active") == 0
        assert scraper.scalar("membio_connections_max") == 50
        assert scraper.scalar("membio_connections_refused_total") == 0
        assert scraper.scalar('membio_certificate_reloads_total{result="ok"}') == 0
        assert scraper.scalar(
            f'membio_certificate_not_after_timestamp_seconds{{file="{chain}",names="localhost"}}'
        ) == not_after(chain)
        assert served.server.process.poll() is None


@pytest.mark.parametrize("entry", ["membio-https", "membio-tls"])
def test_prometheus_sees_the_sum_of_two_workers(
    entry: str, tmp_path: Path, prometheus: Callable[[int], Prometheus]  # noqa: F811
) -> None:
    pki = ExpiringCA(tmp_path)
    chain, key = pki.leaf("server", datetime.timedelta(days=60))
    settings = {"metrics": METRICS_ENDPOINT}
    with serve(
        entry, tmp_path, [(chain, key)], settings, app_options=("--workers", "2")
    ) as served:
        wait_for_workers(served.server, 2)
        scraper = prometheus(listening_port(served.server, METRICS_ON))
        wait_for(
            "both workers report",
            lambda: scraper.scalar("membio_workers_reporting") == 2
            and scraper.scalar("membio_tls_connections_total") == 0,
        )
        pids = list(worker_pids(served.server).values())
        context = ssl.create_default_context(cafile=str(pki.ca))

        def connect() -> int | None:
            with socket.create_connection(("127.0.0.1", served.port), timeout=10) as raw, \
                    context.wrap_socket(raw, server_hostname="localhost") as tls:
                owner = socket_owner(served.port, tls.getsockname()[1], pids)
                if entry == "membio-https":
                    tls.sendall(
                        b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
                    )
                    while tls.recv(65536):
                        pass
                else:  # through the relay to the echo backend, and back
                    tls.sendall(b"ping\n")
                    echoed = b""
                    while len(echoed) < 5 and (chunk := tls.recv(5)):
                        echoed += chunk
                    assert echoed == b"ping\n"
                return owner

        served_by = spread_over(pids, connect)
        assert set(served_by) == set(pids), served_by  # each worker served some
        total = sum(served_by.values())
        # A worker's snapshot may be taken between a batch's accepts and its
        # handshakes: wait for one taken after the whole batch.
        wait_for(
            f"Prometheus sees the {total} connections and handshakes of both workers",
            lambda: scraper.scalar("membio_tls_connections_total") == total
            and scraper.scalar("sum(membio_tls_handshakes_total)") == total,
        )
        assert scraper.scalar("membio_tls_handshake_duration_seconds_count") == total
        assert scraper.scalar("membio_workers_reporting") == 2
        # The parent's own series are there once, not per worker.
        assert scraper.scalar(
            f'membio_certificate_not_after_timestamp_seconds{{file="{chain}"}}'
        ) == not_after(chain)


# ------------------------------------------------------------------ expiry warnings


def expiry_lines(text: str) -> dict[str, str]:
    """The expiry warnings logged, by certificate file name: 'expires in ...'."""
    found = re.findall(r"TLS certificate (\S+) for [^\n]* (expires in \d+ \w+|expired on)", text)
    return {Path(path).name: what for path, what in found}


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_expiry_warnings_at_20_days_5_days_and_12_hours(entry: str, tmp_path: Path) -> None:
    pki = ExpiringCA(tmp_path)
    day, hour = datetime.timedelta(days=1), datetime.timedelta(hours=1)
    twenty = pki.leaf("twenty", 20 * day)
    five = pki.leaf("five", 5 * day, names=("five.test",))
    sni_dir = tmp_path / "sni"
    pki.leaf("half.test", 12 * hour, names=("half.test",), folder=sni_dir, key_inside=True)
    settings = {"sni_dir": str(sni_dir), "reload_interval": "0.2"}
    with serve(entry, tmp_path, [twenty, five], settings) as served:
        server = served.server
        server.wait_for_log(r"half\.test\.pem for half\.test expires in")
        assert expiry_lines(server.stdout) == {
            "twenty.pem": "expires in 19 days",  # the 30-day warning
            "five.pem": "expires in 4 days",  # the 7-day warning
            "half.test.pem": "expires in 11 hours",  # the 1-day warning
        }
        assert re.search(
            r"TLS certificate \S+/five\.pem for five\.test expires in 4 days \(on \d{4}-\d\d-\d\d "
            r"\d\d:\d\d UTC\): renew it and replace the file \(it is reloaded on change or "
            r"SIGHUP\)", server.stdout,
        ), server.stdout
        # The 20-day certificate is replaced by one that expires in 5 days:
        # after the reload, that file gets its 7-day warning.
        replacement = pki.leaf("soon", 5 * day)
        for source, target in zip(replacement, twenty, strict=True):
            os.replace(source, target)
        server.wait_for_log(r"twenty\.pem for localhost expires in 4 days")
        assert server.stdout.count("expires in") == 4
        assert server.process.poll() is None


def test_a_generated_certificate_gets_no_early_warning(tmp_path: Path) -> None:
    """The server renews it itself: nothing to say until its renewal is overdue."""
    settings = {"cert_dir": str(tmp_path / "certs")}
    with serve("membio-https", tmp_path, [], settings) as served:
        assert "TLS certificate" in served.server.stdout
        assert expiry_lines(served.server.stdout) == {}


# ------------------------------------------------------------------ JSON logs


def json_records(text: str) -> list[dict[str, object]]:
    """Every line of C{text}, parsed with json.loads (fails on any other line)."""
    return [json.loads(line) for line in text.splitlines()]


@pytest.mark.parametrize(
    ("entry", "how"),
    [
        ("membio-https", "--log-format"),
        ("membio-tls", "--log-format"),
        ("membio-tls", "--logger"),
        ("membio:", "--logger"),
    ],
)
def test_a_failed_handshake_logs_one_json_object(entry: str, how: str, tmp_path: Path) -> None:
    pki = ExpiringCA(tmp_path)
    chain, key = pki.leaf("server", datetime.timedelta(days=60))
    # membio: has no logFormat=: the program (twistd web here) chooses its logging.
    json_options = (
        {"twistd_options": ("--logger", "membio_transport.observe.json_log_observer")}
        if how == "--logger" else {"app_options": ("--log-format", "json")}
    )
    env_tmp = tmp_path / entry
    env_tmp.mkdir()
    with serve(entry, env_tmp, [(chain, key)], {}, **json_options) as served:  # type: ignore[arg-type]
        assert handshake(served.port, None) is None
        served.server.wait_for_log(r'"event":"tls_handshake_failed"')
        served.server.stop()
        records = json_records(served.server.stdout)
    (failed,) = [record for record in records if record["event"] == "tls_handshake_failed"]
    assert failed["level"] == "info"
    assert failed["reason"] == "tlsv1 alert unknown ca"
    assert re.fullmatch(r"127\.0\.0\.1:\d+", str(failed["peer"])), failed
    assert failed["listener"] == f"127.0.0.1:{served.port}"
    assert failed["server_name"] == "localhost"
    assert str(failed["message"]).startswith("TLS handshake failed from 127.0.0.1:")
    assert any(record["event"] == "log" for record in records), "Twisted's own lines too"
