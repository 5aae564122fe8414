"""The sim's compute: MatMul GFLOP/s at 256 and 1024 next to numpy, and the per-run time of each
bundled model next to ``onnx.reference``, measured in the same run.

    python benchmarks/bench_kernels.py [--quick]

Model times use ``session.run_sync`` (RunGraph: host in, host out) at batch 8 (CNN and MLP) and
batch 2 x seq 16 (transformer block); onnx.reference is the pure-Python ONNX evaluator.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import ascend_async as aa
from ascend_async.models import path as model_path


def _best(fn: Callable[[], object], repeat: int) -> float:
    """Best wall time of ``repeat`` calls, in seconds (after one warm-up call)."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def matmul_model(n: int) -> onnx.ModelProto:
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [n, n])
    c = helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])
    g = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"], name="mm")], "mm", [a, b], [c])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


INPUTS = {
    "mlp": lambda rng: {"x": rng.standard_normal((8, 64), dtype=np.float32)},
    "cnn": lambda rng: {"x": rng.standard_normal((8, 3, 32, 32), dtype=np.float32)},
    "transformer": lambda rng: {"x": rng.standard_normal((2, 16, 64), dtype=np.float32)},
}


def run(quick: bool = False) -> list[tuple[str, str]]:
    rng = np.random.default_rng(0)
    rows: list[tuple[str, str]] = []
    with aa.Session(streams=1) as s:
        for n in (256, 1024):
            a = rng.standard_normal((n, n), dtype=np.float32)
            b = rng.standard_normal((n, n), dtype=np.float32)
            g = s.add_graph(matmul_model(n))
            out = s.run_sync(g, {"a": a, "b": b})["c"]
            np.testing.assert_allclose(out, a @ b, rtol=1e-3, atol=1e-3)
            reps = 3 if n == 1024 or quick else 10
            t_sim = _best(lambda g=g, a=a, b=b: s.run_sync(g, {"a": a, "b": b}), reps)
            t_np = _best(lambda a=a, b=b: a @ b, max(reps, 20))
            flop = 2.0 * n**3
            rows.append(
                (
                    f"MatMul {n}x{n} float32",
                    f"sim {flop / t_sim / 1e9:6.1f} GFLOP/s   numpy {flop / t_np / 1e9:6.1f} GFLOP/s   "
                    f"(sim/numpy {t_np / t_sim:.2f})",
                )
            )
        for name, make in INPUTS.items():
            model = onnx.load(str(model_path(name)))
            feeds = make(rng)
            g = s.add_graph(model)
            ref = ReferenceEvaluator(model)
            got = s.run_sync(g, feeds)
            want = ref.run(None, feeds)
            for out, w in zip(got.values(), want, strict=True):
                np.testing.assert_allclose(out, w, rtol=1e-3, atol=1e-4)
            reps = 3 if quick else 10
            t_sim = _best(lambda g=g, feeds=feeds: s.run_sync(g, feeds), reps)
            t_ref = _best(lambda ref=ref, feeds=feeds: ref.run(None, feeds), max(2, reps // 3))
            shape = "x".join(str(d) for d in next(iter(feeds.values())).shape)
            rows.append(
                (
                    f"{name}.onnx [{shape}]",
                    f"sim {t_sim * 1e3:8.3f} ms/run   onnx.reference {t_ref * 1e3:8.3f} ms/run   "
                    f"(speed-up {t_ref / t_sim:.0f}x)",
                )
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    print(f"backend {aa.backend_info()['backend']} (numbers from the SIMULATED device's C kernels)")
    for what, value in run(args.quick):
        print(f"{what:32s} {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
