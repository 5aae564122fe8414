"""GE's three run modes: RunGraph (run_sync), RunGraphAsync (run_with_callback) and
RunGraphWithStreamAsync (run); their exclusivity per graph, and remove_graph resetting it."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import onnx
import pytest
from helpers import add_model, add_model_proto
from onnx import TensorProto, helper

import ascend_async
from ascend_async import _errors
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


async def test_the_conflict_says_what_to_do_and_the_advice_works(tmp_path: Path) -> None:
    """The message names the graph (by its file), the mode it is bound to and the refused one,
    GE's rule, and the way out: add the model again as a second graph for the other mode. Doing
    so works, and the first graph keeps its mode."""
    path = tmp_path / "adder.onnx"
    onnx.save(add_model_proto(), path)
    async with ascend_async.Session() as s:
        g = s.add_graph(path)
        np.testing.assert_array_equal((await s.run(g, [X, X]))["z"], 2 * X)
        with pytest.raises(ascend_async.ModeConflictError) as info:
            s.run_sync(g, [X, X])
        text = str(info.value)
        assert (
            "graph 'adder.onnx' is bound to RunGraphWithStreamAsync (await session.run), "
            "so RunGraph (session.run_sync) is refused" in text
        ), text
        assert "GE runs each added graph in one mode only" in text
        assert "add it again as a second graph" in text and "session.remove_graph(graph)" in text
        with pytest.raises(ascend_async.ModeConflictError, match=r"RunGraphAsync \(session\.run_with_callback\)"):
            s.run_with_callback(g, [X, X], _Waiter())
        # the advice: the same file added again is a second graph, bound by its own first run
        g_sync = s.add_graph(path)
        assert g_sync is not g
        np.testing.assert_array_equal(s.run_sync(g_sync, [X, 3 * X])["z"], 4 * X)
        np.testing.assert_array_equal((await s.run(g, [X, X]))["z"], 2 * X)  # g keeps its mode
        with pytest.raises(ascend_async.ModeConflictError, match=r"bound to RunGraph \(session\.run_sync\)"):
            await s.run(g_sync, [X, X])


def test_a_conflict_ge_reports_itself_carries_the_advice_too() -> None:
    """GE's own refusal (UNSUPPORTED from a run API, no text of ours) says what to do as well,
    once, also after a pickle round trip (errors cross process boundaries in Ray)."""
    import pickle

    err = _errors.ge_error(_sim.lib.AA_GE_UNSUPPORTED, "RunGraph", "")
    assert type(err) is ascend_async.ModeConflictError
    assert str(err).endswith(_errors.MODE_ADVICE)
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == str(err) and str(again).count(_errors.MODE_ADVICE) == 1


def _tasks_submitted() -> int:
    st = _sim.ffi.new("aa_sim_stats*")
    _sim.lib.aa_sim_get_stats(st)
    return int(st.tasks_submitted)
