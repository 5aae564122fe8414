"""GE's three run modes: RunGraph (run_sync), RunGraphAsync (run_with_callback) and
RunGraphWithStreamAsync (run); their exclusivity per graph, and remove_graph resetting it."""

from __future__ import annotations

import threading
from typing import Any

import anyio
import numpy as np
import onnx
import pytest
from helpers import add_model
from onnx import TensorProto, helper

import ascend_async
from ascend_async._native import _sim

pytestmark = pytest.mark.anyio

X = np.arange(8, dtype=np.float32).reshape(2, 4)


def matmul_model() -> onnx.ModelProto:
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, ["n", 3])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [3, 2])
    p = helper.make_tensor_value_info("p", TensorProto.FLOAT, ["n", 2])
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["p"], name="mm")], "mm", [a, b], [p])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


class _Waiter:
    """Collects run_with_callback results; wait() blocks until the callback ran."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.out: Any = None
        self.err: BaseException | None = None
        self.thread = ""

    def __call__(self, out: Any, err: BaseException | None) -> None:
        self.out, self.err, self.thread = out, err, threading.current_thread().name
        self.event.set()

    def wait(self) -> Any:
        assert self.event.wait(10), "the callback never ran"
        return self.out


def test_run_sync_results() -> None:
    rng = np.random.default_rng(1)
    with ascend_async.Session() as s:
        g = s.add_graph(matmul_model())
        for n in (1, 4):
            a = rng.standard_normal((n, 3)).astype(np.float32)
            b = rng.standard_normal((3, 2)).astype(np.float32)
            out = s.run_sync(g, {"a": a, "b": b})
            assert out["p"].shape == (n, 2)
            np.testing.assert_allclose(out["p"], a @ b, rtol=1e-5, atol=1e-5)
        st = s.statistics()
        assert st.completed == 2 and st.in_flight == 0


def test_run_with_callback_results_on_the_watcher_thread() -> None:
    with ascend_async.Session() as s:
        g = add_model(s)
        waiters = []
        for i in range(5):
            w = _Waiter()
            s.run_with_callback(g, {"x": X, "y": np.full_like(X, i)}, w)
            waiters.append(w)
        for i, w in enumerate(waiters):
            out = w.wait()
            assert w.err is None
            np.testing.assert_array_equal(out["z"], X + i)
            assert w.thread != threading.current_thread().name
            assert w.thread.startswith("ascend-async-watcher")
        st = s.statistics()
        assert st.completed == 5 and st.in_flight == 0


async def test_run_with_callback_bridged_back_to_the_loop() -> None:
    async with ascend_async.Session() as s:
        g = add_model(s)
        w = _Waiter()
        s.run_with_callback(g, [X, X], w)
        with anyio.fail_after(10):
            await anyio.to_thread.run_sync(w.event.wait)
        np.testing.assert_array_equal(w.out["z"], 2 * X)


async def test_run_then_run_sync_conflicts_naming_the_bound_mode() -> None:
    async with ascend_async.Session() as s:
        g = add_model(s)
        out = await s.run(g, {"x": X, "y": X})
        np.testing.assert_array_equal(out["z"], 2 * X)
        with pytest.raises(ascend_async.ModeConflictError) as info:
            s.run_sync(g, {"x": X, "y": X})
        assert "RunGraphWithStreamAsync" in str(info.value)
        assert isinstance(info.value, ascend_async.GeError)
        before = _tasks_submitted()
        with pytest.raises(ascend_async.ModeConflictError, match="RunGraphWithStreamAsync"):
            s.run_with_callback(g, {"x": X, "y": X}, _Waiter())
        assert _tasks_submitted() == before
        # the graph keeps working in its own mode
        out = await s.run(g, {"x": X, "y": 2 * X})
        np.testing.assert_array_equal(out["z"], 3 * X)
        st = s.statistics()
        assert st.in_flight == 0 and st.completed == 2


async def test_sync_then_run_conflicts_and_remove_graph_resets() -> None:
    async with ascend_async.Session() as s:
        g = add_model(s)
        np.testing.assert_array_equal(s.run_sync(g, [X, X])["z"], 2 * X)
        with pytest.raises(ascend_async.ModeConflictError, match="RunGraph"):
            await s.run(g, [X, X])
        w = _Waiter()
        with pytest.raises(ascend_async.ModeConflictError):
            s.run_with_callback(g, [X, X], w)
        assert not w.event.is_set()
        s.remove_graph(g)
        with pytest.raises(ascend_async.GraphError):
            await s.run(g, [X, X])
        with pytest.raises(ascend_async.GraphError):
            s.remove_graph(g)
        # re-added: no mode yet, so the async mode binds now
        assert s.add_graph(g) is g
        np.testing.assert_array_equal((await s.run(g, [X, X]))["z"], 2 * X)
        with pytest.raises(ascend_async.ModeConflictError, match="RunGraphWithStreamAsync"):
            s.run_sync(g, [X, X])


def test_modes_are_per_graph() -> None:
    with ascend_async.Session() as s:
        g1 = add_model(s)
        g2 = add_model(s)
        np.testing.assert_array_equal(s.run_sync(g1, [X, X])["z"], 2 * X)
        w = _Waiter()
        s.run_with_callback(g2, [X, X], w)
        np.testing.assert_array_equal(w.wait()["z"], 2 * X)
        with pytest.raises(ascend_async.ModeConflictError, match="RunGraphAsync"):
            s.run_sync(g2, [X, X])


def _tasks_submitted() -> int:
    st = _sim.ffi.new("aa_sim_stats*")
    _sim.lib.aa_sim_get_stats(st)
    return int(st.tasks_submitted)
