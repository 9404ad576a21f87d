#!/usr/bin/env bash
# The whole test suite, from a fresh machine that has only python3 (3.11+):
# installs the system tools the tests drive (openssl, curl, chromium, NSS
# tools, wrk, haproxy, ss, setpriv, systemd-socket-activate, pebble, prometheus)
# when they are missing, builds .venv, then runs ruff, mypy, trial on the parity suite
# and on Twisted's own TLS tests (the conformance run), and pytest.
# Arguments are passed to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
need() { command -v "$1" >/dev/null || missing+=("$2"); }
need openssl openssl
need curl curl
need chromium chromium
need certutil libnss3-tools
need wrk wrk
need haproxy haproxy
need ss iproute2
need setpriv util-linux
need stdbuf coreutils
# systemd-socket-activate stands in for a .socket unit (tests/test_workers.py);
# Debian ships it in the systemd package (installing it boots nothing).
need systemd-socket-activate systemd
# Let's Encrypt's test CA and its DNS/challenge mock, for tests/test_acme_pebble.py.
need pebble pebble
need pebble-challtestsrv pebble
need prometheus prometheus
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then apt=(apt-get); else apt=(sudo -n apt-get); fi
    echo "tests/run.sh: installing ${missing[*]}" >&2
    DEBIAN_FRONTEND=noninteractive "${apt[@]}" update -qq
    DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y -qq --no-install-recommends "${missing[@]}"
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# strict editable mode: a link tree Twisted's plugin scan finds (twisted/plugins).
.venv/bin/python -m pip install -q -e '.[test]' --config-settings editable_mode=strict

.venv/bin/python -m ruff check .
.venv/bin/python -m mypy
# The parity suite is plain trial TestCases: prove trial runs it too.
.venv/bin/python -m twisted.trial --temp-directory="${TMPDIR:-/tmp}/membio-trial" tests.test_parity
# Twisted's own TLS tests against our classes (tests/twisted_conformance.py),
# under trial; pytest runs them again below.
.venv/bin/python -m twisted.trial --reporter=text \
    --temp-directory="${TMPDIR:-/tmp}/membio-trial-conformance" tests.twisted_conformance
exec .venv/bin/python -m pytest "$@"
