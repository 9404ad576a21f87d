"""
Let's Encrypt's test CA (pebble) and its DNS mock (pebble-challtestsrv), on loopback.

`PebbleCA` generates pebble's own TLS certificate (Debian ships none), picks free
loopback ports, starts ``pebble-challtestsrv`` answering every A query with 127.0.0.1
and pebble resolving through it, and stops both, also when a test fails.  Pebble
validates http-01 and tls-alpn-01 on the ports named in its config (``http_port``,
``tls_port``): a test's server listens there.  Every wait is bounded and polls a
condition; nothing sleeps a fixed time.

Pebble keeps no state across restarts: `restart` gives a new root, forgets every
account, and is how a test takes the CA down and brings it back.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from membio_transport.certs import generate_leaf, generate_root_ca, pem_cert, pem_key

from ._plugin_helpers import free_port

PEBBLE = shutil.which("pebble")
CHALLTESTSRV = shutil.which("pebble-challtestsrv")
needs_pebble = pytest.mark.skipif(
    PEBBLE is None or CHALLTESTSRV is None,
    reason="no pebble / pebble-challtestsrv (Debian package pebble; tests/run.sh installs it)",
)

#: Upper bound for pebble or challtestsrv to start listening (cold start on a busy machine).
START_TIMEOUT = 15.0
#: Upper bound for a process to exit after SIGTERM before it is killed.
STOP_TIMEOUT = 5.0


def wait_until(condition: Callable[[], object], timeout: float, what: str) -> None:
    """Poll ``condition`` until it is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        if condition():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class PebbleCA:
    """One pebble and one challtestsrv; see the module docstring."""

    def __init__(
        self,
        workdir: Path,
        *,
        nonce_reject: int = 0,
        always_valid: bool = False,
        validity_seconds: int | None = None,
    ) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.acme_port, self.management_port = free_port(), free_port()
        self.tls_port, self.http_port = free_port(), free_port()
        self.dns_port, self.dns_management_port = free_port(), free_port()
        self.env = {
            **os.environ,
            "PEBBLE_VA_NOSLEEP": "1",
            "PEBBLE_WFE_NONCEREJECT": str(nonce_reject),
            # Every order validates again, so renewals exercise the responders too.
            "PEBBLE_AUTHZREUSE": "0",
            "PEBBLE_VA_ALWAYS_VALID": "1" if always_valid else "0",
        }
        root, root_key = generate_root_ca()
        leaf, leaf_key = generate_leaf(["127.0.0.1", "localhost"], issuer=(root, root_key))
        self.ca_file = workdir / "pebble-tls-ca.pem"
        self.ca_file.write_bytes(pem_cert(root))
        (workdir / "pebble-tls.pem").write_bytes(pem_cert(leaf))
        (workdir / "pebble-tls-key.pem").write_bytes(pem_key(leaf_key))
        config: dict[str, object] = {
            "listenAddress": f"127.0.0.1:{self.acme_port}",
            "managementListenAddress": f"127.0.0.1:{self.management_port}",
            "certificate": str(workdir / "pebble-tls.pem"),
            "privateKey": str(workdir / "pebble-tls-key.pem"),
            "httpPort": self.http_port,
            "tlsPort": self.tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }
        if validity_seconds is not None:
            config["certificateValidityPeriod"] = validity_seconds
        self.config = workdir / "pebble-config.json"
        self.config.write_text(json.dumps({"pebble": config}))
        self.log = workdir / "pebble.log"
        self.dns_log = workdir / "challtestsrv.log"
        self._pebble: subprocess.Popen[bytes] | None = None
        self._dns: subprocess.Popen[bytes] | None = None

    @property
    def directory_url(self) -> str:
        return f"https://127.0.0.1:{self.acme_port}/dir"

    @property
    def management_url(self) -> str:
        return f"https://127.0.0.1:{self.management_port}"

    # -- processes -----------------------------------------------------------------

    def start(self) -> None:
        assert PEBBLE is not None and CHALLTESTSRV is not None
        if self._dns is None:
            # Every A query answered with 127.0.0.1; its own challenge servers off.
            argv = [
                CHALLTESTSRV,
                "-dns01", f"127.0.0.1:{self.dns_port}",
                "-http01", "", "-https01", "", "-tlsalpn01", "",
                "-management", f"127.0.0.1:{self.dns_management_port}",
                "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "",
            ]  # fmt: skip
            with self.dns_log.open("ab") as log:
                self._dns = subprocess.Popen(
                    argv,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            wait_until(lambda: _listening(self.dns_management_port), START_TIMEOUT, "challtestsrv")
        with self.log.open("ab") as log:
            self._pebble = subprocess.Popen(
                [PEBBLE, "-config", str(self.config), "-dnsserver", f"127.0.0.1:{self.dns_port}"],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                cwd=self.workdir,
            )
        wait_until(self._answers, START_TIMEOUT, "pebble's directory")

    def _answers(self) -> bool:
        assert self._pebble is not None
        if self._pebble.poll() is not None:
            raise AssertionError(f"pebble exited: {self.log.read_text()[-2000:]}")
        try:
            self.get(self.directory_url)
        except OSError:
            return False
        return True

    def stop_pebble(self) -> None:
        """Take the CA down (challtestsrv keeps running)."""
        _stop(self._pebble)
        self._pebble = None

    def restart(self) -> None:
        """Bring the CA (back) up: new root, no accounts, same ports."""
        self.stop_pebble()
        self.start()

    def stop(self) -> None:
        _stop(self._pebble)
        _stop(self._dns)
        self._pebble = self._dns = None

    # -- what tests ask ------------------------------------------------------------

    def get(self, url: str) -> bytes:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        with urllib.request.urlopen(url, context=context, timeout=5) as response:
            data: bytes = response.read()
            return data

    def root_pem(self) -> bytes:
        """The root of the chains pebble issues now (new at every start)."""
        return self.get(f"{self.management_url}/roots/0")

    def orders(self) -> int:
        """New orders pebble has received since the first start (from its log)."""
        return self.log.read_text(errors="replace").count("POST /order-plz")

    def accounts_created(self) -> int:
        return self.log.read_text(errors="replace").count("There are now")


def _stop(process: subprocess.Popen[bytes] | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(STOP_TIMEOUT)


def running_pebble(workdir: Path, **options: object) -> Iterator[PebbleCA]:
    """Start a PebbleCA, hand it out, and stop it whatever happens (for fixtures)."""
    ca = PebbleCA(workdir, **options)  # type: ignore[arg-type]
    try:
        ca.start()
        yield ca
    finally:
        ca.stop()
