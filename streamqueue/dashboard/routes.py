"""The pages, the live event stream and the actions (each a POST with a CSRF token)."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from bson import ObjectId
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from streamqueue.dashboard import pages
from streamqueue.dashboard.auth import SESSION_COOKIE, SESSION_SECONDS, Authenticator, CsrfGuard, same_origin
from streamqueue.dashboard.config import DashboardConfig
from streamqueue.dashboard.live import LiveFeed
from streamqueue.dashboard.schedules import ScheduleRow, schedule_rows
from streamqueue.errors import JobNotFound, StreamQueueError
from streamqueue.storage.dashboard import STATE_FIELDS

log = logging.getLogger(__name__)

#: Seconds between keep-alive comments on an idle event stream.
KEEPALIVE = 15.0
#: What a finished action says on the page it returns to (fixed texts: nothing is echoed).
DONE = {
    "paused": "Queue paused: consumers stop claiming within a second.",
    "resumed": "Queue resumed.",
    "retried": "Dead jobs moved back to the queue.",
    "purged": "Dead jobs deleted.",
    "cancelled": "Job cancelled (or, if running, its handler was asked to stop).",
    "not-cancelled": "Nothing to cancel: the job already finished.",
    "job-retried": "Job moved back to the queue with fresh attempts.",
    "job-purged": "Dead job deleted.",
    "nothing": "Nothing changed: no such dead job.",
    "unscheduled": "Schedule removed: it fires no more (jobs it already fired stay).",
    "not-unscheduled": "Nothing removed: no such schedule (already removed?).",
}


@dataclass
class Dashboard:
    """What every request shares."""

    config: DashboardConfig
    sources: pages.Sources
    feed: LiveFeed
    csrf: CsrfGuard
    templates: Jinja2Templates


def _dash(request: Request) -> Dashboard:
    dash: Dashboard = request.app.state.dashboard
    return dash


def _render(request: Request, name: str, status: int = 200, **context: Any) -> Response:
    dash = _dash(request)
    context.update(read_only=dash.config.read_only, csrf=dash.csrf.token, db=dash.config.db,
                   states=list(STATE_FIELDS), done=DONE.get(request.query_params.get("done", "")),
                   logged_in=dash.config.auth is not None and dash.config.auth.scheme == "token")
    return dash.templates.TemplateResponse(request, name, context, status_code=status)


def _problem(request: Request, status: int, message: str) -> Response:
    return _render(request, "problem.html", status, message=message)


async def _queue_name(request: Request) -> str | None:
    name = str(request.path_params["name"])
    names = await run_in_threadpool(_dash(request).sources.names)
    return name if name in names else None


# -- pages ------------------------------------------------------------------------------------

async def overview(request: Request) -> Response:
    dash = _dash(request)
    summaries = await run_in_threadpool(dash.sources.summaries, dash.feed.rates)
    return _render(request, "overview.html", summaries=summaries)


async def queue_page(request: Request) -> Response:
    dash = _dash(request)
    name = await _queue_name(request)
    if name is None:
        return _problem(request, 404, "No such queue in this database.")
    try:
        wanted = pages.parse_filter(dict(request.query_params))
    except pages.BadRequest as exc:
        return _problem(request, 400, str(exc))

    def read() -> tuple[Any, pages.JobList]:
        return dash.sources.summaries(dash.feed.rates, [name])[0], pages.list_jobs(
            dash.sources, name, wanted)

    try:
        summary, listing = await run_in_threadpool(read)
    except pages.BadRequest as exc:
        return _problem(request, 400, str(exc))
    return _render(request, "queue.html", queue=summary, wanted=wanted, listing=listing)


async def job_page(request: Request) -> Response:
    dash = _dash(request)
    name = await _queue_name(request)
    job_id = _job_id(request)
    if name is None or job_id is None:
        return _problem(request, 404, "No such queue or job.")
    view = await run_in_threadpool(pages.job_view, dash.sources, name, job_id)
    if view is None:
        return _problem(request, 404, "No such job in this queue or its error queue (it may "
                                      "have completed and been deleted).")
    return _render(request, "job.html", queue_name=name, job=view)


async def _schedules(request: Request) -> tuple[str | None, list[ScheduleRow]] | None:
    """The schedules of every queue, or of ``?queue=`` only; None if that queue is unknown."""
    dash = _dash(request)
    only = request.query_params.get("queue") or None
    names = await run_in_threadpool(dash.sources.names)
    if only is not None and only not in names:
        return None
    rows = await run_in_threadpool(schedule_rows, dash.sources, names if only is None else [only])
    return only, rows


async def schedules_page(request: Request) -> Response:
    found = await _schedules(request)
    if found is None:
        return _problem(request, 404, "No such queue in this database.")
    only, rows = found
    return _render(request, "schedules.html", only=only, rows=rows)


async def schedule_rows_json(request: Request) -> Response:
    """The Schedules page's rows as text, fetched again after each live update."""
    found = await _schedules(request)
    if found is None:
        return JSONResponse({"error": "no such queue"}, status_code=404)
    return JSONResponse([row.as_json() for row in found[1]])


