"""The dynamic batcher: concatenation and split, padding, separate runs for incompatible requests,
per-request cancellation / deadline / priority, live reconfiguration, statistics, several loops,
and the errors for bad use. Batches are made deterministic with long delays (a batch leaves
only when full) and held streams; nothing asserts a duration."""

from __future__ import annotations

import math
import threading
from importlib.resources import files

import anyio
import numpy as np
import onnx
import pytest
from helpers import held, sim_timing, wait_for
from onnx import TensorProto, helper

import ascend_async as aa
from ascend_async._native import _sim

pytestmark = pytest.mark.anyio

LONG_MS = 60_000.0  # a delay no test waits for: a batch leaves only when full (or reconfigured)


def double_model(batch: int | str = "batch", trailing: tuple[int | str, ...] = (4,)) -> onnx.ModelProto:
    """y = x + x, z = x * x; every dim but the first as given."""
    shape = [batch, *trailing]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, shape)
    nodes = [helper.make_node("Add", ["x", "x"], ["y"], name="add"), helper.make_node("Mul", ["x", "x"], ["z"])]
    graph = helper.make_graph(nodes, "double", [x], [y, z])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def rows(n: int, seed: int, trailing: tuple[int, ...] = (4,)) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *trailing)).astype(np.float32)


async def test_concurrent_requests_share_one_run_and_get_their_rows() -> None:
    async with aa.Session() as s:
        g = s.add_graph(double_model())
        b = s.batcher(g, max_batch_size=10, max_delay_ms=LONG_MS)
        xs = [rows(1 + i % 3, i) for i in range(5)]  # 1+2+3+1+2 = 9 rows
        xs.append(rows(1, 99))  # 10: the batch is full
        out: dict[int, dict[str, np.ndarray]] = {}

        async def one(i: int) -> None:
            out[i] = await b.run({"x": xs[i]})

        async with anyio.create_task_group() as tg:
            for i in range(len(xs)):
                tg.start_soon(one, i)
        for i, x in enumerate(xs):
            np.testing.assert_array_equal(out[i]["y"], x + x)
            np.testing.assert_array_equal(out[i]["z"], x * x)
            assert out[i]["y"].shape == x.shape
        st = b.statistics()
        assert st.batches == 1 and st.batch_sizes == {10: 1}
        assert st.completed == 6 and st.requests == 6 and st.queued == 0 and st.in_flight_batches == 0
        assert st.fill_ratio == 1.0 and st.padded_rows == 0
        assert set(st.queue_delay_ms) == {"mean", "p50", "p99", "max"}
        assert s.statistics().completed == 1  # one device run for six requests


async def test_bundled_mlp_matches_unbatched_runs() -> None:
    async with aa.Session() as s:
        g = s.add_graph(str(files("ascend_async.models") / "mlp.onnx"))
        b = s.batcher(g, max_batch_size=16, max_delay_ms=1)
        xs = [rows(1 + i % 4, i, (64,)) for i in range(24)]
        got: dict[int, np.ndarray] = {}

        async def one(i: int) -> None:
            got[i] = (await b.run([xs[i]]))["y"]

        async with anyio.create_task_group() as tg:
            for i in range(len(xs)):
                tg.start_soon(one, i)
        for i, x in enumerate(xs):
            want = (await s.run(g, {"x": x}))["y"]
            np.testing.assert_allclose(got[i], want, rtol=1e-5, atol=1e-6)
        assert b.statistics().batches < len(xs)


async def test_incompatible_requests_go_in_separate_runs() -> None:
    async with aa.Session() as s:
        g = s.add_graph(double_model(trailing=("seq", 4)))
        b = s.batcher(g, max_batch_size=2, max_delay_ms=LONG_MS)
        xs = [rows(1, 0, (3, 4)), rows(1, 1, (5, 4)), rows(1, 2, (3, 4)), rows(1, 3, (5, 4))]
        out: dict[int, np.ndarray] = {}

        async def one(i: int) -> None:
            out[i] = (await b.run({"x": xs[i]}))["y"]

        async with anyio.create_task_group() as tg:
            for i in range(4):
                tg.start_soon(one, i)
        for i, x in enumerate(xs):
            np.testing.assert_array_equal(out[i], x + x)
        st = b.statistics()
        assert st.batches == 2 and st.batch_sizes == {2: 2}


