"""Injected device faults: the faulted run and the runs queued behind it on that stream fail with
DeviceError carrying the ACL code; other streams are unaffected; the stream is replaced and
later runs succeed. Injected delays do not reorder a stream."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import numpy as np
import pytest
from helpers import add_model, held, sim_stats, wait_for

import ascend_async
from ascend_async._native import _sim

pytestmark = pytest.mark.anyio

X = np.arange(8, dtype=np.float32).reshape(2, 4)
AICORE = 507015


async def _outcome(s: ascend_async.Session, g: ascend_async.Graph, v: float, stream: int) -> object:
    try:
        out = await s.run(g, {"x": X, "y": np.full_like(X, v)}, stream=stream)
    except ascend_async.AscendError as exc:
        return exc
    return out["z"]


async def test_fault_fails_the_run_with_the_acl_code() -> None:
    async with ascend_async.Session() as s:
        g = add_model(s)
        await s.load(g)
        old = s.streams[0]
        assert _sim.lib.aa_sim_inject_fault(old.handle, 1, AICORE) == 0
        with pytest.raises(ascend_async.DeviceError) as info:
            await s.run(g, {"x": X, "y": X}, stream=0)
        assert info.value.code == AICORE
        assert "507015" in str(info.value)
        # replaced: a fresh stream object at the same index; later runs succeed
        assert s.streams[0] is not old and len(s.streams) == 2
        out = await s.run(g, {"x": X, "y": X}, stream=0)
        np.testing.assert_array_equal(out["z"], 2 * X)
        st = s.statistics()
        assert st.failed == 1 and st.completed == 1 and st.in_flight == 0
        assert st.device_pool["live_blocks"] == 0 and st.host_pool["live_blocks"] == 0


@pytest.mark.parametrize("nth", [1, 3])
async def test_runs_queued_behind_a_fault_fail_other_stream_unaffected(nth: int) -> None:
    """nth=1 faults the first run's input copy; nth=3 its graph run (after two H2D copies)."""
    async with ascend_async.Session() as s:
        g = add_model(s)
        await s.load(g)
        bad, good = s.streams
        results: dict[tuple[int, int], object] = {}

        async def record(stream: int, i: int) -> None:
            results[stream, i] = await _outcome(s, g, float(i), stream)

        # (the faulted stream is retired and destroyed once its runs drain: the gate releases it
        # once, before that, and the block's exit does not touch it again)
        with held(bad) as gate:
            assert _sim.lib.aa_sim_inject_fault(bad.handle, nth, AICORE) == 0
            async with anyio.create_task_group() as tg:
                for i in range(4):
                    tg.start_soon(record, 0, i)
                    await wait_for(lambda i=i: bad.in_flight == i + 1)  # submission order
                for i in range(4):
                    tg.start_soon(record, 1, i)
                # the other stream completes while the faulty one is still held
                await wait_for(lambda: sum(k[0] == 1 for k in results) == 4)
                assert bad.in_flight == 4 and not any(k[0] == 0 for k in results)
                gate.release()
        for i in range(4):
            err = results[0, i]
            assert isinstance(err, ascend_async.DeviceError), err
            assert err.code == AICORE
            np.testing.assert_array_equal(results[1, i], X + i)
        assert s.streams[0] is not bad and s.streams[1] is good
        st = s.statistics()
        assert st.failed == 4 and st.completed == 4 and st.in_flight == 0
        # the retired stream is refused; the replacement works, and so does an automatic pick
        with pytest.raises(ValueError):
            await s.run(g, {"x": X, "y": X}, stream=bad)
        s.streams[0].synchronize()
        np.testing.assert_array_equal(await _outcome(s, g, 5.0, 0), X + 5)
        np.testing.assert_array_equal((await s.run(g, {"x": X, "y": X}))["z"], 2 * X)
        st = s.statistics()
        assert st.device_pool["live_blocks"] == 0 and st.host_pool["live_blocks"] == 0


async def test_fault_with_a_cancelled_run_behind_it() -> None:
    async with ascend_async.Session() as s:
        g = add_model(s)
        await s.load(g)
        lane = s.streams[0]
        with held(lane) as gate:
            _sim.lib.aa_sim_inject_fault(lane.handle, 1, AICORE)
            async with anyio.create_task_group() as tg:
                tg.start_soon(_outcome, s, g, 1.0, 0)
                await wait_for(lambda: lane.in_flight == 1)
                scope = anyio.CancelScope()

                async def victim() -> None:
                    with scope:
                        await s.run(g, {"x": X, "y": X}, stream=0)

                tg.start_soon(victim)
                await wait_for(lambda: lane.in_flight == 2)
                scope.cancel()
                await wait_for(lambda: scope.cancelled_caught)
                gate.release()
        out = await s.run(g, {"x": X, "y": X}, stream=0)
        np.testing.assert_array_equal(out["z"], 2 * X)
        st = s.statistics()
        assert st.failed == 2 and st.completed == 1 and st.in_flight == 0
        assert st.device_pool["live_blocks"] == 0


