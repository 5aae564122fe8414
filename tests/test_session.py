"""Session.run results, per-stream order, load/statistics, DeviceTensor round trips, bad inputs
and graph errors, and the closed-session contract."""

from __future__ import annotations

import functools
import threading
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import numpy as np
import onnx
import pytest
from helpers import add_model, add_model_proto, held, sim_stats, wait_for
from onnx import TensorProto, helper

import ascend_async
from ascend_async import _submit

pytestmark = pytest.mark.anyio


def _vi(name: str, shape: list[object], dtype: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


def _model(
    nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto]
) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def matmul_model() -> onnx.ModelProto:
    """(p, q) = (a @ b, identity(a))."""
    return _model(
        [
            helper.make_node("MatMul", ["a", "b"], ["p"], name="mm"),
            helper.make_node("Identity", ["a"], ["q"], name="id"),
        ],
        [_vi("a", ["n", 3]), _vi("b", [3, 5])],
        [_vi("p", ["n", 5]), _vi("q", ["n", 3])],
    )


async def test_run_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    async with ascend_async.Session() as s:
        g = s.add_graph(matmul_model())
        for n in (1, 3, 7):
            a = rng.standard_normal((n, 3)).astype(np.float32)
            b = rng.standard_normal((3, 5)).astype(np.float32)
            out = await s.run(g, {"a": a, "b": b})
            assert set(out) == {"p", "q"}
            assert out["p"].shape == (n, 5) and out["p"].dtype == np.float32
            np.testing.assert_allclose(out["p"], a @ b, rtol=1e-5, atol=1e-5)
            np.testing.assert_array_equal(out["q"], a)
        # positional inputs, in signature order
        out = await s.run(g, [a, b])
        np.testing.assert_allclose(out["p"], a @ b, rtol=1e-5, atol=1e-5)


async def test_device_tensors_in_and_out() -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    y = np.full((3, 4), 0.5, np.float32)
    async with ascend_async.Session() as s:
        g = add_model(s)
        dx = ascend_async.DeviceTensor.from_numpy(s, x)
        assert dx.shape == (3, 4) and dx.dtype == np.float32 and dx.nbytes == x.nbytes
        np.testing.assert_array_equal(dx.numpy(), x)
        out = await s.run(g, {"x": dx, "y": y})
        np.testing.assert_array_equal(out["z"], x + y)
        dev = await s.run(g, {"x": dx, "y": y}, outputs="device")
        z = dev["z"]
        assert isinstance(z, ascend_async.DeviceTensor)
        assert z.shape == (3, 4) and z.dtype == np.float32
        np.testing.assert_array_equal(z.numpy(), x + y)
        # a device output fed back as an input: (x + y) + y
        again = await s.run(g, {"x": z, "y": y})
        np.testing.assert_array_equal(again["z"], x + 2 * y)
        for t in (z, dx):
            t.close()
            t.close()  # idempotent
            assert t.is_closed
            with pytest.raises(ascend_async.SessionClosedError):
                t.numpy()
        with pytest.raises(ascend_async.SessionClosedError):
            await s.run(g, {"x": dx, "y": y})
        assert s.statistics().device_pool["live_blocks"] == 0


