"""The long-running commands: ``worker``, ``reaper`` and ``devserver``.

These run until signalled: they may serve Prometheus metrics while they run,
and a first SIGTERM/SIGINT stops them gently, a second at once. The worker and
queue machinery is imported inside each command so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from streamqueue.cli.options import PROG, CliError, UsageError
from streamqueue.cli.runtime import _one_line, open_session
from streamqueue.exitcodes import ExitCode
from streamqueue.exitcodes import for_error as exit_code_for
from streamqueue.retry import RetryPolicy
from streamqueue.uri import redact_uri

# The command line logs under one name, whichever of its modules speaks.
log = logging.getLogger("streamqueue.cli")


def cmd_worker(args: argparse.Namespace) -> int:
    from streamqueue.backoff import ExponentialBackoff
    from streamqueue.handlers import load_target
    from streamqueue.metrics import PrometheusHooks
    from streamqueue.queue import Queue
    from streamqueue.tasks import Tasks
    from streamqueue.worker import Worker

    # The console script does not put the working directory on sys.path the
    # way `python -m` does; handlers are usually found relative to it.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    handler = load_target(args.handler)
    hooks = PrometheusHooks()
    if args.claims_in_flight > 1 and isinstance(handler, Tasks):
        raise UsageError("--claims-in-flight serves a handler function on one --queue only")
    if isinstance(handler, Tasks):
        return _run_task_worker(args, handler, hooks)
    if args.queues is not None or not args.queue:
        raise UsageError("a handler function serves one --queue (--queues is for a task "
                         "registry)")
    session = open_session(args, "streamqueue-worker")
    name = session.queues[0]
    hooks.touch_queue(name)
    if inspect.iscoroutinefunction(handler):
        # async def handlers run on an event loop: --concurrency coroutines in flight.
        session.close()
        return _run_async_worker(args, handler, hooks, session.db, name)
    try:
        # No max_attempts: each job carries the one it was enqueued with, and
        # the reaper (another process) judges by that same number.
        queue = Queue(session.collection(name), args.consumer_id, lease=args.lease, hooks=hooks,
                      fleet=args.concurrency if args.fleet else None)
        worker = Worker(queue, handler, concurrency=args.concurrency, heartbeat=args.heartbeat,
                        shutdown_grace=args.shutdown_grace, batch=args.batch, burst=args.burst,
                        backoff=ExponentialBackoff(base=args.backoff, cap=args.backoff_cap),
                        claims_in_flight=args.claims_in_flight)
    except (TypeError, ValueError) as exc:
        session.close()
        raise UsageError(str(exc)) from None
    untrack = hooks.track_worker(name, slots=worker.slots, busy=lambda: worker.busy_slots,
                                 last_event_age=queue.watcher.last_event_age)
    schedulers = _start_schedulers([queue], required=True) if args.schedules else []
    try:
        _serve(args, hooks, worker, lambda: log.info(
            "worker %s: %s on %s.%s via %s, %d slots, lease %gs", queue.consumer_id,
            args.handler, session.db, name, redact_uri(args.uri), worker.slots, queue.lease))
    finally:
        _stop_schedulers(schedulers)
        untrack()
        queue.close()
        session.close()
    return ExitCode.OK


def _serve(args: argparse.Namespace, hooks: Any, worker: Any, announce: Callable[[], None]) -> None:
    """Run a threaded worker with its metrics endpoint until it stops."""
    server = _serve_metrics(args, hooks)
    try:
        # Handlers first: the line announce() logs tells whoever waits for it that
        # Ctrl-C now drains.
        worker.install_signal_handlers()
        announce()
        worker.run()
    finally:
        if server is not None:
            server.close()


def _task_session(args: argparse.Namespace, registry: Any, queues: list[str],
                  appname: str) -> Any:
    """The connection of a command serving a registry: ``--db``, the URI's, or the registry's."""
    from streamqueue.cli.runtime import database_name

    try:
        database_name(args)
    except UsageError:
        args.db = registry.database.name
    args.queue = queues
    return open_session(args, appname)


def _run_task_worker(args: argparse.Namespace, registry: Any, hooks: Any) -> int:
    """``streamqueue worker app:tasks``: every queue of the registry (or ``--queues``) in one
    process, one claim loop and one change stream."""
    from streamqueue.backoff import ExponentialBackoff
    from streamqueue.multiqueue import task_worker

    names = list(args.queues or registry.queues())
    order = "priority" if args.queues and not args.fair else "fair"
    session = _task_session(args, registry, names, "streamqueue-worker")
    try:
        worker = task_worker(
            registry, names, database=session.client[session.db], order=order,
            consumer_id=args.consumer_id, lease=args.lease, hooks=hooks,
            concurrency=args.concurrency, heartbeat=args.heartbeat,
            shutdown_grace=args.shutdown_grace, batch=args.batch, burst=args.burst,
            backoff=ExponentialBackoff(base=args.backoff, cap=args.backoff_cap))
    except (TypeError, ValueError) as exc:
        session.close()
        raise UsageError(str(exc)) from None
    for name in names:
        hooks.touch_queue(name)
    untrack = hooks.track_worker(worker.group.name, slots=worker.slots,
                                 busy=lambda: worker.busy_slots,
                                 last_event_age=worker.group.watcher.last_event_age)
    schedulers = (_start_schedulers(worker.group.members, required=True) if args.schedules
                  else [])
    try:
        _serve(args, hooks, worker, lambda: log.info(
            "worker %s: %d tasks of %s on %s.%s (%s) via %s, %d slots",
            worker.group.consumer_id, len(registry.names), args.handler, session.db,
            ",".join(names), order, redact_uri(args.uri), worker.slots))
    finally:
        _stop_schedulers(schedulers)
        untrack()
        worker.close()
        session.close()
    return ExitCode.OK


def _start_schedulers(queues: list[Any], *, required: bool) -> list[Any]:
    """A running ``Scheduler`` per queue. Without a replica set: a CONFIG error when the
    command was asked to fire (``worker --schedules``), else a note and none."""
    from streamqueue.errors import ConfigurationError
    from streamqueue.scheduler import Scheduler

    started: list[Any] = []
    for queue in queues:
        scheduler = Scheduler(queue)
        try:
            scheduler.start()
        except ConfigurationError as exc:
            _stop_schedulers(started)
            if required:
                raise CliError(str(exc), ExitCode.CONFIG) from None
            log.info("not firing schedules: %s", exc)
            return []
        started.append(scheduler)
    return started


def _stop_schedulers(schedulers: list[Any]) -> None:
    for scheduler in schedulers:
        scheduler.stop()


def _run_async_worker(args: argparse.Namespace, handler: Callable[..., Any], hooks: Any,
                      db: str, name: str) -> int:
    import asyncio

    from pymongo import AsyncMongoClient

    from streamqueue.aio import AsyncQueue
    from streamqueue.aio.worker import AsyncWorker
    from streamqueue.backoff import ExponentialBackoff
    from streamqueue.cli.runtime import client_options

    async def main() -> None:
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            args.uri, **client_options(args.uri, args.server_timeout, "streamqueue-worker"))
        try:
            try:
                queue = AsyncQueue(client[db][name], args.consumer_id, lease=args.lease,
                                   hooks=hooks, fleet=args.concurrency if args.fleet else None)
                worker = AsyncWorker(
                    queue, handler, concurrency=args.concurrency, heartbeat=args.heartbeat,
                    shutdown_grace=args.shutdown_grace, burst=args.burst, batch=args.batch,
                    backoff=ExponentialBackoff(base=args.backoff, cap=args.backoff_cap),
                    claims_in_flight=args.claims_in_flight)
            except (TypeError, ValueError) as exc:
                raise UsageError(str(exc)) from None
            untrack = hooks.track_worker(name, slots=worker.slots,
                                         busy=lambda: worker.busy_slots,
                                         last_event_age=queue.watcher.last_event_age)
            server = _serve_metrics(args, hooks)
            try:
                worker.install_signal_handlers()
                log.info("async worker %s: %s on %s.%s via %s, %d in flight, lease %gs",
                         queue.consumer_id, args.handler, db, name, redact_uri(args.uri),
                         worker.slots, queue.lease)
                await worker.run()
            finally:
                if server is not None:
                    server.close()
                untrack()
                await queue.close()
        finally:
            await client.close()

    asyncio.run(main())
    return ExitCode.OK


def _serve_metrics(args: argparse.Namespace, hooks: Any) -> Any:
    if args.metrics_port is None:
        return None
    from streamqueue.metrics import serve_metrics

    try:
        return serve_metrics(args.metrics_port, args.metrics_addr, hooks.registry)
    except OSError as exc:
        raise CliError(f"cannot serve metrics on {args.metrics_addr}:{args.metrics_port}: "
                       f"{exc.strerror or exc}", ExitCode.CONFIG) from None


def cmd_reaper(args: argparse.Namespace) -> int:
    from streamqueue.metrics import PrometheusHooks
    from streamqueue.queue import Queue
    from streamqueue.reaper import Reaper

    hooks = PrometheusHooks()
    session = _reaper_session(args)
    try:
        # The reaper loop is itself a retry: a pass gives up after a bounded
        # while so a signal is answered promptly even in an outage.
        retry = RetryPolicy(max_delay=max(10.0, 2 * args.interval))
        queues = [Queue(session.collection(name), hooks=hooks, retry=retry)
                  for name in session.queues]
        for name in session.queues:
            hooks.touch_queue(name, role="reaper")
        reaper = Reaper(queues, interval=args.interval, hooks=hooks)
        where = ", ".join(f"{session.db}.{name}" for name in session.queues)
        if args.once:
            if args.metrics_port is not None:
                log.info("--metrics-port is ignored with --once (nothing would scrape it)")
            result = reaper.run_once()
            for name, count in result.reaped.items():
                log.info("%s.%s: %d expired lease%s handled", session.db, name, count,
                         "" if count == 1 else "s")
            if result.errors:
                name, exc = next(iter(result.errors.items()))
                raise CliError(f"reaping {session.db}.{name} failed: {_one_line(exc, args.uri)}",
                               exit_code_for(exc))
            return ExitCode.OK
        server = _serve_metrics(args, hooks)
        schedulers = [] if args.no_schedules else _start_schedulers(queues, required=False)
        try:
            _run_until_signalled(reaper.run, reaper.stop, "reaper", ready=lambda: log.info(
                "reaper on %s via %s, every %gs%s", where, redact_uri(args.uri), args.interval,
                ", firing schedules" if schedulers else ""))
        finally:
            _stop_schedulers(schedulers)
            if server is not None:
                server.close()
    finally:
        session.close()
    return ExitCode.OK


def _reaper_session(args: argparse.Namespace) -> Any:
    """The reaper's queues: ``--queue``, plus every queue of the ``--tasks`` registry."""
    if args.tasks is None:
        return open_session(args, "streamqueue-reaper")
    from streamqueue.handlers import load_target
    from streamqueue.tasks import Tasks

    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    registry = load_target(args.tasks)
    if not isinstance(registry, Tasks):
        raise UsageError(f"--tasks {args.tasks}: not a streamqueue.Tasks registry")
    names = list(dict.fromkeys([*(args.queue or []), *registry.queues()]))
    return _task_session(args, registry, names, "streamqueue-reaper")


