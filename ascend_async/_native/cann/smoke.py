"""First-run check of the CANN backend module on an Ascend host (see docs/cann.md).

Run from a source checkout after installing with CANN's ``set_env.sh`` sourced::

    python ascend_async/_native/cann/smoke.py [--device 0]

It drives ``ascend_async._native._cann`` directly through the session ABI (no Python layers):
AscendCL init, GE init, a session, an ONNX Add graph added from bytes (so GE's own parser runs),
compile, load on a stream, RunGraphWithStreamAsync into caller memory and into GE-allocated
memory, RunGraph with host outputs, then teardown. Every step prints one line; the first
failure stops it with GE's error text. The test suite runs the same ``run()`` against the
stand-in libraries (tests/test_cann_shim.py), so the script itself is known to work.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
from onnx import TensorProto, helper

ACL_ERROR_REPEAT_INITIALIZE = 100002
H2D, D2H, NORMAL_ONLY = 1, 2, 2
DT_FLOAT, FORMAT_ND, DEVICE, HOST = 0, 2, 0, 1
GRAPH_ID = 4242


class SmokeError(RuntimeError):
    """A step failed; the message names it and carries the runtime's error text."""


def add_model_bytes() -> bytes:
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["y"])],
        "aa_smoke_add",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 3]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, [2, 3]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return bytes(model.SerializeToString())


