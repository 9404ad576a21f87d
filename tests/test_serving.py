"""
The serving layer in process: the certificate source's lifecycle on a fake
clock (renewal of a generated leaf, its retry, SIGHUP, polling), the
process-wide SIGHUP dispatcher and how it treats a host program's handler,
the lifecycle counted over listening ports, the settings table's rules,
and the sockets ``--workers`` share.  ``test_reload.py`` runs the same
lifecycle in real processes of every entry point.
"""

from __future__ import annotations

import datetime
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher

from membio_transport.certs import ensure_certificate
from membio_transport.serving import (
    RENEWAL_RETRY,
    SETTINGS,
    CertificateSource,
    GeneratedCertificate,
    ServingPort,
    SettingError,
    SignalDispatcher,
    TLSServing,
    flag_of,
    key_of,
    parse_values,
)

from ._expiring import ExpiringCA
from ._serving_helpers import NoSignals


@pytest.fixture
def log_lines() -> Any:
    lines: list[str] = []

    def observe(event: dict[str, object]) -> None:
        lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


def _clock_now() -> Clock:
    clock = Clock()
    clock.advance(time.time())  # the source's time is its clock's
    return clock


# ------------------------------------------------------------------ the source


def test_a_generated_leaf_is_renewed_when_its_window_opens(
    tmp_path: Path, log_lines: list[str]
) -> None:
    clock = _clock_now()
    signals = NoSignals()
    source = CertificateSource(
        GeneratedCertificate(tmp_path / "certs"), interval=None, clock=clock, sighup=signals
    )
    first = source.current.default
    first_context = source.options.context
    assert first.renew_after is not None
    source.startService()
    try:
        [renewal] = clock.getDelayedCalls()
        assert renewal.getTime() == pytest.approx(first.renew_after.timestamp(), abs=1)
        clock.advance(first.renew_after.timestamp() - clock.seconds() - 1)
        assert source.current.default is first and source.renewals == 0  # not yet
        clock.advance(2)
        renewed = source.current.default
        assert renewed.fingerprint_sha256 != first.fingerprint_sha256
        assert source.options.context is not first_context
        assert (source.renewals, source.renewal_failures) == (1, 0)
        assert "certificates reloaded (the generated certificate is due for renewal)" in (
            log_lines[-1]
        )
        # The same local root signed it; the next renewal is set for the new leaf.
        assert renewed.trust_path == first.trust_path
        assert renewed.renew_after is not None and renewed.renew_after > first.renew_after
        [renewal] = clock.getDelayedCalls()
        assert renewal.getTime() == pytest.approx(renewed.renew_after.timestamp(), abs=1)
    finally:
        source.stopService()
    assert not clock.getDelayedCalls() and not signals.subscribers


def test_a_failed_renewal_keeps_the_leaf_and_is_retried(
    tmp_path: Path, log_lines: list[str]
) -> None:
    clock = _clock_now()
    cert_dir = tmp_path / "certs"
    source = CertificateSource(
        GeneratedCertificate(cert_dir), interval=None, clock=clock, sighup=NoSignals()
    )
    first = source.current.default
    assert first.renew_after is not None
    root_key = cert_dir / "local-ca-key.pem"
    root_key.chmod(0o644)  # the state directory refuses a key others can read
    source.startService()
    try:
        clock.advance(first.renew_after.timestamp() - clock.seconds() + 1)
        assert source.current.default is first
        assert (source.renewals, source.renewal_failures) == (0, 1)
        assert "failed, still serving SHA-256" in log_lines[-1]
        assert "readable by other users" in log_lines[-1]
        [retry] = clock.getDelayedCalls()
        assert retry.getTime() == pytest.approx(clock.seconds() + RENEWAL_RETRY)
        root_key.chmod(0o600)
        clock.advance(RENEWAL_RETRY)
        assert (source.renewals, source.renewal_failures) == (1, 1)
        assert source.current.default.fingerprint_sha256 != first.fingerprint_sha256
    finally:
        source.stopService()


