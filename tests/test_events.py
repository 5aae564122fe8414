"""Public Event objects: record, query, synchronize, elapsed time, and awaiting one."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

import anyio
import numpy as np
import onnx
import pytest
from helpers import held, wait_for
from onnx import TensorProto, helper

import ascend_async
from ascend_async._native import _sim

pytestmark = pytest.mark.anyio


def relu_model() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "relu", [x], [y])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


async def test_record_query_wait_and_elapsed() -> None:
    async with ascend_async.Session(streams=1) as s:
        g = s.add_graph(relu_model())
        stream = s.streams[0]
        x = np.array([[-1, 2, -3, 4]], np.float32)
        await s.run(g, {"x": x})  # loaded: the timed part below is the run itself
        start = stream.record()
        with held(stream) as gate:
            _sim.lib.aa_sim_inject_delay(stream.handle, 1, 20_000)
            async with anyio.create_task_group() as tg:
                tg.start_soon(functools.partial(s.run, g, {"x": x}, stream=0))
                await anyio.wait_all_tasks_blocked()
                end = stream.record()
                assert not end.query()  # the stream is held: nothing ran yet
                gate.release()
                await end.wait()
        assert end.query() and start.query()
        end.synchronize(timeout=1)
        assert start.elapsed_ms(end) >= 19.0  # the 20 ms injected delay lies between them
        start.close()
        start.close()  # idempotent
        assert start.is_closed
        with pytest.raises(ascend_async.SessionClosedError):
            start.query()


async def test_wait_on_an_event_behind_a_fault_raises_device_error() -> None:
    """An Event recorded behind a faulting run: awaiting it raises the fault's DeviceError, as
    the run does; an Event recorded before the fault completes normally."""
    async with ascend_async.Session(streams=1) as s:
        g = s.add_graph(relu_model())
        stream = s.streams[0]
        x = np.ones((1, 4), np.float32)
        await s.run(g, {"x": x})
        before = stream.record()
        await before.wait()
        outcomes: dict[str, BaseException | None] = {}

        async def outcome(name: str, fn: Callable[[], Awaitable[object]]) -> None:
            try:
                await fn()
                outcomes[name] = None
            except ascend_async.DeviceError as exc:
                outcomes[name] = exc

        with held(stream) as gate:
            assert _sim.lib.aa_sim_inject_fault(stream.handle, 1, 507015) == 0
            async with anyio.create_task_group() as tg:
                tg.start_soon(outcome, "run", functools.partial(s.run, g, {"x": x}, stream=0))
                await wait_for(lambda: stream.in_flight == 1, "the run submitted")
                behind = stream.record()  # recorded after the faulting run's tasks
                assert not behind.query()
                tg.start_soon(outcome, "event", behind.wait)
                await anyio.wait_all_tasks_blocked()
                assert outcomes == {}  # both wait: the stream is held
                gate.release()
        assert before.query() and not before.is_closed
        run_error, event_error = outcomes["run"], outcomes["event"]
        assert isinstance(run_error, ascend_async.DeviceError) and run_error.code == 507015
        assert isinstance(event_error, ascend_async.DeviceError) and event_error.code == 507015


async def test_synchronize_times_out_on_a_held_stream() -> None:
    async with ascend_async.Session(streams=1) as s:
        stream = s.streams[0]
        with held(stream):
            ev = stream.record()
            with pytest.raises(ascend_async.AclError) as info:
                ev.synchronize(timeout=0.01)
            assert info.value.code == 507047
            with anyio.move_on_after(0.05) as scope:
                await ev.wait()  # cancelled while pending: the event is untouched
            assert scope.cancelled_caught
        await ev.wait()
        assert ev.query()


async def test_events_left_open_are_closed_with_the_session() -> None:
    async with ascend_async.Session(streams=1) as s:
        ev = s.streams[0].record()
        await ev.wait()
    assert ev.is_closed  # the autouse leak check also sees no live sim events


async def test_run_profiled_splits_the_run_into_device_stages() -> None:
    async with ascend_async.Session(streams=1) as s:
        g = s.add_graph(relu_model())
        x = np.array([[-1, 2, -3, 4]], np.float32)
        await s.run(g, {"x": x})
        stream = s.streams[0]
        # From here: task 1 is the start marker, 2 the H2D copy, 3 the after-H2D marker, 4 the
        # graph run. Delay the copy and the graph differently; each shows up in its own stage.
        _sim.lib.aa_sim_inject_delay(stream.handle, 2, 15_000)
        _sim.lib.aa_sim_inject_delay(stream.handle, 4, 30_000)
        out, prof = await s.run_profiled(g, {"x": x}, stream=0)
        np.testing.assert_array_equal(out["y"], np.maximum(x, 0))
        # Each stage holds its own delay (lower bounds), and the stages do not overlap: their sum
        # fits in the run's end to end. A stage that also counted a neighbour's delay (or the
        # copy's and the graph's stages swapped) fails one of these; no duration is bounded above.
        assert prof.h2d_ms >= 14.0
        assert prof.compute_ms >= 29.0
        assert prof.d2h_ms >= 0.0
        assert prof.queued_ms is not None and prof.queued_ms >= 0.0
        assert prof.submit_ms > 0.0
        assert prof.end_to_end_ms >= prof.h2d_ms + prof.compute_ms + prof.d2h_ms