def _job_id(request: Request) -> ObjectId | None:
    text = str(request.path_params.get("job_id", ""))
    return ObjectId(text) if ObjectId.is_valid(text) else None


# -- live -------------------------------------------------------------------------------------

async def events(request: Request) -> Response:
    """Server-sent events: the overview's rows (one queue's with ``?queue=``) after each change."""
    dash = _dash(request)
    only = request.query_params.get("queue")
    listener = dash.feed.subscribe()

    async def stream() -> AsyncIterator[str]:
        try:
            while not dash.feed.closed:  # the server is stopping: end the response
                snapshot = await listener.next(KEEPALIVE)
                if dash.feed.closed:
                    break
                if snapshot is None:
                    yield ": keep-alive\n\n"
                    continue
                rows = [row for row in snapshot if only is None or row["name"] == only]
                yield f"event: summary\ndata: {json.dumps(rows)}\n\n"
        finally:
            listener.close()

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"X-Accel-Buffering": "no"})


# -- actions ----------------------------------------------------------------------------------

async def _checked_form(request: Request) -> FormData | None:
    """The form, if it carries this process's CSRF token and comes from this origin."""
    form = await request.form()
    token = form.get("csrf")
    if not same_origin(request.headers) or not _dash(request).csrf.valid(
            token if isinstance(token, str) else None):
        return None
    return form


def _csrf_refused(request: Request) -> Response:
    return _problem(request, 403, "Refused: the form's CSRF token is missing or wrong. "
                                  "Reload the page and try again.")


async def queue_action(request: Request) -> Response:
    dash = _dash(request)
    form = await _checked_form(request)
    if form is None:
        return _csrf_refused(request)
    name = await _queue_name(request)
    if name is None:
        return _problem(request, 404, "No such queue in this database.")
    action = str(request.path_params["action"])
    queue = await run_in_threadpool(dash.sources.registry.queue, name)
    if action in ("retry-failed", "purge-failed") and form.get("confirm") != "yes":
        counts = await run_in_threadpool(dash.sources.summaries, dash.feed.rates, [name])
        return _render(request, "confirm.html", queue_name=name, action=action,
                       dead=counts[0].counts.shown("failed"))
    steps: dict[str, tuple[Callable[[], Any], str]] = {
        "pause": (queue.pause, "paused"), "resume": (queue.resume, "resumed"),
        "retry-failed": (queue.retry_failed, "retried"),
        "purge-failed": (queue.purge_failed, "purged")}
    if action not in steps:
        return _problem(request, 404, "No such action.")
    run, done = steps[action]
    await run_in_threadpool(run)
    log.info("dashboard: %s on %s.%s", action, dash.config.db, name)
    return RedirectResponse(f"/queues/{name}?done={done}", status_code=303)


