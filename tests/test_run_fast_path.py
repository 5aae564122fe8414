"""``await session.run``'s common case (``Session._launch_now``): taken when nothing must wait,
left for the general path when something must, with the same results, and giving back
everything it took when its submit fails."""

from __future__ import annotations

from typing import Any

import anyio
import numpy as np
import pytest
from helpers import add_model, held, wait_for

import ascend_async
from ascend_async import _submit
from ascend_async._loop import current_bridge

pytestmark = pytest.mark.anyio

RNG = np.random.default_rng(7)
X = RNG.standard_normal((3, 4)).astype(np.float32)
Y = RNG.standard_normal((3, 4)).astype(np.float32)


def _spy(monkeypatch: pytest.MonkeyPatch, s: ascend_async.Session) -> list[bool]:
    """Each call of the session's fast path: True when it submitted, False when it left the run
    to the general path, None when it raised."""
    calls: list[bool | None] = []
    real = s._launch_now

    def launch_now(*args: Any) -> Any:
        calls.append(None)
        run = real(*args)
        calls[-1] = run is not None
        return run

    monkeypatch.setattr(s, "_launch_now", launch_now)
    return calls


async def test_a_loaded_graph_runs_through_the_fast_path_with_numpy_and_device_tensors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with ascend_async.Session(streams=2) as s:
        g = add_model(s)
        calls = _spy(monkeypatch, s)
        out = await s.run(g, {"x": X, "y": Y})  # no replica anywhere yet: the general path loads one
        np.testing.assert_array_equal(out["z"], X + Y)
        assert calls == [False]
        await s.load(g)
        calls.clear()
        out = await s.run(g, {"x": X, "y": Y})
        np.testing.assert_array_equal(out["z"], X + Y)
        xd = ascend_async.DeviceTensor.from_numpy(s, X)
        yd = ascend_async.DeviceTensor.from_numpy(s, Y)
        try:
            dev = await s.run(g, {"x": xd, "y": yd}, outputs="device")
            try:
                np.testing.assert_array_equal(dev["z"].numpy(), X + Y)
            finally:
                dev["z"].close()
        finally:
            xd.close()
            yd.close()
        assert calls == [True, True]
        st = s.statistics()
        assert st.completed == 3 and st.in_flight == 0


async def test_a_failed_submit_on_the_fast_path_gives_back_what_it_took(monkeypatch: pytest.MonkeyPatch) -> None:
    async with ascend_async.Session(streams=2, max_in_flight=4) as s:
        g = add_model(s)
        await s.load(g)
        await s.run(g, {"x": X, "y": Y})  # the loop's limiter for the session exists from here
        calls = _spy(monkeypatch, s)
        events = s._device.events
        used = events.used

        def refuse(self: Any, values: Any, watcher: Any, profile: bool, started: bool = False) -> None:
            raise RuntimeError("refused by the test")

        limiter = current_bridge().limiters[s]
        with monkeypatch.context() as m:
            m.setattr(_submit.Run, "submit", refuse)
            for _ in range(6):  # more than max_in_flight
                with pytest.raises(RuntimeError, match="refused by the test"):
                    await s.run(g, {"x": X, "y": Y})
                assert limiter.value == 4  # its place under the in-flight limit
                assert events.used == used  # its event of the device's budget
                assert not s._state(g).submitting  # its pin against remove_graph
                assert [st.in_flight for st in s.streams] == [0] * len(s.streams)  # its stream's count
        assert calls == [None] * 6  # every one was submitted on the fast path, and refused there
        st = s.statistics()
        assert st.in_flight == 0 and st.failed == 0
        out = await s.run(g, {"x": X, "y": Y})
        np.testing.assert_array_equal(out["z"], X + Y)


async def test_a_run_over_the_in_flight_limit_waits_on_the_general_path(monkeypatch: pytest.MonkeyPatch) -> None:
    async with ascend_async.Session(streams=1, max_in_flight=1) as s:
        g = add_model(s)
        await s.load(g)
        await s.run(g, {"x": X, "y": Y})
        calls = _spy(monkeypatch, s)
        results: list[np.ndarray] = []

        async def one(x: np.ndarray) -> None:
            results.append((await s.run(g, {"x": x, "y": Y}))["z"])

        with held(*s.streams) as gate:
            async with anyio.create_task_group() as tg:
                tg.start_soon(one, X)
                await wait_for(lambda: s.statistics().in_flight == 1, "the first run submitted")
                tg.start_soon(one, 2 * X)
                await wait_for(lambda: len(calls) == 2, "the second run tried the fast path")
                assert calls == [True, False]  # the limiter's one place is taken: it waits
                assert s.statistics().in_flight == 1
                gate.release()
        assert len(results) == 2
        np.testing.assert_array_equal(results[0], X + Y)
        np.testing.assert_array_equal(results[1], 2 * X + Y)


async def test_repeated_device_outputs_are_each_their_own_and_outlive_later_runs() -> None:
    """The fast completion of a signature seen before (outputs="device"): each output is a
    DeviceTensor over its own GE block, right while later runs come and go, closed on demand."""
    async with ascend_async.Session(streams=2) as s:
        g = add_model(s)
        await s.load(g)
        kept: list[tuple[Any, np.ndarray]] = []
        for k in range(12):  # the first run of the signature takes the general path, then not
            x = (X * (k + 1)).astype(np.float32)
            out = await s.run(g, {"x": x, "y": Y}, outputs="device")
            z = out["z"]
            assert isinstance(z, ascend_async.DeviceTensor) and z.shape == (3, 4) and z.dtype == np.float32
            kept.append((z, x + Y))
        for z, want in kept:  # every block still holds its own run's result
            np.testing.assert_array_equal(z.numpy(), want)
        assert len({z.address for z, _ in kept}) == len(kept)
        for z, _ in kept:
            z.close()
            assert z.is_closed


async def test_a_stream_argument_naming_no_stream_is_refused_on_the_fast_path_taking_nothing() -> None:
    async with ascend_async.Session(streams=2) as s:
        g = add_model(s)
        await s.load(g)
        await s.run(g, {"x": X, "y": Y})
        used = s._device.events.used
        for bad in (2, -1, 99):
            with pytest.raises(ValueError, match=f"stream={bad}: this session has streams 0..1"):
                await s.run(g, {"x": X, "y": Y}, stream=bad)
            assert s._device.events.used == used  # its event and budget place came back
            assert not s._state(g).submitting
            assert [st.in_flight for st in s.streams] == [0, 0]
        out = await s.run(g, {"x": X, "y": Y}, stream=1)
        np.testing.assert_array_equal(out["z"], X + Y)
        assert s.statistics().in_flight == 0
