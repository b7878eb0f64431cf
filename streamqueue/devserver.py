"""A local MongoDB replica set in the foreground, for development.

``python -m streamqueue.devserver [--nodes N] [--port P] [--dbpath DIR]`` (or
``streamqueue devserver``) starts real ``mongod`` processes (see
``streamqueue.testing``), prints the connection string on stdout and keeps
running until SIGINT or SIGTERM, then stops every ``mongod`` it started.
"""

from __future__ import annotations

import json
import logging
import signal
import socket
import sys
import time
from pathlib import Path
from types import FrameType
from typing import IO

from pymongo.errors import PyMongoError

from streamqueue.errors import ConfigurationError
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
            _check_ports_free(ports)
            try:
                uri = rs.start()
            except ConfigurationError as exc:
                log.debug("replica set start failed", exc_info=True)
                raise ConfigurationError(summarize_start_failure(str(exc))) from None
            except PyMongoError as exc:
                log.debug("replica set start failed", exc_info=True)
                raise ConfigurationError(f"the replica set did not come up: {exc}") from None
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


def _check_ports_free(ports: list[int]) -> None:
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            # As mongod binds: a port left in TIME_WAIT by the last run is usable.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
            except OSError as exc:
                raise ConfigurationError(
                    f"port {port} on 127.0.0.1 is not free ({exc.strerror or exc}); "
                    "choose another --port"
                ) from None


def summarize_start_failure(message: str) -> str:
    """One line from a launcher error that may carry a tail of mongod's JSON log.

    ``mongod on port 5 exited:`` followed by log lines becomes ``mongod on port
    5 exited: Error setting up listener: Address already in use``.
    """
    lines = message.strip().splitlines()
    head = lines[0].strip() if lines else message
    for line in lines[1:]:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if not isinstance(entry, dict) or entry.get("s") not in ("E", "F"):
            continue
        detail = str(entry.get("msg", "")).strip()
        attr = entry.get("attr")
        error = attr.get("error") if isinstance(attr, dict) else None
        reason = (error.get("errmsg") or error.get("codeName")) if isinstance(error, dict) else None
        if reason is None and isinstance(attr, dict):
            reason = attr.get("error") or attr.get("reason")
        text = f"{detail}: {reason}" if detail and reason else detail or str(reason or "")
        if text:
            return f"{head} {text}"
    return head


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
