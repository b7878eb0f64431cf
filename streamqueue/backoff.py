"""Retry delays for failed jobs."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class ExponentialBackoff:
    """``base * 2**(attempts-1)`` seconds, capped, with jitter so retries do not march in step.

    ``jitter=0.5`` draws each delay uniformly from [50 %, 100 %] of the nominal one.
    """

    base: float = 1.0
    cap: float = 300.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if self.base < 0 or self.cap < 0 or not 0 <= self.jitter <= 1:
            raise ValueError("base and cap must be >= 0 and jitter within [0, 1]")

    def __call__(self, attempts: int) -> float:
        nominal = min(self.cap, self.base * 2.0 ** max(0, attempts - 1))
        return nominal * random.uniform(1.0 - self.jitter, 1.0)
