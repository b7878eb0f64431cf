"""The fleet view (streamqueue.fleet): pure decisions, checked by simulating N processes.

The simulation is the server in miniature: a totally ordered event log that
every process reads with its own random lag, a ready list whose head a claim
takes (each claim lands after a random delay and appends its lock event), and
handlers that hold a job for a while and then delete it. Processes may be
dead (a member document, no claims). It checks what the design promises: every
job is claimed, at a trickle about once, and a dead owner costs patience, not
the safety sweep.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import pytest

from streamqueue.fleet import Change, FleetView, classify, member_id
from streamqueue.wakeups import Wake, WakeupBoard
from tests.helpers import FakeClock

MS = 0.001


def test_classify_reads_what_the_fleet_pipeline_carries() -> None:
    member = {"operationType": "insert", "documentKey": {"_id": member_id("a")},
              "fullDocument": {"slots": 3, "state": "member"}}
    assert classify(member, True) == Change("member", "a", slots=3)
    left = {"operationType": "delete", "documentKey": {"_id": member_id("a")}}
    assert classify(left, True) == Change("left", "a")
    lock = {"operationType": "update", "documentKey": {"_id": 7},
            "updateDescription": {"updatedFields": {"state": "locked", "consumer_id": "b"}}}
    assert classify(lock, True) == Change("locked", 7, consumer_id="b")
    insert = {"operationType": "insert", "documentKey": {"_id": 8},
              "fullDocument": {"state": "ready"}}
    assert classify(insert, True).kind == "ready"
    assert classify(insert, False).kind == "delayed"
    assert classify({"operationType": "delete", "documentKey": {"_id": 8}}, True).kind == "gone"
    done = {"operationType": "update", "documentKey": {"_id": 8},
            "updateDescription": {"updatedFields": {"state": "completed"}}}
    assert classify(done, True).kind == "gone"
    beat = {"operationType": "update", "documentKey": {"_id": member_id("a")},
            "updateDescription": {"updatedFields": {"expires_at": 1}}}
    assert classify(beat, True).kind == "other"


def _views(count: int, clock: FakeClock, slots: int = 1) -> list[FleetView]:
    views = [FleetView(f"p{i}", patience=0.05, clock=clock) for i in range(count)]
    for view in views:
        view.snapshot([(f"p{i}", slots) for i in range(count)], [])
    return views


def test_every_view_picks_the_same_single_owner_for_a_job() -> None:
    clock = FakeClock()
    for job in range(50):
        views = _views(8, clock)
        for view in views:
            view.apply(Change("ready", job))
        owed = [view.owed()[0] for view in views]
        assert sorted(owed) == [0] * 7 + [1], (job, owed)


def test_the_owner_rotates_with_the_job_that_starts_an_episode() -> None:
    clock = FakeClock()
    owners = set()
    for job in range(40):
        views = _views(4, clock)
        for view in views:
            view.apply(Change("ready", job))
        owners |= {view.me for view in views if view.owed()[0]}
    assert len(owners) == 4


def test_patience_widens_the_due_set_one_slot_at_a_time() -> None:
    clock = FakeClock()
    views = _views(4, clock)
    for view in views:
        view.apply(Change("ready", "j"))
    gates = sorted(at for view in views if (at := view.owed()[1]) is not None)
    assert [round(at - clock(), 3) for at in gates] == [0.05, 0.1, 0.15]
    clock.advance(0.06)
    assert sum(view.owed()[0] for view in views) == 2


def test_a_busy_member_is_skipped_and_its_own_claims_are_not_counted_twice() -> None:
    clock = FakeClock()
    views = _views(2, clock)
    for view in views:
        view.apply(Change("locked", "held", consumer_id="p0"))
        view.apply(Change("ready", "j"))
    assert [view.owed()[0] for view in views] == [0, 1]
    token = views[1].claim_started()
    assert views[1].owed()[0] == 0  # in flight
    views[1].claim_done(token, ["j"])
    assert views[1].owed()[0] == 0  # claimed, lock event not yet heard
    assert not views[1].knows_empty() or views[1].ready_count() == 1


def test_an_empty_claim_drops_what_was_heard_before_it_and_proves_the_queue_empty() -> None:
    clock = FakeClock()
    (view,) = _views(1, clock)
    assert not view.knows_empty()  # no claim has looked yet
    view.apply(Change("ready", "stale"))
    token = view.claim_started()
    view.apply(Change("ready", "new"))
    view.claim_done(token, [])
    assert view.ready_count() == 1  # "new" may have come after the claim looked
    assert not view.knows_empty()
    view.apply(Change("locked", "new", consumer_id="p0"))
    assert view.knows_empty()
    view.forget_empty()
    assert not view.knows_empty()


def test_a_failed_claim_or_a_reset_proves_nothing() -> None:
    clock = FakeClock()
    (view,) = _views(1, clock)
    view.apply(Change("ready", "j"))
    view.claim_done(view.claim_started(), None)
    assert view.ready_count() == 1 and not view.knows_empty()
    token = view.claim_started()
    view.reset()
    view.claim_done(token, [])
    assert not view.known and not view.knows_empty()
    assert view.owed() == (0, None)


def test_the_board_gate_wakes_one_waiter_and_can_be_withdrawn() -> None:
    clock = FakeClock()
    board = WakeupBoard(clock)
    board.set_gate(clock() + 0.05)
    assert board._decide(clock(), clock() + 10) == pytest.approx(0.05)
    clock.advance(0.06)
    assert board._decide(clock(), clock() + 10) is Wake.EVENT
    assert board._decide(clock(), clock() + 10) == pytest.approx(10)
    board.set_gate(clock() + 0.05)
    board.set_gate(None)
    clock.advance(0.1)
    assert board._decide(clock(), clock() + 10) == pytest.approx(10)


# -- the simulation -----------------------------------------------------------------------------

@dataclass
class Proc:
    view: FleetView
    slots: int
    dead: bool = False
    cursor: int = 0
    lag: float = 0.0
    claims: int = 0
    busy_until: list[float] = field(default_factory=list)
    inflight: list[tuple[float, tuple[int, int]]] = field(default_factory=list)
    gate: float | None = None


@dataclass
class Server:
    log: list[tuple[float, Change]] = field(default_factory=list)
    ready: list[Any] = field(default_factory=list)
    claimed_at: dict[Any, float] = field(default_factory=dict)
    put_at: dict[Any, float] = field(default_factory=dict)


def simulate(seed: int, procs: int, slots: int, jobs: int, gap: float, *, dead: int = 0,
             hold: float = 0.002, horizon: float = 30.0) -> tuple[Server, list[Proc]]:
    rnd = random.Random(seed)
    clock = FakeClock(0.0)
    server = Server()
    fleet = [Proc(FleetView(f"p{i}", patience=0.05, clock=clock), slots, dead=i < dead)
             for i in range(procs)]
    for proc in fleet:
        proc.view.snapshot([(f"p{i}", slots) for i in range(procs)], [])
    arrivals = [i * gap for i in range(jobs)]
    step = 0.5 * MS
    while clock() < horizon and (arrivals or len(server.claimed_at) < jobs):
        now = clock()
        while arrivals and arrivals[0] <= now:
            arrivals.pop(0)
            job = len(server.put_at)
            server.put_at[job] = now
            server.ready.append(job)
            server.log.append((now, Change("ready", job)))
        for proc in fleet:
            _tick(proc, server, rnd, now)
        clock.advance(step)
    return server, fleet


def _tick(proc: Proc, server: Server, rnd: random.Random, now: float) -> None:
    # Events arrive in order, each after this process's own random lag.
    while proc.cursor < len(server.log) and server.log[proc.cursor][0] + rnd.uniform(
            0.2, 3) * MS <= now:
        proc.view.apply(server.log[proc.cursor][1])
        proc.cursor += 1
    for done in [t for t in proc.busy_until if t <= now]:
        proc.busy_until.remove(done)
    for landed in [item for item in proc.inflight if item[0] <= now]:
        proc.inflight.remove(landed)
        got = server.ready.pop(0) if server.ready else None
        if got is not None:
            server.claimed_at[got] = now
            server.log.append((now, Change("locked", got, consumer_id=proc.view.me)))
            proc.busy_until.append(now + rnd.uniform(0.5, 1.5) * 0.002)
            # The handler deletes the job when it is done.
            server.log.append((now + 0.002, Change("gone", got)))
            server.log.sort(key=lambda item: item[0])
        proc.view.claim_done(landed[1], [] if got is None else [got])
    if proc.dead:
        return
    free = proc.slots - len(proc.busy_until) - len(proc.inflight)
    owed, gate = proc.view.owed()
    if gate is not None and gate <= now:
        owed = max(owed, 1)
    for _ in range(min(free, owed)):
        proc.claims += 1
        proc.inflight.append((now + rnd.uniform(0.5, 2) * MS, proc.view.claim_started()))


@pytest.mark.parametrize("seed", range(5))
def test_a_trickle_costs_about_one_claim_per_job_at_every_fleet_size(seed: int) -> None:
    for procs, slots in ((4, 1), (16, 1), (4, 4)):
        server, fleet = simulate(seed, procs, slots, jobs=100, gap=0.01)
        assert len(server.claimed_at) == 100
        per_job = sum(p.claims for p in fleet) / 100
        assert per_job <= 1.3, (procs, slots, per_job)


@pytest.mark.parametrize("seed", range(5))
def test_dead_members_delay_jobs_by_patience_and_never_lose_them(seed: int) -> None:
    server, fleet = simulate(seed, 8, 1, jobs=100, gap=0.01, dead=3)
    assert len(server.claimed_at) == 100
    waits = [server.claimed_at[j] - server.put_at[j] for j in server.claimed_at]
    # At most three dead slots skipped, patience (50 ms) each, plus lags.
    assert max(waits) < 4 * 0.05 + 0.02, max(waits)
    assert all(p.claims == 0 for p in fleet if p.dead)


@pytest.mark.parametrize("seed", range(3))
def test_a_burst_faster_than_the_fleet_is_drained(seed: int) -> None:
    server, fleet = simulate(seed, 6, 2, jobs=200, gap=0.0002, dead=1)
    assert len(server.claimed_at) == 200
    per_job = sum(p.claims for p in fleet) / 200
    assert per_job <= 1.5, per_job


def test_patience_grows_with_slow_handoffs_and_is_capped() -> None:
    clock = FakeClock()
    (view,) = _views(1, clock)
    assert view.effective_patience == pytest.approx(0.05)
    for job in range(100):  # every claim's lock event comes 80 ms after the job's insert
        view.apply(Change("ready", job))
        clock.advance(0.08)
        view.apply(Change("locked", job, consumer_id="p0"))
        view.apply(Change("gone", job))
    # Without adapting, 80 ms handoffs would outlast patience and widen on every job.
    assert view.effective_patience == pytest.approx(0.24, rel=0.05)
    for job in range(100, 200):  # rescued by patience: not counted, no feedback
        view.apply(Change("ready", job))
        clock.advance(5.0)
        view.apply(Change("locked", job, consumer_id="rescuer"))
    assert view.effective_patience == pytest.approx(0.24, rel=0.05)
    for job in range(200, 300):  # a very slow machine: capped
        view.apply(Change("ready", job))
        clock.advance(5.0)
        view.apply(Change("locked", job, consumer_id="p0"))
    assert view.effective_patience == 1.0


def test_a_member_of_several_slots_is_full_once_its_view_sees_every_slot_held() -> None:
    view = FleetView("me")
    assert not view.full()  # unknown
    view.snapshot([("me", 2), ("other", 1)], [("j1", "me"), ("j2", "other")])
    assert not view.full()
    view.apply(Change("locked", "j3", consumer_id="me"))
    assert view.full()
    view.apply(Change("gone", "j1"))
    assert not view.full()
    single = FleetView("one")
    single.snapshot([("one", 1)], [("j4", "one")])
    assert not single.full()  # every 1-slot worker running a job, even at a trickle
    assert single.every_slot_held()  # what a draining 1-slot member pauses on
    single.apply(Change("gone", "j4"))
    assert not single.every_slot_held()
