"""Cancellation at every stage of a run: before submitting, while in flight, and as a timeout;
closing a session while runs are in flight."""

from __future__ import annotations

import functools

import anyio
import anyio.lowlevel
import numpy as np
import pytest
from helpers import add_model, held, sim_stats, sim_timing, wait_for

import ascend_async

pytestmark = pytest.mark.anyio

X = np.arange(8, dtype=np.float32).reshape(2, 4)


async def test_cancelled_before_submit_submits_nothing() -> None:
    async with ascend_async.Session() as s:
        g = add_model(s)
        await s.load(g)
        before = sim_stats()
        with anyio.CancelScope() as scope:
            scope.cancel()
            await s.run(g, {"x": X, "y": X})
            pytest.fail("run returned inside a cancelled scope")  # pragma: no cover
        assert scope.cancelled_caught
        after = sim_stats()
        assert after["tasks_submitted"] == before["tasks_submitted"]
        assert after["graph_runs"] == before["graph_runs"]
        st = s.statistics()
        assert st.in_flight == 0 and st.completed == 0 and st.cancelled == 0
        # nothing was left behind: the next run works
        out = await s.run(g, {"x": X, "y": X})
        np.testing.assert_array_equal(out["z"], 2 * X)


async def test_cancel_in_flight_returns_at_once_and_frees_later() -> None:
    async with ascend_async.Session() as s:
        g = add_model(s)
        await s.load(g)
        with held(s.streams[0]):
            reached: list[str] = []
            async with anyio.create_task_group() as tg:
                scope = anyio.CancelScope()

                async def victim() -> None:
                    with scope:
                        await s.run(g, {"x": X, "y": X}, stream=0)
                        reached.append("returned")  # pragma: no cover

                tg.start_soon(victim)
                await wait_for(lambda: s.statistics().in_flight == 1, "submitted")
                scope.cancel()
            # the task finished although the device has not run it yet
            assert scope.cancelled_caught and not reached
            st = s.statistics()
            assert st.in_flight == 1 and st.cancelled == 0
            assert st.device_pool["live_blocks"] > 0  # the device may still read those buffers
        # one more run on the same stream completes after the cancelled one (in-order stream)
        out = await s.run(g, {"x": X, "y": 3 * X}, stream=0)
        np.testing.assert_array_equal(out["z"], 4 * X)
        st = s.statistics()
        assert st.in_flight == 0 and st.cancelled == 1 and st.completed == 1
        assert st.device_pool["live_blocks"] == 0 and st.host_pool["live_blocks"] == 0


async def test_fail_after_raises_timeout_error() -> None:
    async with ascend_async.Session() as s:
        g = add_model(s)
        await s.load(g)
        with held(s.streams[1]):
            with pytest.raises(TimeoutError):
                with anyio.fail_after(0.05):
                    await s.run(g, {"x": X, "y": X}, stream=1)
            assert s.statistics().in_flight == 1
        out = await s.run(g, {"x": X, "y": X}, stream=1)
        np.testing.assert_array_equal(out["z"], 2 * X)
        st = s.statistics()
        assert st.cancelled == 1 and st.completed == 1 and st.in_flight == 0


async def test_cancel_many_in_flight_across_streams() -> None:
    async with ascend_async.Session() as s:
        g = add_model(s)
        await s.load(g)
        with held(*s.streams):
            async with anyio.create_task_group() as tg:
                for i in range(40):
                    tg.start_soon(functools.partial(s.run, g, {"x": X, "y": X}, stream=i % 2))
                await wait_for(lambda: s.statistics().in_flight == 40, "submitted")
                tg.cancel_scope.cancel()
            assert s.statistics().in_flight == 40
        for i in range(2):
            await s.run(g, {"x": X, "y": X}, stream=i)
        st = s.statistics()
        assert st.cancelled == 40 and st.completed == 2 and st.in_flight == 0
        assert st.device_pool["live_blocks"] == 0 and st.host_pool["live_blocks"] == 0


