"""Fixtures shared by every test: a real MongoDB replica set, never a mock.

The deployment is chosen in this order: ``$STREAMQUEUE_TEST_URI``; a
``mongo:7`` container through testcontainers when a Docker daemon answers;
otherwise real ``mongod`` processes started by ``streamqueue.testing``.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import uuid
import warnings
from collections.abc import Iterator

import pytest
from pymongo import MongoClient
from pymongo.collection import Collection

from streamqueue.storage import Document
from streamqueue.testing import ReplicaSet


def pytest_configure(config: pytest.Config) -> None:
    # A shell starts background jobs with SIGINT ignored, and children inherit
    # that: the tests that stop a process with Ctrl-C (the docs examples, the
    # worker's drain) would then wait in vain when the suite runs in the background.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _docker_answers() -> bool:
    if not os.environ.get("DOCKER_HOST") and not os.path.exists("/var/run/docker.sock"):
        return False
    try:
        import docker  # type: ignore[import-untyped]
    except ImportError:
        return False
    # docker-py leaks the socket of a failed connection; its ResourceWarning
    # would surface in a later test as an error (filterwarnings = error).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            docker.from_env(timeout=3).ping()
        except Exception:  # any failure means "no daemon"
            return False
        finally:
            gc.collect()
    return True


@contextlib.contextmanager
def _container_replica_set() -> Iterator[str]:
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.waiting_utils import wait_for_logs

    # No root credentials: they turn auth on, and a replica set with auth
    # then needs a key file.
    container = DockerContainer("mongo:7").with_command(
        "--replSet rs0 --bind_ip_all"
    ).with_exposed_ports(27017)
    with container:
        wait_for_logs(container, "Waiting for connections", timeout=60)
        host = container.get_container_host_ip()
        port = container.get_exposed_port(27017)
        direct = f"mongodb://{host}:{port}/?directConnection=true"
        client: MongoClient[Document] = MongoClient(direct, serverSelectionTimeoutMS=10000)
        with client:
            client.admin.command(
                "replSetInitiate",
                {"_id": "rs0", "members": [{"_id": 0, "host": "localhost:27017"}]},
            )
            _wait_writable(client)
        yield direct


def _wait_writable(client: MongoClient[Document]) -> None:
    import time

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if client.admin.command("hello").get("isWritablePrimary"):
            return
        time.sleep(0.2)
    raise RuntimeError("the container's replica set elected no primary")


@pytest.fixture(scope="session")
def mongo_uri() -> Iterator[str]:
    explicit = os.environ.get("STREAMQUEUE_TEST_URI")
    if explicit:
        yield explicit
    elif _docker_answers():
        with _container_replica_set() as uri:
            yield uri
    else:
        # The TTL monitor wakes every second, not every minute: a test of
        # kept-job removal then waits seconds (test_history.py sets it too).
        with ReplicaSet(nodes=1, extra_args=["--setParameter", "ttlMonitorSleepSecs=1"]) as rs:
            yield rs.uri


@pytest.fixture(scope="session")
def mongo_client(mongo_uri: str) -> Iterator[MongoClient[Document]]:
    client: MongoClient[Document] = MongoClient(mongo_uri)
    yield client
    client.close()


@pytest.fixture
def collection(mongo_client: MongoClient[Document]) -> Iterator[Collection[Document]]:
    """A fresh, uniquely named queue collection; dropped (with its error queue) afterwards."""
    name = f"q_{uuid.uuid4().hex[:12]}"
    db = mongo_client["streamqueue_test"]
    yield db[name]
    db.drop_collection(name)
    db.drop_collection(f"{name}.failed")
    db.drop_collection(f"{name}.schedules")
