"""Several event loops in several threads sharing one session; the watcher wakes loops in
batches; the "report" watcher strategy."""

from __future__ import annotations

import threading

import anyio
import anyio.lowlevel
import numpy as np
import pytest
from helpers import add_model, held, wait_for

import ascend_async
from ascend_async._native import _sim

try:
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None

pytestmark = pytest.mark.anyio


def test_loops_in_threads_share_one_session() -> None:
    """Two asyncio loops, a uvloop loop and a trio loop, each in its own thread, all running
    concurrent runs through one Session; every result is the one its inputs ask for. A
    barrier makes them overlap."""
    backends: list[tuple[str, dict[str, object]]] = [("asyncio", {}), ("asyncio", {}), ("trio", {})]
    if uvloop is not None:
        backends.append(("asyncio", {"loop_factory": uvloop.new_event_loop}))
    per_thread = 60
    barrier = threading.Barrier(len(backends), timeout=20)
    errors: list[BaseException] = []
    counts = [0] * len(backends)
    with ascend_async.Session(streams=3) as s:
        g = add_model(s)

        async def loop_main(k: int) -> None:
            await anyio.to_thread.run_sync(barrier.wait)

            async def one(i: int) -> None:
                x = np.full((2, 4), k, np.float32)
                y = np.full((2, 4), i, np.float32)
                out = await s.run(g, {"x": x, "y": y})
                np.testing.assert_array_equal(out["z"], x + y)
                counts[k] += 1

            with anyio.fail_after(20):
                async with anyio.create_task_group() as tg:
                    for i in range(per_thread):
                        tg.start_soon(one, i)

        def thread_main(k: int) -> None:
            backend, options = backends[k]
            try:
                anyio.run(loop_main, k, backend=backend, backend_options=options)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=thread_main, args=(k,)) for k in range(len(backends))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not any(t.is_alive() for t in threads)
        assert not errors, errors
        assert counts == [per_thread] * len(backends)
        st = s.statistics()
        assert st.completed == per_thread * len(backends) and st.in_flight == 0
        assert st.device_pool["live_blocks"] == 0


def test_sync_and_callback_runs_from_threads() -> None:
    with ascend_async.Session() as s:
        g_sync = add_model(s)
        g_cb = add_model(s)
        errors: list[BaseException] = []
        done = threading.Semaphore(0)
        n = 20

        def sync_worker(k: int) -> None:
            try:
                for i in range(n):
                    x = np.full((1, 4), k, np.float32)
                    out = s.run_sync(g_sync, {"x": x, "y": np.full_like(x, i)})
                    np.testing.assert_array_equal(out["z"], x + i)
            except BaseException as exc:
                errors.append(exc)

        def cb_worker(k: int) -> None:
            for i in range(n):
                x = np.full((1, 4), k, np.float32)

                def callback(out: object, err: object, want: float = k + i) -> None:
                    try:
                        assert err is None, err
                        assert threading.current_thread().name.startswith("ascend-async-watcher")
                        np.testing.assert_array_equal(out["z"], np.full((1, 4), want, np.float32))  # type: ignore[index]
                    except BaseException as exc:
                        errors.append(exc)
                    done.release()

                s.run_with_callback(g_cb, {"x": x, "y": np.full_like(x, i)}, callback)

        threads = [threading.Thread(target=f, args=(k,)) for k in range(2) for f in (sync_worker, cb_worker)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        for _ in range(2 * n):
            assert done.acquire(timeout=10)
        assert not errors, errors
        st = s.statistics()
        assert st.completed == 4 * n and st.in_flight == 0


async def test_a_burst_is_collected_by_the_loop_with_few_wake_ups() -> None:
    """64 runs released at once: the loop collects them itself (aa_watch_harvest); the watcher
    thread wakes it a handful of times at most and completes none of them."""
    n = 64
    async with ascend_async.Session() as s:
        g = add_model(s)
        await s.load(g)
        lane = s.streams[0]
        x = np.ones((1, 4), np.float32)
        await s.run(g, {"x": x, "y": x}, stream=1)  # the watcher has started and is idle
        before = s.statistics().watcher
        with held(lane) as gate:
            async with anyio.create_task_group() as tg:
                for _ in range(n):
                    tg.start_soon(_run_one, s, g, x)
                await wait_for(lambda: lane.in_flight == n)
                lane_held = lane.in_flight
                gate.release()
        after = s.statistics().watcher
        assert lane_held == n
        assert after["completed"] - before["completed"] == n
        assert after["harvested"] - before["harvested"] == n  # every one collected on the loop
        assert after["takeovers"] == before["takeovers"]  # none completed by the watcher thread
        assert after["wakes"] - before["wakes"] <= n // 8  # not one wake-up per completion


async def _run_one(s: ascend_async.Session, g: ascend_async.Graph, x: np.ndarray) -> None:
    out = await s.run(g, {"x": x, "y": x}, stream=0)
    np.testing.assert_array_equal(out["z"], 2 * x)


async def test_report_strategy_gives_correct_results() -> None:
    ascend_async.configure_watcher(0, "report")
    try:
        async with ascend_async.Session() as s:  # no device is held: a fresh watcher starts
            g = add_model(s)
            x = np.arange(8, dtype=np.float32).reshape(2, 4)
            async with anyio.create_task_group() as tg:
                for i in range(30):
                    tg.start_soon(_check, s, g, x, float(i))
            lane = s.streams[0]
            _sim.lib.aa_sim_inject_fault(lane.handle, 1, 507015)
            with pytest.raises(ascend_async.DeviceError) as info:
                await s.run(g, {"x": x, "y": x}, stream=0)
            assert info.value.code == 507015
            await _check(s, g, x, 1.0)
            st = s.statistics()
            assert st.completed == 31 and st.failed == 1 and st.in_flight == 0
            # completions were reported by the runtime, never found by polling events
            assert st.watcher["added"] == 32 and st.watcher["polls"] == 0
    finally:
        ascend_async.configure_watcher(0, "poll")
    with pytest.raises(ValueError):
        ascend_async.configure_watcher(0, "nonsense")


async def _check(s: ascend_async.Session, g: ascend_async.Graph, x: np.ndarray, v: float) -> None:
    out = await s.run(g, {"x": x, "y": np.full_like(x, v)})
    np.testing.assert_array_equal(out["z"], x + v)
