"""The device's event budget under load: the worst event-loop stall, errors and wrong outputs
when more runs are wanted at once than the device has hardware events (1,023 on the sim).

Four cases, each with more concurrent closed-loop workers than the budget:

- ``two-loops``: two threads, each with its own event loop (asyncio and trio), one session;
- ``two-sessions``: one loop, two sessions on one device;
- ``pool``: ``DevicePool([0], instances=2)``, one loop;
- ``max_in_flight=5000``: one loop, one session (clamped to the budget, with a warning).

A ticker on each loop sleeps 1 ms at a time; its *stall* is how late it woke (the longest
gap minus the 1 ms asked for). Before the device-wide budget each submission past the
device's events blocked its loop for 5 s inside aclrtRecordEvent and then failed (207007).
Workers start 64 per loop iteration, as arrivals would, not all in one iteration. The heap
built at startup is frozen first (``gc.freeze()``), as in bench_lag.

    python benchmarks/bench_budget.py [--workers 1536] [--runs 20000]
"""

from __future__ import annotations

import argparse
import gc
import threading
import time
import warnings
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.lowlevel
import numpy as np
from _common import X, run_on, tiny_model

import ascend_async as aa

WANT = np.maximum(X, 0)  # relu, numpy's answer


class Ticker:
    def __init__(self) -> None:
        self.worst_ns = 0
        self.gaps: list[int] = []
        self.stop = False

    async def run(self) -> None:
        while not self.stop:
            t = time.perf_counter_ns()
            await anyio.sleep(0.001)
            late = max(0, time.perf_counter_ns() - t - 1_000_000)
            self.gaps.append(late)
            self.worst_ns = max(self.worst_ns, late)


class Tally:
    def __init__(self) -> None:
        self.runs = 0
        self.errors: list[BaseException] = []
        self.wrong = 0
        self.lock = threading.Lock()


Runner = Callable[[dict[str, np.ndarray]], Awaitable[dict[str, Any]]]


async def flood(run: Runner, workers: int, runs: int, tally: Tally) -> Ticker:
    """``workers`` closed-loop tasks share ``runs`` runs; returns the loop's ticker."""
    ticker = Ticker()
    left = [runs]

    async def worker() -> None:
        while left[0] > 0:
            left[0] -= 1
            try:
                out = await run({"x": X})
            except Exception as exc:
                with tally.lock:
                    tally.errors.append(exc)
                continue
            ok = np.array_equal(out["y"], WANT)
            with tally.lock:
                tally.runs += 1
                tally.wrong += not ok

    async with anyio.create_task_group() as outer:
        outer.start_soon(ticker.run)
        async with anyio.create_task_group() as tg:
            for i in range(workers):
                tg.start_soon(worker)
                if i % 64 == 63:
                    await anyio.lowlevel.checkpoint()
        ticker.stop = True
    return ticker


def _report(name: str, tickers: list[Ticker], tally: Tally, seconds: float, budget: dict[str, int]) -> None:
    gaps = sorted(g for t in tickers for g in t.gaps)
    worst = max(t.worst_ns for t in tickers) / 1e6
    p99 = gaps[int(len(gaps) * 0.99)] / 1e6 if gaps else 0.0
    print(
        f"{name:<20} runs {tally.runs:>6}  errors {len(tally.errors)}  wrong {tally.wrong}  "
        f"worst stall {worst:7.1f} ms  p99 {p99:5.1f} ms  {tally.runs / seconds:8,.0f} runs/s  "
        f"budget peak {budget['peak']}/{budget['limit']}, runs that waited {budget['waited']}"
    )
    if tally.errors:
        print("   first error:", repr(tally.errors[0]))


def case_two_loops(workers: int, runs: int) -> None:
    tally = Tally()
    tickers: list[Ticker] = []
    with aa.Session(max_in_flight=1000) as s:
        g = s.add_graph(tiny_model())
        anyio.run(s.load, g)

        def thread(loop: str) -> None:
            async def main() -> None:
                tickers.append(await flood(lambda v: s.run(g, v), workers // 2, runs // 2, tally))

            run_on(loop, main)

        t0 = time.perf_counter()
        threads = [threading.Thread(target=thread, args=(lp,)) for lp in ("asyncio", "trio")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        _report("two-loops", tickers, tally, time.perf_counter() - t0, s.statistics().device_events)


def case_two_sessions(workers: int, runs: int) -> None:
    tally = Tally()
    with aa.Session(max_in_flight=1000) as a, aa.Session(max_in_flight=1000) as b:
        ga, gb = a.add_graph(tiny_model()), b.add_graph(tiny_model())

        async def main() -> list[Ticker]:
            await a.load(ga)
            await b.load(gb)
            out: list[Ticker] = []

            async def one(s: aa.Session, g: aa.Graph) -> None:
                out.append(await flood(lambda v: s.run(g, v), workers // 2, runs // 2, tally))

            async with anyio.create_task_group() as tg:
                tg.start_soon(one, a, ga)
                tg.start_soon(one, b, gb)
            return out

        t0 = time.perf_counter()
        tickers = anyio.run(main)
        _report("two-sessions", tickers, tally, time.perf_counter() - t0, a.statistics().device_events)


def case_pool(workers: int, runs: int) -> None:
    tally = Tally()
    with aa.DevicePool([0], instances=2, max_in_flight=1000) as pool:
        g = pool.add_graph(tiny_model())

        async def main() -> Ticker:
            await pool.load(g)
            return await flood(lambda v: pool.run(g, v), workers, runs, tally)

        t0 = time.perf_counter()
        ticker = anyio.run(main)
        _report(
            "pool instances=2", [ticker], tally, time.perf_counter() - t0, pool.sessions[0].statistics().device_events
        )


def case_max_in_flight(workers: int, runs: int) -> None:
    tally = Tally()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", aa.AscendWarning)  # the clamp's warning: expected here
        s = aa.Session(max_in_flight=5000)
    with s:
        g = s.add_graph(tiny_model())

        async def main() -> Ticker:
            await s.load(g)
            return await flood(lambda v: s.run(g, v), workers, runs, tally)

        t0 = time.perf_counter()
        ticker = anyio.run(main)
        _report("max_in_flight=5000", [ticker], tally, time.perf_counter() - t0, s.statistics().device_events)


CASES = {
    "two-loops": case_two_loops,
    "two-sessions": case_two_sessions,
    "pool": case_pool,
    "max_in_flight": case_max_in_flight,
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, default=1536, help="concurrent workers per case (> the budget)")
    p.add_argument("--runs", type=int, default=20000, help="runs per case")
    p.add_argument("--only", default=",".join(CASES), help=f"comma list of {','.join(CASES)}")
    args = p.parse_args(argv)
    gc.collect()
    gc.freeze()
    for name in args.only.split(","):
        CASES[name](args.workers, args.runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
