"""Benchmarks: throughput, latency, idle load, depth scaling and herd, three ways each.

Every scenario runs streamqueue (push), a 100 ms polling consumer over the
same collection shape, and the raw floor (bare pymongo: insert, claim with
``find_one_and_update`` and a sort, delete) with the same write concern and
consumer count. ``python -m streamqueue.bench`` (or ``make bench``) starts its
own replica set and writes ``bench-results/results.{json,md}`` and plots.
"""

from streamqueue.bench.common import BenchContext
from streamqueue.bench.config import BenchConfig

__all__ = ["BenchConfig", "BenchContext"]
