"""``create_app``: the dashboard as a Starlette application on one MongoDB database."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import jinja2
from pymongo import MongoClient
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.templating import Jinja2Templates

from streamqueue.dashboard import format as fmt
from streamqueue.dashboard.auth import CsrfGuard
from streamqueue.dashboard.config import DashboardConfig
from streamqueue.dashboard.guard import Guard
from streamqueue.dashboard.live import MAX_AWAIT, LiveFeed, Snapshot
from streamqueue.dashboard.pages import Sources
from streamqueue.dashboard.queues import REQUEST_RETRY, QueueRegistry
from streamqueue.dashboard.rates import RateWindow
from streamqueue.dashboard.routes import ERROR_HANDLERS, Dashboard, routes
from streamqueue.storage import Document
from streamqueue.storage.dashboard import DashboardStore, FeedStream

HERE = Path(__file__).resolve().parent


def templates() -> Jinja2Templates:
    # Autoescaping everywhere: payloads, errors and results are user data.
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    env.filters.update(duration=fmt.duration, when=fmt.when, pretty_json=fmt.pretty_json,
                       short_json=fmt.short_json)
    # Compiled now: a broken template fails at start-up, and no request compiles one.
    for name in env.list_templates():
        env.get_template(name)
    return Jinja2Templates(env=env)


def create_app(client: MongoClient[Document], config: DashboardConfig) -> Starlette:
    """The app; ``client`` stays the caller's to close (after the app has shut down)."""
    database = client[config.db]
    reads = DashboardStore(database, REQUEST_RETRY)
    registry = QueueRegistry(database)
    sources = Sources(reads, registry, config.queues)

    def build(rates: RateWindow) -> Snapshot:
        return [summary.as_json() for summary in sources.summaries(rates)]

    def watch() -> FeedStream:
        return reads.watch(list(config.queues) or None, MAX_AWAIT)

    feed = LiveFeed(build, watch)
    dashboard = Dashboard(config, sources, feed, CsrfGuard(), templates())

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            feed.close()
            registry.close()

    app = Starlette(routes=routes(str(HERE / "static")),
                    middleware=[Middleware(Guard, auth=config.auth, read_only=config.read_only)],
                    exception_handlers=ERROR_HANDLERS,
                    lifespan=lifespan)
    app.state.dashboard = dashboard
    return app
