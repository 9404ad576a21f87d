"""
``python -m membio_transport [options]``: ``twistd -n membio-https [options]``
in the foreground, without a pid file, and without depending on Twisted's
plugin discovery (which misses editable installs run from another directory).

``python -m membio_transport --help`` lists the options.  For twistd's own
options (logging, daemonizing, --uid), run ``twistd`` itself.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from typing import Any

__all__ = ["main"]

COMMAND = "python -m membio_transport"


def main(argv: Sequence[str] | None = None) -> None:
    from twisted.application import app
    from twisted.application.service import ServiceMaker
    from twisted.scripts import twistd

    from .https import tap

    maker = ServiceMaker(
        "membio-https",
        "membio_transport.https.tap",
        "HTTPS server with a generated, trusted-once certificate",
        "membio-https",
    )

    class Options(tap.Options):
        command = COMMAND

        def getSynopsis(self) -> str:
            return f"Usage: {COMMAND} [options]"

    platform_options: Any = getattr(twistd, "ServerOptions")  # noqa: B009  # chosen per platform, not re-exported

    class ServerOptions(platform_options):  # type: ignore[misc]  # an untyped base class
        @property
        def subCommands(self) -> Iterator[tuple[str, None, Any, str]]:
            self.loadedPlugins = {maker.tapname: maker}
            yield (maker.tapname, None, Options, maker.description)

    arguments = list(sys.argv[1:] if argv is None else argv)
    sys.argv = [COMMAND, "--nodaemon", "--pidfile=", maker.tapname, *arguments]
    app.run(twistd.runApp, ServerOptions)


if __name__ == "__main__":
    main()
