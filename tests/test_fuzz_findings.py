"""Regression tests for what the differential isolation fuzzer (tests/fuzz_isolation.py) found
after issue 17 landed: each trigger on its own, deterministic where the trigger is a race.

Every result is compared with onnxruntime's own Python API (or numpy) on the same inputs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import ascend_async as aa


def _model(nodes: list[onnx.NodeProto], inputs: list[Any], outputs: list[Any]) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, (np.array(v, copy=True) for v in sess.run(None, feeds)), strict=True))


def _value_dependent() -> onnx.ModelProto:
    """NonZero(x) and Reshape(v, s): output shapes that follow from input *values*; the
    Reshape keeps its byte count whatever ``s`` says (only its shape changes)."""
    return _model(
        [helper.make_node("NonZero", ["x"], ["nz"]), helper.make_node("Reshape", ["v", "s"], ["r"])],
        [
            helper.make_tensor_value_info("x", TensorProto.INT32, [4, 1]),
            helper.make_tensor_value_info("v", TensorProto.FLOAT, [6]),
            helper.make_tensor_value_info("s", TensorProto.INT64, [2]),
        ],
        [
            helper.make_tensor_value_info("nz", TensorProto.INT64, None),
            helper.make_tensor_value_info("r", TensorProto.FLOAT, None),
        ],
    )


# Same dtypes and shapes every time (one signature), other values: 4, 1, 3, 0 non-zeros, and
# a [2, 3] then [3, 2] then [6, 1] reshape. Fewest bytes after the most, so a stale shape shows
# as a wrong answer (copying more bytes than the array holds would corrupt the heap).
_FEEDS = [
    {"x": np.array(x, np.int32).reshape(4, 1), "v": np.arange(6, dtype=np.float32) + k, "s": np.array(s, np.int64)}
    for k, (x, s) in enumerate(
        [([5, -3, 1, 9], [2, 3]), ([0, 0, 7, 0], [3, 2]), ([1, 0, 2, 3], [6, 1]), ([0, 0, 0, 0], [1, 6])]
    )
]


class _SlotsFilledAtSubmit:
    """The backend's library with one change: RunGraphWithStreamAsync hands a value-dependent
    run's output slots back already filled, as the CANN shim does (it waits for the stream
    when GE placed outputs at run time), and as the sim does when its device thread runs the
    graph before the submitting thread looks at the slots. ``aa_run.dynamic`` then reads 0."""

    def __init__(self, lib: Any) -> None:
        self._lib = lib
        self.submitted = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._lib, name)

    def aa_run_submit(self, run: Any) -> int:
        rc = self._lib.aa_run_submit(run)
        if rc == 0 and run.dynamic:
            assert self._lib.aclrtSynchronizeStream(run.stream) == 0
            assert self._lib.aa_run_collect(run) == 0  # the outputs, read as the shim's caller would
            run.dynamic = 0
        self.submitted += 1
        return rc


@pytest.mark.anyio
async def test_value_dependent_shapes_are_never_reused_from_the_last_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """A descriptor reused its last run's output shapes whenever the inputs had the same dtypes
    and shapes and the run did not come back `dynamic`; a NonZero run whose slots were filled
    before the submit returned got the previous run's shape (int64[2, 4] for 3 non-zeros) and
    a byte count that could overrun the array ("free(): invalid pointer"). Shapes are reused
    only for graphs whose output shapes follow from the input shapes."""
    model = _value_dependent()
    async with aa.Session(streams=1) as s:
        g = s.add_graph(model)
        assert not g.static_outputs
        dev = s._device
        lib = _SlotsFilledAtSubmit(dev.backend.lib)
        monkeypatch.setattr(dev, "backend", dataclasses.replace(dev.backend, lib=lib))
        for _ in range(2):
            for feeds in _FEEDS:
                got = await s.run(g, feeds)
                want = _ort(model, feeds)
                for name, w in want.items():
                    assert got[name].dtype == w.dtype and got[name].shape == w.shape, (name, feeds)
                    assert got[name].tobytes() == w.tobytes(), (name, feeds)
        assert lib.submitted == 2 * len(_FEEDS)


@pytest.mark.anyio
async def test_value_dependent_runs_racing_the_device_thread_are_exact() -> None:
    """The same trigger without any stand-in: the sim's device thread often runs a tiny graph
    before aa_run_submit reads the slots it fills (it wrote them while the submitting thread
    read them, and the run was read as a static one). Half of 5,000 such runs were wrong
    before the fix; every one must equal onnxruntime's."""
    model = _value_dependent()
    want = [_ort(model, f) for f in _FEEDS]
    async with aa.Session(streams=1) as s:
        g = s.add_graph(model)
        for i in range(400):
            k = i % len(_FEEDS)
            got = await s.run(g, _FEEDS[k])
            for name, w in want[k].items():
                assert got[name].shape == w.shape and got[name].tobytes() == w.tobytes(), (i, name)


