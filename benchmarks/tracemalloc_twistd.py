"""twistd with tracemalloc on: where a server's Python memory goes (benchmarks/endtoend.py).

    python benchmarks/tracemalloc_twistd.py SNAPSHOT_PREFIX [twistd arguments...]

Runs ``twistd`` with its usual arguments, tracing Python allocations.  Each SIGUSR2 writes a
snapshot to ``SNAPSHOT_PREFIX.N`` (N = 0, 1, ...) that `tracemalloc.Snapshot.load` reads back.
Comparing two snapshots taken around opening idle connections gives the Python objects per
connection; the rest of the VmRSS growth is memory allocated outside Python's allocator
(OpenSSL's ``SSL`` objects and buffers, the kernel-facing parts of sockets).  SIGUSR1 is left to
twistd, which rotates its log file on it.
"""

from __future__ import annotations

import gc
import signal
import sys
import tracemalloc
from types import FrameType


def main() -> None:
    prefix = sys.argv[1]
    taken = 0

    def snapshot(signum: int, frame: FrameType | None) -> None:
        nonlocal taken
        gc.collect()
        tracemalloc.take_snapshot().dump(f"{prefix}.{taken}")
        taken += 1

    tracemalloc.start(8)
    signal.signal(signal.SIGUSR2, snapshot)
    sys.argv = ["twistd", *sys.argv[2:]]
    from twisted.scripts.twistd import run

    run()


if __name__ == "__main__":
    main()
