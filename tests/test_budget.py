"""The device's event budget: one count of hardware events per device, across every loop,
session and pool instance on it.

Before it, the in-flight cap was per loop and per session: two loops on one session, two
sessions, DevicePool(instances=2) or Session(max_in_flight=5000) passed the device's ~1,023
events, and each submission past it blocked its event-loop thread for 5 s inside
aclrtRecordEvent, then failed with 207007; the failed event went back on top of the pool, so
every later run blocked and failed too.

Each case here holds the streams so that more runs than the budget are in flight or waiting at
once, checks that each loop keeps turning while runs wait for events (a ticker task counts its
turns: it must advance while the budget is full, where the old code blocked the loop inside
aclrtRecordEvent), releases them, and checks every output against numpy. No duration is
asserted: the cost of a stall is measured in benchmarks/bench_budget.py.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import anyio
import numpy as np
import pytest
from helpers import add_model, add_model_proto, held, sim_stats, wait_for, wait_until

import ascend_async
from ascend_async._native import _sim

pytestmark = pytest.mark.anyio

LIMIT = 1023  # the sim's hardware events per device (aa_sim_config.max_events)
PER_LOOP = 600  # two of these pass the budget
TURNS = 3  # ticks a loop must make while its runs wait for events (it is not blocked)


def _budget(dev: Any) -> dict[str, int]:
    return dict(dev.events.stats())


def _full(dev: Any, waiting: int) -> bool:
    """The budget is full and ``waiting`` runs wait for events."""
    b = _budget(dev)
    return b["used"] == LIMIT and b["waiting"] == waiting


class Ticker:
    """Counts its loop's turns (a tick about every millisecond) until stopped: a loop blocked in a
    call stops the count."""

    def __init__(self) -> None:
        self.ticks = 0
        self.stop = False

    async def run(self) -> None:
        while not self.stop:
            await anyio.sleep(0.001)
            self.ticks += 1


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


async def _saturate_then_release(
    dev: Any, sessions: list[ascend_async.Session], waiting: int, push: Callable[[], Any]
) -> None:
    """With every stream held, push runs until the budget is full and ``waiting`` runs wait for
    events; check that the loop keeps turning meanwhile; then release the streams and let every
    run finish."""
    ticker = Ticker()
    async with anyio.create_task_group() as outer:
        outer.start_soon(ticker.run)
        async with anyio.create_task_group() as tg:
            with held(*[st for s in sessions for st in s.streams]):
                tg.start_soon(push)
                await wait_for(lambda: _full(dev, waiting), "the budget fills and the rest wait")
                full_at = ticker.ticks
                await wait_for(lambda: ticker.ticks >= full_at + TURNS, "the loop turns while runs wait")
                assert _full(dev, waiting)  # still full: the ticks came while runs waited
        ticker.stop = True


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

        await _saturate_then_release(dev, [a, b], 2 * PER_LOOP - LIMIT, push)
        assert _budget(dev)["used"] == 0
    assert not errors, errors[:3]
    assert not wrong


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

        await _saturate_then_release(dev, sessions, 2 * PER_LOOP - LIMIT, push)
        assert _budget(dev)["used"] == 0
    assert not errors, errors[:3]
    assert not wrong


async def test_max_in_flight_above_the_budget_is_clamped_with_a_warning() -> None:
    # Made on this loop, the session opens (and learns the device's budget) at its first use.
    s = ascend_async.Session(max_in_flight=5000)
    with pytest.warns(ascend_async.AscendWarning, match=r"max_in_flight=5000.*event budget.*1023"):
        assert len(s.streams) == 2
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
        await _saturate_then_release(dev, [s], 0, push)
    assert not errors, errors[:3]
    assert not wrong


@pytest.mark.parametrize("pair", [("asyncio", "trio"), ("uvloop", "asyncio")])
def test_two_loops_on_two_threads_share_one_session(pair: tuple[str, str]) -> None:
    """Two threads, each with its own event loop, one session: 1,200 runs, 0 errors, every
    output right, both loops turning while their runs wait for events."""
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
        with held(*s.streams):
            threads = [threading.Thread(target=thread, args=(k,)) for k in (0, 1)]
            for t in threads:
                t.start()
            wait_until(lambda: _full(dev, 2 * PER_LOOP - LIMIT) or bool(errors), "the budget fills")
            assert not errors, errors[:3]
            full_at = [t.ticks for t in tickers]
            turned = lambda: all(t.ticks >= n + TURNS for t, n in zip(tickers, full_at, strict=True))  # noqa: E731
            wait_until(turned, "both loops turn while their runs wait")
            assert _full(dev, 2 * PER_LOOP - LIMIT)  # still full: the ticks came while runs waited
        for t in threads:
            t.join(60)
            assert not t.is_alive()
        assert _budget(dev)["used"] == 0
    assert not errors, errors[:3]
    assert not wrong


async def test_waiting_runs_are_admitted_in_order_and_a_cancelled_one_takes_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Budget 4: four runs of one session fill it; then another session's run, a run cancelled
    while it waits, and a profiled run (four events) wait, and are admitted in that order as
    events come back."""
    monkeypatch.setenv("ASCEND_ASYNC_EVENT_BUDGET", "4")
    async with ascend_async.Session(streams=1) as a, ascend_async.Session(streams=1) as b:
        ga, gb = add_model(a), add_model(b)
        await a.load(ga)
        await b.load(gb)
        dev = a._device
        assert dev.events.limit == 4
        order: list[int] = []
        profiles: list[Any] = []

        async def one(s: ascend_async.Session, g: Any, i: int, profiled: bool = False) -> None:
            if profiled:
                out, prof = await s.run_profiled(g, _inputs(i))
                profiles.append(prof)
            else:
                out = await s.run(g, _inputs(i))
            np.testing.assert_array_equal(out["z"], _expected(i))
            order.append(i)

        async with anyio.create_task_group() as tg:
            with held(a.streams[0], b.streams[0]):
                for i in range(4):
                    tg.start_soon(one, a, ga, i)
                await anyio.wait_all_tasks_blocked()
                assert _budget(dev)["used"] == 4
                tg.start_soon(one, b, gb, 10)
                await anyio.wait_all_tasks_blocked()
                with anyio.CancelScope() as cancelled:
                    async with anyio.create_task_group() as inner:
                        inner.start_soon(one, b, gb, 11)
                        await anyio.wait_all_tasks_blocked()
                        tg.start_soon(one, b, gb, 12, True)
                        await anyio.wait_all_tasks_blocked()
                        assert _budget(dev)["waiting"] == 3
                        cancelled.cancel()
                assert _budget(dev)["waiting"] == 2
                assert _budget(dev)["used"] == 4  # the cancelled wait took nothing
        assert sorted(order) == [0, 1, 2, 3, 10, 12]
        assert [i for i in order if i >= 10] == [10, 12]  # admitted first come, first served
        assert len(profiles) == 1 and profiles[0].compute_ms >= 0
        st = b.statistics().device_events  # the device's budget, as each session reports it
        assert st == _budget(dev)
        assert (st["limit"], st["used"], st["waiting"], st["peak"], st["waited"]) == (4, 0, 0, 4, 3)