def _run_until_signalled(run: Callable[[], None], stop: Callable[[], None], what: str, *,
                         ready: Callable[[], None] = lambda: None) -> None:
    """Run ``run`` in a thread; the first SIGTERM/SIGINT calls ``stop``, a second exits at once.

    ``ready`` (the "running" log line) is called once the handlers are in place, so a
    Ctrl-C sent on seeing that line stops the loop cleanly instead of interrupting it.

    The loop runs off the main thread so the signal handler never takes a lock
    the interrupted code may hold.
    """
    failure: list[BaseException] = []

    def target() -> None:
        try:
            run()
        except BaseException as exc:  # handed to the main thread below
            failure.append(exc)

    signals = 0

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal signals
        signals += 1
        if signals > 1:
            os.write(2, f"{PROG} {what}: second signal, exiting now\n".encode())
            os._exit(128 + signum)
        log.info("signal %d: stopping after the current pass (send again to exit at once)",
                 signum)
        stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    ready()
    thread = threading.Thread(target=target, name=f"streamqueue-{what}")
    try:
        thread.start()
        while thread.is_alive():
            thread.join(1.0)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if failure:
        raise failure[0]


def cmd_devserver(args: argparse.Namespace) -> int:
    from streamqueue.devserver import serve

    return serve(nodes=args.nodes, port=args.port, dbpath=args.dbpath)
