"""``defer`` keeps the task's signature (ParamSpec): ``make lint`` (mypy --strict, which
warns about unused ignores) checks this file. Each wrong call below carries the
ignore of the error mypy must report; if the typing regressed and accepted the
call, the ignore would be unused and lint would fail. The calls never run."""

from __future__ import annotations

from collections.abc import Awaitable

from bson import ObjectId
from pymongo import AsyncMongoClient, MongoClient

from streamqueue import Tasks


def wrong_calls(tasks: Tasks[ObjectId], atasks: Tasks[Awaitable[ObjectId]]) -> None:
    @tasks.task(queue="emails")
    def send_email(to: str, subject: str) -> None: ...

    @tasks.task
    def bare(n: int) -> int:
        return n

    @atasks.task
    async def notify(user: int) -> None: ...

    job_id: ObjectId = send_email.defer(to="ada@example.com", subject="hi")
    send_email.defer(too="x", subject="hi")  # type: ignore[call-arg]
    send_email.defer(to=1, subject="hi")  # type: ignore[arg-type]
    send_email.defer("ada@example.com")  # type: ignore[call-arg]
    send_email.configure(delay=30).defer(to="a", subject="b", extra=1)  # type: ignore[call-arg]
    bare.defer("1")  # type: ignore[arg-type]
    total: int = bare(2)  # a plain call still returns the function's result
    wrong: str = bare(2)  # type: ignore[assignment]
    pending: Awaitable[ObjectId] = notify.defer(user=1)  # an async registry's defer is awaitable
    not_an_id: ObjectId = notify.defer(user=1)  # type: ignore[assignment]
    notify.defer(user="x")  # type: ignore[arg-type]
    del job_id, total, wrong, pending, not_an_id


def test_the_typing_checks_are_in_lint() -> None:
    # Building registries does no I/O (connect=False): this test is pure.
    client: MongoClient[dict[str, object]] = MongoClient(connect=False)
    aclient: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(connect=False)
    try:
        assert not Tasks(client["app"]).is_async
        assert Tasks(aclient["app"]).is_async
    finally:
        client.close()