def test_sighup_and_changed_files_reload_on_the_reactor_thread(tmp_path: Path) -> None:
    from membio_transport.serving import CertificateFiles, UserCertificate

    from ._abuse_helpers import issue, make_ca

    ca = make_ca("source CA")
    first, second = issue(ca, ["localhost"]), issue(ca, ["localhost"])
    files = first.write(tmp_path, "server")
    clock = _clock_now()
    signals = NoSignals()
    source = CertificateSource(
        UserCertificate(CertificateFiles(*files)), interval=1.0, clock=clock, sighup=signals
    )
    source.startService()
    try:
        assert source.current.default.renew_after is None  # the user's: nothing to renew
        second.write(tmp_path, "server")
        signals.fire()  # in the signal handler: only scheduled
        assert source.reloads == 0
        clock.advance(0)
        assert source.reloads == 1
        assert source.current.default.fingerprint_sha256 == second.fingerprint
        clock.advance(1)  # the files were looked at again after the reload: no change
        assert source.reloads == 1
        first.write(tmp_path, "server")
        clock.advance(1)
        assert source.reloads == 2
        assert source.current.default.fingerprint_sha256 == first.fingerprint
    finally:
        source.stopService()
    assert not clock.getDelayedCalls()


def test_a_context_hook_runs_on_every_context_now_and_after_reloads(tmp_path: Path) -> None:
    """What a tls-alpn-01 responder (issue #12) installs itself with."""
    source = CertificateSource(
        GeneratedCertificate(tmp_path / "certs"), interval=None, sighup=NoSignals()
    )
    seen: list[object] = []
    source.add_context_hook(seen.append)
    assert seen == [source.current.context]
    other = ensure_certificate(tmp_path / "other", ("acme.example",))
    assert source.serve(other, "a certificate from an ACME CA")
    assert source.current.default is other
    assert seen == [seen[0], source.current.context]


# ------------------------------------------------------------------ the SIGHUP dispatcher


def test_the_dispatcher_chains_to_the_host_programs_handler_and_restores_it(
    log_lines: list[str],
) -> None:
    calls: list[str] = []

    def host(number: int, frame: object) -> None:
        calls.append("host")

    previous = signal.signal(signal.SIGHUP, host)
    try:
        dispatcher = SignalDispatcher(signal.SIGHUP)
        first = dispatcher.subscribe(lambda: calls.append("first"))
        second = dispatcher.subscribe(lambda: 1 / 0)
        third = dispatcher.subscribe(lambda: calls.append("third"))
        assert dispatcher.installed
        os.kill(os.getpid(), signal.SIGHUP)
        time.sleep(0.01)  # Python runs the handler between two bytecodes
        assert calls == ["first", "third", "host"]
        assert any("a SIGHUP subscriber failed" in line for line in log_lines)
        second()
        first()
        assert signal.getsignal(signal.SIGHUP) != host
        third()
        third()  # harmless twice
        assert signal.getsignal(signal.SIGHUP) is host
        assert not dispatcher.installed
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_without_a_host_handler_sighup_goes_back_to_its_default() -> None:
    previous = signal.signal(signal.SIGHUP, signal.SIG_DFL)
    try:
        dispatcher = SignalDispatcher(signal.SIGHUP)
        unsubscribe = dispatcher.subscribe(lambda: None)
        assert signal.getsignal(signal.SIGHUP) is not signal.SIG_DFL
        unsubscribe()
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_a_handler_the_host_installs_later_is_left_alone() -> None:
    previous = signal.signal(signal.SIGHUP, signal.SIG_DFL)
    try:
        dispatcher = SignalDispatcher(signal.SIGHUP)
        unsubscribe = dispatcher.subscribe(lambda: None)

        def later(number: int, frame: object) -> None:
            pass

        signal.signal(signal.SIGHUP, later)
        assert not dispatcher.installed
        unsubscribe()
        assert signal.getsignal(signal.SIGHUP) is later
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_outside_the_main_thread_nothing_is_installed() -> None:
    dispatcher = SignalDispatcher(signal.SIGHUP)
    before = signal.getsignal(signal.SIGHUP)
    done: list[object] = []
    thread = threading.Thread(target=lambda: done.append(dispatcher.subscribe(lambda: None)))
    thread.start()
    thread.join()
    assert signal.getsignal(signal.SIGHUP) is before and not dispatcher.installed
    unsubscribe = done[0]
    assert callable(unsubscribe)
    unsubscribe()


def test_a_handler_left_by_a_thread_is_taken_back_not_chained_to_itself() -> None:
    previous = signal.signal(signal.SIGHUP, signal.SIG_DFL)
    try:
        dispatcher = SignalDispatcher(signal.SIGHUP)
        calls: list[str] = []
        unsubscribe = dispatcher.subscribe(lambda: calls.append("first"))
        # Left from another thread: signal.signal cannot run there, ours stays.
        thread = threading.Thread(target=unsubscribe)
        thread.start()
        thread.join()
        assert not dispatcher.installed
        again = dispatcher.subscribe(lambda: calls.append("second"))
        os.kill(os.getpid(), signal.SIGHUP)
        time.sleep(0.01)
        assert calls == ["second"]  # once, and no recursion into ourselves
        again()
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGHUP, previous)


