"""The sim's graph engine against onnxruntime itself, side by side in one run.

For each model: onnxruntime's own Python ``InferenceSession.run`` (CPU provider, the sim's thread
settings: 1 intra-op thread, sequential, no spinning), the sim's ``session.run_sync`` (GE's
RunGraph: host in, host out) and ``await session.run`` one at a time (RunGraphWithStreamAsync:
H2D, compute on a device thread, D2H, the watcher, the loop). Medians over the runs; the ratio
column is sim / onnxruntime (the issue's target: at most 1.25 for a real CNN). A second table
reports the peak memory of adding a large model, as a multiple of the model's size.

    python benchmarks/bench_engine.py [--quick] [--runs N] [--skip-memory]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import _common  # noqa: F401  (before ascend_async: it puts this checkout first on sys.path)
import anyio
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import ascend_async as aa
from ascend_async.models import path as model_path

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


def with_random_weights(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """The light zoo models build their weights with ConstantOfShape: make them seeded random
    initializers, so the benchmark computes on real-looking data."""
    rng = np.random.default_rng(seed)
    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    keep, inits = [], list(model.graph.initializer)
    for node in model.graph.node:
        if node.op_type == "ConstantOfShape" and node.input and node.input[0] in consts:
            shape = tuple(int(d) for d in consts[node.input[0]])
            w = (rng.standard_normal(shape) * 0.05).astype(np.float32)
            inits.append(numpy_helper.from_array(w, node.output[0]))
        else:
            keep.append(node)
    del model.graph.node[:]
    model.graph.node.extend(keep)
    del model.graph.initializer[:]
    model.graph.initializer.extend(inits)
    return model


def models() -> list[tuple[str, bytes, dict[str, np.ndarray]]]:
    rng = np.random.default_rng(1)
    out = [
        ("mlp [8x64]", model_path("mlp").read_bytes(), {"x": rng.standard_normal((8, 64), dtype=np.float32)}),
        (
            "cnn [8x3x32x32]",
            model_path("cnn").read_bytes(),
            {"x": rng.standard_normal((8, 3, 32, 32), dtype=np.float32)},
        ),
        (
            "transformer [2x16x64]",
            model_path("transformer").read_bytes(),
            {"x": rng.standard_normal((2, 16, 64), dtype=np.float32)},
        ),
    ]
    for name in ("squeezenet", "resnet50"):
        m = with_random_weights(onnx.load(str(LIGHT / f"light_{name}.onnx")))
        x = rng.standard_normal((1, 3, 224, 224), dtype=np.float32)
        made = {t.name for t in m.graph.initializer} | {o for n in m.graph.node for o in n.output}
        feeds = {next(i.name for i in m.graph.input if i.name not in made): x}
        out.append((f"zoo {name} [1x3x224x224]", m.SerializeToString(), feeds))
    return out


def median_ms(fn: Callable[[], object], runs: int) -> float:
    fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def ort_session(data: bytes) -> object:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


def compare(runs: int) -> list[tuple[str, float, float, float]]:
    rows = []
    for name, data, feeds in models():
        sess = ort_session(data)
        want = sess.run(None, feeds)  # type: ignore[attr-defined]
        t_ort = median_ms(lambda sess=sess, feeds=feeds: sess.run(None, feeds), runs)  # type: ignore[attr-defined]
        with aa.Session(streams=1) as s:
            g_sync = s.add_graph(data, name=name)
            g_async = s.add_graph(data, name=name + " async")  # modes are exclusive per graph
            got = s.run_sync(g_sync, feeds)
            for a, b in zip(got.values(), want, strict=True):
                np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
            t_sync = median_ms(lambda s=s, g=g_sync, feeds=feeds: s.run_sync(g, feeds), runs)

            async def timed(s: aa.Session = s, g: aa.Graph = g_async, feeds: dict = feeds) -> float:
                await s.run(g, feeds)
                times = []
                for _ in range(runs):
                    t0 = time.perf_counter()
                    await s.run(g, feeds)
                    times.append(time.perf_counter() - t0)
                return statistics.median(times) * 1e3

            t_async = anyio.run(timed)
        rows.append((name, t_ort, t_sync, t_async))
    return rows


MEMORY_PROBE = """
import sys
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096
def peak():  # VmHWM, the high-water mark since the last reset
    line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM"))
    return int(line.split()[1]) * 1024
if sys.argv[2] == "sim":
    import ascend_async as aa
    session = aa.Session(streams=1)  # loads the backend and onnxruntime before the baseline
else:
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
open("/proc/self/clear_refs", "w").write("5")  # resets VmHWM to the current RSS
base = rss()
if sys.argv[2] == "sim":
    g = session.add_graph(sys.argv[1])
else:
    s = ort.InferenceSession(open(sys.argv[1], "rb").read(), so, providers=["CPUExecutionProvider"])
print(peak() - base, rss() - base)
"""


def memory(n: int) -> dict[str, tuple[int, int, int]]:
    """Peak and steady RSS growth (bytes) of adding an n x n float32 MatMul model from a file,
    on the sim and with onnxruntime's Python API given the file's bytes; and the model's size."""
    w = np.random.default_rng(2).standard_normal((n, n), dtype=np.float32)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])
    init = [numpy_helper.from_array(w, "w")]
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "big", [x], [y], init)
    data = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.onnx"
        path.write_bytes(data)
        del data, w, g, init
        for who in ("sim", "onnxruntime"):
            proc = subprocess.run(
                [sys.executable, "-c", MEMORY_PROBE, str(path), who], capture_output=True, text=True, check=True
            )
            peak, steady = (int(v) for v in proc.stdout.split()[-2:])
            out[who] = (peak, steady, path.stat().st_size)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--runs", type=int, default=0, help="timed runs per model (default 50, --quick 10)")
    p.add_argument("--skip-memory", action="store_true")
    args = p.parse_args(argv)
    runs = args.runs or (10 if args.quick else 50)
    print(f"backend {aa.backend_info()['backend']}: the SIMULATED device computes with onnxruntime; {runs} runs each")
    head = ("model", "onnxruntime ms", "sim run_sync ms", "ratio", "await run ms", "ratio")
    print(f"{head[0]:28s} {head[1]:>15s} {head[2]:>16s} {head[3]:>6s} {head[4]:>13s} {head[5]:>6s}")
    for name, t_ort, t_sync, t_async in compare(runs):
        print(f"{name:28s} {t_ort:15.3f} {t_sync:16.3f} {t_sync / t_ort:6.2f} {t_async:13.3f} {t_async / t_ort:6.2f}")
    if not args.skip_memory:
        for who, (peak, steady, size) in memory(2048 if args.quick else 5120).items():
            print(
                f"add a {size / 2**20:.0f} MiB model ({who}): peak RSS +{peak / size:.2f}x its size, "
                f"after the add +{steady / size:.2f}x"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