async def test_injected_delay_keeps_stream_order() -> None:
    async with ascend_async.Session() as s:
        g = add_model(s)
        await s.load(g)
        lane = s.streams[0]
        _sim.lib.aa_sim_inject_delay(lane.handle, 1, 20_000)
        done: list[int] = []

        async def one(i: int) -> None:
            np.testing.assert_array_equal(await _outcome(s, g, float(i), 0), X + i)
            done.append(i)

        async with anyio.create_task_group() as tg:
            for i in range(3):
                tg.start_soon(one, i)
                await wait_for(lambda i=i: lane.in_flight == i + 1)
        assert sorted(done) == [0, 1, 2]
        assert s.statistics().completed == 3


async def test_fault_while_closing() -> None:
    """A run faults while aclose waits for it: the run fails, aclose returns, and the faulted
    stream is destroyed exactly once (the leak counters and the sim's handle checks agree)."""
    s = ascend_async.Session()
    g = add_model(s)
    await s.load(g)
    lane = s.streams[0]
    outcomes: list[object] = []
    try:
        with held(lane) as gate, anyio.fail_after(10):
            _sim.lib.aa_sim_inject_fault(lane.handle, 1, AICORE)
            async with anyio.create_task_group() as tg:

                async def record(i: int) -> None:
                    outcomes.append(await _outcome(s, g, float(i), 0))

                for i in range(3):
                    tg.start_soon(record, i)
                await wait_for(lambda: lane.in_flight == 3)
                tg.start_soon(s.aclose)
                await wait_for(lambda: s.is_closed)
                gate.release()  # (before the aclose destroys the stream)
    finally:
        await s.aclose()
    assert len(outcomes) == 3
    assert all(isinstance(o, ascend_async.DeviceError) and o.code == AICORE for o in outcomes)


async def test_streams_after_a_fault_before_and_after_a_run() -> None:
    """``session.streams`` only reads (issue 21): replacement happens on the submitting side.
    A fault the caller saw (its ``await run`` raised) is replaced when that task resumes; a fault
    nobody awaited (the run was cancelled) stays visible, faulted but never destroyed, until
    the next run replaces it; reading ``streams`` creates or destroys no stream."""
    async with ascend_async.Session() as s:
        g = add_model(s)
        await s.load(g)
        live = sim_stats()["streams"]
        # 1. The caller sees the fault: its slot shows a fresh stream when the run raises.
        old = s.streams[0]
        assert _sim.lib.aa_sim_inject_fault(old.handle, 1, AICORE) == 0
        with pytest.raises(ascend_async.DeviceError):
            await s.run(g, {"x": X, "y": X}, stream=0)
        fresh = s.streams[0]
        assert fresh is not old and fresh.fault == 0 and fresh.index == 0
        assert s.streams == s.streams and sim_stats()["streams"] == live  # the old one destroyed (drained)
        # 2. Nobody awaits the fault (its run was cancelled): before a run, the faulted stream.
        lane = s.streams[0]
        with held(lane) as gate:
            assert _sim.lib.aa_sim_inject_fault(lane.handle, 1, AICORE) == 0
            scope = anyio.CancelScope()

            async def victim() -> None:
                with scope:
                    await s.run(g, {"x": X, "y": X}, stream=0)

            async with anyio.create_task_group() as tg:
                tg.start_soon(victim)
                await wait_for(lambda: lane.in_flight == 1)
                scope.cancel()
            gate.release()
            await wait_for(lambda: lane.in_flight == 0 and lane.fault == AICORE)
        for _ in range(3):  # reading changes nothing
            assert s.streams[0] is lane and s.streams[1].fault == 0
            assert sim_stats()["streams"] == live
        with pytest.raises(ascend_async.DeviceError):
            lane.synchronize()  # faulted, still a live handle: its fault, not a destroyed stream
        # After a run: replaced (the run went to the fresh stream) and the faulted one destroyed.
        out = await s.run(g, {"x": X, "y": X}, stream=0)
        np.testing.assert_array_equal(out["z"], 2 * X)
        assert s.streams[0] is not lane and s.streams[0].fault == 0
        assert sim_stats()["streams"] == live
        st = s.statistics()
        assert st.failed == 2 and st.completed == 1 and st.in_flight == 0  # a faulted run fails, cancelled or not
