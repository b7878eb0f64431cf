"""``serve``: the dashboard under uvicorn until SIGINT or SIGTERM."""

from __future__ import annotations

import logging
import signal
import socket
from types import FrameType

import uvicorn
from pymongo import MongoClient
from starlette.applications import Starlette

from streamqueue.dashboard.app import create_app
from streamqueue.dashboard.config import DashboardConfig
from streamqueue.dashboard.routes import Dashboard
from streamqueue.errors import ConfigurationError
from streamqueue.storage import Document

log = logging.getLogger(__name__)

#: Open event streams get this long to close when the server stops.
SHUTDOWN_GRACE = 2


class DashboardServer(uvicorn.Server):
    """uvicorn's server, told how to stop the dashboard's event streams when asked to exit."""

    def __init__(self, app: Starlette, host: str, port: int) -> None:
        super().__init__(uvicorn.Config(
            app, host=host, port=port, log_config=None, lifespan="on",
            timeout_graceful_shutdown=SHUTDOWN_GRACE, server_header=False))
        dash: Dashboard = app.state.dashboard
        self.dashboard = dash.config
        self.feed = dash.feed

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.should_exit:  # the port was taken: uvicorn said so already
            return
        config = self.dashboard
        mode = " (read-only)" if config.read_only else ""
        auth = f", {config.auth.scheme} auth" if config.auth is not None else ""
        # --port 0 takes any free port: say which.
        port = self.servers[0].sockets[0].getsockname()[1] if self.servers else self.config.port
        log.info("dashboard for database %s serving on http://%s:%d/%s%s", config.db,
                 self.config.host, port, mode, auth)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # SIGINT/SIGTERM is how this service is asked to stop: stop, then exit 0 (uvicorn's
        # own handler raises the signal again once stopped). A second Ctrl-C forces it.
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        self.should_exit = True
        self.feed.stop()  # open pages end their event streams, so nothing holds the exit


def serve(client: MongoClient[Document], config: DashboardConfig) -> None:
    server = DashboardServer(create_app(client, config), config.host, config.port)
    try:
        server.run()
    except SystemExit:  # uvicorn's answer to a port it cannot bind, logged already
        server.started = False
    if not server.started:
        raise ConfigurationError(f"the dashboard could not listen on {config.host}:{config.port} "
                                 "(see the log above)")
    log.info("dashboard stopped")
