"""The device's event budget: one count of hardware events per device, across every loop,
session and pool instance on it.

Before it, the in-flight cap was per loop and per session: two loops on one session, two
sessions, DevicePool(instances=2) or Session(max_in_flight=5000) passed the device's ~1,023
events, and each submission past it blocked its event-loop thread for 5 s inside
aclrtRecordEvent, then failed with 207007; the failed event went back on top of the pool, so
every later run blocked and failed too.

Each case here holds the streams so that more runs than the budget are in flight or waiting at
once, releases them, and checks every output against numpy while a ticker task on each loop
records the worst stall (printed; asserted only against a generous bound that a 5 s block in
the runtime would break: speed is measured in benchmarks/bench_budget.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import numpy as np
import pytest
from helpers import add_model, add_model_proto, wait_for

import ascend_async
from ascend_async._native import _sim

pytestmark = pytest.mark.anyio

LIMIT = 1023  # the sim's hardware events per device (aa_sim_config.max_events)
PER_LOOP = 600  # two of these pass the budget
STALL_BOUND_S = 1.0  # generous: a record waiting for a free event blocked 5 s


def _budget(dev: Any) -> dict[str, int]:
    return dict(dev.events.stats())


class Ticker:
    """Ticks every millisecond on its loop and keeps the longest gap between ticks."""

    def __init__(self) -> None:
        self.worst = 0.0
        self.stop = False

    async def run(self) -> None:
        last = time.perf_counter()
        while not self.stop:
            await anyio.sleep(0.001)
            now = time.perf_counter()
            self.worst = max(self.worst, now - last)
            last = now


def _inputs(i: int) -> dict[str, np.ndarray]:
    return {"x": np.full((1, 4), i, np.float32), "y": np.arange(4, dtype=np.float32).reshape(1, 4)}


def _expected(i: int) -> np.ndarray:
    v = _inputs(i)
    return v["x"] + v["y"]  # numpy's answer, independent of the device


async def _push(run: Callable[..., Any], ids: range, errors: list[BaseException], wrong: list[int]) -> None:
    async def one(i: int) -> None:
        try:
            out = await run(_inputs(i))
        except BaseException as exc:  # counted: the test wants 0
            errors.append(exc)
            return
        if not np.array_equal(out["z"], _expected(i)):
            wrong.append(i)

    async with anyio.create_task_group() as tg:
        for i in ids:
            tg.start_soon(one, i)


@contextmanager
def held_many(streams: list[Any]) -> Iterator[None]:
    """Hold every stream (their tasks wait) for the block; released on the way out."""
    for st in streams:
        assert _sim.lib.aa_sim_stream_hold(st.handle) == 0
    try:
        yield
    finally:
        for st in streams:
            _sim.lib.aa_sim_stream_release(st.handle)


async def _saturate_then_release(
    dev: Any, sessions: list[ascend_async.Session], waiting: int, push: Callable[[], Any]
) -> Ticker:
    """With every stream held, push runs until the budget is full and ``waiting`` runs wait for
    events; then release the streams and let every run finish. Returns the loop's ticker."""
    ticker = Ticker()
    async with anyio.create_task_group() as outer:
        outer.start_soon(ticker.run)
        async with anyio.create_task_group() as tg:
            with held_many([st for s in sessions for st in s.streams]):
                tg.start_soon(push)
                await wait_for(
                    lambda: _budget(dev)["used"] == LIMIT and _budget(dev)["waiting"] == waiting,
                    "the budget fills and the rest wait",
                )
        ticker.stop = True
    return ticker


async def test_one_loop_two_sessions_share_the_budget() -> None:
    errors: list[BaseException] = []
    wrong: list[int] = []
    async with ascend_async.Session(max_in_flight=1000) as a, ascend_async.Session(max_in_flight=1000) as b:
        ga, gb = add_model(a), add_model(b)
        await a.load(ga)
        await b.load(gb)
        dev = a._device
        assert b._device is dev

        async def push() -> None:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_push, lambda v: a.run(ga, v), range(PER_LOOP), errors, wrong)
                tg.start_soon(_push, lambda v: b.run(gb, v), range(PER_LOOP, 2 * PER_LOOP), errors, wrong)

        ticker = await _saturate_then_release(dev, [a, b], 2 * PER_LOOP - LIMIT, push)
        assert _budget(dev)["used"] == 0
    print(f"two sessions, one loop: worst loop stall {ticker.worst * 1e3:.1f} ms")
    assert not errors, errors[:3]
    assert not wrong
    assert ticker.worst < STALL_BOUND_S


