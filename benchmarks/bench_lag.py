"""(4) Event-loop lag (a 1 ms periodic timer's lateness) with 1,000 runs in flight, and
(5) watcher CPU: idle, and per completion.

The heap the process built at startup (onnx, numpy, the interpreter's own ~40k objects) is
frozen first (``gc.freeze()``, as latency-sensitive services do after startup), so a full
collection of it, which takes several ms here whoever triggers it, stays out of the lag rows;
a row reports what one such collection costs. The arrivals scenario also runs with a null
request (a checkpoint in place of ``run``): the lag the arrivals cause on their own, the floor
of that row."""

from __future__ import annotations

import gc
import sys
import time
from collections.abc import Callable

import anyio
import anyio.lowlevel
import numpy as np
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
from ascend_async import _probe


async def _sample_lag(record: Callable[[int], object], stop: list[bool]) -> None:
    """How late a 1 ms timer fires on this loop, in ns, once per tick, until ``stop[0]``."""
    while not stop[0]:
        t = time.perf_counter_ns()
        await anyio.sleep(0.001)
        record(max(0, time.perf_counter_ns() - t - 1_000_000))


async def _held(s: aa.Session, g: aa.Graph, n: int = 1000) -> tuple[float, float, float, float]:
    """Park ``n`` runs on held sim streams, then release them: the loop's lag (p99 ms) while
    the runs sit in flight, and while they all complete (no resubmission). Submission excluded."""
    lib = _probe.sim().lib  # sim-only gate (aa_sim_stream_hold)
    lag: dict[str, list[int]] = {"parked": [], "drain": []}
    phase = [""]
    finished = [0]
    stop = [False]

    def record(ns: int) -> None:
        if phase[0]:
            lag[phase[0]].append(ns)

    async def one() -> None:
        await s.run(g, {"x": X})
        finished[0] += 1

    streams = s.streams
    for st in streams:
        lib.aa_sim_stream_hold(st.handle)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_sample_lag, record, stop)
            for _ in range(n):
                tg.start_soon(one)
            while s.statistics().in_flight < n:  # noqa: ASYNC110 - polling a counter
                await anyio.sleep(0.01)
            phase[0] = "parked"
            await anyio.sleep(0.3)
            phase[0] = "drain"
            for st in streams:
                lib.aa_sim_stream_release(st.handle)
            streams = ()
            while finished[0] < n:  # noqa: ASYNC110
                await anyio.sleep(0.001)
            await anyio.sleep(0.005)
            phase[0] = ""
            stop[0] = True
    finally:
        for st in streams:
            lib.aa_sim_stream_release(st.handle)
    pk = np.asarray(lag["parked"] or [0]) / 1e6
    dr = np.asarray(lag["drain"] or [0]) / 1e6
    return float(np.percentile(pk, 99)), float(pk.max()), float(np.percentile(dr, 99)), float(dr.max())


async def _arriving(s: aa.Session, g: aa.Graph, n: int = 1000, per_iteration: int = 50) -> tuple[float, float]:
    """``n`` requests arriving ``per_iteration`` per loop iteration (a checkpoint between
    batches), each doing a little work with its result (~20 us of Python): the loop's lag p99
    and max (ms) from the first arrival until the last request is done."""
    lag: list[int] = []
    finished = [0]
    stop = [False]

    async def request() -> None:
        out = await s.run(g, {"x": X})
        acc = 0.0
        for v in out["y"].ravel().tolist() * 50:  # a little work with the result
            acc += v
        finished[0] += 1

    async with anyio.create_task_group() as tg:
        tg.start_soon(_sample_lag, lag.append, stop)
        await anyio.sleep(0.005)
        for i in range(0, n, per_iteration):
            for _ in range(min(per_iteration, n - i)):
                tg.start_soon(request)
            await anyio.lowlevel.checkpoint()
        while finished[0] < n:  # noqa: ASYNC110
            await anyio.sleep(0.001)
        stop[0] = True
    a = np.asarray(lag or [0]) / 1e6
    return float(np.percentile(a, 99)), float(a.max())


class _NullSession:
    """A stand-in whose ``run`` is a checkpoint and a copy: the arrivals scenario's floor."""

    async def run(self, g: object, inputs: object) -> dict[str, np.ndarray]:
        await anyio.lowlevel.checkpoint()
        return {"y": X.copy()}


def _full_collection_ms() -> float:
    gc.unfreeze()
    t = time.perf_counter()
    gc.collect()
    ms = (time.perf_counter() - t) * 1e3
    gc.freeze()
    return ms


def run(quick: bool = False) -> list[Row]:
    dur = 0.8 if quick else 2.0
    waves = 5
    rows: list[Row] = [
        Row(
            "4 loop lag",
            "one full GC pass over the startup heap (frozen for the rows below)",
            f"{_full_collection_ms():.1f} ms",
        )
    ]
    try:
        _lag_rows(rows, dur, waves, quick)
    finally:
        gc.unfreeze()
    return rows


def _lag_rows(rows: list[Row], dur: float, waves: int, quick: bool) -> None:
    for loop in LOOPS:
        if not have_loop(loop):
            continue
        with session(max_in_flight=1000) as s:
            g = s.add_graph(aa.Graph(tiny_model()))

            async def main(s: aa.Session = s, g: aa.Graph = g) -> dict[str, float]:
                await s.load(g)
                return await closed_loop(lambda: s.run(g, {"x": X}), 1000, dur, warmup=1000)

            r = run_on(loop, main)
            if s.backend == "sim":

                async def held(s: aa.Session = s, g: aa.Graph = g) -> tuple[float, float, float, float]:
                    return await _held(s, g)

                pk99, pkmax, dr99, drmax = run_on(loop, held)

                async def arriving(s: aa.Session = s, g: aa.Graph = g) -> tuple[list[float], list[float]]:
                    lib, null = [], []
                    for _ in range(waves):  # alternated, so noise hits both alike
                        lib.append((await _arriving(s, g))[0])
                        null.append((await _arriving(_NullSession(), g))[0])  # type: ignore[arg-type]
                    return lib, null

                lib99, null99 = run_on(loop, arriving)
                ar99 = float(np.median(lib99))
                rows.append(
                    Row(
                        "4 loop lag",
                        f"{loop}: 1,000 requests arriving 50/iteration, a little work each p99 "
                        f"(median of {waves} waves; worst)",
                        f"{ar99:.2f} ms ({max(lib99):.2f}); null request {np.median(null99):.2f} ms "
                        f"({max(null99):.2f})",
                        "p99 <= 2 ms",
                        verdict(ar99 <= 2.0),
                    )
                )
                rows.append(
                    Row(
                        "4 loop lag",
                        f"{loop}: 1,000 parked in flight (held streams) p99 (max)",
                        f"{pk99:.2f} ms ({pkmax:.2f})",
                        "p99 <= 2 ms",
                        verdict(pk99 <= 2.0),
                    )
                )
                rows.append(
                    Row(
                        "4 loop lag",
                        f"{loop}: while those 1,000 complete p99 (max)",
                        f"{dr99:.2f} ms ({drmax:.2f})",
                        "p99 <= 2 ms",
                        verdict(dr99 <= 2.0),
                    )
                )
        rows.append(
            Row(
                "4 loop lag",
                f"{loop}: 1,000 tasks resubmitting (closed loop) p99 (max)",
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


if __name__ == "__main__":
    from _common import print_rows

    print_rows(run("--quick" in sys.argv))
