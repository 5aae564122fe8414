"""Real ONNX models on the sim (onnxruntime computes them): the bundled models, old opsets, fp16,
symbolic dims and shape subgraphs, If, LSTM, dynamic batch, dynamic (value-dependent) output
shapes with GE's allocation rule pinned at the C ABI, refusals, run-time faults, input checks,
model sharing and concurrent runs. References: ``onnx.reference.ReferenceEvaluator``
(independent of onnxruntime), or onnxruntime's Python API where the reference has no such op.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import _simrun
import anyio
import numpy as np
import onnx
import pytest
from helpers import held, sim_stats
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import ascend_async as aa
from ascend_async import DeviceError, GraphError, InputError
from ascend_async.models import NAMES, path

ffi, lib = _simrun.ffi, _simrun.lib
RTOL, ATOL = 1e-4, 1e-5


def _shape(name: str, batch: int) -> tuple[int, ...]:
    return {"mlp": (batch, 64), "cnn": (batch, 3, 32, 32), "transformer": (batch, 3 + batch, 64)}[name]


def _model(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    inits: list[onnx.TensorProto] | None = None,
    opset: int = 17,
    extra_opsets: list[onnx.OperatorSetIdProto] | None = None,
) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits or [])
    ir = 3 if opset < 8 else 7 if opset < 15 else 8
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset), *(extra_opsets or [])], ir_version=ir
    )


def _vi(name: str, dtype: int = TensorProto.FLOAT, shape: list[Any] | None = None) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


def _init(name: str, a: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(a, name)


def _reference(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return list(ReferenceEvaluator(model).run(None, feeds))


def _ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return list(s.run(None, feeds))


def _assert_outputs(got: dict[str, np.ndarray] | list[np.ndarray], want: list[np.ndarray], **tol: float) -> None:
    values = list(got.values()) if isinstance(got, dict) else got
    assert len(values) == len(want)
    for g, w in zip(values, want, strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape, (g.dtype, g.shape, w.dtype, w.shape)
        if w.dtype.kind in "fc":
            np.testing.assert_allclose(g, w, rtol=tol.get("rtol", RTOL), atol=tol.get("atol", ATOL))
        else:
            np.testing.assert_array_equal(g, w)


# ------------------------------------------------------------------------------------------------
# The bundled models, three ways


@pytest.mark.anyio
@pytest.mark.parametrize("name", NAMES)
async def test_bundled_model_async_matches_reference(name: str) -> None:
    model = onnx.load(str(path(name)))
    rng = np.random.default_rng(7)
    async with aa.Session(streams=2) as session:
        graph = session.add_graph(path(name))
        for batch in (1, 2, 5):
            x = rng.standard_normal(_shape(name, batch)).astype(np.float32)
            got = await session.run(graph, {"x": x})
            _assert_outputs(got, _reference(model, {"x": x}))


@pytest.mark.parametrize("name", NAMES)
def test_bundled_model_run_sync_and_rungraph_match_reference(name: str) -> None:
    model = onnx.load(str(path(name)))
    rng = np.random.default_rng(8)
    with aa.Session() as session:
        graph = session.add_graph(path(name))
        for batch in (1, 3):
            x = rng.standard_normal(_shape(name, batch)).astype(np.float32)
            want = _reference(model, {"x": x})
            _assert_outputs(session.run_sync(graph, {"x": x}), want)
            _assert_outputs(_simrun.run_model(model, [x]), want)


# ------------------------------------------------------------------------------------------------
# Old opsets (7-12), fp16


def _conv_net(opset: int) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """Conv + BatchNormalization (old attrs) + Relu + MaxPool + Dropout + Flatten + Gemm."""
    rng = np.random.default_rng(opset)
    bn_attrs: dict[str, Any] = {"epsilon": 1e-5}
    if opset < 7:
        bn_attrs["is_test"] = 1
    if opset < 9:
        bn_attrs["spatial"] = 1
    dropout_attrs: dict[str, Any] = {"ratio": 0.5} if opset < 12 else {}
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "s", "bb", "m", "v"], ["n"], **bn_attrs),
        helper.make_node("Relu", ["n"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Dropout", ["p"], ["d"], **dropout_attrs),
        helper.make_node("Flatten", ["d"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "gw", "gb"], ["y"], transB=1),
    ]
    inits = [
        _init("w", rng.standard_normal((4, 3, 3, 3)).astype(np.float32) * 0.3),
        _init("b", rng.standard_normal(4).astype(np.float32)),
        _init("s", rng.random(4).astype(np.float32) + 0.5),
        _init("bb", rng.standard_normal(4).astype(np.float32)),
        _init("m", rng.standard_normal(4).astype(np.float32) * 0.1),
        _init("v", rng.random(4).astype(np.float32) + 0.5),
        _init("gw", rng.standard_normal((5, 4 * 4 * 4)).astype(np.float32) * 0.2),
        _init("gb", rng.standard_normal(5).astype(np.float32)),
    ]
    # Exporters of that era listed the weights as graph inputs too (required before IR 4).
    weights = [_vi(t.name, shape=list(t.dims)) for t in inits]
    model = _model(nodes, [_vi("x", shape=[2, 3, 8, 8]), *weights], [_vi("y", shape=[2, 5])], inits, opset=opset)
    return model, {"x": rng.standard_normal((2, 3, 8, 8)).astype(np.float32)}


def _upsample_9() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    nodes = [
        helper.make_node("Upsample", ["x", "scales"], ["u"], mode="nearest"),
        helper.make_node("Sum", ["u", "u", "u"], ["y"]),
    ]
    scales = _init("scales", np.array([1, 1, 2, 3], np.float32))
    model = _model(nodes, [_vi("x", shape=[1, 2, 3, 4])], [_vi("y", shape=[1, 2, 6, 12])], [scales], opset=9)
    return model, {"x": np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4)}


def _pad_clip_11() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """Opset 11: Pad and Clip take their parameters as inputs; Softmax's 2-D coercion (< 13)."""
    nodes = [
        helper.make_node("Pad", ["x", "pads", "cval"], ["p"], mode="constant"),
        helper.make_node("Clip", ["p", "lo", "hi"], ["c"]),
        helper.make_node("Softmax", ["c"], ["y"], axis=1),
        helper.make_node("Split", ["x"], ["s0", "s1"], axis=2, split=[1, 3]),
    ]
    inits = [
        _init("pads", np.array([0, 1, 2, 0, 1, 0], np.int64)),
        _init("cval", np.array(0.5, np.float32)),
        _init("lo", np.array(-1.0, np.float32)),
        _init("hi", np.array(1.5, np.float32)),
    ]
    outputs = [_vi("y", shape=[2, 5, 6]), _vi("s0", shape=[2, 3, 1]), _vi("s1", shape=[2, 3, 3])]
    model = _model(nodes, [_vi("x", shape=[2, 3, 4])], outputs, inits, opset=11)
    x = np.random.default_rng(11).standard_normal((2, 3, 4)).astype(np.float32) * 2
    return model, {"x": x}


