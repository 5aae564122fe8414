"""Hostile inputs against the graph path: shapes that overflow or are empty but huge, values
that must pass through (NaN), 0-d constants, wrong attribute types, corrupt models, unaligned
arrays, outputs larger than the device; and bounded mutation fuzzing in subprocesses.

Each case must end in a right answer or a clear ``AscendError`` raised before anything is
submitted where possible, with nothing leaked (conftest checks the sim's counters after each
test) and the session still usable.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import ascend_async as aa
from ascend_async.models import path

HERE = Path(__file__).resolve().parent
F = TensorProto.FLOAT


def _model(nodes: list, inputs: list, outputs: list, inits: list | None = None, opset: int = 13) -> bytes:
    g = helper.make_graph(nodes, "adversarial", inputs, outputs, inits or [])
    return bytes(helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)]).SerializeToString())


def _vi(name: str, shape: list | None, dtype: int = F) -> object:
    return helper.make_tensor_value_info(name, dtype, shape)


def _empty(shape: tuple[int, ...]) -> np.ndarray:
    """A zero-element float32 array of any (huge) shape, without memory."""
    return np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), shape, (0,) * len(shape))


def test_matmul_whose_output_count_overflows_is_refused_before_submit() -> None:
    data = _model(
        [helper.make_node("MatMul", ["a", "b"], ["y"])], [_vi("a", ["M", "K"]), _vi("b", ["K", "N"])], [_vi("y", None)]
    )
    with aa.Session(streams=1) as s:
        g = s.add_graph(data)
        before = s.statistics()
        with pytest.raises(aa.AscendError, match="overflow"):
            s.run_sync(g, {"a": _empty((2**33, 0)), "b": _empty((0, 2**33))})
        after = s.statistics()
        assert after.completed == before.completed  # nothing ran
        small = s.run_sync(g, {"a": np.ones((2, 3), np.float32), "b": np.ones((3, 2), np.float32)})["y"]
        np.testing.assert_array_equal(small, np.full((2, 2), 3, np.float32))


def test_output_larger_than_the_device_is_refused_before_submit() -> None:
    data = _model(
        [helper.make_node("MatMul", ["a", "b"], ["y"])], [_vi("a", ["M", "K"]), _vi("b", ["K", "N"])], [_vi("y", None)]
    )
    with aa.Session(streams=1) as s:
        g = s.add_graph(data)
        with pytest.raises(aa.AscendError, match="more than the device's memory"):
            s.run_sync(g, {"a": _empty((2**40, 0)), "b": _empty((0, 1))})


@pytest.mark.anyio
async def test_empty_input_with_a_huge_batch_costs_nothing() -> None:
    data = _model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x", ["N", "C"])], [_vi("y", ["N", "C"])])
    async with aa.Session(streams=1) as s:
        g = s.add_graph(data)
        out = await s.run(g, {"x": _empty((2**40, 0))})
        assert out["y"].shape == (2**40, 0)
        assert out["y"].size == 0


def test_relu_keeps_nan() -> None:
    data = _model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x", [4])], [_vi("y", [4])])
    with aa.Session(streams=1) as s:
        g = s.add_graph(data)
        y = s.run_sync(g, {"x": np.array([np.nan, -1, 0, 2], np.float32)})["y"]
        assert np.isnan(y[0])
        np.testing.assert_array_equal(y[1:], [0, 0, 2])


def test_zero_d_constant_index_keeps_its_rank() -> None:
    idx = numpy_helper.from_array(np.array(1, np.int64), "i")
    data = _model([helper.make_node("Gather", ["d", "i"], ["o"])], [_vi("d", [2, 3])], [_vi("o", None)], [idx])
    const = helper.make_node("Constant", [], ["j"], value=numpy_helper.from_array(np.array(0, np.int64)))
    data2 = _model([const, helper.make_node("Gather", ["d", "j"], ["o"])], [_vi("d", [2, 3])], [_vi("o", None)])
    d = np.arange(6, dtype=np.float32).reshape(2, 3)
    with aa.Session(streams=1) as s:
        np.testing.assert_array_equal(s.run_sync(s.add_graph(data), {"d": d})["o"], d[1])
        np.testing.assert_array_equal(s.run_sync(s.add_graph(data2), {"d": d})["o"], d[0])


@pytest.mark.parametrize(
    "node",
    [
        helper.make_node("Conv", ["x", "w"], ["y"], pads=1),  # INT where INTS is required
        helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], strides=1.5),  # FLOAT for INTS
    ],
    ids=["conv-pads-int", "maxpool-strides-float"],
)
def test_attribute_of_the_wrong_type_is_refused_at_add(node: object) -> None:
    w = numpy_helper.from_array(np.ones((1, 1, 3, 3), np.float32), "w")
    data = _model([node], [_vi("x", [1, 1, 4, 4])], [_vi("y", None)], [w])
    with aa.Session(streams=1) as s, pytest.raises(aa.GraphError, match=r"[Aa]ttribute"):
        s.add_graph(data)


def test_corrupt_models_raise_graph_error_naming_the_problem() -> None:
    good = _model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x", [4])], [_vi("y", [4])])
    w = numpy_helper.from_array(np.ones(4, np.float32), "w")
    w.raw_data = w.raw_data[:6]  # 6 bytes for 4 floats
    truncated_weights = _model([helper.make_node("Add", ["x", "w"], ["y"])], [_vi("x", [4])], [_vi("y", [4])], [w])
    with aa.Session(streams=1) as s:
        with pytest.raises(aa.GraphError, match="not a valid ONNX model"):
            s.add_graph(good[: len(good) // 2])
        with pytest.raises(aa.GraphError, match="'w'"):
            s.add_graph(truncated_weights)
        with pytest.raises(aa.GraphError):
            s.add_graph(good.replace(b"Relu", b"R\xffeu"))  # a name that is not UTF-8
        with pytest.raises(aa.GraphError, match="cannot read a graph"):
            s.add_graph(42)  # type: ignore[arg-type]
        g = s.add_graph(good)  # the session is still fine
        np.testing.assert_array_equal(s.run_sync(g, {"x": np.ones(4, np.float32)})["y"], np.ones(4))


def test_unaligned_and_strided_inputs() -> None:
    with aa.Session(streams=1) as s:
        g = s.add_graph(str(path("mlp")))
        x = np.random.default_rng(0).standard_normal((8, 64), dtype=np.float32)
        want = s.run_sync(g, {"x": x})
        raw = np.zeros(x.nbytes + 1, np.uint8)
        unaligned = raw[1:].view(np.float32).reshape(x.shape)
        unaligned[...] = x
        assert unaligned.ctypes.data % 4
        got = s.run_sync(g, {"x": unaligned})
        np.testing.assert_array_equal(got["y"], want["y"])
        with pytest.raises(aa.InputError, match="C-contiguous"):
            s.run_sync(g, {"x": np.ones((8, 128), np.float32)[:, ::2]})


def test_run_time_engine_failure_is_a_device_error_and_the_session_recovers() -> None:
    shape = _vi("shape", [2], TensorProto.INT64)
    data = _model([helper.make_node("Reshape", ["x", "shape"], ["y"])], [_vi("x", [6]), shape], [_vi("y", None)])

    async def main() -> None:
        async with aa.Session(streams=1) as s:
            g = s.add_graph(data)
            x = np.arange(6, dtype=np.float32)
            with pytest.raises(aa.DeviceError, match="onnxruntime"):
                await s.run(g, {"x": x, "shape": np.array([4, 4], np.int64)})
            out = await s.run(g, {"x": x, "shape": np.array([2, 3], np.int64)})
            np.testing.assert_array_equal(out["y"], x.reshape(2, 3))

    import anyio

    anyio.run(main)


def _fuzz(lo: int, hi: int, timeout: float) -> None:
    """Runs seeds [lo, hi) of tests/fuzz_engine.py in a subprocess: a crash, a hang or an unclear
    error fails with the seed to replay."""
    env = dict(os.environ, PYTHONFAULTHANDLER="1")
    try:
        proc = subprocess.run(
            [sys.executable, str(HERE / "fuzz_engine.py"), str(lo), str(hi)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout or ""
        last = [line for line in out.splitlines() if line.startswith("case ")][-1:]
        pytest.fail(f"fuzzing hung; replay with: python tests/fuzz_engine.py {last[0][5:] if last else lo} ...")
    lines = proc.stdout.splitlines()
    last = [line for line in lines if line.startswith("case ")][-1:] or ["case ?"]
    assert proc.returncode == 0, (
        f"fuzz case {last[0][5:]} ended with {proc.returncode}: "
        f"{[line for line in lines if line.startswith('FINDING')]} {proc.stderr[-2000:]}"
    )
    assert lines[-1] == "done"


FUZZ_CASES = int(os.environ.get("ASCEND_ASYNC_FUZZ_CASES", "1500"))


@pytest.mark.slow
@pytest.mark.parametrize("part", range(2))
def test_mutation_fuzzing_finds_nothing(part: int) -> None:
    per = FUZZ_CASES // 2
    _fuzz(part * per, (part + 1) * per, timeout=240)