async def job_action(request: Request) -> Response:
    dash = _dash(request)
    form = await _checked_form(request)
    if form is None:
        return _csrf_refused(request)
    name, job_id = await _queue_name(request), _job_id(request)
    if name is None or job_id is None:
        return _problem(request, 404, "No such queue or job.")
    queue = await run_in_threadpool(dash.sources.registry.queue, name)
    action = str(request.path_params["action"])
    if action == "cancel":
        done = "cancelled" if await run_in_threadpool(queue.cancel, job_id) else "not-cancelled"
    elif action == "retry":
        done = "job-retried" if await run_in_threadpool(queue.retry_failed, job_id) else "nothing"
    elif action == "purge":
        done = "job-purged" if await run_in_threadpool(queue.purge_failed, job_id) else "nothing"
    else:
        return _problem(request, 404, "No such action.")
    log.info("dashboard: %s job %s on %s.%s", action, job_id, dash.config.db, name)
    return RedirectResponse(f"/queues/{name}/jobs/{job_id}?done={done}", status_code=303)


async def unschedule(request: Request) -> Response:
    """Remove one schedule (form fields ``queue`` and ``name``), after a confirmation page."""
    dash = _dash(request)
    form = await _checked_form(request)
    if form is None:
        return _csrf_refused(request)
    queue_name, name = form.get("queue"), form.get("name")
    names = await run_in_threadpool(dash.sources.names)
    if not isinstance(queue_name, str) or queue_name not in names or not isinstance(name, str):
        return _problem(request, 404, "No such queue in this database.")
    if form.get("confirm") != "yes":
        return _render(request, "unschedule.html", queue_name=queue_name, schedule_name=name)
    queue = await run_in_threadpool(dash.sources.registry.queue, queue_name)
    try:
        removed = await run_in_threadpool(queue.unschedule, name)
    except (TypeError, ValueError) as exc:  # not a schedule name at all
        return _problem(request, 400, str(exc))
    log.info("dashboard: unschedule %r on %s.%s", name, dash.config.db, queue_name)
    done = "unscheduled" if removed else "not-unscheduled"
    return RedirectResponse(f"/schedules?queue={quote(queue_name, safe='')}&done={done}",
                            status_code=303)


# -- session (token auth) ---------------------------------------------------------------------

async def login_form(request: Request) -> Response:
    return _render(request, "login.html", failed=False)


async def login(request: Request) -> Response:
    dash = _dash(request)
    auth: Authenticator | None = dash.config.auth
    form = await _checked_form(request)
    token = None if form is None else form.get("token")
    if auth is None or auth.scheme != "token" or not isinstance(token, str) \
            or not auth.token_matches(token):
        log.warning("dashboard: a login was refused")
        return _render(request, "login.html", 401, failed=True)
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(SESSION_COOKIE, auth.new_session(), max_age=SESSION_SECONDS,
                        httponly=True, samesite="strict", secure=request.url.scheme == "https")
    return response


async def logout(request: Request) -> Response:
    if await _checked_form(request) is None:
        return _csrf_refused(request)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE)
    return response


async def storage_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, JobNotFound):
        return _problem(request, 404, str(exc))
    log.warning("dashboard: %s %s failed: %s", request.method, request.url.path, exc)
    return _problem(request, 503, f"MongoDB could not answer: {exc}")


def routes(static_dir: str) -> list[Route | Mount]:
    return [
        Route("/", overview),
        Route("/events", events),
        Route("/login", login_form, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/schedules", schedules_page),
        Route("/schedules/rows", schedule_rows_json),
        Route("/schedules/unschedule", unschedule, methods=["POST"]),
        Route("/queues/{name}", queue_page),
        Route("/queues/{name}/jobs/{job_id}", job_page),
        Route("/queues/{name}/jobs/{job_id}/{action}", job_action, methods=["POST"]),
        Route("/queues/{name}/{action}", queue_action, methods=["POST"]),
        Mount("/static", StaticFiles(directory=static_dir), name="static"),
    ]


ERROR_HANDLERS = {StreamQueueError: storage_error}
