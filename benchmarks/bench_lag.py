"""(4) Event-loop lag (a 1 ms periodic timer's lateness) with 1,000 runs in flight, and
(5) watcher CPU: idle, and per completion."""

from __future__ import annotations

import sys
import time

import anyio
from _common import (
    LOOPS,
    Row,
    X,
    closed_loop,
    have_loop,
    run_on,
    session,
    thread_cpu_s,
    tiny_model,
    verdict,
    watcher_tid,
)

import ascend_async as aa


def run(quick: bool = False) -> list[Row]:
    dur = 0.8 if quick else 2.0
    rows: list[Row] = []
    for loop in LOOPS:
        if not have_loop(loop):
            continue
        with session(max_in_flight=1000) as s:
            g = s.add_graph(aa.Graph(tiny_model()))

            async def main(s: aa.Session = s, g: aa.Graph = g) -> dict[str, float]:
                await s.load(g)
                return await closed_loop(lambda: s.run(g, {"x": X}), 1000, dur, warmup=1000)

            r = run_on(loop, main)
        rows.append(
            Row(
                "4 loop lag",
                f"{loop}: lag with 1,000 in flight p99 (max)",
                f"{r['lag_p99']:.2f} ms ({r['lag_max']:.2f}) at {r['rate']:,.0f} runs/s",
                "p99 <= 2 ms",
                verdict(r["lag_p99"] <= 2.0),
            )
        )
        if loop == "asyncio":
            rows.append(
                Row(
                    "5 watcher CPU",
                    "per completion at 1,000 in flight (asyncio)",
                    f"{r['watcher_s'] * 1e6 / max(r['runs'], 1):.1f} us watcher, "
                    f"{r['cpu_s'] * 1e6 / max(r['runs'], 1):.1f} us process",
                )
            )
    with session() as s:
        g = s.add_graph(aa.Graph(tiny_model()))

        async def warm() -> None:
            await s.run(g, {"x": X})
            await anyio.sleep(0.2)  # let the watcher back off to its idle sleep

        run_on("asyncio", warm)
        tid = watcher_tid()
        idle = 1.0 if quick else 3.0
        c0 = thread_cpu_s(tid)
        time.sleep(idle)
        c1 = thread_cpu_s(tid)
    if c0 is not None and c1 is not None:
        pct = (c1 - c0) / idle * 100
        rows.append(
            Row(
                "5 watcher CPU",
                f"idle watcher (session open, nothing in flight, {idle:g} s)",
                f"{pct:.2f}% of a core ({(c1 - c0) * 1e3:.0f} ms CPU)",
                "~0",
                verdict(pct < 1.0),
            )
        )
    else:
        rows.append(Row("5 watcher CPU", "idle watcher", "n/a (no /proc/self/task)"))
    return rows


if __name__ == "__main__":
    from _common import print_rows

    print_rows(run("--quick" in sys.argv))
