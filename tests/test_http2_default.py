"""
HTTP/2 by default: a plain ``pip install`` of this project (a fresh
virtual environment, no extras) gives ``membio-https`` HTTP/2, which curl
``--http2`` and headless Chromium negotiate; ``--alpn http/1.1`` turns it
off.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from importlib.metadata import requires
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from ._plugin_helpers import REPO, free_port, running
from .test_plugin import READY, _chromium, _dump_dom

#: What a source distribution of the project holds (enough to install it).
SOURCES = ("pyproject.toml", "README.md", "membio_transport", "twisted")


def test_http2_is_a_default_dependency() -> None:
    """In the installed metadata: twisted with its http2 extra, for every install."""
    found = [Requirement(text) for text in requires("membio-transport") or []]
    twisted = [r for r in found if r.name.lower() == "twisted" and r.marker is None]
    assert twisted and "http2" in twisted[0].extras
    assert any(r.name == "prometheus-client" and r.marker is None for r in found)


@pytest.fixture(scope="module")
def plain_install(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with ``pip install <this project>`` and nothing else."""
    base = tmp_path_factory.mktemp("plain-install")
    source = base / "source"
    source.mkdir()
    for name in SOURCES:
        origin = REPO / name
        if origin.is_dir():
            shutil.copytree(
                origin, source / name,
                ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "dropin.cache"),
            )
        else:
            shutil.copy2(origin, source / name)
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    install = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(source)],
        capture_output=True, text=True, timeout=900, check=False,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    return venv


def _env(home: Path) -> dict[str, str]:
    """The plain install's own environment: no PYTHONPATH pointing at this checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SSL_CERT_FILE")}
    home.mkdir(parents=True, exist_ok=True)
    env.update(HOME=str(home), XDG_STATE_HOME=str(home / "state"), PYTHONUNBUFFERED="1")
    return env


def _serve(venv: Path, directory: Path, *arguments: str) -> tuple[list[str], dict[str, str]]:
    command = [str(venv / "bin" / "twistd"), "-n", "--pidfile=", "membio-https", *arguments]
    return command, _env(directory / "home")


def _curl(*args: str) -> str:
    result = subprocess.run(
        ["curl", "-sS", "--max-time", "15", *args], capture_output=True, text=True,
        timeout=30, check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.integration
def test_a_plain_install_serves_http2_to_curl_and_chromium(
    plain_install: Path, tmp_path: Path
) -> None:
    port, certs = free_port(), tmp_path / "certs"
    command, env = _serve(plain_install, tmp_path, "--port", str(port), "--cert-dir", str(certs))
    with running(command, tmp_path, env) as server:
        server.wait_for_log(READY)
        assert "ALPN h2, http/1.1" in server.stdout
        ca = certs / "local-ca.pem"
        url = f"https://localhost:{port}/"
        page = _curl("--http2", "--cacert", str(ca), url)
        assert re.search(r"HTTP version:\s+HTTP/2", page), page
        assert re.search(r"ALPN protocol:\s+h2", page), page

        browser = _chromium()
        if browser is None or shutil.which("certutil") is None:
            if os.environ.get("CI"):
                pytest.fail("CI needs chromium and certutil (Debian: chromium libnss3-tools)")
            pytest.skip("chromium or certutil (libnss3-tools) is not installed")
        home = tmp_path / "browser-home"
        nssdb = home / ".pki" / "nssdb"
        nssdb.mkdir(parents=True)
        for step in (
            ["certutil", "-d", f"sql:{nssdb}", "-N", "--empty-password"],
            ["certutil", "-d", f"sql:{nssdb}", "-A", "-t", "C,,", "-n", "membio", "-i", str(ca)],
        ):
            subprocess.run(step, check=True, capture_output=True, timeout=30)
        dom = _dump_dom(browser, home, url)
        assert "<h1>TLS works</h1>" in dom, dom[:2000]
        assert "<th>HTTP version</th><td>HTTP/2</td>" in dom, dom[:2000]


@pytest.mark.integration
def test_alpn_http11_turns_http2_off(plain_install: Path, tmp_path: Path) -> None:
    port, certs = free_port(), tmp_path / "certs"
    command, env = _serve(
        plain_install, tmp_path, "--port", str(port), "--cert-dir", str(certs),
        "--alpn", "http/1.1",
    )
    with running(command, tmp_path, env) as server:
        server.wait_for_log(READY)
        page = _curl("--http2", "--cacert", str(certs / "local-ca.pem"),
                     f"https://localhost:{port}/")
        assert re.search(r"HTTP version:\s+HTTP/1\.1", page), page
        assert re.search(r"ALPN protocol:\s+http/1\.1", page), page
