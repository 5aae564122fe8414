"""Soak: many runs mixed with cancellations, injected device faults and session churn, on
asyncio, uvloop and trio in turn (issue 13). Not part of CI.

The runs are cut into rounds. Each round opens a fresh event loop (the next of the three) and
a fresh Session, runs ``--round`` runs through ``--concurrency`` tasks, then closes the session
and lets the loop go. Inside a round:

- every ``--cancel-every``-th run is cancelled: alternately before it is submitted (a deadline
  already past) and while it is in flight (cancelled from outside once the run is counted in
  flight);
- every ``--fault-every``-th run first injects a fault into the next task of a stream
  (``aa_sim_inject_fault``), so the runs there fail with DeviceError and the stream is replaced;
- every ``--callback-every``-th run goes through ``run_with_callback`` (the watcher thread).

It reports RSS after the first round, after a tenth of the rounds, in the middle and at the end, the
sim's leak counters once everything is closed, the live event loops and bridges (gc), and the
outcome counts. A round that does not finish within ``--round-timeout`` seconds is a hang.
The issue's bar: 0 leaks, flat RSS (end within 5 % of the middle), 0 hangs, no unexpected
errors.

    python benchmarks/bench_soak.py --runs 20000
    python benchmarks/bench_soak.py            # 1,000,000 runs
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from _common import LOOPS, have_loop, run_on, tiny_model
from helpers import sim_leaks, sim_stats  # the test suite's leak counters, so both check the same ones

import ascend_async as aa
from ascend_async._probe import live_bridges

AICORE = 507015  # ACL_ERROR_RT_AICORE_EXCEPTION: a device fault
X = np.arange(4, dtype=np.float32).reshape(1, 4)


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def live(kind: type) -> int:
    return sum(1 for o in gc.get_objects() if isinstance(o, kind))


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.outcomes: Counter[str] = Counter()
        self.unexpected: Counter[str] = Counter()
        self.hangs = 0
        self.callbacks_done = 0
        self.cb_lock = threading.Lock()

    def _callback(self, out: Any, err: BaseException | None) -> None:  # the watcher thread
        with self.cb_lock:
            self.callbacks_done += 1
            if err is None:
                self.outcomes["callback_ok"] += 1
            elif isinstance(err, aa.DeviceError):
                self.outcomes["callback_fault"] += 1
            else:
                self._unexpected(err)

    def _unexpected(self, exc: BaseException) -> None:
        name = type(exc).__name__
        if not self.unexpected[name]:  # the first of each kind, with its traceback
            import traceback

            traceback.print_exception(exc)
        self.unexpected[name] += 1

    async def round(self, first: int, count: int) -> None:
        a = self.args
        from ascend_async._probe import sim

        _sim = sim()

        async with aa.Session(streams=2, max_in_flight=a.concurrency * 2) as s:
            g = s.add_graph(tiny_model())
            g_cb = s.add_graph(tiny_model(), name="tiny_cb")
            await s.load(g)
            nxt = [first]
            end = first + count

            async def one(i: int) -> None:
                if a.fault_every and i % a.fault_every == 0:
                    lane = s.streams[i % 2]
                    _sim.lib.aa_sim_inject_fault(lane.handle, 1, AICORE)
                if a.callback_every and i % a.callback_every == 0:
                    s.run_with_callback(g_cb, [X], self._callback)
                    return
                if a.cancel_every and i % a.cancel_every == 0:
                    if (i // a.cancel_every) % 2:  # before submission: nothing reaches the device
                        with anyio.move_on_after(-1) as scope:
                            await s.run(g, [X])
                        self.outcomes["cancelled_before" if scope.cancelled_caught else "ok"] += 1
                        return
                    # in flight: cancelled from outside once it was submitted
                    scope = anyio.CancelScope()
                    async with anyio.create_task_group() as tg:

                        async def victim() -> None:
                            with scope:
                                try:
                                    await s.run(g, [X])
                                except aa.DeviceError:
                                    self.outcomes["fault"] += 1

                        tg.start_soon(victim)
                        await anyio.lowlevel.checkpoint()
                        scope.cancel()
                    self.outcomes["cancelled_in_flight" if scope.cancelled_caught else "ok"] += 1
                    return
                try:
                    out = await s.run(g, [X])
                    assert out["y"].shape == (1, 4)
                    self.outcomes["ok"] += 1
                except aa.DeviceError:
                    self.outcomes["fault"] += 1

            async def worker() -> None:
                while nxt[0] < end:
                    i = nxt[0]
                    nxt[0] += 1
                    try:
                        await one(i)
                    except Exception as exc:
                        self._unexpected(exc)

            async with anyio.create_task_group() as tg:
                for _ in range(a.concurrency):
                    tg.start_soon(worker)
            # the callbacks of this round finish before the session closes (aclose waits)

    def run_round(self, index: int, first: int, count: int) -> None:
        loop = self.loops[index % len(self.loops)]

        async def bounded() -> None:
            with anyio.fail_after(self.args.round_timeout):
                await self.round(first, count)

        try:
            run_on(loop, bounded)
        except TimeoutError:
            self.hangs += 1
            print(f"round {index} on {loop}: HANG (over {self.args.round_timeout} s)", flush=True)

    def main(self) -> int:
        a = self.args
        self.loops = [lp for lp in a.loops.split(",") if have_loop(lp)]
        rounds = max(1, -(-a.runs // a.round))
        t0 = time.perf_counter()
        rss: dict[str, float] = {}
        done = 0
        for r in range(rounds):
            count = min(a.round, a.runs - done)
            self.run_round(r, done, count)
            done += count
            if r == 0:
                gc.collect()
                rss["start"] = rss_mb()
            if r == rounds // 10:
                gc.collect()
                rss["warm"] = rss_mb()
            if r == rounds // 2:
                gc.collect()
                rss["middle"] = rss_mb()
            if a.progress and (r + 1) % a.progress == 0:
                rate = done / (time.perf_counter() - t0)
                print(f"  {done:>9,} runs  {rate:,.0f}/s  rss {rss_mb():.1f} MB", flush=True)
        wall = time.perf_counter() - t0
        gc.collect()
        rss["end"] = rss_mb()
        st = sim_stats()
        leaks = sim_leaks()
        loops_alive = live(asyncio.AbstractEventLoop)
        bridges = live_bridges()
        try:
            import trio

            trio_alive = live(trio.lowlevel.TrioToken)
        except ImportError:
            trio_alive = 0
        growth = (rss["end"] - rss["middle"]) / rss["middle"] * 100
        print(f"\nsoak: {done:,} runs in {rounds} rounds (session + loop churn) on {','.join(self.loops)}")
        print(f"  wall {wall:.0f} s, {done / wall:,.0f} runs/s, concurrency {a.concurrency}")
        print(f"  outcomes: {dict(sorted(self.outcomes.items()))}")
        print(f"  unexpected errors: {dict(self.unexpected) or 0}   hangs: {self.hangs}")
        print(f"  sim: tasks_failed {st['tasks_failed']}, graph_runs {st['graph_runs']}; leaks: {leaks or 0}")
        print(f"  live after the run: asyncio loops {loops_alive}, trio tokens {trio_alive}, bridges {bridges}")
        print(
            f"  RSS MB: start {rss['start']:.1f}, at 10 % {rss['warm']:.1f}, middle {rss['middle']:.1f}, "
            f"end {rss['end']:.1f} (end vs middle {growth:+.1f} %, vs 10 % {_pct(rss['end'], rss['warm']):+.1f} %, "
            f"vs start {_pct(rss['end'], rss['start']):+.1f} %)"
        )
        ok = not leaks and not self.hangs and not self.unexpected and abs(growth) <= 5 and loops_alive + bridges <= 2
        print(f"  verdict: {'PASS' if ok else 'FAIL'} (0 leaks, 0 hangs, 0 unexpected errors, RSS within 5 %)")
        return 0 if ok else 1


def _pct(now: float, then: float) -> float:
    return (now - then) / then * 100


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=1_000_000, help="total runs (default 1,000,000)")
    p.add_argument("--round", type=int, default=5000, help="runs per session and event loop (default 5000)")
    p.add_argument("--concurrency", type=int, default=32, help="tasks per round (default 32)")
    p.add_argument("--cancel-every", type=int, default=10, help="cancel every Nth run (default 10; 0: never)")
    p.add_argument("--fault-every", type=int, default=250, help="inject a fault every Nth run (default 250)")
    p.add_argument("--callback-every", type=int, default=50, help="run_with_callback every Nth run (default 50)")
    p.add_argument("--loops", default=",".join(LOOPS), help="event loops to rotate through")
    p.add_argument("--round-timeout", type=float, default=120.0, help="a round slower than this is a hang")
    p.add_argument("--progress", type=int, default=10, help="print every N rounds (0: never)")
    args = p.parse_args(argv)
    if args.runs < 1 or args.round < 1 or args.concurrency < 1:
        p.error("--runs, --round and --concurrency must be >= 1")
    return Soak(args).main()


if __name__ == "__main__":
    sys.exit(main())