async def test_static_batch_graph_is_padded() -> None:
    async with aa.Session() as s:
        g = s.add_graph(double_model(batch=4))
        b = s.batcher(g, max_delay_ms=0)
        assert b.config.max_batch_size == 4
        x = rows(3, 7)
        out = await b.run({"x": x})
        np.testing.assert_array_equal(out["y"], x + x)
        st = b.statistics()
        assert st.padded_rows == 1 and st.batch_sizes == {3: 1}
        with pytest.raises(aa.InputError, match="static batch size 4"):
            await b.run({"x": rows(5, 0)})
        with pytest.raises(ValueError, match=r"max_batch_size=8 is larger than 'double' allows.*static \(4\)"):
            s.batcher(g, max_batch_size=8)
        with pytest.raises(ValueError, match="static"):
            b.configure(max_batch_size=5)
        assert b.config.max_batch_size == 4


async def test_pad_to_preferred_and_preferred_sizes() -> None:
    async with aa.Session() as s:
        g = s.add_graph(double_model())
        b = s.batcher(g, max_batch_size=8, max_delay_ms=LONG_MS, preferred_batch_sizes=[2, 4])
        out: dict[int, np.ndarray] = {}
        xs = [rows(1, i) for i in range(3)]

        async def one(i: int) -> None:
            out[i] = (await b.run({"x": xs[i]}))["y"]

        async with anyio.create_task_group() as tg:
            for i in range(3):
                tg.start_soon(one, i)
                await wait_for(lambda i=i: b.statistics().requests == i + 1)
            # two requests made the preferred size 2 at once; the third waits for the delay
            await wait_for(lambda: b.statistics().batches == 1 and b.statistics().queued == 1)
            assert b.statistics().batch_sizes == {2: 1}
            b.configure(max_delay_ms=0, pad_to_preferred=True)  # applies at once: the worker wakes
        for i, x in enumerate(xs):
            np.testing.assert_array_equal(out[i], x + x)
        st = b.statistics()
        assert st.batch_sizes == {1: 1, 2: 1} and st.padded_rows == 1  # 1 row padded to 2


async def test_cancel_while_queued_removes_only_that_request() -> None:
    async with aa.Session() as s:
        g = s.add_graph(double_model())
        b = s.batcher(g, max_batch_size=2, max_delay_ms=LONG_MS)
        out: dict[str, np.ndarray] = {}
        with anyio.CancelScope() as early:
            async with anyio.create_task_group() as tg:

                async def cancelled() -> None:
                    await b.run({"x": rows(1, 0)})

                tg.start_soon(cancelled)
                await wait_for(lambda: b.statistics().queued == 1)
                early.cancel()
        st = b.statistics()
        assert st.queued == 0 and st.cancelled == 1 and st.batches == 0

        async def one(name: str, x: np.ndarray) -> None:
            out[name] = (await b.run({"x": x}))["y"]

        xb, xc = rows(1, 1), rows(1, 2)
        async with anyio.create_task_group() as tg:
            tg.start_soon(one, "b", xb)
            tg.start_soon(one, "c", xc)
        np.testing.assert_array_equal(out["b"], xb + xb)
        np.testing.assert_array_equal(out["c"], xc + xc)
        assert b.statistics().batch_sizes == {2: 1}  # the cancelled request took no rows


async def test_cancel_on_entry_queues_nothing() -> None:
    async with aa.Session() as s:
        g = s.add_graph(double_model())
        b = s.batcher(g, max_batch_size=2, max_delay_ms=0)
        with anyio.CancelScope() as scope:
            scope.cancel()
            await b.run({"x": rows(1, 0)})
        assert b.statistics().requests == 0 and s.statistics().completed == 0


async def test_cancel_after_submission_follows_the_session_contract() -> None:
    async with aa.Session() as s:
        g = s.add_graph(double_model())
        await s.load(g)
        b = s.batcher(g, max_batch_size=2, max_delay_ms=LONG_MS)
        out: dict[str, np.ndarray] = {}
        xa, xb = rows(1, 0), rows(1, 1)
        a_scope = anyio.CancelScope()

        async def a() -> None:
            with a_scope:
                out["a"] = (await b.run({"x": xa}))["y"]

        async def bb() -> None:
            out["b"] = (await b.run({"x": xb}))["y"]

        with held(*s.streams) as gate:
            async with anyio.create_task_group() as tg:
                tg.start_soon(a)
                tg.start_soon(bb)
                await wait_for(lambda: s.statistics().in_flight == 1)  # submitted, held on the device
                a_scope.cancel()
                await wait_for(lambda: b.statistics().cancelled == 1)  # `a` returned at once
                assert "b" not in out and s.statistics().in_flight == 1
                gate.release()
        assert "a" not in out
        np.testing.assert_array_equal(out["b"], xb + xb)
        st = b.statistics()
        assert st.batch_sizes == {2: 1}
        # `a` gave up before its batch settled it: cancelled, and not also completed
        assert (st.requests, st.completed, st.cancelled, st.failed, st.timed_out) == (2, 1, 1, 0, 0), st


