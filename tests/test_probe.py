"""The benchmarks' one internal seam (ascend_async/_probe.py): each piece works against the
library as it is, so a refactor of the core that would break benchmarks/ fails here."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest
from helpers import add_model, add_model_proto

import ascend_async
from ascend_async import _probe


def test_sim_and_raw_graph_drive_the_c_abi_directly() -> None:
    sim = _probe.sim()
    assert sim.lib.aa_sim_get_stats is not None
    with ascend_async.Session(streams=1) as s:
        g = add_model(s)
        raw = _probe.raw_graph(s, g)
        ffi, lib, dev = raw.ffi, raw.lib, raw.device
        x = np.arange(8, dtype=np.float32).reshape(2, 4)
        dev.ensure_current()
        din = dev.alloc(dev.device_pool, x.nbytes, "probe input")
        dout = dev.alloc(dev.device_pool, x.nbytes + 64, "probe output")
        try:
            assert lib.aclrtMemcpy(din, x.nbytes, ffi.from_buffer(x), x.nbytes, 1) == 0
            tin = ffi.new("aa_tensor[2]")
            for t in tin:
                t.addr, t.size, t.dtype, t.format, t.placement = din, x.nbytes, lib.AA_DT_FLOAT, 2, 0
                t.ndim, t.dims[0], t.dims[1] = 2, 2, 4
            tout = ffi.new("aa_tensor[1]")
            tout[0].addr, tout[0].size = dout, x.nbytes + 64
            rc = lib.aa_session_run_graph_with_stream_async(
                raw.session_handle, raw.graph_id, raw.stream_handle, tin, 2, tout, 1
            )
            assert rc == 0
            assert lib.aclrtSynchronizeStream(raw.stream_handle) == 0
            y = np.empty_like(x)
            assert lib.aclrtMemcpy(ffi.from_buffer(y), y.nbytes, dout, y.nbytes, 2) == 0
            np.testing.assert_array_equal(y, x + x)
        finally:
            lib.aa_pool_free(dev.device_pool, din)
            lib.aa_pool_free(dev.device_pool, dout)


@pytest.mark.anyio
async def test_run_hooks_see_each_run_once_and_must_complete_it() -> None:
    submitted: list[Any] = []
    completed: list[tuple[Any, bool]] = []

    def on_complete(run: Any, complete: Any) -> None:
        completed.append((run, run.event is not None))  # the event is still the run's here
        complete()

    with ascend_async.Session() as s:
        g = s.add_graph(add_model_proto())
        x = np.ones((2, 4), np.float32)
        with _probe.run_hooks(submitted.append, on_complete):
            with pytest.raises(RuntimeError, match="already active"):
                with _probe.run_hooks():
                    pass
            for _ in range(3):
                out = await s.run(g, {"x": x, "y": x})
                np.testing.assert_array_equal(out["z"], x + x)
        await s.run(g, {"x": x, "y": x})  # after the block: not seen
    assert len(submitted) == 3 and [r for r, _ in completed] == submitted
    assert all(had_event for _, had_event in completed)
    assert _probe.loop_wakeups() >= 0 and _probe.live_bridges() >= 1


def test_thread_cpu_s_reads_this_thread() -> None:
    t = _probe.thread_cpu_s(threading.get_native_id())
    assert t is not None and t >= 0.0
    assert _probe.thread_cpu_s(None) is None


def test_build_container_loads_as_an_offline_model() -> None:
    from onnx import TensorProto, helper

    vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4]) for n in ("x", "y")]
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "tiny", vi[:1], vi[1:])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    with ascend_async.Session(streams=1) as s:
        m = s.load_model(_probe.build_container(model.SerializeToString()), name="probe.om")
        x = np.array([[-1.0, 2.0, -3.0, 4.0]], np.float32)
        np.testing.assert_array_equal(s.run_sync(m, {"x": x})["y"], np.maximum(x, 0))
