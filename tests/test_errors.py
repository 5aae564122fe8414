"""The error table: each ACL/GE code maps to its class in one place (``_errors.CODES``);
timeouts are AscendTimeoutError (also a builtin TimeoutError); memory, device faults and mode
conflicts are classified by code and by what the library knows, never by message text."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import add_model, add_model_proto, held
from onnx import TensorProto, helper

import ascend_async
from ascend_async import _errors
from ascend_async._native import _sim

pytestmark = pytest.mark.anyio

lib = _sim.lib
X = np.arange(8, dtype=np.float32).reshape(2, 4)


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (lib.ACL_ERROR_RT_STREAM_SYNC_TIMEOUT, ascend_async.AscendTimeoutError),
        (lib.ACL_ERROR_RT_EVENT_SYNC_TIMEOUT, ascend_async.AscendTimeoutError),
        (lib.ACL_ERROR_RT_REPORT_TIMEOUT, ascend_async.AscendTimeoutError),
        (lib.ACL_ERROR_RT_MEMORY_ALLOCATION, ascend_async.DeviceMemoryError),
        (lib.ACL_ERROR_BAD_ALLOC, ascend_async.DeviceMemoryError),
        (lib.ACL_ERROR_RT_AICORE_EXCEPTION, ascend_async.DeviceError),
        (lib.ACL_ERROR_RT_INTERNAL_ERROR, ascend_async.DeviceError),
        (507999, ascend_async.DeviceError),  # not in the table: the 5xxxxx family
        (lib.ACL_ERROR_RT_PARAM_INVALID, ascend_async.AclError),
        (lib.ACL_ERROR_RT_INVALID_DEVICEID, ascend_async.AclError),
    ],
)
def test_acl_codes_map_to_their_class(code: int, cls: type) -> None:
    err = _errors.acl_error(code, "api", "detail")
    assert type(err) is cls
    assert err.code == code and str(code) in str(err)


def test_timeout_is_a_builtin_timeout_and_not_a_device_error() -> None:
    err = _errors.acl_error(lib.ACL_ERROR_RT_EVENT_SYNC_TIMEOUT, "aclrtSynchronizeEventWithTimeout")
    assert isinstance(err, TimeoutError) and isinstance(err, ascend_async.AscendError)
    assert not isinstance(err, ascend_async.DeviceError)


def test_ge_status_classification_ignores_the_message_text() -> None:
    text = "RunGraph was already called ... are mutually exclusive and cannot be used together"
    failed = _errors.ge_error(lib.AA_GE_FAILED, "RunGraphWithStreamAsync", text)
    assert type(failed) is ascend_async.GeError  # FAILED alone says nothing about modes
    assert "GE status" in str(failed)
    # UNSUPPORTED from a run API is GE's documented answer to a mode conflict
    assert type(_errors.ge_error(lib.AA_GE_UNSUPPORTED, "RunGraph", "")) is ascend_async.ModeConflictError
    # ... and a refusal while the library knows the graph is bound to another mode
    known = _errors.ge_error(lib.AA_GE_FAILED, "RunGraphWithStreamAsync", "", bound_mode="sync", mode="stream")
    assert type(known) is ascend_async.ModeConflictError
    assert type(_errors.ge_error(lib.AA_GE_UNSUPPORTED, "AddGraph", "")) is ascend_async.GeError
    oom = _errors.ge_error(1343225957, "RunGraph", "")  # OUT_OF_MEMORY
    assert isinstance(oom, ascend_async.DeviceMemoryError) and "GE status" in str(oom)


def test_device_fault_is_a_device_error_whatever_the_code() -> None:
    assert type(_errors.device_fault(lib.ACL_ERROR_RT_PARAM_INVALID, "device stream")) is ascend_async.DeviceError
    mem = _errors.device_fault(lib.ACL_ERROR_RT_MEMORY_ALLOCATION, "device stream")
    assert type(mem) is ascend_async.DeviceMemoryError


def test_names_come_from_the_table() -> None:
    for code, (name, _cls) in _errors.CODES.items():
        assert name in str(_errors.acl_error(code, "api")) or code in _errors.GE_STATUS_NAMES


async def test_event_synchronize_timeout_raises_ascend_timeout_error() -> None:
    async with ascend_async.Session() as s:
        g = add_model(s)
        await s.load(g)
        lane = s.streams[0]
        with held(lane):
            ev = lane.record()
            with pytest.raises(ascend_async.AscendTimeoutError) as info:
                ev.synchronize(timeout=0.01)
            assert isinstance(info.value, TimeoutError)
            assert info.value.code == lib.ACL_ERROR_RT_EVENT_SYNC_TIMEOUT
        ev.synchronize()  # nothing was lost: it completes once the stream runs
        ev.close()


def _exported_model(nodes: list[onnx.NodeProto] | None = None) -> onnx.ModelProto:
    """The Add model as an exporter leaves it: the ONNX graph's own name is the exporter's."""
    model = add_model_proto()
    model.graph.name = "Model from PaddlePaddle."
    if nodes is not None:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
    return model


async def test_errors_name_a_model_read_from_a_file_by_its_file_name(tmp_path: Path) -> None:
    """A model read from a file is named by the file in every error (and its repr), not by the
    ONNX graph's internal name; ``name=`` still wins, and bytes or a ModelProto (no file) keep the
    graph's own name."""
    path = tmp_path / "vad.onnx"
    onnx.save(_exported_model(), path)
    internal = "PaddlePaddle"
    async with ascend_async.Session() as s:
        g = s.add_graph(path)
        assert g.name == "vad.onnx" and "'vad.onnx'" in repr(g)
        with pytest.raises(ascend_async.InputError, match=r"^vad\.onnx: missing input 'y'") as bad_input:
            await s.run(g, {"x": X})
        with pytest.raises(ascend_async.InputError, match=r"^vad\.onnx: takes 2 inputs, got 1"):
            await s.run(g, [X])
        await s.run(g, [X, X])
        with pytest.raises(ascend_async.ModeConflictError, match=r"graph 'vad\.onnx' is bound") as conflict:
            s.run_sync(g, [X, X])
        s.remove_graph(g)
        with pytest.raises(ascend_async.GraphError, match=r"^vad\.onnx: not added") as removed:
            await s.run(g, [X, X])
        for err in (bad_input.value, conflict.value, removed.value):
            assert internal not in str(err), err
    # a model the graph engine refuses (an input nothing produces)
    broken = tmp_path / "dangling.onnx"
    onnx.save(_exported_model([helper.make_node("Add", ["x", "nowhere"], ["z"])]), broken)
    with ascend_async.Session() as s2, pytest.raises(ascend_async.GraphError, match=r"^dangling\.onnx: ") as refused:
        s2.add_graph(broken)
    assert internal not in str(refused.value)
    # a file that is not ONNX at all
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07not a model")
    with pytest.raises(ascend_async.GraphError, match=r"^garbage\.onnx: not a valid ONNX model"):
        ascend_async.Graph(garbage)
    # no file: the graph's own name; an explicit name wins over both
    assert ascend_async.Graph(_exported_model()).name == "Model from PaddlePaddle."
    assert ascend_async.Graph(path.read_bytes()).name == "Model from PaddlePaddle."
    assert ascend_async.Graph(path, name="vad").name == "vad"


