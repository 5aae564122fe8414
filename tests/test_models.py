"""The bundled models against onnx.reference, lowering refusals, fp16, and program lifetime."""

from __future__ import annotations

import gc
import threading

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

from ascend_async._errors import GraphError
from ascend_async.models import NAMES, path

_simrun = pytest.importorskip("_simrun")


@pytest.fixture(scope="module", autouse=True)
def _session_cleanup() -> object:
    yield
    _simrun.close()


def _input_shape(name: str, batch: int) -> tuple[int, ...]:
    return {"mlp": (batch, 64), "cnn": (batch, 3, 32, 32), "transformer": (batch, 3 + batch, 64)}[name]


@pytest.mark.parametrize("name", NAMES)
def test_bundled_model_matches_reference(name: str) -> None:
    model = onnx.load(str(path(name)))
    assert path(name).stat().st_size < 500_000
    ref = ReferenceEvaluator(model)
    program = _simrun.lower(model)
    rng = np.random.default_rng(7)
    for batch in (1, 2, 5):
        x = rng.standard_normal(_input_shape(name, batch)).astype(np.float32)
        (got,) = _simrun.run_program_sync(program, [x])
        (want,) = ref.run(None, {"x": x})
        assert got.shape == want.shape and got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def _model(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    inits: list[onnx.TensorProto] | None = None,
    opset: int = 17,
    domain: str = "",
) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits or [])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid(domain, opset)])


def _vi(name: str, dtype: int = TensorProto.FLOAT, shape: list[object] | None = None) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape if shape is not None else ["batch", 4])


@pytest.mark.parametrize("op_type", ["Einsum", "TotallyMadeUpOp"])
def test_unsupported_op_names_op_and_node(op_type: str) -> None:
    relu = helper.make_node("Relu", ["x"], ["h"], name="first_relu")
    bad = helper.make_node(op_type, ["h"], ["y"], name="the_bad_node")
    model = _model([relu, bad], [_vi("x")], [_vi("y")])
    with pytest.raises(GraphError) as info:
        _simrun.lower(model)
    assert op_type in str(info.value) and "the_bad_node" in str(info.value)


@pytest.mark.parametrize(
    ("node", "dtype", "fragment"),
    [
        (
            helper.make_node("Gelu", ["x"], ["y"], name="g", approximate="erf"),
            TensorProto.FLOAT,
            "approximate",
        ),
        (helper.make_node("Add", ["x", "x"], ["y"], name="a"), TensorProto.DOUBLE, "float64"),
        (helper.make_node("Sqrt", ["x"], ["y"], name="s"), TensorProto.INT32, "int32"),
        (helper.make_node("Softmax", ["x"], ["y"], name="s", bogus=3), TensorProto.FLOAT, "bogus"),
        (
            helper.make_node("LayerNormalization", ["x", "x"], ["y"], name="l", stash_type=0),
            TensorProto.FLOAT,
            "stash_type",
        ),
    ],
)
def test_unsupported_attribute_or_dtype_is_refused(node: onnx.NodeProto, dtype: int, fragment: str) -> None:
    model = _model([node], [_vi("x", dtype)], [_vi("y", dtype)], opset=20)
    with pytest.raises(GraphError) as info:
        _simrun.lower(model)
    assert fragment in str(info.value) and node.op_type in str(info.value)


def test_conv_3d_is_refused() -> None:
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="c3", kernel_shape=[1, 1, 1])
    w = helper.make_tensor("w", TensorProto.FLOAT, [1, 1, 1, 1, 1], [1.0])
    model = _model([node], [_vi("x", shape=[1, 1, 2, 2, 2])], [_vi("y", shape=None)], [w])
    with pytest.raises(GraphError, match=r"Conv.*c3"):
        _simrun.lower(model)


def test_reshape_shape_must_be_constant() -> None:
    node = helper.make_node("Reshape", ["x", "s"], ["y"], name="r")
    model = _model([node], [_vi("x"), _vi("s", TensorProto.INT64, [2])], [_vi("y")])
    with pytest.raises(GraphError, match="constant initializer"):
        _simrun.lower(model)


