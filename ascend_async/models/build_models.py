"""Builds the bundled example models (mlp.onnx, cnn.onnx, transformer.onnx) with onnx.helper.

Weights come from a seeded numpy RNG, so the files are reproducible:
``python -m ascend_async.models.build_models`` rewrites them next to this script.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent
SEED = 20240611


class _Graph:
    """Collects nodes and initializers; names values uniquely."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0

    def name(self, base: str) -> str:
        self.count += 1
        return f"{base}_{self.count}"

    def const(self, base: str, array: np.ndarray) -> str:
        name = self.name(base)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def weight(self, base: str, shape: tuple[int, ...], fan_in: int) -> str:
        w = self.rng.standard_normal(shape).astype(np.float32) / np.float32(np.sqrt(fan_in))
        return self.const(base, w)

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, **attrs: Any) -> str:
        outs = [self.name(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=self.name(op_type), **attrs))
        return outs[0]


def _model(
    g: _Graph,
    inputs: list[onnx.ValueInfoProto],
    out: str,
    out_shape: list[str | int | None],
    name: str,
    opset: int,
) -> onnx.ModelProto:
    g.nodes[-1].output[0] = "y"
    graph = helper.make_graph(
        g.nodes,
        name,
        inputs,
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        g.inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset)],
        producer_name="ascend_async.build_models",
    )
    model.ir_version = min(model.ir_version, 9)
    onnx.checker.check_model(model, full_check=True)
    return model


def build_mlp(rng: np.random.Generator) -> onnx.ModelProto:
    """x [batch, 64] -> Gemm+Relu -> MatMul+Add+Relu -> Gemm -> Softmax -> y [batch, 10]."""
    g = _Graph(rng)
    h = g.op(
        "Gemm",
        [
            "x",
            g.weight("w1", (64, 128), 64),
            g.const("b1", rng.standard_normal(128).astype(np.float32) * 0.1),
        ],
    )
    h = g.op("Relu", [h])
    h = g.op("MatMul", [h, g.weight("w2", (128, 64), 128)])
    h = g.op("Add", [h, g.const("b2", rng.standard_normal(64).astype(np.float32) * 0.1)])
    h = g.op("Relu", [h])
    h = g.op("Gemm", [h, g.weight("w3", (10, 64), 64), g.const("b3", np.zeros(10, np.float32))], transB=1)
    g.op("Softmax", [h], axis=-1)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])
    return _model(g, [x], "y", ["batch", 10], "mlp", 17)


def build_cnn(rng: np.random.Generator) -> onnx.ModelProto:
    """x [batch, 3, 32, 32] -> (Conv+BN+Relu+MaxPool) x2 -> GlobalAveragePool -> Flatten -> Gemm."""
    g = _Graph(rng)
    h = "x"
    cin = 3
    for cout in (16, 32):
        h = g.op(
            "Conv",
            [
                h,
                g.weight("conv_w", (cout, cin, 3, 3), cin * 9),
                g.const("conv_b", np.zeros(cout, np.float32)),
            ],
            pads=[1, 1, 1, 1],
            kernel_shape=[3, 3],
        )
        scale = (1.0 + 0.1 * rng.standard_normal(cout)).astype(np.float32)
        bias = (0.1 * rng.standard_normal(cout)).astype(np.float32)
        mean = (0.1 * rng.standard_normal(cout)).astype(np.float32)
        var = (1.0 + 0.1 * rng.random(cout)).astype(np.float32)
        h = g.op(
            "BatchNormalization",
            [
                h,
                g.const("bn_scale", scale),
                g.const("bn_bias", bias),
                g.const("bn_mean", mean),
                g.const("bn_var", var),
            ],
            epsilon=1e-5,
        )
        h = g.op("Relu", [h])
        h = g.op("MaxPool", [h], kernel_shape=[2, 2], strides=[2, 2])
        cin = cout
    h = g.op("GlobalAveragePool", [h])
    h = g.op("Flatten", [h], axis=1)
    g.op("Gemm", [h, g.weight("fc_w", (32, 10), 32), g.const("fc_b", np.zeros(10, np.float32))])
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 32, 32])
    return _model(g, [x], "y", ["batch", 10], "cnn", 17)


