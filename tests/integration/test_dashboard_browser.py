"""The dashboard in a real headless Chromium against the real server.

One browser for the module and one dashboard per mode (open, read-only,
token), each a real uvicorn server. Each test checks what the page shows
and, for actions, what MongoDB then holds. The screenshots of the overview,
queue and job pages are written to docs/images/ for the docs and README.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import pytest
from pymongo import MongoClient
from selenium.common.exceptions import (
    NoAlertPresentException,
    StaleElementReferenceException,
    WebDriverException,
)
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from streamqueue import Queue
from streamqueue.dashboard.auth import Authenticator
from streamqueue.dashboard.config import DashboardConfig
from streamqueue.dashboard.format import when
from streamqueue.schedule import ScheduleInfo
from streamqueue.scheduler import Scheduler
from streamqueue.storage import Document
from tests.helpers import wait_until
from tests.integration.browser import SCREENSHOTS, chromium, require_browser
from tests.integration.dashboard_server import Running, running_dashboard

TOKEN = "tok-" + uuid.uuid4().hex
#: The server side's loggers (the test's own Selenium client logs what it types).
SERVER_LOGGERS = ("streamqueue", "uvicorn", "starlette")
HOSTILE = {
    "script": "<script>window.__pwned = 1; alert(1)</script>",
    "img": '<img src=x onerror="window.__pwned = 2; alert(2)">',
    "link": "javascript:alert(3)",
    "svg": "<svg onload=alert(4)>",
}


@pytest.fixture(scope="module")
def driver() -> Iterator[WebDriver]:
    require_browser()
    with chromium() as session:
        yield session


@pytest.fixture(scope="module")
def db(mongo_client: MongoClient[Document]) -> Iterator[str]:
    name = f"dashb_{uuid.uuid4().hex[:10]}"
    yield name
    mongo_client.drop_database(name)


@pytest.fixture(scope="module")
def dash(mongo_client: MongoClient[Document], db: str, driver: WebDriver) -> Iterator[Running]:
    with running_dashboard(mongo_client, DashboardConfig(db=db)) as running:
        yield running
        driver.get("about:blank")  # closes the page's event stream before the server stops


class MakeQueue(Protocol):
    def __call__(self, name: str | None = None, /, **options: Any) -> Queue: ...


@pytest.fixture
def make(mongo_client: MongoClient[Document], db: str) -> Iterator[MakeQueue]:
    """Queues in the dashboard's database (a fresh name unless given one), closed afterwards."""
    made: list[Queue] = []

    def build(name: str | None = None, /, **options: Any) -> Queue:
        queue = Queue(mongo_client[db][name or f"q_{uuid.uuid4().hex[:8]}"], max_await=1.0,
                      **options)
        made.append(queue)
        return queue

    yield build
    for queue in made:
        queue.close()


def _text(driver: WebDriver, element_id: str) -> str:
    return str(driver.find_element(By.ID, element_id).text)


def _cell(driver: WebDriver, queue: str, field: str) -> str:
    return str(driver.find_element(
        By.CSS_SELECTOR, f'tr[data-queue="{queue}"] [data-field="{field}"]').text)


def _replaced(page: WebElement) -> Callable[[WebDriver], bool]:
    """``staleness_of``, also when chromedriver reports the old page's node as gone
    ("Node with given id does not belong to the document") while it navigates."""
    def gone(_: WebDriver) -> bool:
        try:
            page.is_enabled()
        except StaleElementReferenceException:
            return True
        except WebDriverException as exc:
            if "does not belong to the document" in str(exc):
                return True
            raise
        return False
    return gone


def _click(driver: WebDriver, element_id: str) -> None:
    """Click a button or link and wait until the page it loads has replaced this one."""
    page = driver.find_element(By.TAG_NAME, "html")
    driver.find_element(By.ID, element_id).click()
    WebDriverWait(driver, 10).until(_replaced(page))


def _row_ids(driver: WebDriver) -> list[str]:
    return [str(row.find_element(By.TAG_NAME, "code").text)
            for row in driver.find_elements(By.CSS_SELECTOR, "#jobs tr.job")]


def _shot(driver: WebDriver, page: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(SCREENSHOTS / f"dashboard-{page}.png"))


def _no_alert(driver: WebDriver) -> bool:
    try:
        driver.switch_to.alert  # noqa: B018 (the property raises when there is none)
    except NoAlertPresentException:
        return True
    return False