def _reduce_squeeze_12() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """Opset 12: axes are attributes (ReduceSum, Squeeze, Unsqueeze)."""
    nodes = [
        helper.make_node("ReduceSum", ["x"], ["r"], axes=[1], keepdims=1),
        helper.make_node("Squeeze", ["r"], ["q"], axes=[1]),
        helper.make_node("Unsqueeze", ["q"], ["y"], axes=[0]),
        helper.make_node("ReduceMax", ["x"], ["m"], axes=[0, 2], keepdims=0),
    ]
    model = _model(nodes, [_vi("x", shape=[2, 3, 4])], [_vi("y", shape=[1, 2, 4]), _vi("m", shape=[3])], opset=12)
    return model, {"x": np.random.default_rng(12).standard_normal((2, 3, 4)).astype(np.float32)}


OLD_OPSET_MODELS: dict[str, Callable[[], tuple[onnx.ModelProto, dict[str, np.ndarray]]]] = {
    "conv_net_7": lambda: _conv_net(7),
    "conv_net_9": lambda: _conv_net(9),
    "conv_net_11": lambda: _conv_net(11),
    "conv_net_12": lambda: _conv_net(12),
    "upsample_9": _upsample_9,
    "pad_clip_split_11": _pad_clip_11,
    "reduce_squeeze_12": _reduce_squeeze_12,
}