def build_transformer(rng: np.random.Generator) -> onnx.ModelProto:
    """One encoder block: x [batch, seq, 64], 4-head self-attention, LayerNorm, Gelu FFN.

    Opset 17, with Gelu written out: CANN's ONNX parser registers no standard op past opset 18
    and no Gelu at all (``ascend-async check``), and a bundled model must run on both backends.
    """
    d, heads, ff = 64, 4, 128
    hd = d // heads
    opset = 17
    g = _Graph(rng)

    def dense(x: str, n_in: int, n_out: int) -> str:
        y = g.op("MatMul", [x, g.weight("w", (n_in, n_out), n_in)])
        return g.op("Add", [y, g.const("b", (0.02 * rng.standard_normal(n_out)).astype(np.float32))])

    split = g.const("split_shape", np.array([0, 0, heads, hd], np.int64))
    q = g.op("Transpose", [g.op("Reshape", [dense("x", d, d), split])], perm=[0, 2, 1, 3])
    k = g.op("Transpose", [g.op("Reshape", [dense("x", d, d), split])], perm=[0, 2, 3, 1])
    v = g.op("Transpose", [g.op("Reshape", [dense("x", d, d), split])], perm=[0, 2, 1, 3])
    scores = g.op("Mul", [g.op("MatMul", [q, k]), g.const("scale", np.array(1.0 / np.sqrt(hd), np.float32))])
    attn = g.op("Softmax", [scores], axis=-1)
    ctx = g.op("Transpose", [g.op("MatMul", [attn, v])], perm=[0, 2, 1, 3])
    ctx = g.op("Reshape", [ctx, g.const("merge_shape", np.array([0, 0, d], np.int64))])
    h1 = g.op("Add", ["x", dense(ctx, d, d)])

    def layer_norm(x: str) -> str:
        gamma = (1.0 + 0.05 * rng.standard_normal(d)).astype(np.float32)
        beta = (0.05 * rng.standard_normal(d)).astype(np.float32)
        return g.op(
            "LayerNormalization",
            [x, g.const("ln_g", gamma), g.const("ln_b", beta)],
            axis=-1,
            epsilon=1e-5,
        )

    ln1 = layer_norm(h1)
    f = dense(ln1, d, ff)
    # Gelu: 0.5 * f * (1 + erf(f / sqrt(2)))
    e = g.op("Erf", [g.op("Mul", [f, g.const("rsqrt2", np.array(1 / np.sqrt(2), np.float32))])])
    f = g.op(
        "Mul",
        [
            g.op("Mul", [f, g.const("half", np.array(0.5, np.float32))]),
            g.op("Add", [e, g.const("one", np.array(1.0, np.float32))]),
        ],
    )
    f = dense(f, ff, d)
    layer_norm(g.op("Add", [ln1, f]))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", d])
    return _model(g, [x], "y", ["batch", "seq", d], "transformer", opset)


BUILDERS = {"mlp": build_mlp, "cnn": build_cnn, "transformer": build_transformer}


def build_all(out_dir: Path = HERE) -> dict[str, Path]:
    """Builds every model into out_dir; returns name -> path."""
    paths: dict[str, Path] = {}
    for i, (name, builder) in enumerate(BUILDERS.items()):
        model = builder(np.random.default_rng(SEED + i))
        path = out_dir / f"{name}.onnx"
        onnx.save_model(model, str(path))
        paths[name] = path
    return paths


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE
    for name, p in build_all(target).items():
        sys.stdout.write(f"{name}: {p} ({p.stat().st_size} bytes)\n")