@pytest.mark.parametrize("opset", [12, onnx.defs.onnx_opset_version() + 1])
def test_opset_out_of_range_is_refused(opset: int) -> None:
    model = _model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x")], [_vi("y")], opset=opset)
    with pytest.raises(GraphError, match="opset"):
        _simrun.lower(model)


def test_non_default_domain_is_refused() -> None:
    node = helper.make_node("FusedThing", ["x"], ["y"], name="f", domain="com.example")
    graph = helper.make_graph([node], "g", [_vi("x")], [_vi("y")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    with pytest.raises(GraphError, match=r"com\.example"):
        _simrun.lower(model)


def test_constant_nodes_and_initializer_inputs() -> None:
    const = helper.make_node("Constant", [], ["c"], value=helper.make_tensor("v", TensorProto.FLOAT, [4], [1, 2, 3, 4]))
    add = helper.make_node("Add", ["x", "c"], ["t"])
    mul = helper.make_node("Mul", ["t", "w"], ["y"])
    w = helper.make_tensor("w", TensorProto.FLOAT, [4], [2, 2, 2, 2])
    # "w" is both a graph input and an initializer: a constant with a default value
    model = _model([const, add, mul], [_vi("x"), _vi("w", shape=[4])], [_vi("y")], [w])
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    (y,) = _simrun.run_model(model, [x])
    np.testing.assert_array_equal(y, (x + np.array([1, 2, 3, 4], np.float32)) * 2)


def test_float16_rounds_after_each_op() -> None:
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["m"]),
        helper.make_node("Add", ["m", "b"], ["a"]),
        helper.make_node("Softmax", ["a"], ["y"], axis=-1),
    ]
    rng = np.random.default_rng(3)
    w = rng.standard_normal((4, 5)).astype(np.float16)
    b = rng.standard_normal(5).astype(np.float16)
    inits = [onnx.numpy_helper.from_array(w, "w"), onnx.numpy_helper.from_array(b, "b")]
    model = _model(nodes, [_vi("x", TensorProto.FLOAT16)], [_vi("y", TensorProto.FLOAT16, ["batch", 5])], inits)
    x = rng.standard_normal((3, 4)).astype(np.float16)
    (y,) = _simrun.run_model(model, [x])
    m = (x.astype(np.float32) @ w.astype(np.float32)).astype(np.float16)
    a = (m.astype(np.float32) + b.astype(np.float32)).astype(np.float16).astype(np.float32)
    e = np.exp(a - a.max(axis=-1, keepdims=True))
    want = (e / e.sum(axis=-1, keepdims=True)).astype(np.float16)
    assert y.dtype == np.float16
    np.testing.assert_allclose(y.astype(np.float32), want.astype(np.float32), rtol=2e-3, atol=1e-3)


def test_input_checked_against_declared_shape() -> None:
    model = onnx.load(str(path("cnn")))
    program = _simrun.lower(model)
    with pytest.raises(_simrun.RunError, match="'x'"):
        _simrun.run_program_sync(program, [np.zeros((1, 4, 32, 32), np.float32)])


def test_program_refcount_returns_to_zero() -> None:
    lib, ffi = _simrun.lib, _simrun.ffi
    stats = ffi.new("aa_sim_stats *")
    gc.collect()
    lib.aa_sim_get_stats(stats)
    before = stats.programs
    program = _simrun.lower(onnx.load(str(path("mlp"))))
    _simrun.run_program_sync(program, [np.zeros((2, 64), np.float32)])
    lib.aa_sim_get_stats(stats)
    assert stats.programs == before + 1
    del program
    gc.collect()
    lib.aa_sim_get_stats(stats)
    assert stats.programs == before


def test_same_program_on_several_threads() -> None:
    model = onnx.load(str(path("transformer")))
    program = _simrun.lower(model)
    ref = ReferenceEvaluator(model)
    xs = [np.random.default_rng(i).standard_normal((2, 5, 64)).astype(np.float32) for i in range(4)]
    wants = [ref.run(None, {"x": x})[0] for x in xs]
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for _ in range(5):
                (got,) = _simrun.run_program_sync(program, [xs[i]])
                np.testing.assert_allclose(got, wants[i], rtol=1e-4, atol=1e-5)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