# ------------------------------------------------------------------ the lifecycle over ports


class _Port:
    def __init__(self) -> None:
        self.stopped = 0
        self.factory = "the port's own attribute"

    def startListening(self) -> None:
        pass

    def stopListening(self) -> None:
        self.stopped += 1

    def getHost(self) -> str:
        return "an address"


class _Endpoint:
    def listen(self, factory: object) -> defer.Deferred[_Port]:
        return defer.succeed(_Port())


def _settings(tmp_path: Path, **values: list[str]) -> Any:
    values.setdefault("cert_dir", [str(tmp_path / "certs")])
    return parse_values("membio:", values, flag_of)


def test_ports_start_the_lifecycle_and_the_last_one_stops_it(tmp_path: Path) -> None:
    clock = _clock_now()
    serving = TLSServing(_settings(tmp_path, max_connections=["5"]), clock=clock)
    before = signal.getsignal(signal.SIGHUP)
    first = serving.wrap(_Endpoint(), clock=clock)  # type: ignore[arg-type]
    second = serving.wrap(_Endpoint(), clock=clock)  # type: ignore[arg-type]
    ports: list[ServingPort] = []
    for endpoint in (first, second):
        endpoint.listen(object()).addCallback(ports.append)  # type: ignore[arg-type]
    assert serving.source.running
    assert signal.getsignal(signal.SIGHUP) is not before  # SIGHUP reloads now
    assert ports[0].factory == "the port's own attribute"  # the rest is the port's
    assert first.certificate is serving.certificate
    ports[0].stopListening()
    ports[0].stopListening()  # twice: released once
    assert serving.source.running
    ports[1].stopListening()
    assert not serving.source.running
    assert signal.getsignal(signal.SIGHUP) is before
    assert not clock.getDelayedCalls()
    # A --workers parent listens in no endpoint: the same lifecycle as a service.
    service = serving.service()
    service.startService()
    assert serving.source.running
    service.stopService()
    assert not serving.source.running


def test_a_worker_endpoint_runs_no_lifecycle(tmp_path: Path) -> None:
    serving = TLSServing(_settings(tmp_path), clock=Clock())
    endpoint = serving.wrap(_Endpoint(), lifecycle=False)  # type: ignore[arg-type]
    ports: list[object] = []
    endpoint.listen(object()).addCallback(ports.append)  # type: ignore[arg-type]
    assert isinstance(ports[0], _Port) and not serving.source.running


# ------------------------------------------------------------------ operations


def test_expiry_is_watched_over_every_certificate_held_and_again_after_a_reload(
    tmp_path: Path, log_lines: list[str]
) -> None:
    day = datetime.timedelta(days=1)
    ca = ExpiringCA(tmp_path)
    first = ca.leaf("first", 20 * day)
    second = ca.leaf("second", 5 * day, names=("second.test",))
    sni = tmp_path / "sni"
    ca.leaf("third.test", datetime.timedelta(hours=12), names=("third.test",), folder=sni)
    settings = parse_values(
        "membio:",
        {"cert": [str(first[0]), str(second[0])], "key": [str(first[1]), str(second[1])],
         "sni_dir": [str(sni)], "reload_interval": ["0"]},
        flag_of,
    )
    clock = _clock_now()
    serving = TLSServing(settings, clock=clock)
    held = [certificate.cert_path.name for certificate in serving.held()]
    assert held == ["first.pem", "second.pem", "third.test.pem"]
    service = serving.service()
    service.startService()
    try:
        warned = [line for line in log_lines if "expires in" in line]
        assert [line.split(" for ")[0].rsplit("/", 1)[1] for line in warned] == [
            "first.pem", "second.pem", "third.test.pem",
        ]
        assert "expires in 11 hours" in warned[2]
        replacement = ca.leaf("replacement", datetime.timedelta(hours=3))
        for source, target in zip(replacement, first, strict=True):
            os.replace(source, target)
        assert serving.source.reload("test")
        assert "first.pem for localhost expires in 2 hours" in log_lines[-1]
        # The next look is when that certificate expires, not a day later.
        (expiry,) = clock.getDelayedCalls()  # no polling (reload_interval 0), no renewal
        assert expiry.getTime() - clock.seconds() < 3 * 3600
    finally:
        service.stopService()
    assert not clock.getDelayedCalls()


