"""Lifetimes of events, graphs and the watcher, and counts that say what happened.

Triggers (each failed before its fix):
- closing an Event while a task awaited it failed an unrelated run queued behind it on the
  same stream with DeviceError 100000 (the watch queried a destroyed handle) and replaced the
  stream;
- closing the session while ``ev.wait()`` was pending raised DeviceError, not
  SessionClosedError;
- ``remove_graph`` forgot the graph before GE answered: after a refusal (runs in flight) the
  graph was gone for later runs and for a retried remove, and its GE ids stayed;
- ``Watcher.close`` freed the C watch after a 10 s join even when the thread was still alive
  (in a user callback), which then used the freed watch;
- a failed RunGraphAsync run reached the watch with code 0 (counted as completed), and runs
  failed by a dead watcher were counted as cancelled.
"""

from __future__ import annotations

import threading
from typing import Any

import anyio
import numpy as np
import onnx
import pytest
from helpers import add_model, held, sim_stats
from onnx import TensorProto, helper

import ascend_async
from ascend_async import _watcher
from ascend_async._native import _sim

Y = np.arange(4, dtype=np.float32).reshape(1, 4)


def _inputs(i: int) -> dict[str, np.ndarray]:
    return {"x": np.full((1, 4), i, np.float32), "y": Y}


def _expected(i: int) -> np.ndarray:
    return np.full((1, 4), i, np.float32) + Y  # numpy's answer


@pytest.mark.anyio
async def test_closing_an_awaited_event_fails_its_waiter_only() -> None:
    async with ascend_async.Session(streams=1) as s:
        g = add_model(s)
        await s.load(g)
        lane = s.streams[0]
        got: dict[str, Any] = {}

        async def waiter(ev: ascend_async.Event) -> None:
            with pytest.raises(ascend_async.SessionClosedError, match="closed while a task awaited"):
                await ev.wait()
            got["waiter"] = "closed"

        async def run() -> None:
            got["run"] = await s.run(g, _inputs(7), stream=0)

        async with anyio.create_task_group() as tg:
            with held(lane):
                ev = lane.record()
                tg.start_soon(waiter, ev)
                await anyio.wait_all_tasks_blocked()
                tg.start_soon(run)  # queued behind the event on the same stream
                await anyio.wait_all_tasks_blocked()
                ev.close()
                await anyio.wait_all_tasks_blocked()
                assert got == {"waiter": "closed"}  # at once, with the stream still held
        np.testing.assert_array_equal(got["run"]["z"], _expected(7))
        assert s.streams[0] is lane and not lane.fault  # not replaced
        stats = s.statistics()
        assert (stats.completed, stats.failed) == (1, 0)
        assert ev.is_closed


@pytest.mark.anyio
async def test_closing_an_event_before_its_work_ran_frees_it_when_done() -> None:
    """A closed, still pending event holds its hardware event until the device is done with it."""
    async with ascend_async.Session(streams=1) as s:
        g = add_model(s)
        await s.load(g)
        lane = s.streams[0]
        budget = s._device.events
        with held(lane):
            ev = lane.record()
            assert budget.used == 1
            ev.close()
            assert budget.used == 1  # the device still holds it
        out = await s.run(g, _inputs(3), stream=0)  # behind the event: it has completed after
        np.testing.assert_array_equal(out["z"], _expected(3))
        for _ in range(1000):
            if budget.used == 0:
                break
            await anyio.sleep(0.001)
        assert budget.used == 0


@pytest.mark.anyio
async def test_session_close_wakes_event_waits_with_session_closed_error() -> None:
    s = ascend_async.Session(streams=1)
    lane = s.streams[0]
    errors: list[BaseException] = []

    async def waiter(ev: ascend_async.Event) -> None:
        try:
            await ev.wait()
        except BaseException as exc:
            errors.append(exc)

    assert _sim.lib.aa_sim_stream_hold(lane.handle) == 0  # destroying the stream lets it go
    ev = lane.record()
    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter, ev)
        await anyio.wait_all_tasks_blocked()
        await s.aclose()
    assert len(errors) == 1 and isinstance(errors[0], ascend_async.SessionClosedError), errors
    assert "session was closed" in str(errors[0])


