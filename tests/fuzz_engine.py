"""Mutation fuzzing of the sim's graph path, one process per batch of seeded cases.

Each case derives everything from its seed: a small seed model, a few mutations (of the
serialized bytes or of the proto: dims, dtypes, attribute types, dropped initializers, huge and
empty shapes), then inputs made from the mutated signature (sometimes with huge-but-empty or
mismatched shapes, unaligned or non-contiguous arrays). The case passes when every call returns
or raises an ``AscendError``; any other exception is a finding, and so is a crash or a hang,
which the parent process sees (``tests/test_adversarial.py``). Before each case this prints
``case <seed>``, so the last line names the seed to replay:

    python tests/fuzz_engine.py SEED_FROM SEED_TO
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import ascend_async as aa
from ascend_async.models import path

MAX_ELEMENTS = 1 << 20
DTYPES = [
    TensorProto.FLOAT,
    TensorProto.FLOAT16,
    TensorProto.INT64,
    TensorProto.INT32,
    TensorProto.BOOL,
    TensorProto.DOUBLE,
]


def _vi(name: str, dtype: int, shape: list[Any] | None) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


def seeds() -> list[onnx.ModelProto]:
    """Small models covering the engine's paths: symbolic dims, shape subgraphs, value-dependent
    outputs, initializers, old and new opsets."""
    f = TensorProto.FLOAT
    models = [onnx.load(str(path("mlp"))), onnx.load(str(path("cnn")))]
    g = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["y"])],
        "mm",
        [_vi("a", f, ["M", "K"]), _vi("b", f, ["K", "N"])],
        [_vi("y", f, None)],
    )
    models.append(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]))
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node("Concat", ["n", "minus1"], ["shape"], axis=0),
        helper.make_node("Reshape", ["x", "shape"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(np.array([0], np.int64), "zero"),
        numpy_helper.from_array(np.array([-1], np.int64), "minus1"),
    ]
    g = helper.make_graph(nodes, "reshape", [_vi("x", f, ["N", 2, 3])], [_vi("y", f, None)], inits)
    models.append(helper.make_model(g, opset_imports=[helper.make_opsetid("", 11)]))
    g = helper.make_graph(
        [helper.make_node("NonZero", ["x"], ["nz"]), helper.make_node("Relu", ["x"], ["r"])],
        "nz",
        [_vi("x", f, ["N", 4])],
        [_vi("nz", TensorProto.INT64, None), _vi("r", f, None)],
    )
    models.append(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]))
    idx = numpy_helper.from_array(np.array(1, np.int64), "i")
    g = helper.make_graph(
        [helper.make_node("Gather", ["d", "i"], ["o"])], "gather", [_vi("d", f, [2, 3])], [_vi("o", f, None)], [idx]
    )
    models.append(helper.make_model(g, opset_imports=[helper.make_opsetid("", 9)]))
    return models


def mutate(model: onnx.ModelProto, rng: np.random.Generator) -> bytes:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for _ in range(int(rng.integers(1, 4))):
        kind = int(rng.integers(0, 7))
        graph = m.graph
        if kind == 0 and graph.input:  # dims: empty, huge, negative, symbolic
            vi = graph.input[int(rng.integers(len(graph.input)))]
            for d in vi.type.tensor_type.shape.dim:
                if rng.random() < 0.5:
                    choice = int(rng.integers(0, 4))
                    if choice == 0:
                        d.dim_value = 0
                    elif choice == 1:
                        d.dim_value = int(2 ** int(rng.integers(20, 62)))
                    elif choice == 2:
                        d.dim_param = f"s{int(rng.integers(3))}"
                    else:
                        d.dim_value = int(rng.integers(1, 9))
        elif kind == 1 and graph.input:  # dtype
            graph.input[int(rng.integers(len(graph.input)))].type.tensor_type.elem_type = int(rng.choice(DTYPES))
        elif kind == 2 and graph.node:  # an attribute of the wrong type
            node = graph.node[int(rng.integers(len(graph.node)))]
            attr = node.attribute.add()
            attr.CopyFrom(helper.make_attribute(str(rng.choice(["axis", "pads", "strides", "perm", "alpha"])), 1.5))
        elif kind == 3 and graph.initializer:  # drop an initializer
            del graph.initializer[int(rng.integers(len(graph.initializer)))]
        elif kind == 4 and graph.initializer:  # a 0-d or a truncated initializer
            t = graph.initializer[int(rng.integers(len(graph.initializer)))]
            if t.raw_data:
                t.raw_data = t.raw_data[: int(rng.integers(len(t.raw_data) + 1))]
            else:
                del t.dims[:]
        elif kind == 5:  # the opset
            m.opset_import[0].version = int(rng.integers(1, 30))
        else:  # bytes
            data = bytearray(m.SerializeToString())
            for _ in range(int(rng.integers(1, 8))):
                if data:
                    data[int(rng.integers(len(data)))] = int(rng.integers(256))
            if rng.random() < 0.3:
                data = data[: int(rng.integers(len(data) + 1))]
            return bytes(data)
    return m.SerializeToString()


def make_input(spec: aa.TensorSpec, rng: np.random.Generator, bound: dict[str, int]) -> np.ndarray:
    if spec.shape is None:
        shape: tuple[int, ...] = tuple(int(rng.integers(0, 4)) for _ in range(int(rng.integers(0, 4))))
    else:
        dims = []
        for d in spec.shape:
            if isinstance(d, int):
                dims.append(d if rng.random() < 0.9 else int(rng.integers(0, 5)))
            else:
                key = str(d)
                if key not in bound:
                    bound[key] = int(rng.choice([0, 1, 2, 3, 7, 1 << 40]))
                dims.append(bound[key])
        shape = tuple(dims)
    count = 1
    for d in shape:
        count *= d
    if count > MAX_ELEMENTS:  # a huge shape is only tried empty
        shape = (*shape[:-1], 0) if shape else shape
    base = np.zeros(1, dtype=spec.dtype)
    if count == 0 or count > MAX_ELEMENTS:
        try:
            return np.lib.stride_tricks.as_strided(base, shape, (0,) * len(shape))
        except ValueError:  # numpy refuses dims whose product overflows, even with a zero among them
            return np.zeros((0,) * len(shape), spec.dtype)
    a = rng.standard_normal(int(count)).astype(spec.dtype).reshape(shape)
    if rng.random() < 0.2 and a.nbytes:  # contiguous but unaligned
        raw = np.zeros(a.nbytes + 1, np.uint8)
        view = raw[1:].view(spec.dtype).reshape(shape)
        view[...] = a
        return view
    return a


def run_case(seed: int, session: aa.Session, models: list[onnx.ModelProto]) -> None:
    rng = np.random.default_rng(seed)
    data = mutate(models[int(rng.integers(len(models)))], rng)
    try:
        graph = session.add_graph(data)
    except aa.AscendError:
        return
    try:
        for _ in range(2):
            bound: dict[str, int] = {}
            inputs = {s.name: make_input(s, rng, bound) for s in graph.inputs}
            try:
                session.run_sync(graph, inputs)
            except aa.AscendError:
                pass
    finally:
        session.remove_graph(graph)


def main(argv: list[str]) -> int:
    lo, hi = int(argv[0]), int(argv[1])
    models = seeds()
    with aa.Session(streams=1) as session:
        for seed in range(lo, hi):
            print(f"case {seed}", flush=True)
            try:
                run_case(seed, session, models)
            except Exception as exc:  # not an AscendError: an unclear error is a finding too
                print(f"FINDING seed {seed}: {type(exc).__name__}: {exc}", flush=True)
                return 3
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