def test_a_workers_parent_exports_its_workers_sums_not_its_own_counters(tmp_path: Path) -> None:
    serving = TLSServing(_settings(tmp_path, metrics=["tcp:0:interface=127.0.0.1"]), clock=Clock())

    def exported(sources: Any) -> set[str]:
        return {family.name for family in sources.collect()}

    assert serving.fork_link() is None  # one process: it counts its own connections
    alone = exported(serving.operations.sources())
    assert {"membio_tls_connections", "membio_certificate_reloads"} <= alone
    assert "membio_workers_reporting" not in alone
    serving.service(workers=True)
    parent = exported(serving.operations.sources())
    assert {"membio_workers_reporting", "membio_certificate_reloads"} <= parent
    assert "membio_tls_connections" not in parent, "the workers' sums stand for them"
    worker = exported(serving.operations.worker_sources())
    assert "membio_tls_connections" in worker and "membio_certificate_reloads" not in worker
    link = serving.fork_link()
    assert link is not None
    link.close()
    assert TLSServing(_settings(tmp_path), clock=Clock()).fork_link() is None  # no metrics


def test_metrics_that_cannot_listen_are_one_error_line_and_tls_goes_on(
    tmp_path: Path, log_lines: list[str]
) -> None:
    from twisted.internet import reactor

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        description = f"tcp:{port}:interface=127.0.0.1"
        serving = TLSServing(_settings(tmp_path, metrics=[description]), clock=reactor)
        serving.acquire()
        try:
            assert serving.source.running
            (line,) = [line for line in log_lines if "cannot serve metrics" in line]
            assert line.startswith(f"cannot serve metrics on {description}: ")
            assert "\n" not in line
        finally:
            serving.release()


# ------------------------------------------------------------------ the settings table


def test_flags_and_endpoint_keys_derive_from_the_name() -> None:
    derived = {row.name: (row.flag, row.key) for row in SETTINGS}
    assert derived["client_ca"] == ("--client-ca", "clientCA")
    assert derived["key_password_file"] == ("--key-password-file", "keyPasswordFile")
    assert derived["plain_http"] == ("--plain-http", "plainHTTP")
    assert derived["sni_dir"] == ("--sni-dir", "sniDir")
    assert derived["request_client_cert"] == ("--request-client-cert", "requestClientCert")
    assert key_of("alpn") == "alpn" and flag_of("alpn") == "--alpn"
    aliases = {row.name: row.key_aliases for row in SETTINGS if row.key_aliases}
    # Twisted's ssl: keys, and the issue's short spelling of the ACME contact.
    assert aliases == {
        "cert": ("certKey",), "key": ("privateKey",), "acme_email": ("acme",)
    }  # fmt: skip


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"key": ["k.pem"]}, "--key needs --cert (the certificate for that key)"),
        ({"cert": ["c.pem"], "hostname": ["a.example"]},
         "--hostname applies to generated certificates, not to --cert"),
        ({"cert": ["c.pem"], "cert_dir": ["/d"]},
         "--cert-dir applies to generated certificates, not to --cert"),
        ({"key_password_file": ["p"]}, "--key-password-file applies to --key, which was not"),
        ({"client_cert": ["optional"]}, "--client-cert needs --client-ca"),
        ({"client_ca": ["ca.pem"], "request_client_cert": ["yes"]},
         "--request-client-cert asks without verifying; with --client-ca use --client-cert "
         "optional instead"),
        ({"alpn": [","]}, "--alpn needs at least one protocol, or 'none'"),
        ({"alpn": ["h\u00e9"]}, "protocol names are ASCII"),
        ({"alpn": ["x" * 256]}, "a protocol name is at most 255 bytes"),
        ({"handshake_timeout": ["inf"]}, "--handshake-timeout inf must be 0 or more"),
        ({"reload_interval": ["1e12"]}, "--reload-interval 1e12 must be 31536000 or less"),
        ({"max_connections": ["1.5"]}, "--max-connections '1.5' is not a whole number"),
        ({"backlog": ["70000"]}, "--backlog 70000 must be 65535 or less"),
        ({"cert_dir": [" "]}, "--cert-dir ' ' is empty"),
    ],
)
def test_each_rule_is_one_line_naming_the_options(
    values: dict[str, list[str]], message: str
) -> None:
    with pytest.raises(SettingError) as raised:
        parse_values("membio-https", values, flag_of)
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_values_parse_to_what_the_server_uses() -> None:
    settings = parse_values(
        "membio-tls",
        {
            "alpn": ["h2, http/1.1,h2"], "plain_http": ["off"], "idle_timeout": ["0"],
            "request_client_cert": ["yes"], "cert": ["a.pem", "b.pem"], "key": ["", "b.key"],
        },
        flag_of,
    )
    assert settings.alpn == (b"h2", b"http/1.1")
    assert settings.plain_http is None and settings.idle_timeout is None
    assert settings.request_client_cert
    named = parse_values("membio:", {"hostname": ["a.example,b.example", "c.example"]}, flag_of)
    assert named.hostname == ("a.example", "b.example", "c.example")
    assert [path.name for path in settings.cert] == ["a.pem", "b.pem"]
    assert settings.key[0] is None and settings.key[1] is not None
    assert settings.key[1].name == "b.key"
    defaults = parse_values("membio:", {}, flag_of)
    assert (defaults.handshake_timeout, defaults.reload_interval, defaults.plain_http) == (
        10.0, 5.0, "explain",
    )
    assert defaults.alpn == () and defaults.backlog is None