async def test_pool_instances_on_one_device_share_the_budget() -> None:
    errors: list[BaseException] = []
    wrong: list[int] = []
    async with ascend_async.DevicePool([0], instances=2, max_in_flight=1000) as pool:
        g = pool.add_graph(add_model_proto())
        await pool.load(g)
        sessions = list(pool.sessions)
        dev = sessions[0]._device
        assert sessions[1]._device is dev

        async def push() -> None:
            await _push(lambda v: pool.run(g, v), range(2 * PER_LOOP), errors, wrong)

        ticker = await _saturate_then_release(dev, sessions, 2 * PER_LOOP - LIMIT, push)
        assert _budget(dev)["used"] == 0
    print(f"DevicePool(instances=2): worst loop stall {ticker.worst * 1e3:.1f} ms")
    assert not errors, errors[:3]
    assert not wrong
    assert ticker.worst < STALL_BOUND_S


async def test_max_in_flight_above_the_budget_is_clamped_with_a_warning() -> None:
    with pytest.warns(ascend_async.AscendWarning, match=r"max_in_flight=5000.*event budget.*1023"):
        s = ascend_async.Session(max_in_flight=5000)
    errors: list[BaseException] = []
    wrong: list[int] = []
    async with s:
        assert s._max_in_flight == LIMIT
        g = add_model(s)
        await s.load(g)
        dev = s._device

        async def push() -> None:
            await _push(lambda v: s.run(g, v), range(2 * PER_LOOP), errors, wrong)

        # One loop, one session: the clamped limiter holds the runs past the budget back.
        ticker = await _saturate_then_release(dev, [s], 0, push)
    print(f"max_in_flight=5000: worst loop stall {ticker.worst * 1e3:.1f} ms")
    assert not errors, errors[:3]
    assert not wrong
    assert ticker.worst < STALL_BOUND_S


@pytest.mark.parametrize("pair", [("asyncio", "trio"), ("uvloop", "asyncio")])
def test_two_loops_on_two_threads_share_one_session(pair: tuple[str, str]) -> None:
    """Two threads, each with its own event loop, one session: 1,200 runs, 0 errors, every
    output right, neither loop stalled."""
    if "uvloop" in pair:
        pytest.importorskip("uvloop")
    errors: list[BaseException] = []
    wrong: list[int] = []
    tickers = [Ticker(), Ticker()]
    with ascend_async.Session(max_in_flight=1000) as s:
        g = add_model(s)
        dev = s._device

        async def main(k: int) -> None:
            async with anyio.create_task_group() as tg:
                tg.start_soon(tickers[k].run)
                await _push(lambda v: s.run(g, v), range(k * PER_LOOP, (k + 1) * PER_LOOP), errors, wrong)
                tickers[k].stop = True

        def thread(k: int) -> None:
            kind = pair[k]
            try:
                if kind == "uvloop":
                    import uvloop

                    anyio.run(main, k, backend="asyncio", backend_options={"loop_factory": uvloop.new_event_loop})
                else:
                    anyio.run(main, k, backend=kind)
            except BaseException as exc:
                errors.append(exc)

        anyio.run(s.load, g)  # compiled and loaded on both streams first
        with held_many(list(s.streams)):
            threads = [threading.Thread(target=thread, args=(k,)) for k in (0, 1)]
            for t in threads:
                t.start()
            deadline = time.monotonic() + 30
            while not (_budget(dev)["used"] == LIMIT and _budget(dev)["waiting"] == 2 * PER_LOOP - LIMIT):
                assert time.monotonic() < deadline, f"the budget never filled: {_budget(dev)} {errors[:3]}"
                time.sleep(0.005)
        for t in threads:
            t.join(60)
            assert not t.is_alive()
        assert _budget(dev)["used"] == 0
    worst = max(t.worst for t in tickers)
    print(f"two loops {pair}: worst loop stall {worst * 1e3:.1f} ms")
    assert not errors, errors[:3]
    assert not wrong
    assert worst < STALL_BOUND_S