def test_the_overview_shows_a_job_put_by_another_client_within_a_second(
        driver: WebDriver, dash: Running, make: MakeQueue, db: str,
        other_client: MongoClient[Document]) -> None:
    queue, busy = make("emails"), make("reports")
    queue.put({"to": "a@example.com"})
    busy.put_many([{"n": i} for i in range(12)])
    busy.put({"later": True}, delay=3600)
    assert busy.claim(2)
    driver.get(dash.url + "/")
    WebDriverWait(driver, 10).until(lambda d: d.find_element(By.TAG_NAME, "body")
                                    .get_attribute("data-updates"))
    driver.execute_script("window.__sameDocument = true;")
    assert _cell(driver, "emails", "counts.ready") == "1"
    with Queue(other_client[db]["emails"]) as producer:  # another client, as another process
        producer.put({"to": "b@example.com"})
    WebDriverWait(driver, 1.0, poll_frequency=0.02).until(
        lambda d: _cell(d, "emails", "counts.ready") == "2")
    assert driver.execute_script("return window.__sameDocument === true;")  # no reload
    _shot(driver, "overview")


def test_filter_and_paging(driver: WebDriver, dash: Running, make: MakeQueue) -> None:
    queue = make()
    ids = queue.put_many([{"n": i} for i in range(53)])
    vip = queue.put({"vip": True}, tags=["vip"], priority=9)
    driver.get(f"{dash.url}/queues/{queue.name}")
    first = _row_ids(driver)
    assert len(first) == 50
    assert first[0] == str(vip)  # claim order: the highest priority first
    _click(driver, "next-page")
    rest = _row_ids(driver)
    assert len(rest) == 4
    assert not driver.find_elements(By.ID, "next-page")
    assert set(first + rest) == {str(oid) for oid in [*ids, vip]}

    driver.get(f"{dash.url}/queues/{queue.name}")
    driver.find_element(By.ID, "filter-tag").send_keys("vip")
    _click(driver, "filter-go")
    assert _row_ids(driver) == [str(vip)]

    driver.get(f"{dash.url}/queues/{queue.name}?id={ids[7]}")
    assert _row_ids(driver) == [str(ids[7])]
    driver.get(f"{dash.url}/queues/{queue.name}")
    _shot(driver, "queue")


def test_a_failed_jobs_page_shows_its_error_and_retry_brings_it_back(
        driver: WebDriver, dash: Running, make: MakeQueue) -> None:
    queue = make(max_attempts=1)
    job_id = queue.put({"invoice": 1042, "customer": {"id": 7, "plan": "pro"}}, tags=["billing"])
    job = queue.claim(1)[0]
    try:
        raise ValueError("card declined: insufficient funds")
    except ValueError:
        import traceback

        job.error(traceback.format_exc())
    driver.get(f"{dash.url}/queues/{queue.name}/jobs/{job_id}")
    assert _text(driver, "job-state") == "failed"
    error = _text(driver, "last-error")
    assert "Traceback" in error and "ValueError: card declined: insufficient funds" in error
    assert '"invoice": 1042' in _text(driver, "payload")
    _shot(driver, "job")
    _click(driver, "retry-job")
    assert "moved back to the queue" in _text(driver, "notice")
    info = queue.get(job_id)
    assert info is not None and info.state == "ready" and info.attempts == 0


def test_cancel_from_the_job_page_removes_the_job(driver: WebDriver, dash: Running,
                                                  make: MakeQueue) -> None:
    queue = make()
    job_id = queue.put({"n": 1})
    driver.get(f"{dash.url}/queues/{queue.name}/jobs/{job_id}")
    assert _text(driver, "job-state") == "ready"
    _click(driver, "cancel-job")
    assert "cancelled" in _text(driver, "notice")
    assert queue.get(job_id) is None  # keep_completed=0: a cancelled ready job is deleted