# ------------------------------------------------------------------ shared sockets


def test_sockets_workers_cannot_share_are_refused_with_one_line() -> None:
    from twisted.internet.endpoints import serverFromString

    from membio_transport.workers import SharingRefused, share

    with pytest.raises(SharingRefused) as raised:
        share(serverFromString(_reactor(), "stdio:"), "stdio:", "--listen")
    assert str(raised.value) == (
        "--listen stdio:: stdio: cannot be shared between processes (--workers): only tcp:, "
        "tcp6:, unix:, systemd: and haproxy: around one of them can; serve it from a "
        "separate process"
    )


def test_a_shared_unix_socket_takes_its_lock_and_cleans_up(tmp_path: Path) -> None:
    from twisted.internet.endpoints import serverFromString

    from membio_transport.workers import share

    path = tmp_path / "a.sock"
    # A socket file a dead process left behind, with a stale lock.
    leftover = socket.socket(socket.AF_UNIX)
    leftover.bind(str(path))
    leftover.close()
    os.symlink("999999999", f"{path}.lock")
    endpoint = serverFromString(_reactor(), f"unix:{path}:mode=600")
    shared = share(endpoint, f"unix:{path}", "--listen")
    sock = shared.bind()
    try:
        assert (os.stat(path).st_mode & 0o777) == 0o600
        assert not sock.getblocking()
        # Another process (here: another lock holder) cannot bind it too.
        again = share(endpoint, f"unix:{path}", "--listen")
        with pytest.raises(OSError, match="held by another process"):
            again.bind()
    finally:
        sock.close()
        assert shared.cleanup is not None
        shared.cleanup()
    assert not path.exists() and not os.path.lexists(f"{path}.lock")


def test_binding_shared_sockets_stops_at_the_first_failure_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    from membio_transport.serving import StartupError
    from membio_transport.workers import SharedListener, open_shared_sockets

    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # exit_with_message replaces it
    bound: list[socket.socket] = []
    cleaned: list[str] = []

    def first() -> socket.socket:
        sock = socket.socket()
        bound.append(sock)
        return sock

    def second() -> socket.socket:
        raise OSError(98, "Address already in use")

    listeners = [
        SharedListener("127.0.0.1:1", "--port", first, 1, cleanup=lambda: cleaned.append("1")),
        SharedListener("unix:/x", "--listen", second, cleanup=lambda: cleaned.append("2")),
    ]
    with pytest.raises(StartupError) as raised:
        open_shared_sockets("twistd membio-https", listeners)
    assert str(raised.value).startswith(
        "cannot listen on unix:/x: the address is already in use"
    )
    assert str(raised.value).endswith("choose another --listen")
    assert bound[0].fileno() == -1 and cleaned == ["1", "2"]


def test_a_unix_socket_that_cannot_be_bound_leaves_nothing_open(tmp_path: Path) -> None:
    from twisted.internet.endpoints import serverFromString

    from membio_transport.workers import share

    path = tmp_path / "missing" / "a.sock"
    shared = share(
        serverFromString(_reactor(), f"unix:{path}:lockfile=0"), f"unix:{path}", "--listen"
    )
    with pytest.raises(FileNotFoundError):
        shared.bind()


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor
