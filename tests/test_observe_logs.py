"""
JSON logs: every line one object with the stable fields, failures as one
object with their traceback as a field; in memory, and with real twistd
processes (``--logger`` of ours in front of ``membio-https``, and an
application that chose JSON with `with_log_format`).
"""

from __future__ import annotations

import io
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from twisted.logger import Logger, LogLevel, globalLogPublisher

from membio_transport.observe import format_json_event, json_log_observer, with_log_format

from ._plugin_helpers import (
    REPO,
    free_port,
    run_to_completion,
    running,
    subprocess_env,
    twistd_command,
)
from .test_observe_metrics import OTHER_PKI, Server
from .test_parity import client_options

#: The fields every line has, in this order.
ALWAYS = ["time", "level", "event", "message"]
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def parse(text: str) -> list[dict[str, Any]]:
    """Every line of C{text} as a JSON object (fails on any other line)."""
    objects = []
    for line in text.splitlines():
        record = json.loads(line)
        assert isinstance(record, dict), line
        assert list(record)[:4] == ALWAYS, line
        assert ISO_UTC.match(record["time"]), line
        assert record["level"] in {"debug", "info", "warning", "error", "critical"}, line
        objects.append(record)
    return objects


def test_an_event_becomes_one_line_with_the_stable_fields() -> None:
    out = io.StringIO()
    log = Logger(namespace="membio_transport.test", observer=json_log_observer(out))
    log.warn(
        "TLS handshake failed from {peer}: {reason}", peer="127.0.0.1:5000",
        reason="no shared\ncipher", event_name="tls_handshake_failed", log_system="membio",
        count=3, path=Path("/tmp/x"), opaque=object(),
    )
    (record,) = parse(out.getvalue())
    assert record["level"] == "warning"
    assert record["event"] == "tls_handshake_failed"
    assert record["message"] == "TLS handshake failed from 127.0.0.1:5000: no shared\ncipher"
    assert record["peer"] == "127.0.0.1:5000" and record["reason"] == "no shared\ncipher"
    assert record["system"] == "membio" and record["namespace"] == "membio_transport.test"
    assert record["fields"] == {"count": 3, "path": "/tmp/x"}, "simple values only"


def test_a_failure_is_one_object_with_its_traceback_as_a_field() -> None:
    out = io.StringIO()
    log = Logger(namespace="membio_transport.test", observer=json_log_observer(out))
    try:
        raise LookupError("no certificate for 'x.test'")
    except LookupError:
        log.failure("callback failed for {peer}", peer="[::1]:443")
    log.info("no event name here")
    failure, plain = parse(out.getvalue())
    assert failure["level"] == "critical" and failure["event"] == "exception"
    assert failure["message"] == "callback failed for [::1]:443"
    assert failure["exception_type"] == "LookupError"
    assert failure["exception_message"] == "no certificate for 'x.test'"
    assert "Traceback" in failure["traceback"] and "LookupError" in failure["traceback"]
    assert plain["event"] == "log" and "exception_type" not in plain


def test_a_real_failed_handshake_logs_json_with_peer_and_reason() -> None:
    out = io.StringIO()
    observer = json_log_observer(out)
    globalLogPublisher.addObserver(observer)
    try:
        from membio_transport import TLSStats

        server = Server(TLSStats())
        server.handshake(client_options(OTHER_PKI))  # the client refuses our certificate
        server.plain_http()
    finally:
        globalLogPublisher.removeObserver(observer)
    records = [r for r in parse(out.getvalue()) if r["event"] == "tls_handshake_failed"]
    assert [r["reason"] for r in records] == [
        "tlsv1 alert unknown ca",
        "plain HTTP on the TLS port (answered: use https://localhost:8443/)",
    ]
    assert all(r["level"] == "info" and r["peer"] for r in records)


def test_with_log_format_text_changes_nothing_and_rejects_unknown_formats() -> None:
    from twisted.application.service import Service

    service = Service()
    assert with_log_format(service, "text") is service
    with pytest.raises(ValueError, match="json"):
        with_log_format(service, "yaml")  # type: ignore[arg-type]