def test_pause_shows_and_takes_effect_then_resume(driver: WebDriver, dash: Running,
                                                  make: MakeQueue) -> None:
    queue = make()
    consumer = make(queue.name)
    queue.put({"n": 1})
    driver.get(f"{dash.url}/queues/{queue.name}")
    assert _text(driver, "pause-state") == "running"
    _click(driver, "toggle-pause")
    assert "Queue paused" in _text(driver, "notice")
    assert _text(driver, "pause-state") == "paused"
    assert queue.is_paused()
    assert consumer.claim(1) == []  # a ready job, but the queue is paused
    _click(driver, "toggle-pause")
    assert "Queue resumed" in _text(driver, "notice")
    assert _text(driver, "pause-state") == "running"
    # A fresh consumer: one that read "paused" without its stream open trusts that for
    # 0.5 s (streamqueue/pause.py), even across opening its stream (reported separately).
    assert make(queue.name).next(timeout=5) is not None


def test_bulk_retry_goes_through_a_confirmation(driver: WebDriver, dash: Running,
                                                make: MakeQueue) -> None:
    queue = make(max_attempts=1)
    queue.put_many([{"n": i} for i in range(3)])
    for job in queue.claim(3):
        job.error("boom")
    driver.get(f"{dash.url}/queues/{queue.name}")
    _click(driver, "retry-failed")
    assert "3 dead job(s)" in _text(driver, "confirm-text")
    assert queue.stats()["dead"] == 3  # nothing yet
    _click(driver, "confirm")
    assert queue.stats()["dead"] == 0 and queue.stats()["available"] == 3


def test_hostile_payloads_and_errors_render_as_text_and_run_nothing(
        driver: WebDriver, dash: Running, make: MakeQueue) -> None:
    queue = make(max_attempts=1)
    job_id = queue.put(dict(HOSTILE), tags=["<b>tag</b>"], key="<i>key</i>")
    dead_id = queue.put(dict(HOSTILE))
    for job in queue.claim(2):
        if job.id == dead_id:
            job.error(HOSTILE["img"] + HOSTILE["script"])
        else:
            job.release()
    for path in (f"/queues/{queue.name}", f"/queues/{queue.name}?state=failed",
                 f"/queues/{queue.name}/jobs/{job_id}", f"/queues/{queue.name}/jobs/{dead_id}"):
        driver.get(dash.url + path)
        assert _no_alert(driver), path
        assert driver.execute_script("return window.__pwned === undefined;"), path
        # Only our own script; no element the payload tried to inject.
        assert driver.execute_script("return document.scripts.length;") == 1, path
        assert not driver.find_elements(By.CSS_SELECTOR, "main img, main svg, main b, main i")
    assert "<script>window.__pwned = 1; alert(1)</script>" in _text(driver, "payload")
    assert '<img src=x onerror="window.__pwned = 2; alert(2)">' in _text(driver, "last-error")
    assert not driver.find_elements(By.CSS_SELECTOR, 'a[href^="javascript:"]')


def test_read_only_mode_has_no_controls(driver: WebDriver, mongo_client: MongoClient[Document],
                                        db: str, make: MakeQueue) -> None:
    queue = make(max_attempts=1)
    job_id = queue.put({"n": 1})
    queue.claim(1)[0].error("boom")
    with running_dashboard(mongo_client, DashboardConfig(db=db, read_only=True)) as read_only:
        for path in ("/", f"/queues/{queue.name}", f"/queues/{queue.name}/jobs/{job_id}"):
            driver.get(read_only.url + path)
            assert _text(driver, "read-only") == "read-only"
            assert not driver.find_elements(By.CSS_SELECTOR, "form[method=post]")
            # Only the (GET) filter form's button remains.
            assert [b.get_attribute("id") for b in driver.find_elements(By.TAG_NAME, "button")] \
                in ([], ["filter-go"])
        status = driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            f"fetch('/queues/{queue.name}/jobs/{job_id}/retry', {{method: 'POST'}})"
            ".then(r => done(r.status));")
        driver.get("about:blank")
    assert status == 403
    info = queue.get(job_id)
    assert info is not None and info.state == "failed"


