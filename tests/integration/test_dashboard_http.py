"""The dashboard over HTTP against the real server: auth, CSRF, read-only, confirmation, SSE.

Each refusal is checked twice: the status, and that MongoDB is unchanged.
"""

from __future__ import annotations

import base64
import logging
import re
import uuid
from collections.abc import Iterator

import httpx
import pytest
from pymongo import MongoClient

from streamqueue import Queue
from streamqueue.dashboard.auth import Authenticator
from streamqueue.dashboard.config import DashboardConfig
from streamqueue.schedule import ScheduleInfo
from streamqueue.scheduler import Scheduler
from streamqueue.storage import Document
from tests.helpers import Background, wait_until
from tests.integration.dashboard_server import Running, open_change_streams, running_dashboard

TOKEN = "tok-" + uuid.uuid4().hex
#: The server side's loggers (the test's own Selenium client logs what it types).
SERVER_LOGGERS = ("streamqueue", "uvicorn", "starlette")
BASIC = "admin:" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def db(mongo_client: MongoClient[Document]) -> Iterator[str]:
    name = f"dash_{uuid.uuid4().hex[:10]}"
    yield name
    mongo_client.drop_database(name)


@pytest.fixture
def queue(mongo_client: MongoClient[Document], db: str) -> Iterator[Queue]:
    queue = Queue(mongo_client[db][f"q_{uuid.uuid4().hex[:8]}"], max_await=1.0)
    queue.put({"n": 1})
    yield queue
    queue.close()


def _serve(mongo_client: MongoClient[Document], db: str, **options: object) -> Iterator[Running]:
    with running_dashboard(mongo_client, DashboardConfig(db=db, **options)) as running:  # type: ignore[arg-type]
        yield running


@pytest.fixture(scope="module")
def open_dash(mongo_client: MongoClient[Document], db: str) -> Iterator[Running]:
    yield from _serve(mongo_client, db)


@pytest.fixture(scope="module")
def token_dash(mongo_client: MongoClient[Document], db: str) -> Iterator[Running]:
    yield from _serve(mongo_client, db, auth=Authenticator("token", TOKEN))


@pytest.fixture(scope="module")
def basic_dash(mongo_client: MongoClient[Document], db: str) -> Iterator[Running]:
    yield from _serve(mongo_client, db, auth=Authenticator("basic", BASIC))


@pytest.fixture(scope="module")
def readonly_dash(mongo_client: MongoClient[Document], db: str) -> Iterator[Running]:
    yield from _serve(mongo_client, db, read_only=True)


def _csrf(running: Running) -> str:
    return running.dashboard.csrf.token


def test_every_response_carries_a_strict_content_security_policy(open_dash: Running,
                                                                  queue: Queue) -> None:
    for path in ("/", f"/queues/{queue.name}", "/queues/nope", "/static/dashboard.js"):
        response = httpx.get(open_dash.url + path)
        policy = response.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "unsafe-inline" not in policy
        assert response.headers["x-frame-options"] == "DENY"
    assert httpx.get(open_dash.url + "/queues/nope").status_code == 404


def test_a_post_without_a_valid_csrf_token_is_refused_and_changes_nothing(
        open_dash: Running, queue: Queue) -> None:
    url = f"{open_dash.url}/queues/{queue.name}/pause"
    assert httpx.post(url).status_code == 403
    assert httpx.post(url, data={"csrf": "forged"}).status_code == 403
    cross_site = httpx.post(url, data={"csrf": _csrf(open_dash)},
                            headers={"Origin": "http://evil.example"})
    assert cross_site.status_code == 403
    assert not queue.is_paused()
    done = httpx.post(url, data={"csrf": _csrf(open_dash)})
    assert done.status_code == 303
    assert queue.is_paused()


