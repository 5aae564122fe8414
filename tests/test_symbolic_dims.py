"""Unknown dims as onnxruntime and GE read them: -1, "" and "?" are each their own unknown dim;
only a real name ties dims together. The rapidocr-style input [-1, 3, ?, ?]."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import ascend_async as aa
from ascend_async.bench._cli import main

pytestmark = pytest.mark.anyio


def _dims(vi: onnx.ValueInfoProto, dims: list[int | str]) -> onnx.ValueInfoProto:
    """Set dims the way exporters store them: ints as dim_value (-1 included), str as dim_param."""
    vi.type.tensor_type.shape.ClearField("dim")
    for d in dims:
        dim = vi.type.tensor_type.shape.dim.add()
        if isinstance(d, int):
            dim.dim_value = d
        else:
            dim.dim_param = d
    return vi


def classifier(path: Path) -> Path:
    """A rapidocr-style conv head: x [-1, 3, ?, ?] -> Conv 3x3 -> Relu -> y [-1, 4, ?, ?]."""
    rng = np.random.default_rng(7)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b")
    x = _dims(helper.make_tensor_value_info("x", TensorProto.FLOAT, None), [-1, 3, "?", "?"])
    y = _dims(helper.make_tensor_value_info("y", TensorProto.FLOAT, None), [-1, 4, "?", "?"])
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["c"], ["y"]),
    ]
    model = helper.make_model(
        helper.make_graph(nodes, "cls", [x], [y], initializer=[w, b]), opset_imports=[helper.make_opsetid("", 17)]
    )
    onnx.save(model, path)
    return path


def _reference(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)


async def test_rapidocr_style_inputs_run_and_match_onnxruntime(tmp_path: Path) -> None:
    path = classifier(tmp_path / "cls.onnx")
    rng = np.random.default_rng(1)
    async with aa.Session() as s:
        g = s.add_graph(path)
        assert g.inputs[0].shape == (None, 3, None, None)
        for shape in [(1, 3, 48, 192), (3, 3, 48, 160), (2, 3, 32, 32)]:
            x = rng.standard_normal(shape).astype(np.float32)
            out = await s.run(g, {"x": x})
            (want,) = _reference(path, {"x": x})
            assert out["y"].shape == want.shape
            np.testing.assert_allclose(out["y"], want, rtol=1e-5, atol=1e-6)


def test_rapidocr_style_inputs_run_sync(tmp_path: Path) -> None:
    path = classifier(tmp_path / "cls.onnx")
    x = np.random.default_rng(2).standard_normal((2, 3, 48, 192)).astype(np.float32)
    with aa.Session() as s:
        out = s.run_sync(s.add_graph(path), {"x": x})
    np.testing.assert_allclose(out["y"], _reference(path, {"x": x})[0], rtol=1e-5, atol=1e-6)


def _two_inputs(names: tuple[int | str, int | str]) -> onnx.ModelProto:
    """a [n0, 2] and b [n1, 2] -> ReduceSum each over dim 0, summed: valid whatever n0 and n1."""
    a = _dims(helper.make_tensor_value_info("a", TensorProto.FLOAT, None), [names[0], 2])
    b = _dims(helper.make_tensor_value_info("b", TensorProto.FLOAT, None), [names[1], 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    axes = numpy_helper.from_array(np.array([0], np.int64), "axes")
    nodes = [
        helper.make_node("ReduceSum", ["a", "axes"], ["sa"], keepdims=0),
        helper.make_node("ReduceSum", ["b", "axes"], ["sb"], keepdims=0),
        helper.make_node("Add", ["sa", "sb"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "two", [a, b], [y], initializer=[axes])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("names", [("?", "?"), (-1, -1), ("", "")], ids=["question", "minus-one", "empty"])
async def test_unknown_dims_are_independent(names: tuple[int | str, int | str]) -> None:
    model = _two_inputs(names)
    a, b = np.ones((3, 2), np.float32), np.full((5, 2), 2.0, np.float32)
    async with aa.Session() as s:
        out = await s.run(s.add_graph(model), {"a": a, "b": b})
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"a": a, "b": b}
    )[0]
    np.testing.assert_array_equal(out["y"], want)


async def test_a_real_name_still_ties_dims() -> None:
    async with aa.Session() as s:
        g = s.add_graph(_two_inputs(("n", "n")))
        with pytest.raises(aa.InputError, match=r"symbolic dim 'n' is 3 in input 'a' but 5 in input 'b'"):
            await s.run(g, {"a": np.ones((3, 2), np.float32), "b": np.ones((5, 2), np.float32)})
        out = await s.run(g, {"a": np.ones((4, 2), np.float32), "b": np.ones((4, 2), np.float32)})
        np.testing.assert_array_equal(out["y"], np.full(2, 8.0, np.float32))


def test_bench_names_unknown_spatial_dims_and_runs_with_shape(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = classifier(tmp_path / "cls.onnx")
    assert main(["bench", str(path), "--duration", "0.2", "--concurrency", "1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "unknown dim 2 (?), dim 3 (?)" in err and "--shape x:1,3,32,32" in err
    code = main(["bench", str(path), "--duration", "0.2", "--concurrency", "1", "--quiet", "--shape", "x:1,3,48,192"])
    assert code == 0
    assert "x float32[1, 3, 48, 192]" in capsys.readouterr().out.replace("(", "[").replace(")", "]")