async def test_a_recorded_event_counts_and_is_refused_at_once_when_none_is_left(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ASCEND_ASYNC_EVENT_BUDGET", "4")
    async with ascend_async.Session(streams=1) as s:
        g = add_model(s)
        await s.load(g)
        lane = s.streams[0]
        async with anyio.create_task_group() as tg:
            with held(lane):
                kept = lane.record()  # holds one event of the four
                for i in range(3):
                    tg.start_soon(s.run, g, _inputs(i))
                await anyio.wait_all_tasks_blocked()
                assert _budget(s._device)["used"] == 4
                with pytest.raises(ascend_async.AclError, match="207007") as info:
                    lane.record()  # refused now, not after the runtime's wait
                assert info.value.code == 207007 and "close the events" in str(info.value)
        await kept.wait()
        kept.close()
        assert _budget(s._device)["used"] == 0
        again = lane.record()
        await again.wait()
        again.close()


async def test_a_failed_record_never_poisons_the_event_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    """Another user of the device holds every hardware event: a run fails with 207007 after the
    runtime's wait (shortened here) for a free one. Its event, which holds no hardware event,
    is destroyed, not pooled, where the next runs would take it first and fail the same way."""
    monkeypatch.setenv("ASCEND_ASYNC_SIM_EVENT_WAIT_MS", "20")
    lib, ffi = _sim.lib, _sim.ffi
    async with ascend_async.Session(streams=1) as s:
        g = add_model(s)
        await s.load(g)
        dev = s._device
        dev.ensure_current()
        other = ffi.new("aclrtStream*")
        assert lib.aclrtCreateStream(other) == 0
        taken: list[Any] = []
        try:
            with held(other[0]):
                while True:  # the other user takes every hardware event
                    ev = ffi.new("aclrtEvent*")
                    assert lib.aclrtCreateEvent(ev) == 0
                    taken.append(ev[0])
                    rc = lib.aclrtRecordEvent(ev[0], other[0])
                    if rc:
                        assert rc == 207007
                        break
                events = sim_stats()["events"]
                with pytest.raises(ascend_async.AclError) as info:
                    await s.run(g, _inputs(1))
                assert info.value.code == 207007
                assert sim_stats()["events"] == events  # its event was destroyed ...
                assert dev._events == []  # ... not pooled
                assert _budget(dev)["used"] == 0
        finally:
            lib.aclrtSynchronizeStream(other[0])
            for ev in taken:
                lib.aclrtDestroyEvent(ev)
            lib.aclrtDestroyStream(other[0])
            lib.aclGetRecentErrMsg()
        got: dict[int, Any] = {}

        async def one(i: int) -> None:
            got[i] = (await s.run(g, _inputs(i)))["z"]

        async with anyio.create_task_group() as tg:  # events are free again: all succeed
            for i in range(2, 10):
                tg.start_soon(one, i)
        for i in range(2, 10):
            np.testing.assert_array_equal(got[i], _expected(i))
        assert _budget(dev)["used"] == 0