def test_levels_are_syslog_names() -> None:
    names = {
        level: json.loads(format_json_event({"log_level": level, "log_format": "x"}))["level"]
        for level in LogLevel.iterconstants()
    }
    assert names == {
        LogLevel.debug: "debug", LogLevel.info: "info", LogLevel.warn: "warning",
        LogLevel.error: "error", LogLevel.critical: "critical",
    }


# -- real twistd processes --------------------------------------------------------------


def _curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", "--max-time", "10", *args], capture_output=True, text=True,
        timeout=20, check=False,
    )


@pytest.mark.integration
def test_twistd_logger_writes_one_json_object_per_line(tmp_path: Path) -> None:
    port = free_port()
    env = subprocess_env(tmp_path / "home")
    command = [
        *twistd_command(), "-n", "--pidfile=", "--logger",
        "membio_transport.observe.json_log_observer",
        "membio-https", "--port", str(port), "--cert-dir", str(tmp_path / "certs"),
    ]
    with running(command, tmp_path, env) as server:
        server.wait_for_log(r'"event":"startup","message":"ready: open ')
        ca = tmp_path / "certs" / "local-ca.pem"
        assert _curl("--cacert", str(ca), f"https://localhost:{port}/").returncode == 0
        untrusted = _curl(f"https://localhost:{port}/")
        assert untrusted.returncode == 60, untrusted.stderr
        assert "400" in _curl("-o", "/dev/null", "-w", "%{http_code}",
                              f"http://localhost:{port}/").stdout
        server.wait_for_log(r"plain HTTP on the TLS port \(answered")
        server.stop()
        stdout, stderr = server.stdout, server.stderr
    records = parse(stdout)
    assert stderr == ""
    events = [record["event"] for record in records]
    assert "listening" in events and "startup" in events
    (listening,) = [r for r in records if r["event"] == "listening"]
    assert listening["listener"] == f"127.0.0.1:{port}"
    assert listening["system"] == "membio-https"
    failed = [r for r in records if r["event"] == "tls_handshake_failed"]
    assert [r["reason"] for r in failed] == [
        "tlsv1 alert unknown ca",
        f"plain HTTP on the TLS port (answered: use https://localhost:{port}/)",
    ]
    assert all(re.fullmatch(r"127\.0\.0\.1:\d+", r["peer"]) for r in failed)
    # Twisted's own lines come too, as objects without a name of ours.
    assert any(r["event"] == "log" and "twistd" in r["message"] for r in records)


TAC_JSON = """\
from twisted.application import service
from twisted.internet import reactor
from twisted.logger import Logger

from membio_transport.observe import with_log_format

log = Logger(namespace="tac")


class Once(service.Service):
    def startService(self):
        super().startService()
        log.info("started on {listener}", listener="127.0.0.1:1", event_name="listening")
        try:
            {}["missing"]
        except KeyError:
            log.failure("lookup failed", event_name="lookup_failed")
        print("a stray print")
        reactor.callLater(0.1, reactor.stop)


application = service.Application("json-test")
with_log_format(Once(), "json").setServiceParent(application)
"""


@pytest.mark.integration
def test_an_application_can_choose_json_logs_under_twistd(tmp_path: Path) -> None:
    (tmp_path / "json.tac").write_text(TAC_JSON)
    result = run_to_completion(
        [*twistd_command(), "-n", "--pidfile=", "-y", "json.tac"], tmp_path,
        subprocess_env(tmp_path / "home"),
    )
    assert result.returncode == 0, result.stderr
    records = parse(result.stdout)
    by_event = {record["event"]: record for record in records}
    assert by_event["listening"]["listener"] == "127.0.0.1:1"
    failure = by_event["lookup_failed"]
    assert failure["exception_type"] == "KeyError" and "Traceback" in failure["traceback"]
    assert any(r["message"] == "a stray print" for r in records), "stdout is a log too"
    assert "Traceback" not in result.stderr


def test_the_module_path_twistd_is_told_exists() -> None:
    """The name in the README and the tests is importable as twistd imports it."""
    from twisted.python.reflect import namedAny

    assert namedAny("membio_transport.observe.json_log_observer") is json_log_observer
    assert (REPO / "membio_transport" / "observe" / "__init__.py").exists()
