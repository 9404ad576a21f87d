"""
ACME against a real CA: pebble and pebble-challtestsrv on loopback (see ``_pebble``).

Each test runs a real server in this process: a ``twisted.web`` Site behind
`MemoryBIOTLSFactory` on pebble's tls-alpn-01 port, with the `TLSALPNResponder` on its
context and the `ChallengeGate` in front of the site, and an `HTTP01Resource` on pebble's
http-01 port.  The manager's ``on_certificate`` swaps the served context, as the serving
layer will.  Obtained certificates are checked by curl and by Python's ``ssl`` against
pebble's issuing root, over the real server.
"""

from __future__ import annotations

import hashlib
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor, task, threads
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from membio_transport import MemoryBIOTLSFactory
from membio_transport.acme import (
    AcmeConfig,
    AcmeManager,
    CAUnreachable,
    ChallengeBoard,
    ChallengeFailed,
    ChallengeGate,
    HTTP01Resource,
    NotAnAcmeDirectory,
    TermsNotAgreed,
    TLSALPNResponder,
)
from membio_transport.certs import ServerCertificate, ensure_certificate
from membio_transport.tls import ServerTLSOptions, server_context

from ._pebble import PebbleCA, needs_pebble, running_pebble

pytestmark = [pytest.mark.integration, needs_pebble]

CURL = shutil.which("curl")
ALPN = [b"http/1.1"]
BODY = b"served over ACME\n"
# Bounds for things that take a fraction of a second against pebble with no VA sleeps.
ORDER_TIMEOUT = 20.0


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def pebble(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PebbleCA]:
    yield from running_pebble(tmp_path_factory.mktemp("pebble"))


@pytest.fixture
def short_pebble(tmp_path: Path) -> Iterator[PebbleCA]:
    """Pebble issuing 9-second certificates: renewal is due 6 seconds after issue."""
    yield from running_pebble(tmp_path / "pebble-short", validity_seconds=9)


@pytest.fixture
def nonce_pebble(tmp_path: Path) -> Iterator[PebbleCA]:
    """Pebble rejecting half of all good nonces as badNonce."""
    yield from running_pebble(tmp_path / "pebble-nonces", nonce_reject=50)


def unique_name(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}.example.test"


