"""How far past the head of the queue a batch claim reads: learned from the races it loses.

Batch claims in different processes read the same head of the queue and race
to lock it: in a backlog drained by four one-slot worker processes on two
cores, two rounds in three lost jobs to another claim, and each lost round is
two more round trips. After a lost round a store reads a wider window (twice
as wide, up to ``MAX_SPREAD`` times the batch) and locks a random sample of
it, so concurrent claims mostly pick different jobs; every round lost nothing
narrows it again by one. A store that claims alone never loses a round, so it
keeps reading exactly the head: its order is the queue's order. Under
contention a claim may take a job a little behind one another claim takes at
the same moment, which concurrent consumers never ordered anyway.

Shared by every thread of one store without a lock: a lost update of the
width only makes one claim read a little wider or narrower. No I/O.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")

MAX_SPREAD = 16


class ClaimSpread:
    def __init__(self, *, cap: int = MAX_SPREAD, rng: random.Random | None = None) -> None:
        if cap < 1:
            raise ValueError(f"cap must be at least 1, not {cap!r}")
        self.cap = cap
        self.width = 1
        self._rng = rng or random.Random()

    def read_limit(self, asked: int) -> int:
        """How many due jobs to read for a round that wants ``asked``."""
        return asked * self.width

    def pick(self, candidates: Sequence[T], asked: int) -> list[T]:
        """``asked`` of the jobs read, at random, in the queue's order; all if no more."""
        if len(candidates) <= asked:
            return list(candidates)
        chosen = sorted(self._rng.sample(range(len(candidates)), asked))
        return [candidates[i] for i in chosen]

    def note(self, *, lost: bool) -> None:
        """A round ended: it lost jobs to another claim (wider), or none (narrower)."""
        self.width = min(self.cap, self.width * 2) if lost else max(1, self.width - 1)