async def test_order_on_one_stream_under_1000_concurrent_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs queued on one stream are resolved in submission order. Submission order is forced
    by the test (each run is known to be submitted before the next starts); the watcher's
    resolution order is recorded where it happens, and on asyncio/uvloop (whose wake-ups are
    FIFO) also as seen by the awaiting tasks. Trio shuffles the wake order of one scheduling
    batch on purpose, so only the resolution order is checked there."""
    n = 1000
    resolved: list[int] = []
    original = _submit.Run.complete

    def recording(run: _submit.Run, code: int, noticed_ns: int, on_loop: bool) -> None:
        original(run, code, noticed_ns, on_loop)
        if run.result is not None:
            resolved.append(int(run.result["z"][0, 0]))

    monkeypatch.setattr(_submit.Run, "complete", recording)
    woken: list[int] = []
    y = np.zeros((1, 4), np.float32)
    async with ascend_async.Session(max_in_flight=n) as s:
        g = add_model(s)
        await s.load(g)
        lane = s.streams[0]

        async def one(i: int) -> None:
            out = await s.run(g, {"x": np.full((1, 4), i, np.float32), "y": y}, stream=0)
            assert out["z"][0, 0] == i
            woken.append(i)

        with held(lane) as gate:
            async with anyio.create_task_group() as tg:
                for i in range(n):
                    tg.start_soon(one, i)
                    # run i is on the stream before run i+1 starts
                    await wait_for(lambda i=i: lane.in_flight > i, f"run {i} submitted")
                assert not woken and s.statistics().in_flight == n
                gate.release()
        assert resolved == list(range(n))
        assert sorted(woken) == list(range(n))
        if not _on_trio():
            assert woken == list(range(n))
        st = s.statistics()
        assert st.in_flight == 0 and st.completed == n and st.failed == 0


def _on_trio() -> bool:
    import sniffio

    return sniffio.current_async_library() == "trio"


async def test_load_then_run_and_statistics() -> None:
    async with ascend_async.Session(streams=3) as s:
        assert s.backend == "sim"
        assert len(s.streams) == 3
        g = add_model(s)
        await s.load(g)
        before = sim_stats()["graph_runs"]
        x = np.ones((2, 4), np.float32)
        async with anyio.create_task_group() as tg:
            for k in range(3):
                for i in range(4):
                    tg.start_soon(_check_add, s, g, x, float(i), k)
        assert sim_stats()["graph_runs"] - before == 12
        st = s.statistics()
        assert st.completed == 12 and st.in_flight == 0 and st.failed == 0 and st.cancelled == 0
        assert st.streams == 3
        assert st.device_pool["live_blocks"] == 0 and st.host_pool["live_blocks"] == 0
        assert st.watcher["completed"] == 12 and st.watcher["pending"] == 0


async def _check_add(s: ascend_async.Session, g: ascend_async.Graph, x: np.ndarray, v: float, stream: int) -> None:
    out = await s.run(g, {"x": x, "y": np.full_like(x, v)}, stream=stream)
    np.testing.assert_array_equal(out["z"], x + v)


def _bad_inputs() -> list[tuple[str, object, str]]:
    x = np.ones((2, 4), np.float32)
    return [
        ("unknown name", {"x": x, "y": x, "w": x}, "'w'"),
        ("missing", {"x": x}, "'y'"),
        ("count", [x], "2 inputs"),
        ("dtype", {"x": x.astype(np.float64), "y": x}, "'x'"),
        ("rank", {"x": x, "y": np.ones(4, np.float32)}, "'y'"),
        ("static dim", {"x": np.ones((2, 5), np.float32), "y": x}, "'x'"),
        ("symbolic dims", {"x": x, "y": np.ones((3, 4), np.float32)}, "'batch'"),
        ("non-contiguous", {"x": np.ones((4, 2), np.float32).T, "y": x}, "'x'"),
        ("non-array", {"x": x, "y": [[1.0] * 4] * 2}, "'y'"),
        ("not a mapping", "xy", "mapping"),
    ]


@pytest.mark.parametrize("primed", [False, True], ids=["fresh", "after-a-good-run"])
@pytest.mark.parametrize(("case", "inputs", "fragment"), _bad_inputs(), ids=[c[0] for c in _bad_inputs()])
async def test_bad_inputs_raise_before_submitting(case: str, inputs: object, fragment: str, primed: bool) -> None:
    """Fresh, and after a good run with float32[2, 4] inputs: bind's fast path (the signature
    it accepted last) must still refuse every one of these."""
    async with ascend_async.Session() as s:
        g = add_model(s)
        good = 0
        if primed:
            x = np.ones((2, 4), np.float32)
            await s.run(g, {"x": x, "y": x})
            good = 1
        before = sim_stats()["tasks_submitted"]
        with pytest.raises(ascend_async.InputError) as info:
            await s.run(g, inputs)  # type: ignore[arg-type]
        assert fragment in str(info.value)
        with pytest.raises(ascend_async.InputError):
            s.run_sync(g, inputs)  # type: ignore[arg-type]
        assert sim_stats()["tasks_submitted"] == before
        st = s.statistics()
        assert st.in_flight == 0 and st.completed == good and st.failed == 0


async def test_a_closed_device_tensor_is_refused_after_it_ran() -> None:
    async with ascend_async.Session() as s:
        g = add_model(s)
        x = ascend_async.DeviceTensor.from_numpy(s, np.ones((2, 4), np.float32))
        await s.run(g, {"x": x, "y": x})  # bind accepts this signature: its fast path is primed
        x.close()
        with pytest.raises(ascend_async.SessionClosedError, match="closed"):
            await s.run(g, {"x": x, "y": x})


async def test_signatures_alternate_on_reused_descriptors() -> None:
    """A descriptor keeps its last signature (input tensors, output shapes): runs that switch
    batch sizes, and between host arrays and DeviceTensors, each get their own results."""
    rng = np.random.default_rng(1)
    async with ascend_async.Session(streams=1) as s:
        g = s.add_graph(matmul_model())
        b = rng.standard_normal((3, 5)).astype(np.float32)
        b_dev = ascend_async.DeviceTensor.from_numpy(s, b)
        for n in (2, 2, 5, 2, 1, 5, 5):
            a = rng.standard_normal((n, 3)).astype(np.float32)
            for inputs in (
                {"a": a, "b": b},
                {"a": a, "b": b_dev},
                {"a": ascend_async.DeviceTensor.from_numpy(s, a), "b": b},
            ):
                out = await s.run(g, inputs)
                assert out["p"].shape == (n, 5) and out["q"].shape == (n, 3)
                np.testing.assert_allclose(out["p"], a @ b, rtol=1e-5, atol=1e-5)
                np.testing.assert_array_equal(out["q"], a)
        b_dev.close()


def test_graph_errors(tmp_path: object) -> None:
    with ascend_async.Session() as s:
        with pytest.raises(ascend_async.GraphError):
            s.add_graph(b"\x08\x07not an onnx model at all\xff\xff")
        with pytest.raises(ascend_async.GraphError, match="no-such-model"):
            s.add_graph("/nonexistent/dir/no-such-model.onnx")
        bad = _model(
            [
                helper.make_node("Relu", ["x"], ["h"], name="r"),
                helper.make_node("TotallyMadeUpOp", ["h"], ["z"], name="the_bad_node"),
            ],
            [_vi("x", ["batch", 4])],
            [_vi("z", ["batch", 4])],
        )
        with pytest.raises(ascend_async.GraphError) as info:
            s.add_graph(bad)
        assert "TotallyMadeUpOp" in str(info.value) and "the_bad_node" in str(info.value)
        # a graph never added
        other = ascend_async.Graph(add_model_proto())
        with pytest.raises(ascend_async.GraphError):
            s.run_sync(other, [np.ones((1, 4), np.float32)] * 2)
        # the session still works
        g = add_model(s)
        out = s.run_sync(g, [np.ones((1, 4), np.float32)] * 2)
        np.testing.assert_array_equal(out["z"], np.full((1, 4), 2, np.float32))


async def test_closed_session() -> None:
    s = ascend_async.Session()
    g = add_model(s)
    x = np.ones((1, 4), np.float32)
    out = await s.run(g, {"x": x, "y": x})
    np.testing.assert_array_equal(out["z"], 2 * x)
    await s.aclose()
    assert s.is_closed
    await s.aclose()  # idempotent
    s.close()
    with pytest.raises(ascend_async.SessionClosedError):
        await s.run(g, {"x": x, "y": x})
    with pytest.raises(ascend_async.SessionClosedError):
        add_model(s)
    with pytest.raises(ascend_async.SessionClosedError):
        s.statistics()
    with pytest.raises(ascend_async.SessionClosedError):
        await s.load(g)
    with pytest.raises(ascend_async.SessionClosedError):
        s.remove_graph(g)
    with pytest.raises(ascend_async.SessionClosedError):
        s.run_with_callback(g, {"x": x, "y": x}, lambda out, err: None)
    with pytest.raises(ascend_async.SessionClosedError):
        s.run_sync(g, {"x": x, "y": x})
    with pytest.raises(ascend_async.SessionClosedError):
        ascend_async.DeviceTensor.from_numpy(s, x)
    # anyio's resource contract: a closed session is a ClosedResourceError
    assert issubclass(ascend_async.SessionClosedError, anyio.ClosedResourceError)


def test_sync_close_idempotent() -> None:
    with ascend_async.Session() as s:
        g = add_model(s)
        x = np.ones((1, 4), np.float32)
        np.testing.assert_array_equal(s.run_sync(g, [x, x])["z"], 2 * x)
    assert s.is_closed
    s.close()
    with pytest.raises(ascend_async.SessionClosedError):
        s.run_sync(g, [x, x])


async def test_device_outputs_left_open_are_released_when_the_device_goes() -> None:
    x = np.ones((1, 4), np.float32)
    async with ascend_async.Session() as s:
        g = add_model(s)
        out = await s.run(g, {"x": x, "y": x}, outputs="device")
        z = out["z"]
        np.testing.assert_array_equal(z.numpy(), 2 * x)
    # the last session closed: GE's output block went back before the allocator did
    assert sim_stats()["ge_outputs"] == 0
    assert z.is_closed
    with pytest.raises(ascend_async.SessionClosedError):
        z.numpy()
    z.close()


async def _fill(s: ascend_async.Session, g: ascend_async.Graph, n: int, tg: anyio.abc.TaskGroup) -> None:
    x = np.ones((1, 4), np.float32)
    for _ in range(n):
        tg.start_soon(functools.partial(s.run, g, {"x": x, "y": x}, stream=0))


async def test_max_in_flight_is_per_session() -> None:
    """Each session bounds its own runs in flight per event loop, whatever other sessions (used
    earlier, or at the same time, on the same loop) chose."""
    x = np.ones((1, 4), np.float32)
    async with ascend_async.Session(max_in_flight=1) as first:
        g = add_model(first)
        await first.run(g, {"x": x, "y": x})
    async with ascend_async.Session(max_in_flight=2) as a, ascend_async.Session(max_in_flight=5) as b:
        ga, gb = add_model(a), add_model(b)
        await a.load(ga)
        await b.load(gb)
        with held(a.streams[0], b.streams[0]) as gate:
            async with anyio.create_task_group() as tg:
                await _fill(a, ga, 4, tg)
                await _fill(b, gb, 7, tg)
                await wait_for(lambda: a.statistics().in_flight >= 2 and b.statistics().in_flight >= 5)
                await anyio.wait_all_tasks_blocked()
                assert a.statistics().in_flight == 2 and b.statistics().in_flight == 5
                gate.release()
        assert a.statistics().completed == 4 and b.statistics().completed == 7


async def test_an_unknown_stream_index_is_refused_before_submitting() -> None:
    async with ascend_async.Session(streams=2) as s:
        g = add_model(s)
        x = np.ones((2, 4), np.float32)
        before = sim_stats()["tasks_submitted"]
        for bad in (2, -1):
            with pytest.raises(ValueError, match=r"streams 0\.\.1"):
                await s.run(g, {"x": x, "y": x}, stream=bad)
        assert sim_stats()["tasks_submitted"] == before
        out = await s.run(g, {"x": x, "y": x}, stream=1)
        np.testing.assert_array_equal(out["z"], x + x)


def test_repr_before_and_after_close() -> None:
    s = ascend_async.Session()
    assert "device=0 backend=sim 2 streams" in repr(s)
    s.close()
    assert repr(s) == "<Session closed>"


@pytest.mark.anyio
async def test_session_open_constructs_off_the_loop_and_closes_on_exit() -> None:
    """Session.open runs the constructor (device, GE, GeSession: seconds on an NPU) in a worker
    thread; as an async context manager it closes the session on the way out."""
    threads: list[int] = []

    class Probe(ascend_async.Session):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            threads.append(threading.get_ident())
            super().__init__(*args, **kwargs)

    async with Probe.open(streams=1) as session:
        assert isinstance(session, Probe) and len(session.streams) == 1
        graph = add_model(session)
        x = np.arange(8, dtype=np.float32).reshape(2, 4)
        out = await session.run(graph, {"x": x, "y": x})
        np.testing.assert_array_equal(out["z"], x + x)
    assert session.is_closed
    assert threads and threads[0] != threading.get_ident()
    session = await ascend_async.Session.open()
    try:
        assert not session.is_closed
    finally:
        await session.aclose()


@pytest.mark.anyio
async def test_async_with_session_opens_the_device_off_the_loop_while_the_loop_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``Session()`` on an event loop's thread leaves the device part (device, GE, GeSession)
    to ``async with``, which opens it in a worker thread: the loop keeps running meanwhile."""
    from ascend_async import _session

    opened_on: list[int] = []
    entered = threading.Event()
    release = threading.Event()
    real = _session.acquire_device

    def slow_acquire(device_id: int) -> Any:
        opened_on.append(threading.get_ident())
        entered.set()
        release.wait(10)  # until the loop has shown it still runs
        return real(device_id)

    monkeypatch.setattr(_session, "acquire_device", slow_acquire)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while not entered.is_set():  # noqa: ASYNC110 - a thread's flag, not a loop event
            await anyio.sleep(0.001)
        for _ in range(5):  # the open is under way in its thread: the loop still turns
            ticks += 1
            await anyio.lowlevel.checkpoint()
        release.set()

    s = ascend_async.Session(streams=1)
    assert repr(s) == "<Session not opened yet>" and opened_on == []
    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        async with s:
            assert ticks == 5
            assert opened_on and opened_on[0] != threading.get_ident()
            g = add_model(s)
            x = np.arange(12, dtype=np.float32).reshape(3, 4)
            out = await s.run(g, {"x": x, "y": x})
            np.testing.assert_array_equal(out["z"], x + x)
    assert s.is_closed