class Hello(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests = 0

    def render_GET(self, request: Request) -> bytes:
        self.requests += 1
        request.setHeader(b"Content-Type", b"text/plain")
        return BODY


class ServedSite:
    """The server a test's manager feeds: TLS on pebble's tlsPort, HTTP on its httpPort."""

    def __init__(self, ca: PebbleCA, workdir: Path, board: ChallengeBoard | None = None) -> None:
        # Until ACME delivers, serve the generated local certificate, as membio-https does.
        local = ensure_certificate(workdir / "local")
        self.board = board if board is not None else ChallengeBoard()
        self.responder = TLSALPNResponder(self.board)
        self.options = ServerTLSOptions(self._context(local))
        self.hello = Hello()
        self.site = Site(self.hello)
        self.gate = ChallengeGate(self.site)
        self.http01 = HTTP01Resource(self.board)
        self.served: list[ServerCertificate] = []
        self.tls_port = reactor.listenTCP(  # type: ignore[attr-defined]
            ca.tls_port, MemoryBIOTLSFactory(self.options, False, self.gate), interface="127.0.0.1"
        )
        self.http_port = reactor.listenTCP(  # type: ignore[attr-defined]
            ca.http_port, Site(self.http01), interface="127.0.0.1"
        )

    def _context(self, certificate: ServerCertificate) -> Any:
        context = server_context(certificate.cert_path, certificate.key_path, alpn=ALPN)
        self.responder.install(context, ALPN)
        return context

    def serve(self, certificate: ServerCertificate) -> None:
        """on_certificate: new connections get the new certificate."""
        self.options.context = self._context(certificate)
        self.served.append(certificate)

    async def close(self) -> None:
        await self.tls_port.stopListening()
        await self.http_port.stopListening()


@pytest_twisted.async_yield_fixture
async def stack(tmp_path: Path) -> Any:
    """Start ServedSites and AcmeManagers through it; all are stopped at teardown."""
    started: list[Any] = []

    class Stack:
        def site(self, ca: PebbleCA, board: ChallengeBoard | None = None) -> ServedSite:
            site = ServedSite(ca, tmp_path / f"site{len(started)}", board)
            started.append(site)
            return site

        def manager(
            self, ca: PebbleCA, site: ServedSite, state: Path | None = None, **config: Any
        ) -> AcmeManager:
            settings: dict[str, Any] = {
                "names": (unique_name("www"),),
                "email": "ops@example.org",
                "directory_url": ca.directory_url,
                "directory_ca": ca.ca_file,
                "agree_tos": True,
                "state_dir": state or tmp_path / "acme",
                "retry_initial": 0.3,
                "retry_maximum": 1.0,
            }
            settings.update(config)
            manager = AcmeManager(AcmeConfig(**settings), site.serve, board=site.board)
            started.append(manager)
            return manager

    yield Stack()
    for thing in reversed(started):
        if isinstance(thing, AcmeManager):
            if thing.running:
                await thing.stopService()
        else:
            await thing.close()


async def eventually(condition: Callable[[], object], timeout: float, what: str) -> None:
    """Let the reactor run until ``condition()`` holds; fail after ``timeout`` seconds."""
    deadline = reactor.seconds() + timeout  # type: ignore[attr-defined]
    while not condition():
        if reactor.seconds() > deadline:  # type: ignore[attr-defined]
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await task.deferLater(reactor, 0.05, lambda: None)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- clients


def python_fetch(port: int, name: str, root: Path) -> tuple[bytes, str]:
    """GET / with Python's ssl, strictly verifying ``name`` against ``root``."""
    context = ssl.create_default_context(cafile=str(root))
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=name) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        tls.sendall(f"GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    return data, hashlib.sha256(der).digest().hex(":").upper()


def curl_fetch(port: int, name: str, root: Path) -> str:
    assert CURL is not None
    argv = [
        CURL, "--silent", "--show-error", "--fail", "--max-time", "10",
        "--cacert", str(root), "--resolve", f"{name}:{port}:127.0.0.1",
        f"https://{name}:{port}/",
    ]  # fmt: skip
    result = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


class KeepAlive:
    """One verified HTTP/1.1 keep-alive connection, used from a thread."""

    def __init__(self, port: int, name: str, root: Path) -> None:
        context = ssl.create_default_context(cafile=str(root))
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.tls = context.wrap_socket(raw, server_hostname=name)
        self.name = name
        der = self.tls.getpeercert(binary_form=True)
        assert der is not None
        self.fingerprint = hashlib.sha256(der).digest().hex(":").upper()

    def get(self) -> bytes:
        self.tls.sendall(f"GET / HTTP/1.1\r\nHost: {self.name}\r\n\r\n".encode())
        data = b""
        while not data.endswith(BODY):
            chunk = self.tls.recv(65536)
            assert chunk, f"connection closed after {data!r}"
            data += chunk
        return data

    def close(self) -> None:
        self.tls.close()


def write_root(ca: PebbleCA, path: Path) -> Path:
    path.write_bytes(ca.root_pem())
    return path


async def verify_served(site: ServedSite, ca: PebbleCA, name: str, tmp: Path) -> str:
    """Check the served certificate with Python's ssl and curl; its fingerprint."""
    root = write_root(ca, tmp / f"root-{uuid.uuid4().hex[:6]}.pem")
    port = ca.tls_port
    data, fingerprint = await threads.deferToThread(python_fetch, port, name, root)
    assert data.startswith(b"HTTP/1.1 200") and data.endswith(BODY), data
    if CURL is not None:
        assert await threads.deferToThread(curl_fetch, port, name, root) == BODY.decode()
    return fingerprint


# ------------------------------------------------------------------------------- tests


@pytest_twisted.ensureDeferred
async def test_first_certificate_by_tls_alpn_01(
    pebble: PebbleCA, stack: Any, tmp_path: Path
) -> None:
    site = stack.site(pebble)
    manager = stack.manager(pebble, site, challenges=("tls-alpn-01",))
    orders_before = pebble.orders()
    manager.startService()
    await eventually(lambda: site.served, ORDER_TIMEOUT, "the first certificate")
    certificate = site.served[0]
    name = manager.config.names[0]
    assert certificate.names == (name,)
    assert manager.counters.orders == 1 and pebble.orders() == orders_before + 1
    # The CA validated through our ALPN hook, and the gate kept it from the site.
    assert site.responder.answered >= 1
    assert site.gate.challenges_closed == site.responder.answered
    assert site.hello.requests == 0 and site.http01.answered == 0
    assert await verify_served(site, pebble, name, tmp_path) == certificate.fingerprint_sha256
    assert site.hello.requests == 2
    # The state directory: 0700 folders, 0600 keys.
    state = manager.store.root
    for path in [state, *state.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        if path.is_dir():
            assert mode == 0o700, path
        elif path.name.endswith("key.pem"):
            assert mode == 0o600, path
    assert manager.board.tls_alpn_certificate(name) is None  # withdrawn after the order


@pytest_twisted.ensureDeferred
async def test_first_certificate_by_http_01(pebble: PebbleCA, stack: Any, tmp_path: Path) -> None:
    site = stack.site(pebble)
    names = (unique_name("www"), unique_name("api"))
    manager = stack.manager(pebble, site, names=names, challenges=("http-01",))
    manager.startService()
    await eventually(lambda: site.served, ORDER_TIMEOUT, "the first certificate")
    certificate = site.served[0]
    assert set(certificate.names) == set(names)
    assert site.http01.answered >= 2 and site.responder.answered == 0
    for name in names:
        assert await verify_served(site, pebble, name, tmp_path) == certificate.fingerprint_sha256


@pytest_twisted.ensureDeferred
async def test_restart_reuses_stored_certificate_and_account(
    pebble: PebbleCA, stack: Any, tmp_path: Path
) -> None:
    site = stack.site(pebble)
    name = unique_name("reuse")
    first = stack.manager(pebble, site, names=(name,))
    first.startService()
    await eventually(lambda: site.served, ORDER_TIMEOUT, "the first certificate")
    await first.stopService()
    orders, accounts = pebble.orders(), pebble.accounts_created()

    second = stack.manager(pebble, site, names=(name,))
    assert second.stored() == site.served[0]  # offline, before starting
    second.startService()
    await eventually(lambda: len(site.served) == 2, ORDER_TIMEOUT, "the stored certificate")
    assert site.served[1].fingerprint_sha256 == site.served[0].fingerprint_sha256
    assert second.counters.orders == 0 and second.counters.accounts_registered == 0
    assert (pebble.orders(), pebble.accounts_created()) == (orders, accounts)
    assert second.next_check is not None


@pytest_twisted.ensureDeferred
async def test_renewal_in_a_running_server_with_a_connection_open(
    short_pebble: PebbleCA, stack: Any, tmp_path: Path
) -> None:
    site = stack.site(short_pebble)
    manager = stack.manager(short_pebble, site)
    name = manager.config.names[0]
    manager.startService()
    await eventually(lambda: site.served, ORDER_TIMEOUT, "the first certificate")
    first = site.served[0]
    root = write_root(short_pebble, tmp_path / "root.pem")
    client = await threads.deferToThread(KeepAlive, short_pebble.tls_port, name, root)
    try:
        assert client.fingerprint == first.fingerprint_sha256
        assert (await threads.deferToThread(client.get)).endswith(BODY)
        # Renewal is due two thirds into the 9-second lifetime.
        await eventually(lambda: len(site.served) == 2, ORDER_TIMEOUT, "the renewal")
        renewed = site.served[1]
        assert renewed.fingerprint_sha256 != first.fingerprint_sha256
        assert manager.counters.orders == 2 and manager.counters.failures == 0
        # The open connection carries on with the old certificate...
        assert (await threads.deferToThread(client.get)).endswith(BODY)
    finally:
        await threads.deferToThread(client.close)
    # ... and new connections get the new one.
    assert await verify_served(site, short_pebble, name, tmp_path) == renewed.fingerprint_sha256


@pytest_twisted.ensureDeferred
async def test_ca_down_during_renewal_keeps_serving_and_recovers(
    short_pebble: PebbleCA, stack: Any, tmp_path: Path
) -> None:
    site = stack.site(short_pebble)
    manager = stack.manager(short_pebble, site)
    name = manager.config.names[0]
    manager.startService()
    await eventually(lambda: site.served, ORDER_TIMEOUT, "the first certificate")
    first = site.served[0]
    old_root = write_root(short_pebble, tmp_path / "old-root.pem")
    short_pebble.stop_pebble()
    await eventually(lambda: manager.counters.failures >= 2, ORDER_TIMEOUT, "failed renewals")
    assert isinstance(manager.last_error, CAUnreachable)
    assert "cannot reach the ACME CA" in str(manager.last_error)
    assert manager.current == first and len(site.served) == 1
    # Still serving the current certificate (not yet expired) while the CA is down.
    _, fingerprint = await threads.deferToThread(
        python_fetch, short_pebble.tls_port, name, old_root
    )
    assert fingerprint == first.fingerprint_sha256
    # Back up: a new pebble knows no account; the manager registers the key again.
    await threads.deferToThread(short_pebble.restart)
    await eventually(lambda: len(site.served) == 2, ORDER_TIMEOUT, "recovery")
    assert manager.counters.failures == 0 and manager.counters.accounts_registered >= 2
    assert await verify_served(site, short_pebble, name, tmp_path) == (
        site.served[1].fingerprint_sha256
    )


@pytest_twisted.ensureDeferred
async def test_wrong_challenge_answer_is_rejected_in_one_line(pebble: PebbleCA, stack: Any) -> None:
    class WrongAnswers(ChallengeBoard):
        def publish_tls_alpn(self, name: str, key_authorization: str) -> Any:
            return super().publish_tls_alpn(name, key_authorization + "-wrong")

    site = stack.site(pebble, WrongAnswers())
    manager = stack.manager(pebble, site, retry_initial=30.0, retry_maximum=60.0)
    manager.startService()
    await eventually(lambda: manager.counters.failures, ORDER_TIMEOUT, "the rejection")
    error = manager.last_error
    assert isinstance(error, ChallengeFailed), error
    line = str(error)
    assert "\n" not in line and manager.config.names[0] in line
    assert "tls-alpn-01" in line and "wrong answer" in line
    assert "Incorrect validation certificate" in line  # pebble's own detail
    assert site.served == [] and manager.current is None
    # Retried later (backoff), not given up.
    assert manager.next_check is not None


@pytest_twisted.ensureDeferred
async def test_nonce_rejections_are_retried(nonce_pebble: PebbleCA, stack: Any) -> None:
    site = stack.site(nonce_pebble)
    manager = stack.manager(nonce_pebble, site)
    manager.startService()
    await eventually(lambda: site.served, ORDER_TIMEOUT, "the certificate")
    assert manager.counters.failures == 0
    # Half of all good nonces were refused; every refusal was absorbed by a retry.
    assert manager.counters.bad_nonces > 0


@pytest_twisted.ensureDeferred
async def test_terms_of_service_must_be_agreed(pebble: PebbleCA, stack: Any) -> None:
    site = stack.site(pebble)
    accounts = pebble.accounts_created()
    manager = stack.manager(pebble, site, agree_tos=False)
    manager.startService()
    await eventually(lambda: manager.counters.failures, ORDER_TIMEOUT, "the refusal")
    error = manager.last_error
    assert isinstance(error, TermsNotAgreed)
    assert error.terms_url == "data:text/plain,Do%20what%20thou%20wilt"
    assert error.terms_url in str(error) and "--acme-agree-tos" in str(error)
    assert manager.next_check is None  # only a configuration change helps
    assert pebble.accounts_created() == accounts and manager.counters.orders == 0


@pytest_twisted.ensureDeferred
async def test_an_untrusted_directory_certificate_names_the_option(
    pebble: PebbleCA, stack: Any
) -> None:
    site = stack.site(pebble)
    manager = stack.manager(pebble, site, directory_ca=None)
    manager.startService()
    await eventually(lambda: manager.counters.failures, ORDER_TIMEOUT, "the refusal")
    line = str(manager.last_error)
    assert isinstance(manager.last_error, CAUnreachable)
    assert "certificate verify failed" in line and "--acme-directory-ca FILE" in line
    assert "\n" not in line and manager.next_check is not None


@pytest_twisted.ensureDeferred
async def test_a_url_that_is_not_an_acme_directory(pebble: PebbleCA, stack: Any) -> None:
    site = stack.site(pebble)
    url = f"{pebble.management_url}/roots/0"
    manager = stack.manager(pebble, site, directory_url=url)
    manager.startService()
    await eventually(lambda: manager.counters.failures, ORDER_TIMEOUT, "the refusal")
    error = manager.last_error
    assert isinstance(error, NotAnAcmeDirectory)
    assert str(error).startswith(f"{url} is not an ACME directory (HTTP 200")
    assert "\n" not in str(error) and manager.next_check is None


@pytest_twisted.ensureDeferred
async def test_two_processes_sharing_a_state_directory_order_once(
    pebble: PebbleCA, stack: Any, tmp_path: Path
) -> None:
    # Two managers open the lock file separately, as two processes would: flock
    # conflicts between open file descriptions, in one process or in two.
    site = stack.site(pebble)
    name = unique_name("shared")
    served: list[ServerCertificate] = []
    one = stack.manager(pebble, site, names=(name,), state=tmp_path / "shared")
    two = stack.manager(pebble, site, names=(name,), state=tmp_path / "shared")
    two.on_certificate = served.append
    orders = pebble.orders()
    one.startService()
    two.startService()
    await eventually(lambda: site.served and served, ORDER_TIMEOUT, "both managers")
    assert one.counters.orders + two.counters.orders == 1
    assert pebble.orders() == orders + 1
    assert served[0].fingerprint_sha256 == site.served[0].fingerprint_sha256


ORDERING_PROCESS = """
import sys
from pathlib import Path
from twisted.internet import reactor
from twisted.logger import globalLogBeginner, textFileLogObserver
from membio_transport.acme import AcmeConfig, AcmeManager

globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)])

name, url, ca, state = sys.argv[1:5]
config = AcmeConfig(
    names=(name,), directory_url=url, directory_ca=Path(ca), agree_tos=True,
    state_dir=Path(state), retry_initial=0.3, retry_maximum=1.0,
)

def got(certificate):
    print("CERT", certificate.fingerprint_sha256, file=sys.__stdout__, flush=True)
    reactor.callLater(0, reactor.stop)

AcmeManager(config, got).startService()
reactor.callLater(20, reactor.stop)
reactor.run()
"""


@pytest_twisted.ensureDeferred
async def test_workers_answer_challenges_for_the_ordering_process(
    pebble: PebbleCA, stack: Any, tmp_path: Path
) -> None:
    # As with --workers: another process orders; this one serves the port and answers
    # the CA from the challenge files that process publishes in the state directory.
    state = tmp_path / "shared-state"
    site = stack.site(pebble, ChallengeBoard(state / "challenges"))
    name = unique_name("workers")
    argv = [sys.executable, "-c", ORDERING_PROCESS, name, pebble.directory_url]
    argv += [str(pebble.ca_file), str(state)]
    result = await threads.deferToThread(
        subprocess.run, argv, capture_output=True, text=True, timeout=30
    )
    assert result.stdout.startswith("CERT "), result.stdout + result.stderr
    assert site.responder.answered >= 1 and site.gate.challenges_closed >= 1
    assert not any((state / "challenges").rglob("*.pem"))  # withdrawn
    # This process serves what the other one stored.
    reader = stack.manager(pebble, site, names=(name,), state=state)
    stored = reader.stored()
    assert stored is not None and stored.fingerprint_sha256 == result.stdout.split()[1]
    site.serve(stored)
    assert await verify_served(site, pebble, name, tmp_path) == stored.fingerprint_sha256
