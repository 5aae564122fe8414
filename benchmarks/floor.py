"""The floor: graph runs per second with no Python in the loop (``aa_floor_run``).

One thread per stream; each thread owns its stream, a replica of a tiny graph (its own graph id
in one session), device input and caller-provided device outputs, and calls ``aa_floor_run``
(cffi releases the GIL), which submits RunGraphWithStreamAsync + RecordEvent with at most
``window`` runs in flight and waits in C. The async layer is measured against these numbers.

    python benchmarks/floor.py [--runs N] [--streams 1,2,4] [--window 1,16] [--graph add|identity]
"""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
from onnx import TensorProto, helper

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ascend_async._probe import open_engine, sim

_sim = sim()

ffi = _sim.ffi
lib = _sim.lib
SHAPE = (1, 4)


def check(rc: int, what: str) -> None:
    if rc:
        buf = ffi.new("char[]", 1024)
        lib.aa_ge_get_error_msg(buf, 1024)
        p = lib.aclGetRecentErrMsg()
        acl = ffi.string(p).decode() if p != ffi.NULL else ""
        raise RuntimeError(f"{what} failed with {rc}: {ffi.string(buf).decode()} {acl}".strip())


def tiny_program(kind: str) -> bytes:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(SHAPE))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, list(SHAPE))
    node = helper.make_node("Add", ["x", "x"], ["y"]) if kind == "add" else helper.make_node("Identity", ["x"], ["y"])
    g = helper.make_graph([node], "floor", [x], [y])
    return bytes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())


def device_tensor(addr: Any, nbytes: int) -> Any:
    t = ffi.new("aa_tensor[1]")
    t[0].addr = addr
    t[0].size = nbytes
    t[0].dtype = 0  # float32
    t[0].format = 2  # ND
    t[0].placement = 0  # device
    t[0].ndim = len(SHAPE)
    for i, d in enumerate(SHAPE):
        t[0].dims[i] = d
    return t


class Lane:
    """One stream with its graph replica and buffers; used from one thread."""

    def __init__(self, session: Any, graph_id: int, model: bytes) -> None:
        self.session = session
        self.graph_id = graph_id
        check(lib.aa_session_add_graph_onnx(session, graph_id, model, len(model), ffi.NULL, 0), "AddGraph")
        p = ffi.new("aclrtStream*")
        check(lib.aclrtCreateStream(p), "aclrtCreateStream")
        self.stream = p[0]
        x = np.arange(np.prod(SHAPE), dtype=np.float32)
        self.nbytes = x.nbytes
        self.mem = []
        for _ in range(2):
            m = ffi.new("void**")
            check(lib.aclrtMalloc(m, self.nbytes, 0), "aclrtMalloc")
            self.mem.append(m[0])
        check(lib.aclrtMemcpy(self.mem[0], self.nbytes, ffi.from_buffer(x), self.nbytes, 1), "aclrtMemcpy")
        self.inputs = device_tensor(self.mem[0], self.nbytes)
        self.outputs = device_tensor(self.mem[1], self.nbytes)

    def run(self, n: int, window: int) -> int:
        ns = ffi.new("uint64_t*")
        rc = lib.aa_floor_run(self.session, self.graph_id, self.stream, self.inputs, 1, self.outputs, 1, n, window, ns)
        check(rc, "aa_floor_run")
        return int(ns[0])

    def close(self) -> None:
        check(lib.aclrtSynchronizeStream(self.stream), "aclrtSynchronizeStream")
        check(lib.aclrtDestroyStream(self.stream), "aclrtDestroyStream")
        for m in self.mem:
            check(lib.aclrtFree(m), "aclrtFree")
        check(lib.aa_session_remove_graph(self.session, self.graph_id), "RemoveGraph")


def measure(session: Any, ctx: Any, program: bytes, streams: int, window: int, runs: int) -> dict[str, float]:
    lanes = [Lane(session, 1000 + i, program) for i in range(streams)]
    for lane in lanes:
        lane.run(min(64, runs), window)  # warm-up: auto-load, first allocations
    barrier = threading.Barrier(streams + 1)
    per_thread: list[int] = [0] * streams
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            check(lib.aclrtSetCurrentContext(ctx), "aclrtSetCurrentContext")
            barrier.wait()
            per_thread[i] = lanes[i].run(runs, window)
        except BaseException as e:
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(streams)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = lib.aa_monotonic_ns()
    for t in threads:
        t.join()
    wall = (lib.aa_monotonic_ns() - t0) / 1e9
    for lane in lanes:
        lane.close()
    if errors:
        raise errors[0]
    total = runs * streams
    return {
        "streams": streams,
        "window": window,
        "runs": total,
        "wall_s": wall,
        "runs_per_s": total / wall,
        "us_per_run_per_stream": max(per_thread) / 1e3 / runs,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=20000, help="runs per stream (default 20000)")
    ap.add_argument("--streams", default="1,2,4", help="comma list of stream counts (default 1,2,4)")
    ap.add_argument("--window", default="1,16", help="comma list of in-flight windows (default 1,16)")
    ap.add_argument("--graph", choices=("add", "identity"), default="identity")
    args = ap.parse_args(argv)
    streams = [int(s) for s in args.streams.split(",") if s]
    windows = [int(w) for w in args.window.split(",") if w]

    open_engine(ffi, lib)
    rc = lib.aclInit(ffi.NULL)
    if rc not in (0, 100002):
        check(rc, "aclInit")
    check(lib.aa_ge_initialize(ffi.NULL, 0), "GEInitializeV2")
    sp = ffi.new("aa_session**")
    check(lib.aa_session_create(ffi.NULL, 0, sp), "GeSession")  # sets device 0 on this thread
    session = sp[0]
    ctx = ffi.new("aclrtContext*")
    check(lib.aclrtGetCurrentContext(ctx), "aclrtGetCurrentContext")
    cfg = ffi.new("aa_sim_config*")
    lib.aa_sim_get_config(cfg)
    program = tiny_program(args.graph)
    print(
        f"floor: sim backend, {cfg.workers} device worker(s), {args.graph} float32{list(SHAPE)}, "
        f"{args.runs} runs/stream"
    )
    print(f"{'streams':>7} {'window':>6} {'runs':>8} {'wall s':>8} {'runs/s':>10} {'us/run/stream':>14}")
    try:
        for s in streams:
            for w in windows:
                r = measure(session, ctx[0], program, s, w, args.runs)
                print(
                    f"{r['streams']:>7} {r['window']:>6} {r['runs']:>8} {r['wall_s']:>8.3f} "
                    f"{r['runs_per_s']:>10.0f} {r['us_per_run_per_stream']:>14.2f}"
                )
    finally:
        check(lib.aa_session_destroy(session), "aa_session_destroy")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