_UNARY_F32 = {
    "Sqrt": np.sqrt,
    "Neg": np.negative,
    "Abs": np.abs,
    "Relu": lambda v: np.maximum(v, 0),
    "Sigmoid": lambda v: 1 / (1 + np.exp(-v)),
    "Tanh": np.tanh,
    "Exp": np.exp,
    "Log": np.log,
}


@pytest.mark.parametrize("op_type", sorted(_UNARY_F32))
def test_float16_unary(op_type: str) -> None:
    x = (np.random.default_rng(5).random((3, 7)) * 4 + 0.1).astype(np.float16)
    if op_type in ("Neg", "Abs", "Relu", "Tanh"):
        x = (x - np.float16(2)).astype(np.float16)
    model = _model(
        [helper.make_node(op_type, ["x"], ["y"])],
        [_vi("x", TensorProto.FLOAT16, ["batch", 7])],
        [_vi("y", TensorProto.FLOAT16, ["batch", 7])],
    )
    (y,) = _simrun.run_model(model, [x])
    want = _UNARY_F32[op_type](x.astype(np.float32)).astype(np.float16)
    assert y.dtype == np.float16
    np.testing.assert_array_max_ulp(y, want, maxulp=1)


@pytest.mark.parametrize(("op_type", "fn"), [("LessOrEqual", np.less_equal), ("GreaterOrEqual", np.greater_equal)])
def test_extra_comparisons(op_type: str, fn: object) -> None:
    a = np.array([[1, 2, 3], [4, 5, 6]], np.int64)
    b = np.array([3, 2, 1], np.int64)
    model = _model(
        [helper.make_node(op_type, ["a", "b"], ["y"])],
        [_vi("a", TensorProto.INT64, [2, 3]), _vi("b", TensorProto.INT64, [3])],
        [_vi("y", TensorProto.BOOL, [2, 3])],
    )
    (y,) = _simrun.run_model(model, [a, b])
    np.testing.assert_array_equal(y, fn(a, b))  # type: ignore[operator]


def test_declared_output_dtype_mismatch_is_refused() -> None:
    model = _model(
        [helper.make_node("Equal", ["x", "x"], ["y"], name="eq")],
        [_vi("x")],
        [_vi("y", TensorProto.FLOAT)],
    )
    with pytest.raises(GraphError, match="declared"):
        _simrun.lower(model)


def test_cnn_float16_close_to_float32() -> None:
    model = onnx.load(str(path("cnn")))
    for init in model.graph.initializer:
        arr = onnx.numpy_helper.to_array(init).astype(np.float16)
        init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
    for vi in list(model.graph.input) + list(model.graph.output):
        vi.type.tensor_type.elem_type = TensorProto.FLOAT16
    x = np.random.default_rng(9).standard_normal((2, 3, 32, 32)).astype(np.float16)
    (y16,) = _simrun.run_model(model, [x])
    (y32,) = ReferenceEvaluator(onnx.load(str(path("cnn")))).run(None, {"x": x.astype(np.float32)})
    assert y16.dtype == np.float16
    np.testing.assert_allclose(y16.astype(np.float32), y32, rtol=0.05, atol=0.05)


def test_float16_conversions_match_numpy() -> None:
    # every fp16 bit pattern widened, and float32 values around every fp16 step rounded back
    bits = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    halves = bits.view(np.float16)
    up = _model(
        [helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT)],
        [_vi("x", TensorProto.FLOAT16, [65536])],
        [_vi("y", TensorProto.FLOAT, [65536])],
    )
    (wide,) = _simrun.run_model(up, [halves])
    np.testing.assert_array_equal(wide.view(np.uint32), halves.astype(np.float32).view(np.uint32))
    finite = halves[np.isfinite(halves)].astype(np.float32)
    rng = np.random.default_rng(1)
    probes = np.concatenate(
        [
            finite,
            np.nextafter(finite, np.float32(np.inf)),
            np.nextafter(finite, np.float32(-np.inf)),
            (finite[:-1] + finite[1:]) / 2,  # ties
            rng.standard_normal(20000).astype(np.float32) * 1e-5,
            np.array([65519.0, 65520.0, 1e6, -1e6, np.inf, -np.inf, np.nan], np.float32),
        ]
    ).astype(np.float32)
    down = _model(
        [helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT16)],
        [_vi("x", TensorProto.FLOAT, [len(probes)])],
        [_vi("y", TensorProto.FLOAT16, [len(probes)])],
    )
    with np.errstate(over="ignore"):
        want = probes.astype(np.float16)
    (got,) = _simrun.run_model(down, [probes])
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan)
    np.testing.assert_array_equal(got[~nan].view(np.uint16), want[~nan].view(np.uint16))