async def test_out_of_memory_for_outputs_is_a_device_memory_error() -> None:
    """GE fills output slots from our caching pool (the stream's external allocator); when it
    runs dry the run fails with DeviceMemoryError, known from the pool, not from GE's text."""
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [1024, 1])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 1024])
    p = helper.make_tensor_value_info("p", TensorProto.FLOAT, [1024, 1024])
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["p"])], "outer", [a, b], [p])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    ones_a, ones_b = np.ones((1024, 1), np.float32), np.ones((1, 1024), np.float32)
    async with ascend_async.Session() as s:
        g = s.add_graph(model)
        await s.load(g)
        assert lib.aa_sim_set_memory_capacity(0, 1 << 20) == 0  # 1 MiB: the 4 MiB output cannot fit
        try:
            with pytest.raises(ascend_async.DeviceMemoryError) as info:
                await s.run(g, {"a": ones_a, "b": ones_b})
            # Larger than the whole device: GE's OUT_OF_MEMORY at submit; else the pool's 207001.
            assert info.value.code in (lib.AA_GE_OUT_OF_MEMORY, lib.ACL_ERROR_RT_MEMORY_ALLOCATION)
        finally:
            assert lib.aa_sim_set_memory_capacity(0, 4 << 30) == 0
        out = await s.run(g, {"a": ones_a, "b": ones_b})
        assert out["p"].shape == (1024, 1024)
        st = s.statistics()
        assert st.in_flight == 0 and st.device_pool["live_blocks"] == 0
