"""(2) Wake-up latency: device completion timestamp (aclrtEventGetTimestamp, CLOCK_MONOTONIC in
the sim) to the awaiting task's resume, per loop, vs a bare thread's call_soon_threadsafe
hand-off; and loop wake-ups per completion at concurrency 64 (LoopBridge.wakeups)."""

from __future__ import annotations

import sys

import numpy as np
from _common import (
    LOOPS,
    HandOff,
    Row,
    X,
    closed_loop,
    completion_stamps,
    have_loop,
    run_on,
    session,
    tiny_model,
    tracked_run,
    verdict,
)

import ascend_async as aa


def run(quick: bool = False) -> list[Row]:
    n = 1000 if quick else 3000
    rows: list[Row] = []
    hand = HandOff()
    try:
        for loop in LOOPS:
            if not have_loop(loop):
                continue
            with session() as s, completion_stamps():
                g = s.add_graph(aa.Graph(tiny_model()))

                async def measure(
                    s: aa.Session = s, g: aa.Graph = g
                ) -> tuple[list[int], list[int], list[int], list[int], dict[str, float]]:
                    for _ in range(50):
                        await s.run(g, {"x": X})
                    dev, noticed, spent, ho = [], [], [], []
                    for _ in range(n):
                        r = await tracked_run(s, g)
                        if r is not None:
                            dev.append(r[0])
                            noticed.append(r[1])
                            spent.append(r[2])
                        ho.append((await hand.once())[1])
                    c64 = await closed_loop(lambda: s.run(g, {"x": X}), 64, 0.5 if quick else 1.5)
                    return dev, noticed, spent, ho, c64

                dev, noticed, spent, ho, c64 = run_on(loop, measure)
            d = np.asarray(dev) / 1e3
            w = np.asarray(noticed) / 1e3
            h = np.asarray(ho) / 1e3
            p50, p99 = np.percentile(d, 50), np.percentile(d, 99)
            h50, h99 = np.percentile(h, 50), np.percentile(h, 99)
            rows.append(
                Row(
                    "2 wake-up",
                    f"{loop}: device done -> task resumes p50",
                    f"{p50:.1f} us = {p50 / h50:.2f}x hand-off ({h50:.1f} us)",
                    "<= 1.25x",
                    verdict(bool(p50 / h50 <= 1.25)),
                )
            )
            rows.append(
                Row(
                    "2 wake-up",
                    f"{loop}: device done -> task resumes p99",
                    f"{p99:.1f} us = {p99 / h99:.2f}x hand-off ({h99:.1f} us)",
                    "<= 3x",
                    verdict(bool(p99 / h99 <= 3)),
                )
            )
            rows.append(
                Row(
                    "2 wake-up",
                    f"{loop}: of which watcher noticed -> resume p50/p99",
                    f"{np.percentile(w, 50):.1f} / {np.percentile(w, 99):.1f} us",
                )
            )
            c50 = float(np.percentile(np.asarray(spent) / 1e3, 50)) if spent else 0.0
            rows.append(
                Row(
                    "2 wake-up",
                    f"{loop}: of which Run.complete on the loop (read-back, release, wake) p50",
                    f"{c50:.1f} us; hand-off + that = {(h50 + c50) / h50:.2f}x hand-off",
                )
            )
            per = c64["wakeups"] / max(c64["runs"], 1)
            rows.append(
                Row(
                    "2 wake-up",
                    f"{loop}: loop wake-ups per completion at c=64",
                    f"{per:.3f} ({c64['rate']:,.0f} runs/s)",
                    "<= 0.1",
                    verdict(per <= 0.1),
                )
            )
    finally:
        hand.close()
    return rows


if __name__ == "__main__":
    from _common import print_rows

    print_rows(run("--quick" in sys.argv))