async def test_deadline_fails_only_that_request() -> None:
    async with aa.Session() as s:
        g = s.add_graph(double_model())
        b = s.batcher(g, max_batch_size=2, max_delay_ms=LONG_MS)
        with pytest.raises(TimeoutError):
            await b.run({"x": rows(1, 0)}, timeout=0.05)
        st = b.statistics()
        assert st.timed_out == 1 and st.queued == 0 and st.batches == 0
        b.configure(max_delay_ms=0)
        x = rows(1, 1)
        np.testing.assert_array_equal((await b.run({"x": x}, timeout=30))["y"], x + x)


async def test_priority_orders_the_queue() -> None:
    async with aa.Session() as s:
        g = s.add_graph(double_model())
        await s.load(g)
        b = s.batcher(g, max_batch_size=1, max_delay_ms=0, max_concurrent_batches=1)
        order: list[str] = []

        async def one(name: str, priority: int) -> None:
            await b.run({"x": rows(1, 0)}, priority=priority)
            order.append(name)

        with held(*s.streams) as gate:
            async with anyio.create_task_group() as tg:
                tg.start_soon(one, "first", 0)
                await wait_for(lambda: s.statistics().in_flight == 1)
                for k, (name, prio) in enumerate((("low1", 0), ("low2", 0), ("high", 5), ("mid", 2))):
                    tg.start_soon(one, name, prio)
                    await wait_for(lambda k=k: b.statistics().requests == k + 2)  # queued in this order
                await wait_for(lambda: b.statistics().queued == 4)
                gate.release()
        assert order == ["first", "high", "mid", "low1", "low2"]


async def test_configure_from_another_thread_wakes_the_worker() -> None:
    async with aa.Session() as s:
        g = s.add_graph(double_model())
        b = s.batcher(g, max_batch_size=4, max_delay_ms=LONG_MS)
        out: dict[int, np.ndarray] = {}
        xs = [rows(1, 0), rows(1, 1)]

        async def one(i: int) -> None:
            out[i] = (await b.run({"x": xs[i]}))["y"]

        async with anyio.create_task_group() as tg:
            tg.start_soon(one, 0)
            tg.start_soon(one, 1)
            await wait_for(lambda: b.statistics().queued == 2)
            cfg = await anyio.to_thread.run_sync(lambda: b.configure(max_batch_size=2))
            assert cfg.max_batch_size == 2 and b.config is cfg
        for i, x in enumerate(xs):
            np.testing.assert_array_equal(out[i], x + x)
        assert b.statistics().batch_sizes == {2: 1}
        with pytest.raises(ValueError, match="max_delay_ms"):
            b.configure(max_delay_ms=-1)
        with pytest.raises(ValueError, match="preferred_batch_sizes"):
            b.configure(preferred_batch_sizes=[3, 9])
        assert b.config is cfg


async def test_a_failed_batch_fails_its_requests_only() -> None:
    async with aa.Session(streams=1) as s:
        g = s.add_graph(double_model())
        await s.load(g)
        b = s.batcher(g, max_batch_size=2, max_delay_ms=LONG_MS)
        assert _sim.lib.aa_sim_inject_fault(s.streams[0].handle, 1, 507015) == 0
        results: list[object] = []

        async def one(seed: int) -> None:
            try:
                results.append(await b.run({"x": rows(1, seed)}))
            except aa.DeviceError as exc:
                results.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(one, 0)
            tg.start_soon(one, 1)
        assert len(results) == 2 and all(isinstance(r, aa.DeviceError) for r in results)
        assert b.statistics().failed == 2
        x = rows(2, 5)
        b.configure(max_delay_ms=0)
        np.testing.assert_array_equal((await b.run({"x": x}))["y"], x + x)


