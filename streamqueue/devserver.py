"""A local MongoDB replica set in the foreground, for development.

``python -m streamqueue.devserver [--nodes N] [--port P] [--dbpath DIR]`` (or
``streamqueue devserver``) starts real ``mongod`` processes (see
``streamqueue.testing``), prints the connection string on stdout and keeps
running until SIGINT or SIGTERM, then stops every ``mongod`` it started.
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import IO

from streamqueue.exitcodes import ExitCode
from streamqueue.testing import ReplicaSet

log = logging.getLogger(__name__)

#: How often the members are checked while the server runs.
CHECK_INTERVAL = 1.0


class _Stop(BaseException):
    """Raised by the signal handler to unwind the main thread into ``finally``."""


def serve(
    nodes: int = 1,
    port: int | None = None,
    dbpath: Path | None = None,
    stdout: IO[str] | None = None,
) -> int:
    """Run the replica set until a signal; return the exit status.

    The URI goes to ``stdout`` (flushed at once, so a parent process can read
    it); everything else is logged.
    """
    out = stdout if stdout is not None else sys.stdout
    ports = [port + index for index in range(nodes)] if port is not None else []
    root = dbpath.expanduser().resolve() if dbpath is not None else None
    if root is not None:
        root.mkdir(parents=True, exist_ok=True)
    rs = ReplicaSet(nodes=nodes, root=root, ports=ports)
    signals_seen = 0

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen == 1:
            raise _Stop(signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            log.info("starting a %d-node replica set", nodes)
            uri = rs.start()
            out.write(uri + "\n")
            out.flush()
            log.info("replica set %s is up: export STREAMQUEUE_URI='%s' (Ctrl-C stops it)",
                     "rs0", uri)
            return _watch(rs)
        finally:
            # Later signals are ignored so the shutdown itself is not cut short.
            for sig in previous:
                signal.signal(sig, signal.SIG_IGN)
            if rs.members:
                log.info("stopping %d mongod process%s", len(rs.members),
                         "" if len(rs.members) == 1 else "es")
            rs.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    except _Stop:
        log.info("stopped")
        return ExitCode.OK


def _watch(rs: ReplicaSet) -> int:
    reported: set[int] = set()
    while True:
        time.sleep(CHECK_INTERVAL)
        for member in rs.members:
            if not member.alive() and member.port not in reported:
                reported.add(member.port)
                log.warning("mongod on port %d exited; last log lines:\n%s", member.port,
                            member.log_tail(5))
        if len(reported) == len(rs.members):
            log.error("every mongod has exited")
            return ExitCode.UNAVAILABLE


def main(argv: list[str] | None = None) -> int:
    from streamqueue.cli import main as cli_main

    return cli_main(["devserver", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
