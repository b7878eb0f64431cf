"""The asyncio scenario's part of the bench report: its targets and its table.

``result`` is what ``streamqueue.bench.aio.run`` returns (empty when the scenario did not
run). Targets come back as plain rows, which ``report`` turns into its ``Target``s.
"""

from __future__ import annotations

from typing import Any

# (name, requirement, measured, passed)
TargetRow = tuple[str, str, str, bool | None]


def aio_target_rows(result: dict[str, Any]) -> list[TargetRow]:
    if not result:
        return []
    latency = result["latency_ms"]
    p50_ratio = latency["async"]["p50"] / latency["sync"]["p50"]
    worker = result["worker"]
    return [
        ("asyncio drain, 4 coroutines vs 4 threads", ">= 0.9x",
         f"{result['async_to_sync']:.2f}x ({result['async_jobs_per_s']} vs "
         f"{result['sync_jobs_per_s']} jobs/s; bare driver {result['driver_async_to_sync']:.2f}x)",
         result["async_to_sync"] >= 0.9),
        ("asyncio enqueue-to-claim p50 vs sync", "<= 1.1x",
         f"{p50_ratio:.2f}x ({latency['async']['p50']} vs {latency['sync']['p50']} ms)",
         p50_ratio <= 1.1),
        ("idle AsyncQueue consumer", "<= 1 op/s", f"{result['idle_async_ops_per_s']} ops/s",
         result["idle_async_ops_per_s"] <= 1),
        # Awaiting handlers against whichever limit binds, with default settings
        # (adaptive claim sizes; see PERFORMANCE.md, 9a and its continuation).
        ("AsyncWorker, 500 handlers awaiting 0.1 s, default batch, vs its limit", ">= 0.9x",
         f"{worker['awaiting_to_limit']:.2f}x (batch=1000 "
         f"{worker['prefetch_awaiting_to_limit']:.2f}x; raw vs instant "
         f"{worker['awaiting_to_instant']:.2f}x)",
         worker["awaiting_to_limit"] >= 0.9),
        ("AsyncWorker RSS with 500 handlers in flight", "< 100 MiB",
         f"{worker['rss_mib_at_most_in_flight']} MiB", worker["rss_mib_at_most_in_flight"] < 100),
    ]


def aio_table(result: dict[str, Any]) -> list[str]:
    if not result:
        return []
    worker = result["worker"]
    rows = [
        ("drain, 4 consumers (jobs/s, median; rounds)",
         f"{result['sync_jobs_per_s']} ({_rounds(result['sync_rounds'])})",
         f"{result['async_jobs_per_s']} ({_rounds(result['async_rounds'])})"),
        ("enqueue-to-claim p50 / p99 ms",
         f"{result['latency_ms']['sync']['p50']} / {result['latency_ms']['sync']['p99']}",
         f"{result['latency_ms']['async']['p50']} / {result['latency_ms']['async']['p99']}"),
        ("bare pymongo, claim + delete on 4 threads / 4 coroutines (jobs/s, median)",
         str(result["driver_sync_jobs_per_s"]),
         f"{result['driver_async_jobs_per_s']} ({result['driver_async_to_sync']:.2f}x)"),
        ("idle consumer, commands/s", "-", str(result["idle_async_ops_per_s"])),
    ]
    rows += [(f"AsyncWorker x{worker['concurrency']}, {kind.replace('_', ' ')} (jobs/s; rounds)",
              "-", f"{worker[f'{kind}_jobs_per_s']} ({_rounds(worker[f'{kind}_rounds'])})")
             for kind in ("instant", "awaiting", "prefetch_instant", "prefetch_awaiting")]
    out = ["", f"## 12. asyncio API against the sync one ({result['jobs']:,} jobs a drain, "
           f"{worker['jobs']:,} a worker drain, {result['rounds']} rounds)", "",
           "| measure | sync | async |", "|---|---|---|"]
    return out + [f"| {name} | {sync} | {aio} |" for name, sync, aio in rows]


def _rounds(values: list[int]) -> str:
    return " / ".join(str(value) for value in values)