async def test_bad_use_gets_clear_errors() -> None:
    async with aa.Session() as s:
        g = s.add_graph(double_model())
        b = s.batcher(g, max_delay_ms=0)
        with pytest.raises(aa.InputError, match=r"without the batch dimension.*x\[None\]"):
            await b.run({"x": np.zeros(4, np.float32)})
        with pytest.raises(aa.InputError, match="dim 1 must be 4"):
            await b.run({"x": np.zeros((2, 5), np.float32)})
        with pytest.raises(aa.InputError, match="dtype"):
            await b.run({"x": np.zeros((2, 4), np.float64)})
        with pytest.raises(aa.InputError, match="at least one row"):
            await b.run({"x": np.zeros((0, 4), np.float32)})
        with pytest.raises(aa.InputError, match="numpy arrays"):
            await b.run({"x": aa.DeviceTensor.from_numpy(s, np.zeros((1, 4), np.float32))})
        with pytest.raises(aa.InputError, match="missing input"):
            await b.run({})
        assert b.statistics().requests == 0

        scalar = helper.make_graph(
            [helper.make_node("Identity", ["x"], ["y"])],
            "scalar",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])],
        )
        gs = s.add_graph(helper.make_model(scalar, opset_imports=[helper.make_opsetid("", 17)]))
        with pytest.raises(aa.GraphError, match="no batch dimension"):
            s.batcher(gs)
        with pytest.raises(aa.GraphError, match="not added"):
            s.batcher(aa.Graph(double_model()))
        with pytest.raises(ValueError, match="max_batch_size"):
            s.batcher(g, max_batch_size=0)
        b.close()
        with pytest.raises(anyio.ClosedResourceError):
            await b.run({"x": rows(1, 0)})


def test_loops_in_two_threads_are_kept_apart() -> None:
    """An asyncio thread and a trio thread share one batcher: each loop's requests form their own
    batches (never mixed), and every request gets its rows."""
    with aa.Session() as s:
        g = s.add_graph(double_model())
        b = s.batcher(g, max_batch_size=4, max_delay_ms=LONG_MS)
        errors: list[BaseException] = []

        def thread(backend: str, base: int) -> None:
            async def main() -> None:
                xs = [rows(1, base + i) for i in range(4)]
                got: dict[int, np.ndarray] = {}

                async def one(i: int) -> None:
                    got[i] = (await b.run({"x": xs[i]}))["y"]

                async with anyio.create_task_group() as tg:
                    for i in range(4):
                        tg.start_soon(one, i)
                for i, x in enumerate(xs):
                    np.testing.assert_array_equal(got[i], x + x)

            try:
                anyio.run(main, backend=backend)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=thread, args=a) for a in (("asyncio", 0), ("trio", 100))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        st = b.statistics()
        assert st.batch_sizes == {4: 2} and st.completed == 8


@pytest.mark.slow
async def test_storm_of_timeouts_and_cancellations_counts_every_request_once() -> None:
    """Thousands of requests, a third with a random deadline and a third cancelled after a random
    delay, so deadlines and cancellations land in every phase: queued, in a batch on the device,
    and after the batch settled but before the caller resumed. Every request is counted exactly
    once, and every result a caller gets is exactly its rows (numpy reference)."""
    n = 3000
    rng = np.random.default_rng(17)
    plan = [(int(rng.integers(3)), float(rng.uniform(0, 0.004)), float(rng.uniform(0, 0.003))) for _ in range(n)]
    xs = [rows(1 + i % 3, i) for i in range(n)]
    received = timeouts = cancels = 0
    with sim_timing(min_graph_us=400):
        async with aa.Session() as s:
            g = s.add_graph(double_model())
            await s.load(g)
            b = s.batcher(g, max_batch_size=16, max_delay_ms=0.5)

            async def one(i: int) -> None:
                nonlocal received, timeouts, cancels
                kind, limit, start = plan[i]
                await anyio.sleep(start)  # arrivals spread over a few ms
                x = xs[i]
                with anyio.move_on_after(limit if kind == 2 else math.inf) as scope:
                    try:
                        out = await b.run({"x": x}, timeout=limit if kind == 1 else None)
                    except TimeoutError:
                        timeouts += 1
                        return
                if scope.cancelled_caught:
                    cancels += 1
                    return
                np.testing.assert_array_equal(out["y"], x + x)
                np.testing.assert_array_equal(out["z"], x * x)
                received += 1

            async with anyio.create_task_group() as tg:
                for i in range(n):
                    tg.start_soon(one, i)
            st = b.statistics()
    assert received + timeouts + cancels == n
    assert timeouts and cancels and received  # the storm did reach every outcome
    on_entry = n - st.requests  # cancelled on entry (a deadline already past): never queued, not counted
    assert 0 <= on_entry <= cancels and st.queued == 0 and st.in_flight_batches == 0
    assert st.requests == st.completed + st.failed + st.cancelled + st.timed_out, st
    assert st.failed == 0 and st.timed_out == timeouts, st
    # a cancellation that came after its batch settled the request leaves it counted completed
    assert st.completed + st.cancelled == received + cancels - on_entry, st
    assert st.completed >= received and st.cancelled <= cancels - on_entry, st