def _old_reference(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The reference for an old-opset model: the model converted to opset 17 by onnx's version
    converter, evaluated by ReferenceEvaluator. (The evaluator's own BatchNormalization-6/-9
    kernels are wrong in inference mode: BN-9 takes the default momentum for "training", BN-6
    returns a tuple; onnx 1.23.)"""
    from onnx import version_converter

    return _reference(version_converter.convert_version(model, 17), feeds)


@pytest.mark.parametrize("case", sorted(OLD_OPSET_MODELS))
def test_old_opsets_match_reference(case: str) -> None:
    model, feeds = OLD_OPSET_MODELS[case]()
    assert model.opset_import[0].version < 13
    want = _old_reference(model, feeds)
    _assert_outputs(_simrun.run_model(model, list(feeds.values())), want)
    with aa.Session() as session:
        graph = session.add_graph(model)
        _assert_outputs(session.run_sync(graph, feeds), want)


def test_float16_model_matches_reference() -> None:
    rng = np.random.default_rng(3)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("MatMul", ["f", "mw"], ["m"]),
        helper.make_node("Add", ["m", "mb"], ["a"]),
        helper.make_node("Softmax", ["a"], ["y"], axis=-1),
    ]
    inits = [
        _init("w", (rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float16)),
        _init("mw", (rng.standard_normal((8, 5)) * 0.5).astype(np.float16)),
        _init("mb", rng.standard_normal(5).astype(np.float16)),
    ]
    model = _model(
        nodes,
        [_vi("x", TensorProto.FLOAT16, ["N", 3, 6, 6])],
        [_vi("y", TensorProto.FLOAT16, ["N", 5])],
        inits,
    )
    with aa.Session() as session:
        graph = session.add_graph(model)
        assert graph.inputs[0].dtype == np.float16
        for n in (1, 4):
            x = rng.standard_normal((n, 3, 6, 6)).astype(np.float16)
            want = _reference(model, {"x": x})
            got = session.run_sync(graph, {"x": x})
            assert got["y"].dtype == np.float16
            _assert_outputs(got, want, rtol=1e-2, atol=2e-3)


# ------------------------------------------------------------------------------------------------
# Symbolic dims, shape subgraphs, If, LSTM, dynamic batch


def _shape_subgraph_model() -> onnx.ModelProto:
    """x[N, C, H, W] -> Reshape(x, Concat(Gather(Shape(x), 0), [-1])) -> MatMul -> y[N, 5]."""
    rng = np.random.default_rng(4)
    nodes = [
        helper.make_node("Shape", ["x"], ["shp"]),
        helper.make_node("Gather", ["shp", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "axes0"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus1"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], ["y"]),
    ]
    inits = [
        _init("zero", np.array(0, np.int64)),
        _init("axes0", np.array([0], np.int64)),
        _init("minus1", np.array([-1], np.int64)),
        _init("w", rng.standard_normal((2 * 3 * 4, 5)).astype(np.float32)),
    ]
    return _model(nodes, [_vi("x", shape=["N", 2, 3, 4])], [_vi("y", shape=["N", 5])], inits, opset=13)


@pytest.mark.anyio
async def test_shape_subgraph_with_symbolic_batch() -> None:
    model = _shape_subgraph_model()
    rng = np.random.default_rng(5)
    async with aa.Session() as session:
        graph = session.add_graph(model)
        assert graph.inputs[0].shape == ("N", 2, 3, 4)
        for n in (1, 2, 7):
            x = rng.standard_normal((n, 2, 3, 4)).astype(np.float32)
            got = await session.run(graph, {"x": x})
            assert got["y"].shape == (n, 5)
            _assert_outputs(got, _reference(model, {"x": x}))


def _if_model() -> onnx.ModelProto:
    then_graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["t"])], "then", [], [_vi("t", shape=["N", 4])]
    )
    else_graph = helper.make_graph(
        [helper.make_node("Sub", ["x", "one"], ["e"])], "else", [], [_vi("e", shape=["N", 4])]
    )
    nodes = [
        helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0),
        helper.make_node("Greater", ["total", "zero"], ["cond"]),
        helper.make_node("If", ["cond"], ["y"], then_branch=then_graph, else_branch=else_graph),
    ]
    inits = [
        _init("two", np.array(2.0, np.float32)),
        _init("one", np.array(1.0, np.float32)),
        _init("zero", np.array(0.0, np.float32)),
    ]
    return _model(nodes, [_vi("x", shape=["N", 4])], [_vi("y", shape=["N", 4])], inits, opset=13)


@pytest.mark.anyio
async def test_if_takes_both_branches() -> None:
    model = _if_model()
    positive = np.abs(np.random.default_rng(6).standard_normal((3, 4))).astype(np.float32)
    async with aa.Session() as session:
        graph = session.add_graph(model)
        got_then = await session.run(graph, {"x": positive})
        got_else = await session.run(graph, {"x": -positive})
    np.testing.assert_allclose(got_then["y"], positive * 2)
    np.testing.assert_allclose(got_else["y"], -positive - 1)
    _assert_outputs(got_then, _reference(model, {"x": positive}))
    _assert_outputs(got_else, _reference(model, {"x": -positive}))


def _lstm_model(hidden: int = 8, features: int = 5) -> onnx.ModelProto:
    rng = np.random.default_rng(7)
    inits = [
        _init("W", (rng.standard_normal((1, 4 * hidden, features)) * 0.3).astype(np.float32)),
        _init("R", (rng.standard_normal((1, 4 * hidden, hidden)) * 0.3).astype(np.float32)),
        _init("B", (rng.standard_normal((1, 8 * hidden)) * 0.1).astype(np.float32)),
    ]
    nodes = [helper.make_node("LSTM", ["x", "W", "R", "B"], ["Y", "Y_h", "Y_c"], hidden_size=hidden)]
    outputs = [
        _vi("Y", shape=["T", 1, "N", hidden]),
        _vi("Y_h", shape=[1, "N", hidden]),
        _vi("Y_c", shape=[1, "N", hidden]),
    ]
    return _model(nodes, [_vi("x", shape=["T", "N", features])], outputs, inits, opset=14)


@pytest.mark.anyio
async def test_lstm_matches_reference_and_onnxruntime() -> None:
    model = _lstm_model()
    rng = np.random.default_rng(8)
    async with aa.Session() as session:
        graph = session.add_graph(model)
        for t, n in ((1, 1), (6, 3)):
            x = rng.standard_normal((t, n, 5)).astype(np.float32)
            got = await session.run(graph, {"x": x})
            assert got["Y"].shape == (t, 1, n, 8)
            _assert_outputs(got, _reference(model, {"x": x}))
            _assert_outputs(got, _ort(model, {"x": x}), rtol=1e-6, atol=1e-6)


def _dynamic_batch_cnn() -> onnx.ModelProto:
    """A whole small CNN as an exporter writes it: batch dim "N", BN, residual add, head."""
    rng = np.random.default_rng(9)
    c = 6
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("BatchNormalization", ["c1", "g", "be", "mu", "var"], ["n1"], name="bn1"),
        helper.make_node("Relu", ["n1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=2, name="conv2"),
        helper.make_node("Add", ["c2", "r1"], ["res"], name="residual"),
        helper.make_node("Relu", ["res"], ["r2"], name="relu2"),
        helper.make_node("MaxPool", ["r2"], ["p"], kernel_shape=[2, 2], strides=[2, 2], name="pool"),
        helper.make_node("GlobalAveragePool", ["p"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["f"], axis=1, name="flatten"),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["logits"], transB=1, name="fc"),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1, name="softmax"),
    ]
    inits = [
        _init("w1", (rng.standard_normal((c, 3, 3, 3)) * 0.3).astype(np.float32)),
        _init("b1", rng.standard_normal(c).astype(np.float32) * 0.1),
        _init("g", (rng.random(c) + 0.5).astype(np.float32)),
        _init("be", rng.standard_normal(c).astype(np.float32) * 0.1),
        _init("mu", rng.standard_normal(c).astype(np.float32) * 0.1),
        _init("var", (rng.random(c) + 0.5).astype(np.float32)),
        _init("w2", (rng.standard_normal((c, c // 2, 3, 3)) * 0.3).astype(np.float32)),
        _init("fw", (rng.standard_normal((10, c)) * 0.5).astype(np.float32)),
        _init("fb", rng.standard_normal(10).astype(np.float32) * 0.1),
    ]
    outputs = [_vi("logits", shape=["N", 10]), _vi("probs", shape=["N", 10])]
    return _model(nodes, [_vi("x", shape=["N", 3, 16, 16])], outputs, inits, opset=17)


@pytest.mark.anyio
async def test_dynamic_batch_export_at_several_batch_sizes() -> None:
    model = _dynamic_batch_cnn()
    rng = np.random.default_rng(10)
    async with aa.Session(streams=2) as session:
        graph = session.add_graph(model.SerializeToString())
        assert graph.inputs[0].shape == ("N", 3, 16, 16)
        xs = [rng.standard_normal((n, 3, 16, 16)).astype(np.float32) for n in (1, 2, 5, 8)]
        results: list[dict[str, np.ndarray]] = [{} for _ in xs]

        async def one(i: int) -> None:
            results[i] = await session.run(graph, {"x": xs[i]})

        async with anyio.create_task_group() as tg:
            for i in range(len(xs)):
                tg.start_soon(one, i)
    for x, got in zip(xs, results, strict=True):
        assert got["probs"].shape == (x.shape[0], 10)
        _assert_outputs(got, _reference(model, {"x": x}))


# ------------------------------------------------------------------------------------------------
# Refusals at add_graph


def test_every_unsupported_op_is_named_in_one_graph_error() -> None:
    then = helper.make_graph(
        [helper.make_node("Qux", ["x"], ["t"], name="deep_qux")], "then", [], [_vi("t", shape=[2, 4])]
    )
    otherwise = helper.make_graph([helper.make_node("Zap", ["x"], ["e"])], "else", [], [_vi("e", shape=[2, 4])])
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="ok_relu"),
        helper.make_node("Foo", ["a"], ["b"]),  # unnamed: node #1
        helper.make_node("Bar", ["b"], ["c"], name="the_bar"),
        helper.make_node("Baz", ["c"], ["d"], name="custom_baz", domain="com.example"),
        helper.make_node("Greater", ["d", "x"], ["m"]),
        helper.make_node("ReduceMin", ["m"], ["cond"], keepdims=0),
        helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=otherwise),
    ]
    model = _model(
        nodes,
        [_vi("x", shape=[2, 4])],
        [_vi("y", shape=[2, 4])],
        opset=17,
        extra_opsets=[helper.make_opsetid("com.example", 1)],
    )
    before = sim_stats()
    with aa.Session() as session, pytest.raises(GraphError) as info:
        session.add_graph(model)
    text = str(info.value)
    assert "5 node(s)" in text, text
    assert "Foo (node #1)" in text
    assert "Bar (node 'the_bar')" in text
    assert "Baz (node 'custom_baz')" in text
    assert "Qux (node 'deep_qux' in a subgraph of If node #6)" in text
    assert "Zap (node #0 in a subgraph of If node #6)" in text
    assert "Relu" not in text.split("(")[0] and "ok_relu" not in text
    after = sim_stats()
    assert after["models"] == before["models"] and after["graphs"] == before["graphs"]


def test_a_model_onnxruntime_rejects_is_a_graph_error() -> None:
    # Every op exists, but an input is never produced: the model itself is invalid.
    model = _model([helper.make_node("Add", ["x", "ghost"], ["y"])], [_vi("x", shape=[3])], [_vi("y", shape=[3])])
    with aa.Session() as session, pytest.raises(GraphError, match="ghost"):
        session.add_graph(model)


def test_corrupt_models_are_graph_errors(tmp_path: Any) -> None:
    before = sim_stats()
    good = path("cnn").read_bytes()
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(good[: len(good) // 2])
    noise = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    with aa.Session() as session:
        for source in (noise, truncated, str(truncated), b"", tmp_path / "missing.onnx"):
            with pytest.raises(GraphError):
                session.add_graph(source)
        # The C ABI refuses them too (the sim's engine parses the bytes itself).
        for data in (noise, good[: len(good) // 2]):
            with pytest.raises(_simrun.AddGraphError):
                _simrun.run_case(data, [])
        # The session is unharmed.
        graph = session.add_graph(good)
        out = session.run_sync(graph, {"x": np.zeros((1, 3, 32, 32), np.float32)})
        assert out["y"].shape == (1, 10)
    after = sim_stats()
    assert after["models"] == before["models"] and after["graphs"] == before["graphs"]


# ------------------------------------------------------------------------------------------------
# Dynamic graphs: output shapes that depend on values


def _nonzero_model() -> onnx.ModelProto:
    """idx = NonZero(x > 0) (int64[2, ?]), vals = Unique(x) (float[?]) and a static Relu(x)."""
    nodes = [
        helper.make_node("Greater", ["x", "zero"], ["mask"]),
        helper.make_node("NonZero", ["mask"], ["idx"]),
        helper.make_node("Unique", ["x"], ["vals"], sorted=1),
        helper.make_node("Relu", ["x"], ["r"]),
    ]
    outputs = [
        _vi("idx", TensorProto.INT64, [2, None]),
        _vi("vals", TensorProto.FLOAT, [None]),
        _vi("r", TensorProto.FLOAT, ["N", 4]),
    ]
    return _model(nodes, [_vi("x", shape=["N", 4])], outputs, [_init("zero", np.array(0.0, np.float32))], opset=13)


def _nonzero_inputs() -> list[np.ndarray]:
    return [
        np.array([[1, -2, 3, 0], [-1, 5, 5, 1]], np.float32),
        np.array([[-1, -1, -1, -1]], np.float32),  # no non-zero at all: empty outputs
        np.arange(-8, 16, dtype=np.float32).reshape(6, 4) % 5 - 1,
    ]


def _nonzero_want(x: np.ndarray) -> list[np.ndarray]:
    return [np.array(np.nonzero(x > 0), np.int64).reshape(2, -1), np.unique(x), np.maximum(x, 0)]


@pytest.mark.anyio
async def test_dynamic_graph_through_session_run() -> None:
    model = _nonzero_model()
    async with aa.Session() as session:
        graph = session.add_graph(model)
        for x in _nonzero_inputs():
            want = _nonzero_want(x)
            _assert_outputs(await session.run(graph, {"x": x}), want)
            _assert_outputs(_reference(model, {"x": x}), want)
            dev = await session.run(graph, {"x": x}, outputs="device")
            try:
                assert all(isinstance(t, aa.DeviceTensor) for t in dev.values())
                _assert_outputs([t.numpy() for t in dev.values()], want)
            finally:
                for t in dev.values():
                    t.close()


@pytest.mark.anyio
async def test_dynamic_graph_runs_with_one_input_shape_each_get_their_own_output_shapes() -> None:
    """Value-dependent outputs for inputs that all have the same shape, one run after another,
    host and device outputs: each result equals onnxruntime's. Regression: the sim's device
    thread used to write a dynamic run's output slots while aa_run_submit was still reading them
    to tell a dynamic run from a static one, so a run that executed quickly looked static, and
    the next run with the same input shape reused its output shapes (NonZero of an all-negative
    input came back (2, 2), filled with garbage). Now no device thread writes the caller's slots:
    they stay pending until aa_session_resolve_outputs, after the event, as on CANN."""
    model = _nonzero_model()
    xs = [
        np.array([[1, -2, 3, 0], [-1, 5, 5, 1]], np.float32),
        np.full((2, 4), -1.0, np.float32),
        np.ones((2, 4), np.float32),
        np.array([[0, 0, 0, 2], [-1, -1, -1, -1]], np.float32),
    ]
    wants = [_ort(model, {"x": x}) for x in xs]
    async with aa.Session(streams=1) as session:
        graph = session.add_graph(model)
        for round_ in range(8):
            for x, want in zip(xs, wants, strict=True):
                if round_ % 2:
                    dev = await session.run(graph, {"x": x}, outputs="device")
                    try:
                        _assert_outputs([t.numpy() for t in dev.values()], want)
                    finally:
                        for t in dev.values():
                            t.close()
                else:
                    _assert_outputs(await session.run(graph, {"x": x}), want)


def test_dynamic_graph_run_sync_and_callback() -> None:
    model = _nonzero_model()
    with aa.Session() as session:
        g_sync = session.add_graph(model)
        g_cb = session.add_graph(model.SerializeToString())  # another Graph: its own run mode
        for x in _nonzero_inputs():
            want = _nonzero_want(x)
            _assert_outputs(session.run_sync(g_sync, {"x": x}), want)
            done = threading.Event()
            box: list[Any] = []

            def cb(out: Any, err: Any, box: list[Any] = box, done: threading.Event = done) -> None:
                box.append((out, err))
                done.set()

            session.run_with_callback(g_cb, {"x": x}, cb)
            assert done.wait(10)
            out, err = box[0]
            assert err is None, err
            _assert_outputs(out, want)


class _Abi:
    """A GE session, a stream and a device input, driven at the C ABI."""

    def __init__(self, model: bytes) -> None:
        _simrun._init()
        p = ffi.new("aa_session**")
        assert lib.aa_session_create(ffi.NULL, 0, p) == 0
        self.session = p[0]
        sp = ffi.new("aclrtStream*")
        assert lib.aclrtCreateStream(sp) == 0
        self.stream = sp[0]
        self.gid = 7001
        assert lib.aa_session_add_graph_onnx(self.session, self.gid, model, len(model), ffi.NULL, 0) == 0
        assert lib.aa_session_load_graph(self.session, self.gid, ffi.NULL, 0, self.stream) == 0  # weights placed
        self.mem: list[Any] = []

    def device_input(self, x: np.ndarray) -> Any:
        p = ffi.new("void**")
        assert lib.aclrtMalloc(p, max(x.nbytes, 1), 0) == 0
        self.mem.append(p[0])
        assert lib.aclrtMemcpy(p[0], x.nbytes, ffi.from_buffer(x), x.nbytes, 1) == 0
        t = ffi.new("aa_tensor[1]")
        t[0].addr, t[0].size, t[0].dtype, t[0].format, t[0].placement = p[0], x.nbytes, 0, 2, 0
        t[0].ndim = x.ndim
        for d, n in enumerate(x.shape):
            t[0].dims[d] = n
        return t

    def read(self, t: Any) -> np.ndarray:
        dtype = _simrun.GE_TO_NUMPY[t.dtype]
        shape = tuple(t.dims[d] for d in range(t.ndim))
        out = np.empty(shape, dtype)
        if out.nbytes:
            assert lib.aclrtMemcpy(ffi.from_buffer(out), out.nbytes, t.addr, out.nbytes, 2) == 0
        return out

    def close(self) -> None:
        assert lib.aclrtSynchronizeStream(self.stream) == 0
        assert lib.aa_session_remove_graph(self.session, self.gid) == 0
        assert lib.aclrtDestroyStream(self.stream) == 0
        for m in self.mem:
            assert lib.aclrtFree(m) == 0
        assert lib.aa_session_destroy(self.session) == 0


@pytest.mark.parametrize("external", [True, False], ids=["external_allocator", "builtin_allocator"])
def test_dynamic_outputs_follow_ges_allocation_rule(external: bool) -> None:
    x = _nonzero_inputs()[0]
    want = _nonzero_want(x)
    env = _Abi(_nonzero_model().SerializeToString())
    pool = lib.aa_pool_create(0, 1 << 20)
    pst = ffi.new("aa_pool_stats*")
    try:
        if external:
            alloc = ffi.new("aa_allocator*")
            lib.aa_pool_lane_allocator(lib.aa_pool_lane_open(pool), alloc)  # a lane: stream-ordered
            assert lib.aa_session_register_external_allocator(env.session, env.stream, alloc) == 0
        tin = env.device_input(x)
        out = ffi.new("aa_tensor[3]")
        before = sim_stats()
        # Hold the stream so the run cannot start before the slots are inspected.
        with held(env.stream):
            status = lib.aa_session_run_graph_with_stream_async(env.session, env.gid, env.stream, tin, 1, out, 3)
            assert status == 0
            # Nothing placed yet: GE describes the outputs when the stream reaches the run. Every
            # slot is pending (no address; the run's shared record as owner) and stays so: no
            # device thread writes the caller's slots.
            for i in range(3):
                assert out[i].addr == ffi.NULL and out[i].size == 0
                assert out[i].owner != ffi.NULL and out[i].owner == out[0].owner
            assert sim_stats()["ge_outputs"] == before["ge_outputs"]
            assert lib.aa_session_resolve_outputs(out, 3) == 0xFFFFFFFF  # too early: still pending
            assert out[0].addr == ffi.NULL and out[0].owner == out[2].owner
        assert lib.aclrtSynchronizeStream(env.stream) == 0
        assert out[0].addr == ffi.NULL  # still as submit left it: described only on request
        assert lib.aa_session_resolve_outputs(out, 3) == 0
        for i in range(3):
            assert out[i].owner != ffi.NULL and out[i].addr != ffi.NULL
            assert out[i].placement == 0  # AA_PLACEMENT_DEVICE_HBM
        assert len({out[i].owner for i in range(3)}) == 3  # each output's own block now
        placed = [(out[i].addr, out[i].owner, out[i].size, out[i].ndim) for i in range(3)]
        assert lib.aa_session_resolve_outputs(out, 3) == 0  # again: nothing left to do
        assert [(out[i].addr, out[i].owner, out[i].size, out[i].ndim) for i in range(3)] == placed
        assert lib.aa_session_resolve_outputs(ffi.NULL, 3) == 1343225857  # PARAM_INVALID
        _assert_outputs([env.read(out[i]) for i in range(3)], want)
        lib.aa_pool_get_stats(pool, pst)
        after = sim_stats()
        assert after["ge_outputs"] == before["ge_outputs"] + 3
        # Placed when the stream reached the run, so never through the stream's allocator (a
        # stream-ordered allocator may then hold blocks later submissions freed, which only
        # later work may take): GE's own memory, held by the tensor (sim/session.c alloc_output).
        assert pst.live_blocks == 0 and pst.misses == 0
        assert after["device_allocations"] == before["device_allocations"] + 3  # GE's blocks
        for i in range(3):
            lib.aa_tensor_release(ffi.addressof(out, i))
        assert sim_stats()["ge_outputs"] == before["ge_outputs"]
        lib.aa_pool_get_stats(pool, pst)
        assert pst.live_blocks == 0 and pst.stream_cached_blocks == 0  # nothing went through the lane
        assert sim_stats()["device_allocations"] == before["device_allocations"]  # freed on release
    finally:
        if external:
            lib.aa_session_unregister_external_allocator(env.session, env.stream)
        env.close()
        assert lib.aa_pool_destroy(pool) == 0


def test_builtin_dynamic_outputs_live_as_long_as_their_graph() -> None:
    env = _Abi(_nonzero_model().SerializeToString())
    try:
        out = ffi.new("aa_tensor[3]")
        before = sim_stats()
        tin = env.device_input(_nonzero_inputs()[0])
        assert lib.aa_session_run_graph_with_stream_async(env.session, env.gid, env.stream, tin, 1, out, 3) == 0
        assert lib.aclrtSynchronizeStream(env.stream) == 0
        assert sim_stats()["ge_outputs"] == before["ge_outputs"] + 3
        # RemoveGraph frees the graph's built-in blocks; a later release only drops the record.
        # (Right after the synchronize: a run gives back its hold on the graph before it completes.)
        assert lib.aa_session_remove_graph(env.session, env.gid) == 0
        assert sim_stats()["ge_outputs"] == before["ge_outputs"]
        for i in range(3):
            lib.aa_tensor_release(ffi.addressof(out, i))
        assert sim_stats()["ge_outputs"] == before["ge_outputs"]
        assert lib.aa_session_add_graph_onnx(env.session, env.gid, b"\x08\x07", 2, ffi.NULL, 0) != 0
        model = _nonzero_model().SerializeToString()
        assert lib.aa_session_add_graph_onnx(env.session, env.gid, model, len(model), ffi.NULL, 0) == 0
    finally:
        env.close()


# ------------------------------------------------------------------------------------------------
# onnxruntime failures at run time are device faults


def _reshape_model() -> onnx.ModelProto:
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["y"], name="the_reshape")]
    return _model(nodes, [_vi("x", shape=[2, 6]), _vi("shape", TensorProto.INT64, [2])], [_vi("y", shape=None)])


def _gather_model() -> onnx.ModelProto:
    nodes = [helper.make_node("Gather", ["x", "i"], ["y"], axis=0, name="the_gather")]
    return _model(nodes, [_vi("x", shape=[3, 4]), _vi("i", TensorProto.INT64, [2])], [_vi("y", shape=[2, 4])], opset=13)


@pytest.mark.anyio
async def test_onnxruntime_failure_is_a_device_error_and_the_session_recovers() -> None:
    x = np.arange(12, dtype=np.float32).reshape(2, 6)
    table = np.arange(12, dtype=np.float32).reshape(3, 4)
    async with aa.Session(streams=1) as session:
        reshape = session.add_graph(_reshape_model())
        gather = session.add_graph(_gather_model())
        stream = session.streams[0]
        with pytest.raises(DeviceError) as info:
            await session.run(reshape, {"x": x, "shape": np.array([5, 5], np.int64)})
        text = str(info.value)
        assert "onnxruntime" in text and "the_reshape" in text and "cannot be reshaped" in text, text
        assert session.streams[0] is not stream  # the faulted stream was replaced
        got = await session.run(reshape, {"x": x, "shape": np.array([3, 4], np.int64)})
        np.testing.assert_array_equal(got["y"], x.reshape(3, 4))

        with pytest.raises(DeviceError) as info:
            await session.run(gather, {"x": table, "i": np.array([0, 7], np.int64)})
        text = str(info.value)
        assert "the_gather" in text and "out of data bounds, idx=7" in text, text
        got = await session.run(gather, {"x": table, "i": np.array([2, -1], np.int64)})
        np.testing.assert_array_equal(got["y"], table[[2, -1]])
        stats = session.statistics()
        assert stats.failed == 2 and stats.completed == 2


def test_onnxruntime_failure_in_run_sync_carries_its_text() -> None:
    with aa.Session() as session:
        graph = session.add_graph(_reshape_model())
        with pytest.raises(aa.AscendError, match="cannot be reshaped"):
            session.run_sync(graph, {"x": np.zeros((2, 6), np.float32), "shape": np.array([7, 7], np.int64)})
        got = session.run_sync(graph, {"x": np.ones((2, 6), np.float32), "shape": np.array([-1, 3], np.int64)})
        assert got["y"].shape == (4, 3)


def test_onnxruntime_failure_in_run_with_callback_is_reported_to_the_callback() -> None:
    bad = {"x": np.zeros((2, 6), np.float32), "shape": np.array([7, 7], np.int64)}
    good = {"x": np.ones((2, 6), np.float32), "shape": np.array([6, 2], np.int64)}
    with aa.Session() as session:
        graph = session.add_graph(_reshape_model())
        for inputs in (bad, good):
            done = threading.Event()
            box: list[Any] = []

            def cb(out: Any, err: Any, box: list[Any] = box, done: threading.Event = done) -> None:
                box.append((out, err))
                done.set()

            session.run_with_callback(graph, inputs, cb)
            assert done.wait(10)
            out, err = box[0]
            if inputs is bad:
                assert out is None and isinstance(err, aa.GeError), (out, err)
                assert "onnxruntime" in str(err) and "Reshape" in str(err), err  # GE's text, carried over
            else:
                assert err is None and out["y"].shape == (6, 2)


# ------------------------------------------------------------------------------------------------
# Input checks before submit


@pytest.mark.parametrize(
    ("inputs", "fragment"),
    [
        ({"x": np.zeros((2, 64), np.float64)}, "dtype float64"),
        ({"x": np.zeros((2, 64, 1), np.float32)}, "rank 2"),
        ({"x": np.zeros((2, 63), np.float32)}, "dim 1 must be 64"),
        ({"y": np.zeros((2, 64), np.float32)}, "unknown input 'y'"),
        ({}, "missing input 'x'"),
        ([np.zeros((2, 64), np.float32)] * 2, "takes 1 inputs"),
    ],
    ids=["dtype", "rank", "dim", "unknown_name", "missing", "count"],
)
def test_inputs_are_checked_before_submit(inputs: Any, fragment: str) -> None:
    with aa.Session() as session:
        graph = session.add_graph(path("mlp"))
        before = sim_stats()["tasks_submitted"]
        with pytest.raises(InputError, match=fragment) as info:
            session.run_sync(graph, inputs)
        assert "'x'" in str(info.value) or "takes" in str(info.value)

        async def main() -> None:
            with pytest.raises(InputError, match=fragment):
                await session.run(graph, inputs)

        anyio.run(main)
        assert sim_stats()["tasks_submitted"] == before


def test_symbolic_dims_must_agree_across_inputs() -> None:
    model = _model(
        [helper.make_node("Add", ["a", "b"], ["y"])],
        [_vi("a", shape=["N", 3]), _vi("b", shape=["N", 3])],
        [_vi("y", shape=["N", 3])],
    )
    with aa.Session() as session:
        graph = session.add_graph(model)
        with pytest.raises(InputError, match="symbolic dim 'N'"):
            session.run_sync(graph, {"a": np.zeros((2, 3), np.float32), "b": np.zeros((4, 3), np.float32)})


# ------------------------------------------------------------------------------------------------
# Model sharing and concurrency


def test_same_model_in_two_sessions_and_streams_is_compiled_once() -> None:
    data = path("transformer").read_bytes()
    before = sim_stats()
    x = np.random.default_rng(1).standard_normal((2, 5, 64)).astype(np.float32)
    want = _reference(onnx.load(str(path("transformer"))), {"x": x})

    async def both_streams(session: aa.Session, graph: aa.Graph) -> None:
        for s in range(2):
            _assert_outputs(await session.run(graph, {"x": x}, stream=s), want)

    with aa.Session(streams=2) as one, aa.Session(streams=2) as two:
        g1 = one.add_graph(data)
        g2 = two.add_graph(path("transformer"))
        anyio.run(both_streams, one, g1)
        anyio.run(both_streams, two, g2)
        mid = sim_stats()
        assert mid["models"] == before["models"] + 1
        assert mid["graphs"] == before["graphs"] + 4  # one graph id per session and stream
        one.close()
        assert sim_stats()["models"] == before["models"] + 1  # still used by `two`
    assert sim_stats()["models"] == before["models"]


def test_several_threads_run_the_same_graph_at_once() -> None:
    model = onnx.load(str(path("cnn")))
    xs = [np.random.default_rng(i).standard_normal((i + 1, 3, 32, 32)).astype(np.float32) for i in range(6)]
    wants = [_reference(model, {"x": x}) for x in xs]
    errors: list[BaseException] = []
    with aa.Session(streams=3) as session:
        graph = session.add_graph(model)
        barrier = threading.Barrier(len(xs))

        def work(i: int) -> None:
            async def main() -> None:
                barrier.wait()
                for _ in range(4):
                    _assert_outputs(await session.run(graph, {"x": xs[i]}), wants[i])

            try:
                anyio.run(main, backend="trio" if i % 2 else "asyncio")
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert session.statistics().completed == 4 * len(xs)
    assert not errors, errors
