"""
Helpers for the tests of the twistd plugin and the ``membio:`` endpoints:
real server processes on loopback, always bounded in time and always
stopped, with HOME and XDG_STATE_HOME pointing at temporary directories.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest

REPO: Path = Path(__file__).resolve().parent.parent

#: Upper bound for a server to start (cold caches on a busy 2-core machine).
START_TIMEOUT = 20.0


#: What membio-https logs once it listens, with the port it got.
HTTPS_READY = r"ready: open https://[^\s/]+:(\d+)/"
#: What the membio: endpoint and membio-tls log once they listen.
TLS_ON_LOOPBACK = r"TLS on 127\.0\.0\.1:(\d+)"


def free_port() -> int:
    """
    A TCP port on 127.0.0.1 that nobody listened on a moment ago.  Racy:
    another process may take it before ours binds it.  Only for programs
    that need a number before they listen and cannot say which port they
    got (HAProxy's configuration, systemd-socket-activate); everything else
    listens on port 0 and reports the port (`listening_port`).
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def listening_port(server: Server, pattern: str, timeout: float = START_TIMEOUT) -> int:
    """The port C{server} logged (group 1 of C{pattern}) once it listens."""
    return int(server.wait_for_log(pattern, timeout).group(1))


def subprocess_env(home: Path, **extra: str) -> dict[str, str]:
    """
    The environment for a server or client process: its own HOME and state
    directory, this checkout first on the import path (so Twisted finds our
    drop-in from any working directory), no inherited key password.
    """
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("MEMBIO_KEY_PASSWORD", "SSL_CERT_FILE", "SSL_CERT_DIR")
    }
    home.mkdir(parents=True, exist_ok=True)
    env["HOME"] = str(home)
    env["XDG_STATE_HOME"] = str(home / "state")
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def twistd_command() -> list[str]:
    """twistd from the running interpreter's environment."""
    script = Path(sys.executable).parent / "twistd"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


class Server:
    """A server process whose output goes to files we can poll."""

    def __init__(self, process: subprocess.Popen[bytes], stdout: Path, stderr: Path) -> None:
        self.process = process
        self.stdout_path = stdout
        self.stderr_path = stderr

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def describe(self) -> str:
        return f"--- stdout:\n{self.stdout}\n--- stderr:\n{self.stderr}"

    def wait_for_log(self, pattern: str, timeout: float = START_TIMEOUT) -> re.Match[str]:
        """Wait until standard output matches C{pattern}; fail if the process ends first."""
        deadline = time.monotonic() + timeout
        while True:
            match = re.search(pattern, self.stdout)
            if match:
                return match
            if self.process.poll() is not None:
                raise AssertionError(
                    f"server exited with {self.process.returncode} before logging "
                    f"{pattern!r}\n{self.describe()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} within {timeout}s\n{self.describe()}")
            time.sleep(0.05)

    def wait_for_port(self, port: int, timeout: float = START_TIMEOUT) -> None:
        """Wait until something accepts connections on 127.0.0.1:C{port}."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return
            except OSError:
                pass
            if self.process.poll() is not None:
                raise AssertionError(
                    f"server exited with {self.process.returncode}\n{self.describe()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"port {port} not open within {timeout}s\n{self.describe()}")
            time.sleep(0.05)

    def stop(self) -> int:
        """SIGTERM, then SIGKILL after 5 s; returns the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return self.process.returncode


@contextmanager
def running(
    command: Sequence[str], directory: Path, env: dict[str, str], name: str = "server"
) -> Iterator[Server]:
    """Run C{command} in C{directory}; it is stopped on leaving, whatever happened."""
    directory.mkdir(parents=True, exist_ok=True)
    stdout, stderr = directory / f"{name}.out", directory / f"{name}.err"
    with open(stdout, "wb") as out, open(stderr, "wb") as err:
        process = subprocess.Popen(
            list(command), cwd=directory, env=env, stdout=out, stderr=err,
            stdin=subprocess.DEVNULL,
        )
    server = Server(process, stdout, stderr)
    try:
        yield server
    finally:
        server.stop()


def run_to_completion(
    command: Sequence[str], directory: Path, env: dict[str, str], timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    """Run a command that should end by itself (an error exit, a client)."""
    directory.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        list(command), cwd=directory, env=env, capture_output=True, text=True,
        timeout=timeout, stdin=subprocess.DEVNULL, check=False,
    )


def fingerprint_from_log(text: str) -> str:
    match = re.search(r"SHA-256 fingerprint ([0-9A-F:]{95})", text)
    assert match, text
    return match.group(1)


def peer_fingerprint(port: int, cafile: Path, host: str = "localhost") -> str:
    """The SHA-256 fingerprint of the certificate served on C{port}, verified."""
    import hashlib
    import ssl

    context = ssl.create_default_context(cafile=str(cafile))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname=host) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


TAC_IRC = """\
# An IRC server (Twisted words) on a membio: endpoint, with channels created
# on JOIN: `twistd words --group` crashes on Python 3.
import os

from twisted.application import service, strports
from twisted.cred import checkers, portal
from twisted.words import service as words

realm = words.InMemoryWordsRealm("membio-test")
realm.createGroupOnRequest = True
# Twisted words logs in with the nick and PASS as str; the constructor's
# keyword arguments would store bytes user names.
checker = checkers.InMemoryUsernamePasswordDatabaseDontUse()
checker.addUser("alice", "pa")
checker.addUser("bob", "pb")
factory = words.IRCFactory(realm, portal.Portal(realm, [checker]))
application = service.Application("membio-irc")
strports.service(os.environ["MEMBIO_TEST_ENDPOINT"], factory).setServiceParent(application)
"""


class IRCClient:
    """A line-based IRC client over a verified TLS socket."""

    def __init__(
        self, port: int, cafile: Path, nick: str, password: str, host: str = "localhost"
    ) -> None:
        import ssl

        context = ssl.create_default_context(cafile=str(cafile))
        context.verify_flags |= ssl.VERIFY_X509_STRICT
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock = context.wrap_socket(raw, server_hostname=host)
        self.nick = nick
        self.buffer = b""
        self.lines: list[str] = []
        self.send(f"PASS {password}", f"NICK {nick}", f"USER {nick} 0 * :{nick} test")

    def send(self, *lines: str) -> None:
        self.sock.sendall("".join(f"{line}\r\n" for line in lines).encode())

    def expect(self, pattern: str, timeout: float = 10.0) -> str:
        """Read lines until one matches C{pattern}; return it."""
        deadline = time.monotonic() + timeout
        while True:
            while b"\r\n" in self.buffer:
                raw, self.buffer = self.buffer.split(b"\r\n", 1)
                line = raw.decode("utf-8", "replace")
                self.lines.append(line)
                if line.startswith("PING"):
                    self.send("PONG" + line[4:])
                if re.search(pattern, line):
                    return line
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{self.nick}: no {pattern!r} in {self.lines}")
            self.sock.settimeout(remaining)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise AssertionError(f"{self.nick}: closed while waiting for {pattern!r}")
            self.buffer += chunk

    def close(self) -> None:
        with suppress(OSError):
            self.send("QUIT :bye")
        self.sock.close()


@pytest.fixture
def private_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Code run in the test process must not touch the real home either."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "home" / "state"))
    monkeypatch.delenv("MEMBIO_KEY_PASSWORD", raising=False)
