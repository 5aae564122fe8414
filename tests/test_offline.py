"""Offline models (issue 20): the sim's container, load_model, every run path, gears, dynamic
outputs, the one-modelId-one-stream rule and unload under runs. Outputs are compared with
onnxruntime's Python API on the ONNX model each container was compiled from."""

from __future__ import annotations

import struct
import threading
from pathlib import Path

import anyio
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import held, sim_stats, wait_for
from onnx import TensorProto, helper, numpy_helper

import ascend_async
from ascend_async import DevicePool, GraphError, InputError
from ascend_async._errors import AclError, DeviceError
from ascend_async._native import _sim
from ascend_async._offline import (
    SIM_HEADER,
    Gears,
    OfflineModel,
    _refuse_foreign,
    build_container,
    parse_gears,
)
from ascend_async.bench._cli import main as cli_main

pytestmark = pytest.mark.anyio


def mlp_proto(batch: int | str = "N") -> onnx.ModelProto:
    """y = relu(x @ W), x: [batch, 4] float32."""
    w = np.random.RandomState(0).randn(4, 3).astype(np.float32)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3])
    nodes = [helper.make_node("MatMul", ["x", "W"], ["m"]), helper.make_node("Relu", ["m"], ["y"])]
    g = helper.make_graph(nodes, "mlp", [x], [y], [numpy_helper.from_array(w, "W")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def two_input_proto() -> onnx.ModelProto:
    """z = a @ b with a: [M, K], b: [K, 2] (M and K set by dims gears)."""
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, ["M", "K"])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, ["K", 2])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, ["M", 2])
    g = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["z"])], "mm", [a, b], [z])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def nonzero_proto() -> onnx.ModelProto:
    """i = NonZero(x > 0), x: [6] float32: the output's shape depends on the values."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [6])
    i = helper.make_tensor_value_info("i", TensorProto.INT64, [1, None])
    zero = numpy_helper.from_array(np.zeros((), np.float32), "zero")
    nodes = [helper.make_node("Greater", ["x", "zero"], ["p"]), helper.make_node("NonZero", ["p"], ["i"])]
    g = helper.make_graph(nodes, "nz", [x], [i], [zero])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def ort_run(proto: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


@pytest.fixture
def mlp_om(tmp_path: Path) -> Path:
    path = tmp_path / "mlp.om"
    path.write_bytes(build_container(mlp_proto().SerializeToString(), parse_gears("batch:1,2,4,8")))
    return path


def rows(n: int, seed: int = 1) -> np.ndarray:
    return np.random.RandomState(seed).randn(n, 4).astype(np.float32)


# -- the container and its refusals -----------------------------------------------------------------


def test_container_layout() -> None:
    onnx_bytes = mlp_proto().SerializeToString()
    data = build_container(onnx_bytes, Gears("batch", ((1,), (4,))))
    assert data.startswith(SIM_HEADER) and data[len(SIM_HEADER) : 48] == b"\0" * (48 - len(SIM_HEADER))
    assert struct.unpack_from("<IIIIQ", data, 48) == (1, 1, 2, 1, len(onnx_bytes))
    assert struct.unpack_from("<2q", data, 72) == (1, 4)
    assert data[88:] == onnx_bytes


def test_parse_gears() -> None:
    assert parse_gears("batch:1,2,8") == Gears("batch", ((1,), (2,), (8,)))
    assert parse_gears("hw:224,224;448,448") == Gears("hw", ((224, 224), (448, 448)))
    assert parse_gears("dims:1,3;2,3") == Gears("dims", ((1, 3), (2, 3)))
    for bad in ("batch:", "batch:0", "size:1", "hw:1,2,3", "batch:2,2", "batch:x"):
        with pytest.raises(ValueError):
            parse_gears(bad)


def test_build_refuses_what_a_load_would() -> None:
    with pytest.raises(GraphError, match="not fixed"):
        build_container(mlp_proto().SerializeToString())
    with pytest.raises(GraphError, match="dims gear lists every dim"):
        build_container(two_input_proto().SerializeToString(), parse_gears("dims:1,2;2,2"))
    with pytest.raises(GraphError, match="dim 0"):
        build_container(two_input_proto().SerializeToString(), parse_gears("batch:1,2"))


async def test_real_om_and_corrupt_files_refused_on_the_sim(mlp_om: Path) -> None:
    good = mlp_om.read_bytes()  # noqa: ASYNC240 - a small file, before the loop has work
    async with ascend_async.Session() as s:
        with pytest.raises(GraphError, match=r"real Ascend NPU.*ONNX model, or compile it for the sim"):
            s.load_model(b"IMOD" + bytes(252))
        with pytest.raises(GraphError, match="not a simulated offline model"):
            s.load_model(mlp_proto().SerializeToString())  # ONNX is not an offline model
        with pytest.raises(GraphError, match="ACL_ERROR_MODEL_SIZE_INVALID"):
            s.load_model(good[:-5])
        bad_kind = bytearray(good)
        struct.pack_into("<I", bad_kind, 52, 9)
        with pytest.raises(GraphError, match="corrupt simulated offline model"):
            s.load_model(bytes(bad_kind))
        bad_onnx = good[:88] + b"\x01" * (len(good) - 88)
        with pytest.raises(GraphError, match="ONNX graph cannot be loaded"):
            s.load_model(bad_onnx)
        with pytest.raises(GraphError, match="cannot read offline model"):
            s.load_model(mlp_om.with_name("missing.om"))
    assert not sim_stats()["device_allocations"]


def test_sim_container_refused_on_cann(mlp_om: Path) -> None:
    class Backend:
        is_sim = False

    class Device:
        backend = Backend()

    with pytest.raises(GraphError, match=r"simulated offline model.*CANN runs \.om files built by ATC"):
        _refuse_foreign(Device(), mlp_om.read_bytes(), "mlp")  # type: ignore[arg-type]
    _refuse_foreign(Device(), b"IMOD" + bytes(60), "real")  # type: ignore[arg-type]  # a real .om passes


# -- loads and runs ---------------------------------------------------------------------------------


async def test_load_from_file_and_memory_every_gear(mlp_om: Path) -> None:
    proto = mlp_proto()
    async with ascend_async.Session(streams=2) as s:
        from_file = s.load_model(mlp_om)
        from_mem = await s.load_model_async(mlp_om.read_bytes(), name="mem")  # noqa: ASYNC240
        assert isinstance(from_file, OfflineModel) and isinstance(from_file, ascend_async.Graph)
        assert from_file.gears == Gears("batch", ((1,), (2,), (4,), (8,)))
        assert [str(i) for i in from_file.inputs] == ["x: float32[batch, 4]"]
        assert from_file.output_sizes == (8 * 3 * 4,)
        for model in (from_file, from_mem):
            for n in (1, 2, 4, 8):
                x = rows(n, seed=n)
                out = await s.run(model, {"x": x})
                np.testing.assert_array_equal(out["y"], ort_run(proto, {"x": x})[0])
        s.remove_graph(from_file)
        s.remove_graph(from_mem)
    assert not sim_stats()["device_allocations"]


async def test_shape_outside_the_gears_refused_before_submit(mlp_om: Path) -> None:
    async with ascend_async.Session() as s:
        model = s.load_model(mlp_om)
        await s.run(model, {"x": rows(2)})  # the fast path now knows batch 2
        before = sim_stats()["tasks_submitted"]
        with pytest.raises(
            InputError, match=r"x\(3, 4\) match no gear of the model; its gears are batch sizes 1, 2, 4, 8"
        ):
            await s.run(model, {"x": rows(3)})
        with pytest.raises(InputError, match="match no gear"):
            s.run_sync(model, {"x": rows(16)})
        with pytest.raises(InputError, match="match no gear"):  # refused again: never the fast path
            await s.run(model, {"x": rows(3)})
        with pytest.raises(InputError, match="dim 1 must be 4"):
            await s.run(model, {"x": np.zeros((2, 5), np.float32)})
        assert sim_stats()["tasks_submitted"] == before


async def test_every_run_path(mlp_om: Path) -> None:
    proto = mlp_proto()
    x = rows(4)
    want = ort_run(proto, {"x": x})[0]
    async with ascend_async.Session(streams=2) as s:
        model = s.load_model(mlp_om)
        np.testing.assert_array_equal((await s.run(model, {"x": x}))["y"], want)
        out, profile = await s.run_profiled(model, [x])
        np.testing.assert_array_equal(out["y"], want)
        assert profile.compute_ms >= 0 and profile.end_to_end_ms > 0
        np.testing.assert_array_equal(s.run_sync(model, {"x": x[:2]})["y"], want[:2])
        got: dict[str, object] = {}
        done = threading.Event()

        def callback(o: object, e: object) -> None:
            got.update(out=o, error=e)
            done.set()

        s.run_with_callback(model, {"x": x[:1]}, callback)
        await anyio.to_thread.run_sync(done.wait, 10)
        assert got["error"] is None
        np.testing.assert_array_equal(got["out"]["y"], want[:1])  # type: ignore[index]
        dev = await s.run(model, {"x": x}, outputs="device")
        t = dev["y"]
        assert t.shape == (4, 3)
        np.testing.assert_array_equal(t.numpy(), want)
        t.close()
        # a DeviceTensor as an input
        dx = ascend_async.DeviceTensor.from_numpy(s, x)
        np.testing.assert_array_equal((await s.run(model, {"x": dx}))["y"], want)
        dx.close()
        # runs on both streams at once: each stream has its own load
        results = [None] * 16

        async def one(i: int) -> None:
            results[i] = (await s.run(model, {"x": rows(2, seed=i)}, stream=i % 2))["y"]

        async with anyio.create_task_group() as tg:
            for i in range(16):
                tg.start_soon(one, i)
        for i in range(16):
            np.testing.assert_array_equal(results[i], ort_run(proto, {"x": rows(2, seed=i)})[0])
        st = s.statistics()
        assert st.failed == 0 and st.completed >= 21


async def test_batcher_pads_to_the_smallest_gear(mlp_om: Path) -> None:
    proto = mlp_proto()
    async with ascend_async.Session() as s:
        model = s.load_model(mlp_om)
        with pytest.raises(ValueError, match="at most 8"):
            s.batcher(model, max_batch_size=16)
        assert s.batcher(model).config.preferred_batch_sizes == (1, 2, 4, 8)
        # bench passes preferred_batch_sizes=[] without --batch-preferred: the gears up to the max
        b4 = s.batcher(model, max_batch_size=4, preferred_batch_sizes=[])
        assert b4.config.preferred_batch_sizes == (1, 2, 4) and b4.config.max_batch_size == 4
        b4.close()
        model = s.load_model(build_container(proto.SerializeToString(), parse_gears("batch:4,8")))
        b = s.batcher(model, max_delay_ms=20)
        assert b.config.max_batch_size == 8 and b.config.pad_to_preferred
        xs = [rows(1, seed=i) for i in range(3)]
        outs: list = [None] * 3

        async def one(i: int) -> None:
            outs[i] = await b.run({"x": xs[i]})

        with held(s.streams[0]), held(s.streams[1]):  # the three requests form one batch
            async with anyio.create_task_group() as tg:
                for i in range(3):
                    tg.start_soon(one, i)
                await wait_for(lambda: b.statistics().batches >= 1, "a batch was formed")
                for st in s.streams:
                    _sim.lib.aa_sim_stream_release(st.handle)
        for i in range(3):
            np.testing.assert_array_equal(outs[i]["y"], ort_run(proto, {"x": xs[i]})[0])
        stats = b.statistics()
        assert stats.padded_rows == 4 * stats.batches - 3 > 0  # every batch padded to the smallest gear, 4
        b.close()


async def test_device_pool(mlp_om: Path) -> None:
    proto = mlp_proto()
    async with DevicePool(streams_per_device=2, instances=2) as pool:
        model = pool.load_model(mlp_om)
        for n in (1, 4):
            x = rows(n, seed=7)
            np.testing.assert_array_equal((await pool.run(model, {"x": x}))["y"], ort_run(proto, {"x": x})[0])


async def test_dims_gears() -> None:
    proto = two_input_proto()
    data = build_container(proto.SerializeToString(), parse_gears("dims:1,3,3,2;4,5,5,2"))
    async with ascend_async.Session() as s:
        model = s.load_model(data)
        assert model.gears == Gears("dims", ((1, 3, 3, 2), (4, 5, 5, 2)))
        for m, k in ((1, 3), (4, 5)):
            a = np.random.RandomState(m).randn(m, k).astype(np.float32)
            b = np.random.RandomState(k).randn(k, 2).astype(np.float32)
            out = await s.run(model, {"a": a, "b": b})
            np.testing.assert_allclose(out["z"], ort_run(proto, {"a": a, "b": b})[0], rtol=1e-6)
            np.testing.assert_allclose(s.run_sync(model, [a, b])["z"], out["z"])
        with pytest.raises(InputError, match="its gears are dims 1,3,3,2; 4,5,5,2"):
            await s.run(model, {"a": np.zeros((1, 5), np.float32), "b": np.zeros((5, 2), np.float32)})


async def test_dynamic_outputs_read_after_the_event() -> None:
    proto = nonzero_proto()
    data = build_container(proto.SerializeToString())
    async with ascend_async.Session() as s:
        model = s.load_model(data)
        for seed in range(6):
            x = np.random.RandomState(seed).randn(6).astype(np.float32)
            want = ort_run(proto, {"x": x})[0]
            out = await s.run(model, {"x": x})
            np.testing.assert_array_equal(out["i"], want)
            np.testing.assert_array_equal(s.run_sync(model, {"x": x})["i"], want)
        x = -np.ones(6, np.float32)  # nothing positive: an empty output
        assert (await s.run(model, {"x": x}))["i"].shape == (1, 0)


# -- the rules ---------------------------------------------------------------------------------------


async def test_one_model_id_on_two_streams_faults(mlp_om: Path) -> None:
    lib, ffi = _sim.lib, _sim.ffi
    data = mlp_om.read_bytes()  # noqa: ASYNC240
    async with ascend_async.Session() as s:
        s._device.ensure_current()
        mid = ffi.new("uint32_t*")
        assert lib.aclmdlLoadFromMem(data, len(data), mid) == 0
        desc = lib.aclmdlCreateDesc()
        assert lib.aclmdlGetDesc(desc, mid[0]) == 0
        streams = [ffi.new("aclrtStream*") for _ in range(2)]
        for p in streams:
            assert lib.aclrtCreateStream(p) == 0
        blocks, sets = [], []
        for _stream in range(2):
            ins, outs = lib.aclmdlCreateDataset(), lib.aclmdlCreateDataset()
            for size, ds in ((16, ins), (64, ins), (lib.aclmdlGetOutputSizeByIndex(desc, 0), outs)):
                p = ffi.new("void**")
                assert lib.aclrtMalloc(p, size, 0) == 0
                blocks.append(p[0])
                assert lib.aclmdlAddDatasetBuffer(ds, lib.aclCreateDataBuffer(p[0], size)) == 0
            assert lib.aclmdlSetDynamicBatchSize(mid[0], ins, 1, 1) == 0
            sets.append((ins, outs))
        a, b = streams[0][0], streams[1][0]
        with held(a):
            assert lib.aclmdlExecuteAsync(mid[0], sets[0][0], sets[0][1], a) == 0
            assert lib.aclmdlExecuteAsync(mid[0], sets[1][0], sets[1][1], b) == 0
            assert lib.aclrtSynchronizeStream(b) == lib.ACL_ERROR_RT_MODEL_EXECUTE
            assert "must not execute on two streams at once" in ffi.string(lib.aclGetRecentErrMsg()).decode()
            assert lib.aclmdlUnload(mid[0]) == lib.ACL_ERROR_INVALID_PARAM  # a run still in flight on a
        assert lib.aclrtSynchronizeStream(a) == 0
        assert lib.aclmdlUnload(mid[0]) == 0
        assert lib.aclmdlUnload(mid[0]) == lib.ACL_ERROR_INVALID_MODEL_ID
        for ins, outs in sets:
            for ds in (ins, outs):
                for k in range(lib.aclmdlGetDatasetNumBuffers(ds)):
                    lib.aclDestroyDataBuffer(lib.aclmdlGetDatasetBuffer(ds, k))
                lib.aclmdlDestroyDataset(ds)
        for p in blocks:
            lib.aclrtFree(p)
        for p in streams:
            lib.aclrtDestroyStream(p[0])
        lib.aclmdlDestroyDesc(desc)


async def test_unload_with_runs_in_flight_refused(mlp_om: Path) -> None:
    async with ascend_async.Session(streams=1) as s:
        model = s.load_model(mlp_om)
        await s.run(model, {"x": rows(1)})
        result = {}
        with held(s.streams[0]):
            async with anyio.create_task_group() as tg:

                async def one() -> None:
                    result["y"] = (await s.run(model, {"x": rows(2)}))["y"]

                tg.start_soon(one)
                await wait_for(lambda: s.statistics().in_flight == 1, "the run is in flight")
                with pytest.raises(AclError, match=r"1 run\(s\) in flight; unload it once they finished"):
                    s.remove_graph(model)
                _sim.lib.aa_sim_stream_release(s.streams[0].handle)  # the run completes in the group
        np.testing.assert_array_equal(result["y"], ort_run(mlp_proto(), {"x": rows(2)})[0])
        assert (await s.run(model, {"x": rows(1)}))["y"].shape == (1, 3)  # still usable after the refusal
        s.remove_graph(model)
        with pytest.raises(GraphError, match="not added"):
            await s.run(model, {"x": rows(1)})


async def test_device_fault_fails_the_run(mlp_om: Path) -> None:
    async with ascend_async.Session(streams=1) as s:
        model = s.load_model(mlp_om)
        await s.run(model, {"x": rows(1)})
        _sim.lib.aa_sim_inject_fault(s.streams[0].handle, 2, 507015)  # the model's run (after the H2D copy)
        with pytest.raises(DeviceError):
            await s.run(model, {"x": rows(1)})
        np.testing.assert_array_equal(
            (await s.run(model, {"x": rows(1)}))["y"], ort_run(mlp_proto(), {"x": rows(1)})[0]
        )


# -- the CLI -----------------------------------------------------------------------------------------


def test_compile_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "mlp.onnx"
    src.write_bytes(mlp_proto().SerializeToString())
    out = tmp_path / "mlp.om"
    assert cli_main(["compile", str(src), "-o", str(out), "--gears", "batch:1,2"]) == 0
    assert "simulated offline model" in capsys.readouterr().out
    assert out.read_bytes() == build_container(src.read_bytes(), parse_gears("batch:1,2"))
    assert cli_main(["compile", str(src), "-o", str(tmp_path / "x.om")]) == 1
    assert "not fixed" in capsys.readouterr().err
    assert cli_main(["compile", str(src), "-o", str(tmp_path / "x.om"), "--gears", "size:3"]) == 1
    assert cli_main(["compile", str(src), "-o", str(tmp_path / "x.om"), "--gears", "batch:1", "--options", "soc"]) == 1
    assert "--options takes KEY=VALUE" in capsys.readouterr().err
    assert not (tmp_path / "x.om").exists()


async def test_statistics_show_the_model_memory(mlp_om: Path) -> None:
    data = mlp_om.read_bytes()  # noqa: ASYNC240
    onnx_len = len(mlp_proto().SerializeToString())
    async with ascend_async.Session(streams=2) as s:
        before = sim_stats()["device_bytes"]
        model = s.load_model(data)
        charged = sim_stats()["device_bytes"] - before
        # 64 KiB of work plus the largest gear's input (8x4 float32) and output (8x3 float32)
        assert (model.work_bytes, model.weight_bytes) == (65536 + 128 + 96, onnx_len)

        def charge(n: int) -> int:  # the sim's device charge per allocation
            return (n + 31) // 32 * 32 + 32

        assert charged == charge(model.work_bytes) + charge(model.weight_bytes)
        assert s.statistics().offline_models == {
            "models": 1,
            "loads": 1,
            "work_bytes": model.work_bytes,
            "weight_bytes": onnx_len,
        }
        await s.run(model, {"x": rows(1)}, stream=1)  # a second stream: a second load
        s.run_sync(model, {"x": rows(1)})  # run_sync's own load
        st = s.statistics().offline_models
        assert (st["loads"], st["work_bytes"]) == (3, 3 * model.work_bytes)
        held_now = sim_stats()["device_bytes"]
        s.remove_graph(model)
        assert s.statistics().offline_models == {"models": 0, "loads": 0, "work_bytes": 0, "weight_bytes": 0}
        assert held_now - sim_stats()["device_bytes"] == 3 * charged  # every load's memory went back


async def test_hw_gears() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, "H", "W"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, "H", "W"])
    proto = helper.make_model(
        helper.make_graph([helper.make_node("Sigmoid", ["x"], ["y"])], "img", [x], [y]),
        opset_imports=[helper.make_opsetid("", 13)],
    )
    data = build_container(proto.SerializeToString(), parse_gears("hw:2,3;4,5"))
    async with ascend_async.Session() as s:
        model = s.load_model(data)
        assert model.gears == Gears("hw", ((2, 3), (4, 5)))
        assert str(model.inputs[0]) == "x: float32[1, 2, height, width]"
        for h, w in ((2, 3), (4, 5)):
            xv = np.random.RandomState(h).randn(1, 2, h, w).astype(np.float32)
            want = ort_run(proto, {"x": xv})[0]
            np.testing.assert_allclose((await s.run(model, {"x": xv}))["y"], want, rtol=1e-6)
            np.testing.assert_allclose(s.run_sync(model, {"x": xv})["y"], want, rtol=1e-6)
        with pytest.raises(InputError, match="its gears are image sizes 2x3, 4x5"):
            await s.run(model, {"x": np.zeros((1, 2, 3, 3), np.float32)})


def test_threads_sharing_a_load_keep_their_own_gears(mlp_om: Path) -> None:
    """Two event loops on two threads submit to the same load (one stream) with different gears:
    the gear, the execute and the read of the gear's output shapes are serialized per modelId,
    so every run gets its own batch's rows."""
    proto = mlp_proto()
    errors: list[BaseException] = []
    with ascend_async.Session(streams=1) as s:
        model = s.load_model(mlp_om)

        def worker(batch: int) -> None:
            async def main() -> None:
                for i in range(100):
                    x = rows(batch, seed=i)
                    out = await s.run(model, {"x": x})
                    np.testing.assert_array_equal(out["y"], ort_run_cached(proto, x))

            try:
                anyio.run(main)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(b,)) for b in (1, 8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors


_REF: dict[bytes, np.ndarray] = {}


def ort_run_cached(proto: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    key = x.tobytes() + bytes(x.shape)
    if key not in _REF:
        _REF[key] = ort_run(proto, {"x": x})[0]
    return _REF[key]


async def test_load_with_caller_memory(mlp_om: Path) -> None:
    """aclmdlLoadFromMemWithMem / FromFileWithMem: the model runs in the caller's work and weight
    memory (sizes from aclmdlQuerySize), too small or non-device memory is refused, and unload
    leaves the caller's memory to the caller."""
    lib, ffi = _sim.lib, _sim.ffi
    data = mlp_om.read_bytes()  # noqa: ASYNC240
    async with ascend_async.Session() as s:
        s._device.ensure_current()
        work, weight = ffi.new("size_t*"), ffi.new("size_t*")
        assert lib.aclmdlQuerySize(str(mlp_om).encode(), work, weight) == 0
        sizes = (int(work[0]), int(weight[0]))
        ptrs = []
        for n in sizes:
            p = ffi.new("void**")
            assert lib.aclrtMalloc(p, n, 0) == 0
            ptrs.append(p[0])
        mid = ffi.new("uint32_t*")
        before = sim_stats()["device_bytes"]
        host = ffi.new("char[]", sizes[0])
        assert lib.aclmdlLoadFromMemWithMem(data, len(data), mid, host, sizes[0], ffi.NULL, 0) == (
            lib.ACL_ERROR_INVALID_PARAM
        )
        assert "work memory must be" in ffi.string(lib.aclGetRecentErrMsg()).decode()
        assert lib.aclmdlLoadFromMemWithMem(data, len(data), mid, ptrs[0], sizes[0] - 1, ptrs[1], sizes[1]) == (
            lib.ACL_ERROR_INVALID_PARAM
        )
        assert lib.aclmdlLoadFromMemWithMem(data, len(data), mid, ptrs[0], sizes[0], ptrs[1], sizes[1]) == 0
        assert sim_stats()["device_bytes"] == before  # nothing charged: the caller's memory
        assert lib.aclmdlUnload(mid[0]) == 0
        assert lib.aclmdlLoadFromFileWithMem(str(mlp_om).encode(), mid, ptrs[0], sizes[0], ffi.NULL, 0) == 0
        charged = sim_stats()["device_bytes"] - before  # the weights only
        assert charged == (sizes[1] + 31) // 32 * 32 + 32
        assert lib.aclmdlUnload(mid[0]) == 0
        assert sim_stats()["device_bytes"] == before
        for p in ptrs:  # still the caller's, and still valid
            assert lib.aclrtFree(p) == 0


def test_bench_runs_an_offline_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`ascend-async bench MODEL.om`: the model is loaded in the benchmarked session (its
    signature read by a short-lived one), and runs are measured as for ONNX."""
    import json

    om = tmp_path / "mlp.om"
    om.write_bytes(build_container(mlp_proto().SerializeToString(), parse_gears("batch:1,2,4")))
    j = tmp_path / "r.json"
    args = ["bench", str(om), "--quiet", "--count", "30", "--warmup", "2", "--concurrency", "1,4"]
    assert cli_main([*args, "--batch-size", "4", "--json", str(j)]) == 0
    doc = json.loads(j.read_text())
    assert doc["error"] is None and [r["value"] for r in doc["results"]] == [1.0, 4.0]
    assert all(r["runs"] >= 30 and not r["errors"] and r["batch"] == 4 for r in doc["results"])
    assert "mlp.om" in capsys.readouterr().out
    assert cli_main([*args, "--batch-size", "3"]) != 0  # no gear for batch 3: said, not run
    assert "match no gear of the model; its gears are batch sizes 1, 2, 4" in capsys.readouterr().err


async def test_cancelled_run_completes_and_gives_everything_back(mlp_om: Path) -> None:
    async with ascend_async.Session(streams=1) as s:
        model = s.load_model(mlp_om)
        await s.run(model, {"x": rows(1)})
        with held(s.streams[0]):
            async with anyio.create_task_group() as tg:
                tg.start_soon(s.run, model, {"x": rows(4)})
                await wait_for(lambda: s.statistics().in_flight == 1, "the run is submitted")
                tg.cancel_scope.cancel()  # cancelled at its wait: the run stays on the device
            assert s.statistics().in_flight == 1
        await wait_for(lambda: s.statistics().in_flight == 0, "the cancelled run completed")
        assert s.statistics().cancelled == 1
        np.testing.assert_array_equal(
            (await s.run(model, {"x": rows(2)}))["y"], ort_run(mlp_proto(), {"x": rows(2)})[0]
        )
        s.remove_graph(model)  # nothing of the cancelled run is still in flight


def test_external_weights_are_embedded_by_compile_and_refused_in_a_container(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new user's finding: compiling a model whose weights sit in external data made a
    container without them, and loading it read a `w.bin` from the working directory (a decoy
    there gave wrong outputs silently). compile now embeds the weights from the model's folder;
    a container that still refers to external data is refused at load, naming the file."""
    src = ascend_async.models.path("mlp")
    model = onnx.load(src)
    folder = tmp_path / "ext"
    folder.mkdir()
    onnx.save(
        model,
        str(folder / "mlp_ext.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="w.bin",
        size_threshold=0,
    )
    work = tmp_path / "work"
    work.mkdir()
    (work / "w.bin").write_bytes(bytes(1 << 20))  # a decoy in the working directory
    monkeypatch.chdir(work)
    out = tmp_path / "mlp_ext.om"
    ascend_async.compile_model(str(folder / "mlp_ext.onnx"), str(out), gears="batch:1,2")
    x = np.random.default_rng(0).standard_normal((2, 64)).astype(np.float32)
    want = ort.InferenceSession(src, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    with ascend_async.Session(streams=1) as s:
        m = s.load_model(str(out))
        np.testing.assert_array_equal(s.run_sync(m, {"x": x})["y"], want)
        # A container made around the external-data model by hand is refused before any load.
        from ascend_async._offline import _FIXED, _HEADER_BYTES, SIM_HEADER

        inner = onnx.load(str(folder / "mlp_ext.onnx"), load_external_data=False).SerializeToString()
        forged = SIM_HEADER.ljust(_HEADER_BYTES, b"\0") + _FIXED.pack(1, 0, 0, 0, len(inner)) + inner
        (tmp_path / "forged.om").write_bytes(forged)
        with pytest.raises(GraphError, match=r"forged\.om: an offline model must carry its weights"):
            s.load_model(str(tmp_path / "forged.om"))
        with pytest.raises(GraphError, match=r"mlp_ext\.onnx.*must carry its weights"):
            from ascend_async._offline import build_container

            build_container(inner, label="mlp_ext.onnx")


async def test_warmup_runs_every_gear_of_an_offline_model_on_every_stream(mlp_om: Path) -> None:
    """A new user's finding: session.warmup(model) ignored the model's gears ("compiled and
    loaded only"), so bench on an .om warmed up nothing."""
    async with ascend_async.Session(streams=2) as s:
        model = s.load_model(mlp_om)
        report = await s.warmup(model)
        assert [next(iter(sh.values()))[0] for sh in report.shapes] == [1, 2, 4, 8]
        assert report.runs == 4 * 2 and report.streams == 2 and not report.notes


def test_add_graph_and_check_on_an_offline_model_say_to_load_it(mlp_om: Path) -> None:
    """A new user's finding: add_graph, check and doctor on an .om said only "not a valid ONNX
    model (DecodeError ...)"."""
    from ascend_async import check_model

    with ascend_async.Session(streams=1) as s:
        with pytest.raises(GraphError, match=r"mlp\.om: not a valid ONNX model: it is an offline model .*load_model"):
            s.add_graph(str(mlp_om))
    with pytest.raises(GraphError, match=r"it is an offline model .*load_model"):
        check_model(str(mlp_om))