def _rand_slice_case(rng: np.random.Generator) -> tuple[onnx.ModelProto, np.ndarray]:
    rank = int(rng.integers(1, 5))
    shape = [int(d) for d in rng.integers(1, 6, rank)]
    k = int(rng.integers(1, rank + 1))
    axes = rng.permutation(rank)[:k] - (rank if rng.random() < 0.5 else 0)
    starts = rng.integers(-8, 8, k)
    ends = rng.integers(-8, 8, k)
    steps = rng.choice([-3, -2, -1, 1, 2, 3], k)
    inits = [
        onnx.numpy_helper.from_array(np.asarray(v, np.int64), n)
        for v, n in ((starts, "s"), (ends, "e"), (axes, "a"), (steps, "t"))
    ]
    model = _model(
        [helper.make_node("Slice", ["x", "s", "e", "a", "t"], ["y"])],
        [_vi("x", TensorProto.FLOAT, shape)],
        [_vi("y", TensorProto.FLOAT, None)],
        inits,
    )
    return model, rng.standard_normal(shape).astype(np.float32)


def _rand_reduce_case(rng: np.random.Generator) -> tuple[onnx.ModelProto, np.ndarray]:
    rank = int(rng.integers(1, 5))
    shape = [int(d) for d in rng.integers(1, 5, rank)]
    op = str(rng.choice(["ReduceMean", "ReduceSum", "ReduceMax"]))
    axes = np.sort(rng.permutation(rank)[: int(rng.integers(0, rank + 1))]).astype(np.int64)
    keep = int(rng.integers(0, 2))
    model = _model(
        [helper.make_node(op, ["x", "a"], ["y"], keepdims=keep)],
        [_vi("x", TensorProto.FLOAT, shape)],
        [_vi("y", TensorProto.FLOAT, None)],
        [onnx.numpy_helper.from_array(axes, "a")],
        opset=18,
    )
    return model, rng.standard_normal(shape).astype(np.float32)


def _rand_broadcast_case(rng: np.random.Generator) -> tuple[onnx.ModelProto, np.ndarray]:
    rank = int(rng.integers(1, 5))
    shape = [int(d) for d in rng.integers(1, 5, rank)]
    other = [d if rng.random() < 0.6 else 1 for d in shape][int(rng.integers(0, rank)) :]
    op = str(rng.choice(["Add", "Sub", "Mul", "Div"]))
    const = onnx.numpy_helper.from_array((rng.random(other) + 0.5).astype(np.float32), "c")
    transposed = list(rng.permutation(rank))
    nodes = [
        helper.make_node(op, ["c", "x"] if rng.random() < 0.5 else ["x", "c"], ["t"]),
        helper.make_node("Transpose", ["t"], ["y"], perm=transposed),
    ]
    model = _model(nodes, [_vi("x", TensorProto.FLOAT, shape)], [_vi("y", TensorProto.FLOAT, None)], [const])
    return model, rng.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("make", [_rand_slice_case, _rand_reduce_case, _rand_broadcast_case])
def test_random_cases_match_reference(make: object) -> None:
    rng = np.random.default_rng(11)
    for _ in range(40):
        model, x = make(rng)  # type: ignore[operator]
        (want,) = ReferenceEvaluator(model).run(None, {"x": x})
        (got,) = _simrun.run_model(model, [x])
        assert got.shape == want.shape, onnx.helper.printable_graph(model.graph)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