@pytest.mark.anyio
async def test_remove_graph_refused_keeps_the_graph_usable_and_a_retry_succeeds() -> None:
    async with ascend_async.Session(streams=1) as s:
        g = add_model(s)
        await s.load(g)
        graphs = sim_stats()["graphs"]
        lane = s.streams[0]
        outs: dict[int, Any] = {}

        async def one(i: int) -> None:
            outs[i] = await s.run(g, _inputs(i), stream=0)

        async with anyio.create_task_group() as tg:
            with held(lane):
                tg.start_soon(one, 1)
                await anyio.wait_all_tasks_blocked()
                with pytest.raises(ascend_async.AscendError) as info:
                    s.remove_graph(g)  # GE refuses: a run of it is on the device
                assert not isinstance(info.value, ascend_async.GraphError), info.value
                tg.start_soon(one, 2)  # still added, still usable
                await anyio.wait_all_tasks_blocked()
        for i in (1, 2):
            np.testing.assert_array_equal(outs[i]["z"], _expected(i))
        assert sim_stats()["graphs"] == graphs  # nothing forgotten, nothing added
        np.testing.assert_array_equal((await s.run(g, _inputs(5)))["z"], _expected(5))
        s.remove_graph(g)  # its runs finished: removed now
        assert sim_stats()["graphs"] < graphs
        with pytest.raises(ascend_async.GraphError, match="not added"):
            await s.run(g, _inputs(6))
        with pytest.raises(ascend_async.GraphError, match="not added"):
            s.remove_graph(g)
    assert sim_stats()["graphs"] == 0


def test_watcher_close_never_frees_a_watch_under_its_live_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_watcher, "_JOIN_TIMEOUT_S", 0.05)
    entered, gate = threading.Event(), threading.Event()

    def callback(out: Any, err: Any) -> None:  # holds the watcher thread until the gate opens
        entered.set()
        gate.wait(30)

    s = ascend_async.Session()
    g = add_model(s)
    s.run_with_callback(g, _inputs(1), callback)
    assert entered.wait(10)
    w = s._device.watcher
    assert w is not None
    thread = w._thread
    destroys: list[bool] = []  # per free: was it safe (by the thread itself, or after it ended)?
    real = w._lib

    class Spy:
        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        def aa_watch_destroy(self, handle: Any) -> None:
            destroys.append(threading.current_thread() is thread or not thread.is_alive())
            real.aa_watch_destroy(handle)

    w._lib = Spy()
    try:
        s.close()  # the device's last session: its watcher closes while the callback runs
        assert thread.is_alive()
        assert destroys == []  # not freed under the live thread
    finally:
        gate.set()
    thread.join(10)
    assert not thread.is_alive()
    assert destroys == [True]  # freed once, by the thread on its way out


def _reshape_model() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["a", "b"])
    shape = helper.make_tensor_value_info("shape", TensorProto.INT64, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    node = helper.make_node("Reshape", ["x", "shape"], ["y"], name="reshape")
    graph = helper.make_graph([node], "reshape", [x, shape], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_failed_run_with_callback_counts_as_failed_in_the_watch_and_the_session() -> None:
    bad = {"x": np.zeros((2, 6), np.float32), "shape": np.array([7, 7], np.int64)}
    good = {"x": np.ones((2, 6), np.float32), "shape": np.array([6, 2], np.int64)}
    with ascend_async.Session() as s:
        graph = s.add_graph(_reshape_model())
        box: list[Any] = []
        for inputs in (bad, good):
            done = threading.Event()

            def cb(out: Any, err: Any, done: threading.Event = done) -> None:
                box.append((out, err))
                done.set()

            s.run_with_callback(graph, inputs, cb)
            assert done.wait(10)
        assert box[0][0] is None and isinstance(box[0][1], ascend_async.GeError)
        np.testing.assert_array_equal(box[1][0]["y"], good["x"].reshape(6, 2))
        stats = s.statistics()
        assert (stats.completed, stats.failed, stats.cancelled) == (1, 1, 0)
        assert (stats.watcher["completed"], stats.watcher["failed"]) == (1, 1)


@pytest.mark.anyio
async def test_runs_failed_by_a_dead_watcher_count_as_failures() -> None:
    async with ascend_async.Session(streams=1) as s:
        g = add_model(s)
        await s.load(g)
        lane = s.streams[0]
        dev = s._device
        errors: list[BaseException] = []

        async def one() -> None:
            try:
                await s.run(g, _inputs(1), stream=0)
            except BaseException as exc:
                errors.append(exc)

        with held(lane):
            async with anyio.create_task_group() as tg:
                tg.start_soon(one)
                await anyio.wait_all_tasks_blocked()
                w = dev.watcher
                assert w is not None
                w.close()  # the watcher goes away with the run on the device
                dev.watcher = None  # (the next run starts a fresh one)
        assert len(errors) == 1 and isinstance(errors[0], ascend_async.WatcherError), errors
        stats = s.statistics()
        assert (stats.failed, stats.cancelled, stats.in_flight) == (1, 0, 0)
        np.testing.assert_array_equal((await s.run(g, _inputs(2)))["z"], _expected(2))
