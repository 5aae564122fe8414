"""(1) Sequential overhead: ``await session.run`` minus ``session.run_sync`` on a tiny graph,
against the hand-off (a bare thread waking the loop), all three interleaved on each loop."""

from __future__ import annotations

import sys
import time

import numpy as np
from _common import LOOPS, HandOff, Row, X, have_loop, run_on, session, tiny_model, verdict

import ascend_async as aa


def run(quick: bool = False) -> list[Row]:
    n = 1500 if quick else 5000
    rows: list[Row] = []
    with session() as s:
        g_async = s.add_graph(aa.Graph(tiny_model()))
        g_sync = s.add_graph(aa.Graph(tiny_model()))
        hand = HandOff()
        try:
            for loop in LOOPS:
                if not have_loop(loop):
                    continue

                async def measure() -> tuple[float, float, float]:
                    for _ in range(100):
                        s.run_sync(g_sync, {"x": X})
                        await s.run(g_async, {"x": X})
                        await hand.once()
                    a, b, h = [], [], []
                    for _ in range(n):  # interleaved, so noise hits all three alike
                        t = time.perf_counter_ns()
                        s.run_sync(g_sync, {"x": X})
                        t1 = time.perf_counter_ns()
                        await s.run(g_async, {"x": X})
                        t2 = time.perf_counter_ns()
                        b.append(t1 - t)
                        a.append(t2 - t1)
                        h.append((await hand.once())[0])
                    return float(np.median(a)), float(np.median(b)), float(np.median(h))

                a_med, sync_med, h_med = run_on(loop, measure)
                over = a_med - sync_med
                ratio = over / h_med
                rows.append(
                    Row(
                        "1 overhead",
                        f"{loop}: run {a_med / 1e3:.1f} - run_sync {sync_med / 1e3:.1f} us",
                        f"{over / 1e3:.1f} us = {ratio:.2f}x hand-off ({h_med / 1e3:.1f} us)",
                        "<= 1.25x hand-off",
                        verdict(ratio <= 1.25),
                    )
                )
        finally:
            hand.close()
    return rows


if __name__ == "__main__":
    from _common import print_rows

    print_rows(run("--quick" in sys.argv))
