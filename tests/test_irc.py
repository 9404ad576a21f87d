"""
The IRC-over-TLS recipe as the README documents it, command for command
(with a free port, and HOME pointing at a temporary directory so that
``~/.local/state/membio-transport`` is the test's own): ``twistd words`` on
a ``membio:`` endpoint with ``openssl s_client`` and a scripted client, the
``examples/irc_over_tls.py`` server wrapping ``IRCFactory`` in Python with
two ``examples/irc_client.py`` clients talking in a channel, and the
"wrap any Factory" echo example.

``tests/test_plugin.py`` covers ``twistd words`` and a ``.tac`` in more
depth; its IRC client helper is reused here.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from membio_transport.certs import ensure_certificate

from ._plugin_helpers import (
    REPO,
    TLS_ON_LOOPBACK,
    IRCClient,
    listening_port,
    running,
    subprocess_env,
)

pytestmark = pytest.mark.integration

#: The README's recipe.  {twistd} and {python} stand for the virtualenv's
#: programs, {port} for 6697, {examples} for the checkout's examples/.
RECIPE_WORDS = (
    "{twistd} -n words --irc-port membio:{port}:interface=127.0.0.1 "
    "--auth memory:alice:secret:bob:secret"
)
RECIPE_S_CLIENT = (
    "openssl s_client -connect localhost:{port} "
    "-CAfile ~/.local/state/membio-transport/local-ca.pem -quiet -crlf"
)
RECIPE_EXAMPLE_SERVER = (
    "{python} {examples}/irc_over_tls.py --port {port} "
    "--cert ~/.local/state/membio-transport/server.pem "
    "--key ~/.local/state/membio-transport/server-key.pem --user alice:secret --user bob:secret"
)
RECIPE_EXAMPLE_CLIENT = (
    "{python} {examples}/irc_client.py --nick {nick} --password secret "
    '--server "membio:host=localhost:port={port}:caFile=$HOME/.local/state/membio-transport/'
    'local-ca.pem" '
    "--channel '#tls' --say 'hello from {nick}' --expect 'hello from {other}'"
)
RECIPE_ECHO_SERVER = (
    "{python} {examples}/echo_tls.py server --port {port} "
    "--cert ~/.local/state/membio-transport/server.pem "
    "--key ~/.local/state/membio-transport/server-key.pem"
)
RECIPE_ECHO_CLIENT = (
    "{python} {examples}/echo_tls.py client --port {port} "
    "--ca ~/.local/state/membio-transport/local-ca.pem 'hello, TLS'"
)


def _fill(recipe: str, **values: object) -> list[str]:
    """The recipe as a shell command line (so that ~ and $HOME expand)."""
    bin_dir = Path(sys.executable).parent
    text = recipe.format(
        twistd=bin_dir / "twistd", python=sys.executable, examples=REPO / "examples", **values
    )
    return ["bash", "-c", f"exec {text}"]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A HOME whose default state directory holds a generated certificate."""
    home = tmp_path / "home"
    ensure_certificate(home / ".local" / "state" / "membio-transport", ())
    return home


def _env(home: Path) -> dict[str, str]:
    env = subprocess_env(home)
    env.pop("XDG_STATE_HOME")  # the recipe relies on the default location
    return env


def test_twistd_words_recipe_with_scripted_clients(tmp_path: Path, home: Path) -> None:
    ca = home / ".local" / "state" / "membio-transport" / "local-ca.pem"
    with running(_fill(RECIPE_WORDS, port=0), tmp_path, _env(home), "words") as server:
        port = listening_port(server, TLS_ON_LOOPBACK)
        alice = IRCClient(port, ca, "alice", "secret")
        bob = IRCClient(port, ca, "bob", "secret")
        try:
            alice.expect(r" 001 alice ")
            bob.expect(r" 001 bob ")
            bob.send("PRIVMSG alice :hi from a scripted client")
            heard = alice.expect(r"PRIVMSG alice :")
            assert heard.startswith(":bob!") and heard.endswith(":hi from a scripted client")
        finally:
            alice.close()
            bob.close()