async def test_aclose_with_runs_in_flight() -> None:
    s = ascend_async.Session()
    g = add_model(s)
    await s.load(g)
    lane = s.streams[0]
    results: list[np.ndarray] = []

    async def one(i: int) -> None:
        out = await s.run(g, {"x": X, "y": np.full_like(X, i)}, stream=0)
        results.append(out["z"])

    try:
        with held(lane) as gate, anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for i in range(5):
                    tg.start_soon(one, i)
                await wait_for(lambda: s.statistics().in_flight == 5, "submitted")
                tg.start_soon(s.aclose)
                await wait_for(lambda: s.is_closed, "closing")
                # closing waits for the runs; new runs are refused meanwhile
                with pytest.raises(ascend_async.SessionClosedError):
                    await s.run(g, {"x": X, "y": X})
                gate.release()  # (before the aclose destroys the stream)
    finally:
        await s.aclose()  # a no-op once closed; closes it if the block failed
    assert s.is_closed
    assert sorted(float(r[0, 0]) for r in results) == [0.0, 1.0, 2.0, 3.0, 4.0]


async def test_concurrent_aclose_waits_for_the_first() -> None:
    """A second aclose (or close) while the first is still waiting for runs returns only once
    the session is really closed: its streams and GE session are gone."""
    s = ascend_async.Session()
    g = add_model(s)
    await s.load(g)
    lane = s.streams[0]
    seen: list[dict[str, int]] = []

    async def second() -> None:
        await s.aclose()
        seen.append(sim_stats())

    early: list[dict[str, int]] = []
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            # (held inside the task group: the first aclose cannot finish while the stream is held)
            with held(lane):
                tg.start_soon(functools.partial(s.run, g, {"x": X, "y": X}, stream=0))
                await wait_for(lambda: s.statistics().in_flight == 1, "submitted")
                tg.start_soon(s.aclose)
                await wait_for(lambda: s.is_closed, "closing")
                tg.start_soon(second)
                await anyio.wait_all_tasks_blocked()
                early = list(seen)
    assert not early, "the second aclose returned while a run was still in flight"
    assert len(seen) == 1
    assert seen[0]["sessions"] == 0 and seen[0]["streams"] == 0


async def test_close_while_the_first_run_is_loading() -> None:
    """The first run on a stream compiles/loads on a worker thread; closing the session
    meanwhile makes that run fail with SessionClosedError, and nothing leaks."""
    s = ascend_async.Session()
    outcome: list[BaseException | dict[str, np.ndarray]] = []
    try:
        g = add_model(s)

        async def one() -> None:
            try:
                outcome.append(await s.run(g, {"x": X, "y": X}))
            except ascend_async.AscendError as exc:
                outcome.append(exc)

        with sim_timing(load_us=200_000), anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(one)
                await anyio.wait_all_tasks_blocked()  # the run waits for its LoadGraph
                await s.aclose()
    finally:
        await s.aclose()
    assert len(outcome) == 1
    assert isinstance(outcome[0], ascend_async.SessionClosedError)
    st = sim_stats()
    assert st["sessions"] == 0 and st["graphs"] == 0 and st["streams"] == 0


async def test_cancel_while_waiting_for_an_in_flight_slot() -> None:
    """With max_in_flight reached, a run waits for a slot before submitting; cancelling it
    there submits nothing and counts nothing as cancelled."""
    async with ascend_async.Session(max_in_flight=1) as s:
        g = add_model(s)
        await s.load(g)
        with held(s.streams[0]) as gate:
            async with anyio.create_task_group() as tg:
                tg.start_soon(functools.partial(s.run, g, {"x": X, "y": X}, stream=0))
                await wait_for(lambda: s.statistics().in_flight == 1, "first submitted")
                submitted = sim_stats()["tasks_submitted"]
                with anyio.CancelScope() as scope:
                    tg.start_soon(_cancel_after_blocked, scope)
                    await s.run(g, {"x": X, "y": X}, stream=0)
                assert scope.cancelled_caught
                assert sim_stats()["tasks_submitted"] == submitted
                assert s.statistics().in_flight == 1
                gate.release()
        st = s.statistics()
        assert st.completed == 1 and st.cancelled == 0 and st.in_flight == 0


async def _cancel_after_blocked(scope: anyio.CancelScope) -> None:
    await anyio.wait_all_tasks_blocked()
    scope.cancel()


async def test_cancelled_device_outputs_are_released() -> None:
    async with ascend_async.Session() as s:
        g = add_model(s)
        await s.load(g)
        with held(s.streams[0]):
            with anyio.move_on_after(0.02) as scope:
                await s.run(g, {"x": X, "y": X}, stream=0, outputs="device")
            assert scope.cancelled_caught
        out = await s.run(g, {"x": X, "y": X}, stream=0)
        np.testing.assert_array_equal(out["z"], 2 * X)
        assert sim_stats()["ge_outputs"] == 0
        st = s.statistics()
        assert st.cancelled == 1 and st.device_pool["live_blocks"] == 0