@pytest.mark.anyio
async def test_a_session_made_on_the_loop_opens_at_first_use_without_async_with() -> None:
    s = ascend_async.Session(streams=2)
    try:
        assert len(s.streams) == 2  # the first use opens it (on this thread: it is sync)
        g = add_model(s)
        x = np.ones((3, 4), np.float32)
        out = await s.run(g, {"x": x, "y": 2 * x})
        np.testing.assert_array_equal(out["z"], 3 * x)
        assert "device=0 backend=sim 2 streams" in repr(s)
    finally:
        await s.aclose()
    never = ascend_async.Session()
    never.close()  # closed before it opened: nothing to free, and nothing opens later
    with pytest.raises(ascend_async.SessionClosedError):
        never.add_graph(add_model_proto())


@pytest.mark.anyio
async def test_async_with_a_session_whose_device_fails_to_open_raises_at_entry_and_holds_nothing() -> None:
    s = ascend_async.Session(device_id=9)  # the sim has one device unless told otherwise
    with pytest.raises(ascend_async.AclError, match="device 9"):
        async with s:
            pytest.fail("entered a session whose device does not exist")
    assert s.is_closed  # closed on the way out: nothing was entered
    with pytest.raises(ascend_async.SessionClosedError):
        s.add_graph(add_model_proto())
    used = ascend_async.Session(device_id=9)  # no async with: the first use opens, and fails
    for _ in range(2):  # the open's own error each time (it is kept, not retried)
        with pytest.raises(ascend_async.AclError, match="device 9"):
            used.add_graph(add_model_proto())
    used.close()


def test_a_session_made_off_any_loop_opens_at_once() -> None:
    s = ascend_async.Session(streams=1)
    try:
        assert "_device" in s.__dict__ and "1 streams" in repr(s)
    finally:
        s.close()
    with pytest.raises(ascend_async.AclError, match="device 9"):
        ascend_async.Session(device_id=9)


@pytest.mark.anyio
async def test_session_open_checks_arguments_before_the_worker_and_once_only() -> None:
    with pytest.raises(ValueError, match="streams"):
        ascend_async.Session.open(streams=0)
    opening = ascend_async.Session.open()
    session = await opening
    try:
        with pytest.raises(RuntimeError, match="already awaited"):
            await opening
    finally:
        await session.aclose()
