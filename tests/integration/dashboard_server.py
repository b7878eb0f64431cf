"""A real dashboard (uvicorn, in a thread of the test process) on a real database, for tests."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import anyio
from pymongo import MongoClient
from starlette.applications import Starlette

from streamqueue.dashboard.app import create_app
from streamqueue.dashboard.config import DashboardConfig
from streamqueue.dashboard.routes import Dashboard
from streamqueue.dashboard.server import DashboardServer
from streamqueue.storage import Document
from tests.helpers import wait_until


@dataclass
class Running:
    url: str
    app: Starlette

    @property
    def dashboard(self) -> Dashboard:
        dash: Dashboard = self.app.state.dashboard
        return dash


@contextlib.contextmanager
def running_dashboard(client: MongoClient[Document], config: DashboardConfig) -> Iterator[Running]:
    """Serve ``config`` on a free loopback port; stop the server (and its feed) afterwards."""
    # anyio imports its file module on the first static file, and pytest rewrites anyio (a
    # plugin) as it imports it: two threads parsing at once trip CPython 3.11.7's AST
    # recursion check (SystemError). Imported here, in the test's thread, first.
    assert anyio.open_file is not None
    app = create_app(client, config)
    server = DashboardServer(app, "127.0.0.1", 0)
    thread = threading.Thread(target=server.run, name="test-dashboard", daemon=True)
    thread.start()
    assert wait_until(lambda: server.started, timeout=15), "the dashboard did not start"
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield Running(f"http://127.0.0.1:{port}", app)
    finally:
        server.handle_exit(signal.SIGTERM, None)  # as the command's signal handler does
        thread.join(timeout=15)
        assert not thread.is_alive(), "the dashboard did not stop"


def open_change_streams(client: MongoClient[Document], db: str) -> int:
    """Change-stream cursors open on the server for database ``db`` (idle ones included)."""
    pipeline: list[Document] = [
        {"$currentOp": {"allUsers": True, "idleCursors": True}},
        {"$match": {"cursor.originatingCommand.$db": db}},
    ]
    count = 0
    for op in client.admin.aggregate(pipeline):
        stages = op["cursor"]["originatingCommand"].get("pipeline", [])
        count += bool(stages) and "$changeStream" in stages[0]
    return count
