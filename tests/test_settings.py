"""
The settings table (``membio_transport.serving._settings``) against the
README and the entry points: the README's "TLS settings" table is the code's
table, row for row (name, flag, endpoint key, default, meaning); every
setting is an option of both apps and a key of ``membio:``; and the options
the README documents for each app, and the keys for ``membio:``, exist.

When a setting changes, print the table this test expects with
``python -m tests.test_settings`` and paste it into the README.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from membio_transport.https import tap
from membio_transport.proxy import tap as proxy_tap
from membio_transport.serving import ENTRY_POINTS, SETTINGS, Setting

from ._readme import section, table

HEADING = "TLS settings"
COLUMNS = ["setting", "flag", "`membio:` key", "default", "entry points", "meaning"]


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("*", "\\*")


def row_of(setting: Setting) -> list[str]:
    """One Markdown table row for C{setting}, as the README must show it."""
    flag = f"`{setting.flag}`" + (f", `-{setting.short}`" if setting.short else "")
    if setting.repeats:
        flag += " (repeatable)"
    elif setting.switch:
        flag += " (no value)"
    key = f"`{setting.key}=`" + "".join(f", `{alias}=`" for alias in setting.key_aliases)
    if setting.repeats:
        key += " (comma-separated)"
    elif setting.switch:
        key += " (`yes`/`no`)"
    if "membio:" not in setting.entry_points:
        key = "none"
    every = setting.entry_points == ENTRY_POINTS
    where = "all" if every else ", ".join(setting.entry_points)
    return [f"`{setting.name}`", flag, key, _escape(setting.default), where, _escape(setting.help)]


def render() -> str:
    lines = [
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
        *("| " + " | ".join(row_of(setting)) + " |" for setting in SETTINGS),
    ]
    return "\n".join(lines)


def test_the_readme_table_is_the_code_s_table() -> None:
    assert render() in section(HEADING), f"the README's table should read:\n{render()}"
    rows = table(HEADING)
    assert [row["setting"] for row in rows] == [f"`{s.name}`" for s in SETTINGS]
    assert list(rows[0]) == COLUMNS


def test_every_setting_is_an_option_of_both_apps_and_a_key_of_the_endpoint() -> None:
    """Of the entry points its row names: every one, unless it makes no sense for one."""
    # TLSOptions gives both apps every row: a row for one app only would need it to filter.
    assert all({"membio-https", "membio-tls"} <= set(s.entry_points) for s in SETTINGS)
    for entry, options in (("membio-https", tap.Options()), ("membio-tls", proxy_tap.Options())):
        usage_text = options.getUsage(width=200)
        for setting in SETTINGS:
            if entry in setting.entry_points:
                assert f"{setting.flag}" in usage_text, (type(options).__module__, setting.flag)
    from twisted.internet import reactor

    from membio_transport.serving import parse_server

    with pytest.raises(ValueError) as raised:
        parse_server(reactor, "0", colour="blue")
    known = str(raised.value).split("known: ")[1].split(", ")
    for setting in SETTINGS:
        keys = [setting.key, *setting.key_aliases]
        if "membio:" in setting.entry_points:
            assert all(key in known for key in keys), setting.name
        else:
            assert not any(key in known for key in keys), setting.name
            with pytest.raises(ValueError, match=f"{setting.key}= applies to membio-https"):
                parse_server(reactor, "0", **{setting.key: "x"})


def test_the_metrics_endpoint_of_a_membio_key_is_escaped_as_twisted_escapes(
    tmp_path: Path,
) -> None:
    """``metrics=tcp\\:9100\\:interface=127.0.0.1``: Twisted unescapes the colons."""
    from twisted.internet import reactor
    from twisted.internet.endpoints import quoteStringArgument, serverFromString

    inner = "tcp:9100:interface=127.0.0.1"
    assert quoteStringArgument(inner) == "tcp\\:9100\\:interface=127.0.0.1"
    endpoint = serverFromString(
        reactor,
        f"membio:0:interface=127.0.0.1:certDir={quoteStringArgument(str(tmp_path))}"
        f":metrics={quoteStringArgument(inner)}",
    )
    assert endpoint.serving.settings.metrics == inner  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match=r"inside metrics= write each colon as \\:"):
        serverFromString(reactor, f"membio:0:metrics={inner}")  # unescaped: cut at the colons
    with pytest.raises(ValueError, match=r"metrics='nope:1' is not a server endpoint"):
        serverFromString(reactor, "membio:0:metrics=nope\\:1")


def _documented_flags(heading: str) -> set[str]:
    rows = table(heading)
    return {flag for row in rows for flag in re.findall(r"`(--[a-z][a-z0-9-]*)", row["option"])}


@pytest.mark.parametrize(
    ("heading", "options"),
    [("The `membio-https` server", tap.Options), ("A TLS termination proxy", proxy_tap.Options)],
)
def test_the_apps_document_only_options_they_have(heading: str, options: type) -> None:
    usage_text = options().getUsage(width=200)
    documented = _documented_flags(heading)
    assert documented, heading
    missing = sorted(flag for flag in documented if f"{flag}" not in usage_text)
    assert not missing, f"{heading} documents options the app lacks: {missing}"
    tls = {setting.flag for setting in SETTINGS}
    assert not documented & tls, "TLS settings belong in the one table, not in an app's"


def test_the_endpoint_keys_the_readme_names_exist() -> None:
    text = section("The `membio:` endpoint")
    named = set(re.findall(r"[`:\[]([a-zA-Z]+)=", text))
    assert {"port", "interface", "endpoint", "host", "caFile"} <= named
    server_keys = {"port", "interface", "endpoint"} | {
        key for setting in SETTINGS for key in (setting.key, *setting.key_aliases)
    }
    client_keys = {
        "host", "port", "caFile", "timeout", "bindAddress", "certificate", "privateKey",
        "alpn", "endpoint",
    }
    unknown = sorted(named - server_keys - client_keys)
    assert not unknown, f"the README names keys no parser takes: {unknown}"


if __name__ == "__main__":
    print(render())
