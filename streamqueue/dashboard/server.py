"""``serve``: the dashboard under uvicorn until SIGINT or SIGTERM."""

from __future__ import annotations

import logging
import signal
import socket
from types import FrameType

import uvicorn
from pymongo import MongoClient

from streamqueue.dashboard.app import create_app
from streamqueue.dashboard.config import DashboardConfig
from streamqueue.errors import ConfigurationError
from streamqueue.storage import Document

log = logging.getLogger(__name__)

#: Open event streams get this long to close when the server stops.
SHUTDOWN_GRACE = 2


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, dashboard: DashboardConfig) -> None:
        super().__init__(config)
        self.dashboard = dashboard

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


def serve(client: MongoClient[Document], config: DashboardConfig) -> None:
    app = create_app(client, config)
    server = _Server(uvicorn.Config(
        app, host=config.host, port=config.port, log_config=None, lifespan="on",
        timeout_graceful_shutdown=SHUTDOWN_GRACE, server_header=False), config)
    try:
        server.run()
    except SystemExit:  # uvicorn's answer to a port it cannot bind, logged already
        server.started = False
    if not server.started:
        raise ConfigurationError(f"the dashboard could not listen on {config.host}:{config.port} "
                                 "(see the log above)")
    log.info("dashboard stopped")