def test_token_auth_guards_pages_and_posts_and_the_token_never_shows(
        token_dash: Running, queue: Queue, caplog: pytest.LogCaptureFixture) -> None:
    for name in SERVER_LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name)
    page = f"{token_dash.url}/queues/{queue.name}"
    assert httpx.get(page).status_code == 303  # to the login form
    refused = httpx.post(f"{page}/pause", data={"csrf": _csrf(token_dash)})
    assert refused.status_code == 401
    assert not queue.is_paused()
    assert httpx.get(page, headers={"Authorization": f"Bearer {TOKEN}x"}).status_code == 303
    assert httpx.get(page, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200

    with httpx.Client(base_url=token_dash.url) as browser:
        wrong = browser.post("/login", data={"csrf": _csrf(token_dash), "token": "nope"})
        assert wrong.status_code == 401
        login = browser.post("/login", data={"csrf": _csrf(token_dash), "token": TOKEN})
        assert login.status_code == 303
        cookie = login.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and TOKEN not in cookie
        shown = [browser.get(path) for path in ("/", f"/queues/{queue.name}")]
        assert all(response.status_code == 200 for response in shown)
        assert browser.post(f"/queues/{queue.name}/pause",
                            data={"csrf": _csrf(token_dash)}).status_code == 303
    assert queue.is_paused()
    assert all(TOKEN not in response.text for response in shown)
    assert not [r for r in caplog.records if TOKEN in r.getMessage()
                and r.name.startswith(SERVER_LOGGERS)]
    assert "a login was refused" in caplog.text


def test_basic_auth(basic_dash: Running, queue: Queue) -> None:
    refused = httpx.get(basic_dash.url + "/")
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"].startswith("Basic")
    user, password = BASIC.split(":")
    assert httpx.get(basic_dash.url + "/", auth=(user, password + "x")).status_code == 401
    assert httpx.get(basic_dash.url + "/", auth=(user, password)).status_code == 200
    bogus = base64.b64encode(b"\xff\xfe").decode()
    assert httpx.get(basic_dash.url + "/",
                     headers={"Authorization": f"Basic {bogus}"}).status_code == 401


def test_read_only_shows_no_controls_and_refuses_every_change(readonly_dash: Running,
                                                              queue: Queue) -> None:
    dead = queue.claim(1)[0]
    queue.store.bury(dead.id, dead.lease_token, "boom")
    queue.schedule("nightly", cron="0 3 * * *")
    pages = [httpx.get(f"{readonly_dash.url}{path}") for path in
             ("/", f"/queues/{queue.name}", f"/queues/{queue.name}/jobs/{dead.id}", "/schedules")]
    assert "nightly" in pages[-1].text
    refused = httpx.post(f"{readonly_dash.url}/schedules/unschedule",
                         data={"csrf": _csrf(readonly_dash), "queue": queue.name,
                               "name": "nightly", "confirm": "yes"})
    assert refused.status_code == 403
    assert [info.name for info in queue.schedules()] == ["nightly"]
    assert all(page.status_code == 200 for page in pages)
    assert not any(re.search(r'method="post"', page.text) for page in pages)
    for action in ("pause", "purge-failed", f"jobs/{dead.id}/retry"):
        response = httpx.post(f"{readonly_dash.url}/queues/{queue.name}/{action}",
                              data={"csrf": _csrf(readonly_dash), "confirm": "yes"})
        assert response.status_code == 403
    assert not queue.is_paused()
    assert queue.get(dead.id) is not None and queue.get(dead.id).state == "failed"  # type: ignore[union-attr]


def test_bulk_purge_asks_for_confirmation_first(open_dash: Running, queue: Queue) -> None:
    job = queue.claim(1)[0]
    queue.store.bury(job.id, job.lease_token, "boom")
    url = f"{open_dash.url}/queues/{queue.name}/purge-failed"
    asked = httpx.post(url, data={"csrf": _csrf(open_dash)})
    assert asked.status_code == 200 and 'name="confirm" value="yes"' in asked.text
    assert queue.stats()["dead"] == 1
    done = httpx.post(url, data={"csrf": _csrf(open_dash), "confirm": "yes"})
    assert done.status_code == 303
    assert queue.stats()["dead"] == 0


def _next_summary(lines: Iterator[str]) -> str:
    for line in lines:
        if line.startswith("data: "):
            return line
    raise AssertionError("the event stream ended")


def test_every_listener_shares_one_change_stream_which_closes_when_they_leave(
        open_dash: Running, queue: Queue, mongo_client: MongoClient[Document], db: str) -> None:
    feed = open_dash.dashboard.feed
    assert wait_until(lambda: not feed.running, timeout=10)
    baseline = open_change_streams(mongo_client, db)
    with httpx.Client(base_url=open_dash.url, timeout=10) as client:
        streams = [client.stream("GET", "/events") for _ in range(3)]
        responses = [stream.__enter__() for stream in streams]
        # One line iterator per response for its whole life: a dropped one closes the stream.
        readers = [response.iter_lines() for response in responses]
        try:
            for response, lines in zip(responses, readers, strict=True):
                assert response.headers["content-type"].startswith("text/event-stream")
                assert queue.name in _next_summary(lines)
            assert wait_until(lambda: feed.listeners == 3, timeout=5), feed.listeners
            assert wait_until(lambda: open_change_streams(mongo_client, db) == baseline + 1)
        finally:
            for stream in streams:
                stream.__exit__(None, None, None)
    assert wait_until(lambda: feed.listeners == 0 and not feed.running, timeout=10)
    assert wait_until(lambda: open_change_streams(mongo_client, db) == baseline, timeout=10)


def test_a_put_reaches_an_open_event_stream_without_asking(
        open_dash: Running, queue: Queue, mongo_client: MongoClient[Document]) -> None:
    other = Queue(mongo_client[queue.store.jobs.database.name][queue.name])
    with httpx.Client(base_url=open_dash.url, timeout=20) as client, client.stream(
            "GET", f"/events?queue={queue.name}") as response:
        lines = response.iter_lines()
        assert '"ready": "1"' in _next_summary(lines)
        other.put({"n": 2})
        seen = Background(lambda: _next_summary(lines)).start()
        assert '"ready": "2"' in seen.join(timeout=15)
    other.close()


def test_stopping_the_server_ends_open_event_streams_at_once(
        mongo_client: MongoClient[Document], db: str, queue: Queue,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="uvicorn")
    with running_dashboard(mongo_client, DashboardConfig(db=db)) as running, \
            httpx.Client(base_url=running.url, timeout=20) as client, \
            client.stream("GET", "/events") as response:
        lines = response.iter_lines()
        assert queue.name in _next_summary(lines)
        rest = Background(lambda: list(lines)).start()
        running.dashboard.feed.stop()  # what the server's signal handler does first
        assert not any(rest.join(timeout=5))  # the stream ended, with nothing more
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


HOSTILE_NAME = '<script>window.__pwned = 1</script>'
HOSTILE_PAYLOAD = {"img": '<img src=x onerror="alert(1)">'}


def _fire_next(queue: Queue, name: str) -> None:
    """Fire ``name``'s next tick once the server's clock reaches it, as a scheduler would."""
    before = _schedule(queue, name).fired
    assert wait_until(lambda: Scheduler(queue).run_pass() >= 0
                      and _schedule(queue, name).fired > before, timeout=10)


def _schedule(queue: Queue, name: str) -> ScheduleInfo:
    return next(info for info in queue.schedules() if info.name == name)


def test_the_schedules_page_shows_next_and_last_fire_with_names_and_payloads_escaped(
        open_dash: Running, queue: Queue) -> None:
    queue.schedule(HOSTILE_NAME, every=1, payload=HOSTILE_PAYLOAD, misfire="skip")
    queue.schedule("berlin", cron="30 6 * * 1-5", timezone="Europe/Berlin")
    page = httpx.get(f"{open_dash.url}/schedules")
    assert page.status_code == 200
    assert "<script>window" not in page.text and "<img src=x" not in page.text
    assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt;" in page.text
    assert "cron 30 6 * * 1-5" in page.text and "Europe/Berlin" in page.text
    # The schedules' collection is no queue of its own.
    assert f"{queue.name}.schedules" not in httpx.get(open_dash.url + "/").text
    _fire_next(queue, HOSTILE_NAME)
    info = _schedule(queue, HOSTILE_NAME)
    rows = httpx.get(f"{open_dash.url}/schedules/rows?queue={queue.name}").json()
    row = next(row for row in rows if row["name"] == HOSTILE_NAME)
    assert row["last_job"] == str(info.last_job_id)
    assert row["fired"] == 1 and row["next_at"].endswith("Z") and row["lateness"].endswith("s")
    page = httpx.get(f"{open_dash.url}/schedules?queue={queue.name}")
    assert f'href="/queues/{queue.name}/jobs/{info.last_job_id}"' in page.text
    job = httpx.get(f"{open_dash.url}/queues/{queue.name}/jobs/{info.last_job_id}")
    assert job.status_code == 200 and "&lt;img src=x" in job.text
    assert httpx.get(f"{open_dash.url}/schedules?queue=nope").status_code == 404
    assert httpx.get(f"{open_dash.url}/schedules/rows?queue=nope").status_code == 404



def test_unschedule_needs_the_csrf_token_and_a_confirmation(open_dash: Running,
                                                            queue: Queue) -> None:
    queue.schedule(HOSTILE_NAME, cron="0 3 * * *")
    url = f"{open_dash.url}/schedules/unschedule"
    form = {"queue": queue.name, "name": HOSTILE_NAME}
    assert httpx.post(url, data=form).status_code == 403
    assert httpx.post(url, data={**form, "csrf": "forged", "confirm": "yes"}).status_code == 403
    asked = httpx.post(url, data={**form, "csrf": _csrf(open_dash)})
    assert asked.status_code == 200 and 'name="confirm" value="yes"' in asked.text
    assert "<script>window" not in asked.text
    assert [info.name for info in queue.schedules()] == [HOSTILE_NAME]  # nothing yet
    done = httpx.post(url, data={**form, "csrf": _csrf(open_dash), "confirm": "yes"})
    assert done.status_code == 303 and done.headers["location"].endswith("done=unscheduled")
    assert queue.schedules() == []
    again = httpx.post(url, data={**form, "csrf": _csrf(open_dash), "confirm": "yes"})
    assert again.headers["location"].endswith("done=not-unscheduled")
    unknown = httpx.post(url, data={**form, "queue": "nope", "csrf": _csrf(open_dash)})
    assert unknown.status_code == 404
    empty = httpx.post(url, data={**form, "name": "", "csrf": _csrf(open_dash), "confirm": "yes"})
    assert empty.status_code == 400