def test_token_login_and_a_forged_post_from_the_page(
        driver: WebDriver, mongo_client: MongoClient[Document], db: str, make: MakeQueue,
        caplog: pytest.LogCaptureFixture) -> None:
    for name in SERVER_LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name)
    queue = make()
    queue.put({"n": 1})
    config = DashboardConfig(db=db, auth=Authenticator("token", TOKEN))
    with running_dashboard(mongo_client, config) as guarded:
        driver.get(f"{guarded.url}/queues/{queue.name}")
        assert driver.current_url.endswith("/login")
        driver.find_element(By.ID, "token").send_keys(TOKEN)
        _click(driver, "login-go")
        driver.get(f"{guarded.url}/queues/{queue.name}")
        assert _text(driver, "pause-state") == "running"
        sources = [driver.page_source]
        driver.get(guarded.url + "/")
        sources.append(driver.page_source)
        # A script on the page (as an injected one would) posts without the CSRF token.
        status = driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            f"fetch('/queues/{queue.name}/pause', {{method: 'POST'}}).then(r => done(r.status));")
        assert status == 403
        assert not queue.is_paused()
        cookies = driver.get_cookies()
        driver.delete_all_cookies()
        driver.get("about:blank")
    assert all(TOKEN not in source for source in sources)
    assert all(TOKEN not in cookie["value"] for cookie in cookies)
    assert not [r for r in caplog.records if TOKEN in r.getMessage()
                and r.name.startswith(SERVER_LOGGERS)]


def _sched_cell(driver: WebDriver, name: str, field: str) -> str:
    return str(driver.find_element(
        By.CSS_SELECTOR, f'tr[data-sched-name="{name}"] [data-field="{field}"]').text)


def _live(driver: WebDriver) -> None:
    WebDriverWait(driver, 10).until(lambda d: d.find_element(By.TAG_NAME, "body")
                                    .get_attribute("data-updates"))


def test_the_schedules_page_shows_a_new_schedule_and_its_next_fire_moves_after_a_fire(
        driver: WebDriver, dash: Running, make: MakeQueue, db: str,
        other_client: MongoClient[Document]) -> None:
    queue = make()
    queue.put({"n": 1})
    queue.schedule("weekday-digest", cron="30 6 * * 1-5", timezone="Europe/Berlin",
                   payload={"report": "digest"})
    driver.get(f"{dash.url}/queues/{queue.name}")
    _click(driver, "queue-schedules")
    _live(driver)
    assert _sched_cell(driver, "weekday-digest", "last_job") == "—"
    with Queue(other_client[db][queue.name]) as other:  # another client, as another process
        other.schedule("heartbeat", every=2, payload={"ping": True})
    # The page reloads itself to show the new row.
    WebDriverWait(driver, 10, poll_frequency=0.05).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, 'tr[data-sched-name="heartbeat"]'))
    first = _sched_cell(driver, "heartbeat", "next_at")
    assert first.endswith("Z") and _sched_cell(driver, "heartbeat", "fired") == "0"
    def heartbeat() -> ScheduleInfo:
        return next(info for info in queue.schedules() if info.name == "heartbeat")

    # Fired as a scheduler would, once the server's clock reaches the tick.
    assert wait_until(lambda: Scheduler(queue).run_pass() >= 0 and heartbeat().fired > 0,
                      timeout=10)
    fired = heartbeat()
    WebDriverWait(driver, 10, poll_frequency=0.05).until(
        lambda d: _sched_cell(d, "heartbeat", "last_job") == str(fired.last_job_id))
    assert _sched_cell(driver, "heartbeat", "next_at") not in ("", first)
    # The tick shown as next, or (misfire "latest", when the page was slow) a later one.
    assert _sched_cell(driver, "heartbeat", "last_tick") == when(fired.last_tick) >= first
    driver.set_window_size(1700, 500)  # the whole table in the picture
    _shot(driver, "schedules")
    driver.set_window_size(1280, 900)
    link = driver.find_element(By.CSS_SELECTOR, 'tr[data-sched-name="heartbeat"] a[data-field]')
    assert str(link.get_attribute("href")).endswith(f"/queues/{queue.name}/jobs/{fired.last_job_id}")
    link.click()
    WebDriverWait(driver, 10).until(lambda d: _text(d, "job-state") == "ready")
    driver.back()
    page = driver.find_element(By.TAG_NAME, "html")
    driver.find_element(By.CSS_SELECTOR, 'tr[data-sched-name="heartbeat"] button').click()
    WebDriverWait(driver, 10).until(_replaced(page))
    assert "heartbeat" in str(driver.find_element(By.TAG_NAME, "h1").text)
    _click(driver, "confirm")
    assert "fires no more" in _text(driver, "notice")
    assert [info.name for info in queue.schedules()] == ["weekday-digest"]
    assert not driver.find_elements(By.CSS_SELECTOR, 'tr[data-sched-name="heartbeat"]')