def run(
    ffi: Any,
    lib: Any,
    *,
    device_id: int = 0,
    finalize: bool = True,
    say: Callable[[str], None] = print,
) -> None:
    """Runs every step; raises SmokeError at the first failure."""

    def ge_text() -> str:
        buf = ffi.new("char[]", 8192)
        lib.aa_ge_get_error_msg(buf, 8192)
        return str(ffi.string(buf).decode("utf-8", "replace"))

    def acl(rc: int, step: str, ok: tuple[int, ...] = (0,)) -> None:
        if rc not in ok:
            msg = lib.aclGetRecentErrMsg()
            text = ffi.string(msg).decode("utf-8", "replace") if msg != ffi.NULL else ""
            raise SmokeError(f"{step}: aclError {rc} {text}")
        say(f"ok  {step}")

    def ge(status: int, step: str) -> None:
        if status != 0:
            raise SmokeError(f"{step}: GE status {status}: {ge_text()}")
        say(f"ok  {step}")

    acl(lib.aclInit(ffi.NULL), "aclInit", (0, ACL_ERROR_REPEAT_INITIALIZE))
    acl(lib.aclrtSetDevice(device_id), f"aclrtSetDevice({device_id})")
    opts = ffi.new("aa_option[1]")
    keep = [ffi.new("char[]", b"ge.exec.deviceId"), ffi.new("char[]", str(device_id).encode())]
    opts[0].key, opts[0].value = keep
    ge(lib.aa_ge_initialize(opts, 1), "GEInitializeV2")
    session_p = ffi.new("aa_session **")
    ge(lib.aa_session_create(ffi.NULL, 0, session_p), "GeSession")
    session = session_p[0]
    acl(lib.aclrtSetDevice(device_id), "aclrtSetDevice again (GeSession switches the context)")
    stream_p = ffi.new("aclrtStream *")
    acl(lib.aclrtCreateStream(stream_p), "aclrtCreateStream")
    stream = stream_p[0]
    buffers: list[Any] = []
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.full((2, 3), 0.5, dtype=np.float32)

    def device_tensor(t: Any, array: np.ndarray | None) -> None:
        p = ffi.new("void **")
        acl(lib.aclrtMalloc(p, 24, NORMAL_ONLY), "aclrtMalloc")
        buffers.append(p[0])
        if array is not None:
            src = ffi.from_buffer(array)
            acl(lib.aclrtMemcpy(p[0], 24, src, 24, H2D), "aclrtMemcpy H2D")
        t.addr, t.size, t.dtype, t.format, t.placement, t.ndim = (
            p[0],
            24,
            DT_FLOAT,
            FORMAT_ND,
            DEVICE,
            2,
        )
        t.dims[0], t.dims[1] = 2, 3

    def read(t: Any) -> np.ndarray:
        host = np.empty((2, 3), dtype=np.float32)
        acl(lib.aclrtMemcpy(ffi.from_buffer(host), 24, t.addr, 24, D2H), "aclrtMemcpy D2H")
        return host

    def expect(got: np.ndarray, step: str) -> None:
        if not np.array_equal(got, a + b):
            raise SmokeError(f"{step}: wrong result {got.tolist()}")
        say(f"ok  {step}: result matches numpy")

    try:
        model = add_model_bytes()
        ge(
            lib.aa_session_add_graph_onnx(session, GRAPH_ID, model, len(model), ffi.NULL, 0),
            "aclgrphParseONNXFromMem + AddGraph",
        )
        ge(lib.aa_session_compile_graph(session, GRAPH_ID), "CompileGraph")
        ge(lib.aa_session_load_graph(session, GRAPH_ID, ffi.NULL, 0, stream), "LoadGraph")
        ins = ffi.new("aa_tensor[2]")
        device_tensor(ins[0], a)
        device_tensor(ins[1], b)
        outs = ffi.new("aa_tensor[1]")
        device_tensor(outs[0], None)
        ge(
            lib.aa_session_run_graph_with_stream_async(session, GRAPH_ID, stream, ins, 2, outs, 1),
            "RunGraphWithStreamAsync (caller outputs)",
        )
        acl(lib.aclrtSynchronizeStream(stream), "aclrtSynchronizeStream")
        expect(read(outs[0]), "caller outputs")
        ge_outs = ffi.new("aa_tensor[1]")
        ge(
            lib.aa_session_run_graph_with_stream_async(session, GRAPH_ID, stream, ins, 2, ge_outs, 1),
            "RunGraphWithStreamAsync (GE-allocated outputs)",
        )
        acl(lib.aclrtSynchronizeStream(stream), "aclrtSynchronizeStream")
        owned = ge_outs[0].owner != ffi.NULL
        say(f"    GE output block: {ge_outs[0].size} bytes, owner set: {owned}")
        expect(read(ge_outs[0]), "GE-allocated outputs")
        lib.aa_tensor_release(ge_outs)
        ge(lib.aa_session_remove_graph(session, GRAPH_ID), "RemoveGraph")

        ge(
            lib.aa_session_add_graph_onnx(session, GRAPH_ID, model, len(model), ffi.NULL, 0),
            "AddGraph again (for RunGraph)",
        )
        host_ins = ffi.new("aa_tensor[2]")
        for t, array in zip(host_ins, (a, b), strict=True):
            t.addr, t.size, t.dtype, t.format, t.placement, t.ndim = (
                ffi.from_buffer(array),
                24,
                DT_FLOAT,
                FORMAT_ND,
                HOST,
                2,
            )
            t.dims[0], t.dims[1] = 2, 3
        host_outs = ffi.new("aa_tensor[1]")
        n = ffi.new("size_t *", 1)
        ge(lib.aa_session_run_graph(session, GRAPH_ID, host_ins, 2, host_outs, n), "RunGraph")
        got = np.frombuffer(bytes(ffi.buffer(host_outs[0].addr, 24)), dtype=np.float32)
        expect(got.reshape(2, 3), "RunGraph host outputs")
        lib.aa_tensor_release(host_outs)
        ge(lib.aa_session_remove_graph(session, GRAPH_ID), "RemoveGraph")
    finally:
        lib.aclrtSynchronizeStream(stream)
        for p in buffers:
            lib.aclrtFree(p)
        lib.aclrtDestroyStream(stream)
        lib.aa_session_destroy(session)
        if finalize:
            lib.aa_ge_finalize()
        for _ in range(2):  # one reset per aclrtSetDevice (reference counted)
            lib.aclrtResetDevice(device_id)
        if finalize:
            lib.aclFinalize()
    say("ok  all steps")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--device", type=int, default=0, help="logical device id (default 0)")
    args = parser.parse_args(argv)
    try:
        from ascend_async._native import _cann  # type: ignore[attr-defined]
    except ImportError as e:
        sys.stderr.write(f"the CANN module is not built ({e}); see docs/cann.md\n")
        return 2
    try:
        run(_cann.ffi, _cann.lib, device_id=args.device)
    except SmokeError as e:
        sys.stderr.write(f"FAILED {e}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