def test_static_outputs_follow_the_declared_shapes() -> None:
    """Graph.static_outputs: every output has a known rank and each dim is fixed or a symbol
    an input binds; otherwise output shapes are read from every run."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])
    relu = helper.make_node("Relu", ["x"], ["y"])
    for shape, static in (([None, 3], False), (["N", 3], True), (["M", 3], False), (None, False), ([], True)):
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)
        assert aa.Graph(_model([relu], [x], [y])).static_outputs is static, shape
    assert not aa.Graph(_value_dependent()).static_outputs


def _add() -> onnx.ModelProto:
    return _model(
        [helper.make_node("Add", ["x", "x"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )


def test_a_closed_loops_channel_is_not_handed_to_two_live_loops() -> None:
    """The watcher closed a loop's channel when a wake-up could not be posted (the loop had
    closed) while the loop's bridge still lived (runs it abandoned were in flight), and the
    bridge's finalizer closed the channel *number* again later: by then another loop had
    reopened it, so a third loop got the same number. Two live loops shared a channel: an
    asyncio loop collected a trio run and woke its task from the wrong thread ("must be called
    from async context", then a hang; fuzzer seed 19)."""
    import asyncio
    import gc
    import threading

    from helpers import held, wait_until

    from ascend_async._loop import current_bridge

    x = np.array([1.0, 2.0], np.float32)
    with aa.Session(streams=1) as s:
        g = s.add_graph(_add())
        watcher = s._device.get_watcher()
        keep: list[Any] = []

        async def loop_a() -> None:
            keep.append(current_bridge())  # the bridge outlives its loop, as an abandoned run keeps it
            task = asyncio.ensure_future(s.run(g, {"x": x}))
            for _ in range(10_000):  # until it is submitted (its stream is held)
                if s.statistics().in_flight:
                    break
                await asyncio.sleep(0)
            assert s.statistics().in_flight == 1
            task.cancel()  # abandoned: it completes after the loop has closed

        with held(s.streams[0]):
            asyncio.run(loop_a())
        # The run completes now, on a closed loop's channel: its wake-up cannot be posted.
        wait_until(lambda: s.statistics().in_flight == 0, "the abandoned run completes")

        channels: dict[str, int] = {}

        async def run_once(name: str) -> None:
            bridge = current_bridge()
            out = await s.run(g, {"x": x})
            assert out["y"].tobytes() == (x + x).tobytes()
            channels[name] = bridge._channels[watcher]

        async def loop_b() -> None:
            await run_once("b")
            keep.clear()  # the closed loop's bridge goes: its finalizer closes its channel
            gc.collect()
            t = threading.Thread(target=asyncio.run, args=(run_once("c"),))
            t.start()
            t.join(30)
            assert not t.is_alive()
            assert channels["b"] and channels["c"] and channels["b"] != channels["c"], channels
            await run_once("b")  # loop b still collects its own runs on its channel

        asyncio.run(loop_b())


class _RemoveOnce:
    """Wraps a Device method: its first call (from inside a run, between the run's lookup of
    its GE graph id and the submit) calls ``remove_graph`` first, as another thread could at
    that moment, and records what it did."""

    def __init__(self, session: aa.Session, graph: aa.Graph, inner: Any) -> None:
        self.session, self.graph, self.inner = session, graph, inner
        self.outcome: BaseException | str | None = None

    def __call__(self, *args: Any) -> Any:
        if self.outcome is None:
            self.outcome = "removing"
            try:
                self.session.remove_graph(self.graph)
                self.outcome = "removed"
            except aa.AscendError as exc:
                self.outcome = exc
        return self.inner(*args)


@pytest.mark.anyio
async def test_remove_graph_refuses_while_a_run_is_being_submitted(monkeypatch: pytest.MonkeyPatch) -> None:
    """remove_graph between a run's replica lookup and its submit removed the GE graph the run
    was about to use: the run failed with GE's raw E10062 "graph does not exist" (and, when a
    later replica refused, the graph that was to "stay fully usable" failed this run; fuzzer
    seeds 12, 13, 16-18). A run in that window now makes remove_graph refuse (a GeError, as
    GE's own refusal for runs in flight), the run completes, and a later removal succeeds."""
    x = np.array([1.5, -2.0], np.float32)
    async with aa.Session(streams=2) as s:
        g = s.add_graph(_add())
        assert (await s.run(g, {"x": x}))["y"].tobytes() == (x + x).tobytes()  # loaded on a stream
        hook = _RemoveOnce(s, g, s._device.get_watcher)
        monkeypatch.setattr(s._device, "get_watcher", hook)  # called between the lookup and the submit
        out = await s.run(g, {"x": x})
        monkeypatch.undo()
        assert isinstance(hook.outcome, aa.GeError) and "being submitted" in str(hook.outcome), hook.outcome
        assert out["y"].tobytes() == (x + x).tobytes()
        for _ in range(4):  # every stream's replica still runs
            assert (await s.run(g, {"x": x}))["y"].tobytes() == (x + x).tobytes()
        s.remove_graph(g)
        with pytest.raises(aa.GraphError, match="not added"):
            await s.run(g, {"x": x})


@pytest.mark.parametrize("mode", ["sync", "callback"])
def test_remove_graph_refuses_while_a_ge_run_is_being_submitted(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    """The same window in RunGraph and RunGraphAsync: between the graph's id lookup and GE's
    answer, remove_graph refuses; the run completes with the right answer."""
    import threading

    x = np.array([3.0, 0.25], np.float32)
    with aa.Session() as s:
        g = s.add_graph(_add())

        def run() -> dict[str, Any]:
            if mode == "sync":
                return s.run_sync(g, {"x": x})
            done = threading.Event()
            box: dict[str, Any] = {}

            def cb(o: Any, e: Any) -> None:
                box.update(out=o, err=e)
                done.set()

            s.run_with_callback(g, {"x": x}, cb)
            assert done.wait(30)
            assert box["err"] is None
            return box["out"]  # type: ignore[no-any-return]

        run()  # the graph's GE id exists: the next run only looks it up
        # The next context check is the one right before GE is asked to run.
        hook = _RemoveOnce(s, g, s._device.ensure_current)
        monkeypatch.setattr(s._device, "ensure_current", hook)
        out = run()
        monkeypatch.undo()
        assert isinstance(hook.outcome, aa.GeError) and "being submitted" in str(hook.outcome), hook.outcome
        assert out["y"].tobytes() == (x + x).tobytes()
        s.remove_graph(g)


@pytest.mark.anyio
async def test_a_closed_batcher_raises_the_librarys_closed_error() -> None:
    """A request to a batcher closed meanwhile (another task removed its graph and closed it)
    got anyio's bare ClosedResourceError, outside the library's AscendError hierarchy (fuzzer
    seeds 7, 11). It is a SessionClosedError now, still an anyio.ClosedResourceError."""
    import anyio

    x = np.arange(4, dtype=np.float32).reshape(2, 2)
    model = _model(
        [helper.make_node("Add", ["x", "x"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
    )
    async with aa.Session() as s:
        g = s.add_graph(model)
        b = s.batcher(g)
        assert (await b.run({"x": x}))["y"].tobytes() == (x + x).tobytes()
        b.close()
        with pytest.raises(aa.SessionClosedError, match="batcher is closed") as info:
            await b.run({"x": x})
        assert isinstance(info.value, aa.AscendError) and isinstance(info.value, anyio.ClosedResourceError)


def test_a_wake_up_run_while_trio_shuts_down_does_not_kill_the_run() -> None:
    """trio runs the run_sync_soon callbacks still queued when the main task returns after it
    stopped accepting new ones; a watcher wake-up (LoopBridge._woken) among them that scheduled
    a drain raised RunFinishedError there, and trio turned that into TrioInternalError (the
    trio tenant died: fuzzer seed 7)."""
    import trio

    from ascend_async._loop import SUBMIT_BUDGET, Waiter, current_bridge

    async def main() -> None:
        bridge = current_bridge()
        assert not bridge.scheduled
        # Far more submissions waiting than one drain admits: each drain schedules the next,
        # so a drain is still queued when the run shuts down.
        bridge._admit.extend(Waiter() for _ in range(SUBMIT_BUDGET * 1000))
        trio.lowlevel.current_trio_token().run_sync_soon(bridge._woken)
        for _ in range(100):  # the callback runs within a few scheduler passes
            await trio.lowlevel.checkpoint()
            if bridge.scheduled:
                break
        assert bridge.scheduled  # and the main task returns: the run shuts down

    trio.run(main)  # raised TrioInternalError (RunFinishedError from a run_sync_soon callback)
