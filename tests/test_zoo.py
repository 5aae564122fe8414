"""The model-zoo architectures that ship inside the ``onnx`` package (``light_*.onnx``), on the sim.

The files keep the architecture and drop the weights: every weight is a ``ConstantOfShape`` node
filled with one value. Each such node is replaced with a seeded random initializer of the same
shape and dtype (He-scaled for weights, positive for per-channel vectors so BatchNormalization
variances stay valid), so the outputs mean something. The modified bytes then run through
``session.run`` and through onnxruntime's Python API (the reference: ReferenceEvaluator takes
minutes on these), batch 1 as the models declare, and must agree within 1e-4.
"""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import ascend_async as aa

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
MODELS = sorted(p.name for p in LIGHT.glob("light_*.onnx"))
# The big ones (1-3 s each here, mostly weight generation and two onnxruntime sessions); they
# run in CI like everything else.
SLOW = {  # more than a second each on the 2-core CI machine
    "light_bvlc_alexnet.onnx",
    "light_vgg19.onnx",
    "light_zfnet512.onnx",
    "light_densenet121.onnx",
    "light_resnet50.onnx",
    "light_inception_v2.onnx",
}
RTOL = ATOL = 1e-4
_POOL = 1_000_003


def randomize_weights(model: onnx.ModelProto, seed: int) -> tuple[onnx.ModelProto, int]:
    """A copy of ``model`` whose constant-filled weights (ConstantOfShape of an initializer
    shape) are seeded random initializers of the same shape and dtype. Returns it and how many
    were replaced."""
    rng = np.random.default_rng(seed)
    # Drawing 140M normals for vgg19 takes seconds: tensors are cut from one seeded pool of a
    # prime length (so rows and channels do not repeat in step), each at a random offset.
    pool = rng.standard_normal(_POOL, dtype=np.float32)
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    inits = {t.name: t for t in g.initializer}
    kept: list[onnx.NodeProto] = []
    weights: list[tuple[str, tuple[int, ...], np.ndarray]] = []
    for node in g.node:
        if node.op_type != "ConstantOfShape" or node.input[0] not in inits:
            kept.append(node)
            continue
        shape = tuple(int(d) for d in numpy_helper.to_array(inits[node.input[0]]))
        value = next((a.t for a in node.attribute if a.name == "value"), None)
        dtype = np.dtype(np.float32) if value is None else numpy_helper.to_array(value).dtype
        if dtype.kind != "f":
            kept.append(node)
            continue
        arr = np.resize(np.roll(pool, -int(rng.integers(0, _POOL))), int(np.prod(shape)))
        if len(shape) >= 2:  # a weight: He initialisation keeps activations in range layer after layer
            arr *= np.float32(np.sqrt(2.0 / int(np.prod(shape[1:]))))
        else:  # biases, scales, means, variances: positive and near 1
            arr = 1 + 0.25 * np.tanh(arr)
        weights.append((node.output[0], shape, arr.astype(dtype, copy=False)))
    used = {name for node in kept for name in node.input}
    dead = {name for name in inits if name not in used and name.endswith("__SHAPE")}
    del g.node[:]
    g.node.extend(kept)
    alive = [t for t in g.initializer if t.name not in dead]
    del g.initializer[:]
    g.initializer.extend(alive)
    inputs = [vi for vi in g.input if vi.name not in dead]
    for name, shape, arr in weights:  # filled in place: these are hundreds of MB for vgg19
        t = g.initializer.add()
        t.name = name
        t.data_type = helper.np_dtype_to_tensor_dtype(arr.dtype)
        t.dims.extend(shape)
        t.raw_data = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        # IR version 3 wants every initializer listed as a graph input as well.
        inputs.append(helper.make_tensor_value_info(name, t.data_type, list(shape)))
    del g.input[:]
    g.input.extend(inputs)
    return m, len(weights)


def test_the_zoo_is_there() -> None:
    """A missing data folder must fail, not pass with nothing collected."""
    assert LIGHT.is_dir(), f"{LIGHT} is missing: the onnx package ships the light model zoo there"
    assert len(MODELS) >= 9, MODELS


def test_randomize_weights_replaces_every_constant_weight() -> None:
    model = onnx.load(str(LIGHT / "light_squeezenet.onnx"))
    random, n = randomize_weights(model, seed=0)
    assert n == sum(node.op_type == "ConstantOfShape" for node in model.graph.node) > 0
    assert not any(node.op_type == "ConstantOfShape" for node in random.graph.node)
    onnx.checker.check_model(random)
    again, _ = randomize_weights(model, seed=0)
    assert again.SerializeToString() == random.SerializeToString()  # seeded: the same every time


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in MODELS])
def test_zoo_model_matches_onnxruntime(name: str) -> None:
    import onnxruntime as ort

    t0 = time.perf_counter()
    model, replaced = randomize_weights(onnx.load(str(LIGHT / name)), seed=len(name))
    assert replaced > 0
    data = model.SerializeToString()
    del model
    graph = aa.Graph(data, name=name)
    assert len(graph.inputs) == 1, graph  # the image; the weights are initializers
    spec = graph.inputs[0]
    assert spec.shape is not None and all(isinstance(d, int) for d in spec.shape)
    x = np.random.default_rng(1).standard_normal(spec.shape).astype(spec.dtype)  # type: ignore[arg-type]

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    reference = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    want = reference.run(None, {spec.name: x})
    del reference

    async def main() -> dict[str, np.ndarray]:
        async with aa.Session(streams=1) as session:
            g = await session.add_graph_async(graph)
            return await session.run(g, {spec.name: x})

    got = anyio.run(main)
    assert list(got) == [o.name for o in graph.outputs]
    for out, w in zip(got.values(), want, strict=True):
        assert out.dtype == w.dtype and out.shape == w.shape
        assert np.isfinite(w).all() and np.ptp(w) > 0, "the random weights gave a degenerate output"
        np.testing.assert_allclose(out, w, rtol=RTOL, atol=ATOL)
    print(f"{name}: {time.perf_counter() - t0:.2f} s")