def test_twistd_words_recipe_with_openssl_s_client(tmp_path: Path, home: Path) -> None:
    """The README's ``openssl s_client`` line, typed as written."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: the recipe's s_client line was not run")
    ca = home / ".local" / "state" / "membio-transport" / "local-ca.pem"
    with running(_fill(RECIPE_WORDS, port=0), tmp_path, _env(home), "words") as server:
        port = listening_port(server, TLS_ON_LOOPBACK)
        alice = IRCClient(port, ca, "alice", "secret")
        try:
            alice.expect(r" 001 alice ")
            lines = "PASS secret\nNICK bob\nUSER bob 0 * :bob\nPRIVMSG alice :hi via openssl\n"
            with subprocess.Popen(
                _fill(RECIPE_S_CLIENT, port=port), cwd=tmp_path, env=_env(home),
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            ) as s_client:
                assert s_client.stdin is not None
                s_client.stdin.write(lines.encode())
                s_client.stdin.flush()
                try:
                    heard = alice.expect(r"PRIVMSG alice :")
                finally:
                    s_client.stdin.write(b"QUIT :bye\n")
                    s_client.stdin.close()
                    try:
                        s_client.wait(10)
                    except subprocess.TimeoutExpired:
                        s_client.kill()
                        s_client.wait(5)
            assert heard.startswith(":bob!") and heard.endswith(":hi via openssl")
        finally:
            alice.close()


def test_example_server_wraps_ircfactory_and_two_clients_talk_in_a_channel(
    tmp_path: Path, home: Path
) -> None:
    command = _fill(RECIPE_EXAMPLE_SERVER, port=0)
    with running(command, tmp_path, _env(home), "irc-example") as server:
        port = listening_port(server, r"IRC over TLS on 127\.0\.0\.1:(\d+)")
        clients, outputs = {}, {}
        try:
            for nick, other in (("alice", "bob"), ("bob", "alice")):
                log = tmp_path / f"{nick}.out"
                with open(log, "w") as out:
                    clients[nick] = subprocess.Popen(
                        _fill(RECIPE_EXAMPLE_CLIENT, port=port, nick=nick, other=other),
                        cwd=tmp_path, env=_env(home), stdout=out, stderr=subprocess.STDOUT,
                    )
                # Alice waits alone in the channel; Bob then finds her there.
                _wait_for_text(log, f"{nick}: joined #tls", clients[nick])
            for nick, process in clients.items():
                process.wait(30)
                outputs[nick] = (tmp_path / f"{nick}.out").read_text()
                assert process.returncode == 0, outputs[nick]
        finally:
            for process in clients.values():
                if process.poll() is None:
                    process.kill()
                    process.wait(5)
    assert "alice: <bob> hello from bob" in outputs["alice"]
    assert "bob: <alice> hello from alice" in outputs["bob"]
    assert "Traceback" not in server.stdout + server.stderr


def _wait_for_text(path: Path, text: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while text not in path.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"no {text!r}: {path.read_text()}")
        time.sleep(0.05)


def test_wrap_any_factory_echo_example(tmp_path: Path, home: Path) -> None:
    with running(_fill(RECIPE_ECHO_SERVER, port=0), tmp_path, _env(home), "echo") as server:
        port = listening_port(server, r"echo server ready on 127\.0\.0\.1:(\d+)")
        result = subprocess.run(
            _fill(RECIPE_ECHO_CLIENT, port=port), cwd=tmp_path, env=_env(home),
            capture_output=True, text=True, timeout=30, check=False,
        )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "echoed: hello, TLS\n"


def test_readme_recipe_names_only_what_exists() -> None:
    """The example files the recipe runs are there, and their docs show the same commands."""
    for name in ("irc_over_tls.py", "irc_client.py", "echo_tls.py"):
        assert (REPO / "examples" / name).exists()
    docs = (REPO / "examples" / "irc_over_tls.py").read_text()
    assert re.search(r"--user alice:secret --user bob:secret", docs)
    assert "-nocap" in docs
