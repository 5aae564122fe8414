"""The GE session facade at the C ABI (aa_* calls), as ge_acl_facts §2.10-2.14 and §9 describe.

Pins graph bookkeeping, the run-mode state machine with GE's exact codes and E10062 text, the
three output-allocation rules of RunGraphWithStreamAsync, RunGraph host outputs, concurrent
RunGraph refusal and GEInitializeV2/GEFinalizeV2. Everything made is freed (conftest checks).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from helpers import held
from onnx import TensorProto, helper

from ascend_async._engine import open_engine
from ascend_async._native import _sim

ffi = _sim.ffi
lib = _sim.lib

SUCCESS = 0
FAILED = 0xFFFFFFFF
UNSUPPORTED = 1343225956
N = 10  # elements per tensor (40 bytes of float32: not a multiple of 32)
_ids = itertools.count(100)


def ge_msg() -> str:
    buf = ffi.new("char[]", 2048)
    lib.aa_ge_get_error_msg(buf, 2048)
    return ffi.string(buf).decode()


def ok(rc: int) -> None:
    assert rc == 0, f"status {rc}: {ge_msg()}"


def _bytes(graph: Any) -> bytes:
    return bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())


def add_program() -> bytes:
    """y = x + x (float32[N]), serialized."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [N])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [N])
    g = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "add", [x], [y])
    return _bytes(g)


def identity_program() -> bytes:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [N])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [N])
    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "id", [x], [y])
    return _bytes(g)


@pytest.fixture(scope="module")
def programs() -> dict[str, bytes]:
    return {"add": add_program(), "identity": identity_program()}


def _init() -> None:
    open_engine(ffi, lib)
    assert lib.aclInit(ffi.NULL) in (0, 100002)
    ok(lib.aa_ge_initialize(ffi.NULL, 0))


class Env:
    """A session, a stream and device buffers; torn down in order."""

    def __init__(self) -> None:
        _init()
        p = ffi.new("aa_session**")
        ok(lib.aa_session_create(ffi.NULL, 0, p))
        self.session = p[0]
        sp = ffi.new("aclrtStream*")
        assert lib.aclrtCreateStream(sp) == 0
        self.stream = sp[0]
        self.graphs: set[int] = set()
        self.mem: list[Any] = []
        self.x = np.arange(N, dtype=np.float32)
        self.dx = self.malloc(self.x.nbytes)
        assert lib.aclrtMemcpy(self.dx, self.x.nbytes, ffi.from_buffer(self.x), self.x.nbytes, 1) == 0

    def malloc(self, n: int) -> Any:
        p = ffi.new("void**")
        assert lib.aclrtMalloc(p, n, 0) == 0
        self.mem.append(p[0])
        return p[0]

    def add(self, model: bytes, gid: int | None = None) -> int:
        gid = next(_ids) if gid is None else gid
        ok(lib.aa_session_add_graph_onnx(self.session, gid, model, len(model), ffi.NULL, 0))
        self.graphs.add(gid)
        return gid

    def remove(self, gid: int) -> None:
        ok(lib.aa_session_remove_graph(self.session, gid))
        self.graphs.discard(gid)

    def dev_inputs(self) -> Any:
        t = ffi.new("aa_tensor[1]")
        t[0].addr = self.dx
        t[0].size = self.x.nbytes
        t[0].dtype = 0
        t[0].format = 2
        t[0].placement = 0
        t[0].ndim = 1
        t[0].dims[0] = N
        return t

    def host_inputs(self) -> Any:
        t = self.dev_inputs()
        t[0].addr = ffi.from_buffer(self.x)
        t[0].placement = 1
        return t

    def read(self, addr: Any, placement: int = 0) -> np.ndarray:
        out = np.empty(N, dtype=np.float32)
        if placement == 1:
            ffi.memmove(ffi.from_buffer(out), addr, out.nbytes)
        else:
            assert lib.aclrtMemcpy(ffi.from_buffer(out), out.nbytes, addr, out.nbytes, 2) == 0
        return out

    def run_stream(self, gid: int, outputs: Any) -> int:
        return lib.aa_session_run_graph_with_stream_async(
            self.session, gid, self.stream, self.dev_inputs(), 1, outputs, 1
        )

    def run_sync(self, gid: int) -> tuple[int, Any, int]:
        out = ffi.new("aa_tensor[4]")
        n = ffi.new("size_t*", 4)
        st = lib.aa_session_run_graph(self.session, gid, self.host_inputs(), 1, out, n)
        return st, out, int(n[0])

    def close(self) -> None:
        assert lib.aclrtSynchronizeStream(self.stream) == 0
        for gid in list(self.graphs):
            self.remove(gid)
        assert lib.aclrtDestroyStream(self.stream) == 0
        for m in self.mem:
            assert lib.aclrtFree(m) == 0
        ok(lib.aa_session_destroy(self.session))


@pytest.fixture
def env() -> Iterator[Env]:
    e = Env()
    yield e
    e.close()


def release_all(out: Any, n: int) -> None:
    for i in range(n):
        lib.aa_tensor_release(ffi.addressof(out, i))


def stats() -> Any:
    st = ffi.new("aa_sim_stats*")
    lib.aa_sim_get_stats(st)
    return st


# --------------------------------------------------------------------------------------------
# Graph bookkeeping


def test_add_graph_existing_id_keeps_the_first(env: Env, programs: dict[str, bytes]) -> None:
    gid = env.add(programs["add"])
    ident = programs["identity"]
    ok(lib.aa_session_add_graph_onnx(env.session, gid, ident, len(ident), ffi.NULL, 0))
    st, out, n = env.run_sync(gid)
    ok(st)
    try:
        assert n == 1
        np.testing.assert_array_equal(env.read(out[0].addr, 1), env.x + env.x)  # still Add
    finally:
        release_all(out, n)


def test_unknown_graph_id_fails_with_text(env: Env) -> None:
    ge_msg()
    assert lib.aa_session_remove_graph(env.session, 999_999) == FAILED
    assert "does not exist" in ge_msg()
    assert lib.aa_session_load_graph(env.session, 999_999, ffi.NULL, 0, env.stream) == FAILED
    assert lib.aa_session_compile_graph(env.session, 999_999) == FAILED
    out = ffi.new("aa_tensor[1]")
    assert env.run_stream(999_999, out) == FAILED
    assert "does not exist" in ge_msg()
    st, _, _ = env.run_sync(999_999)
    assert st == FAILED


def test_load_graph_twice_fails(env: Env, programs: dict[str, bytes]) -> None:
    gid = env.add(programs["add"])
    ok(lib.aa_session_compile_graph(env.session, gid))
    ok(lib.aa_session_load_graph(env.session, gid, ffi.NULL, 0, env.stream))
    assert lib.aa_session_load_graph(env.session, gid, ffi.NULL, 0, env.stream) == FAILED
    assert "has been loaded" in ge_msg()


def test_auto_load_on_first_stream_run(env: Env, programs: dict[str, bytes]) -> None:
    gid = env.add(programs["add"])
    out = ffi.new("aa_tensor[1]")
    out[0].addr = env.malloc(64)
    out[0].size = 64
    ok(env.run_stream(gid, out))  # no LoadGraph call
    assert lib.aclrtSynchronizeStream(env.stream) == 0
    np.testing.assert_array_equal(env.read(out[0].addr), env.x * 2)
    # It was loaded by the run: an explicit LoadGraph now fails.
    assert lib.aa_session_load_graph(env.session, gid, ffi.NULL, 0, env.stream) == FAILED


def test_stream_run_returns_before_the_device_runs(env: Env, programs: dict[str, bytes]) -> None:
    gid = env.add(programs["add"])
    out = ffi.new("aa_tensor[1]")
    out[0].addr = env.malloc(64)
    out[0].size = 64
    assert lib.aclrtMemset(out[0].addr, 64, 0, 64) == 0
    with held(env.stream):
        ok(env.run_stream(gid, out))
        # Shape metadata is filled at submission; data only once the stream reaches the run.
        assert (out[0].ndim, out[0].dims[0], out[0].dtype) == (1, N, 0)
        np.testing.assert_array_equal(env.read(out[0].addr), np.zeros(N, np.float32))
    assert lib.aclrtSynchronizeStream(env.stream) == 0
    np.testing.assert_array_equal(env.read(out[0].addr), env.x * 2)


# --------------------------------------------------------------------------------------------
# Run modes


def test_run_graph_after_stream_async_is_unsupported(env: Env, programs: dict[str, bytes]) -> None:
    gid = env.add(programs["add"])
    out = ffi.new("aa_tensor[1]")
    ok(env.run_stream(gid, out))
    assert lib.aclrtSynchronizeStream(env.stream) == 0
    lib.aa_tensor_release(out)
    st, _, _ = env.run_sync(gid)
    assert st == UNSUPPORTED == 1343225956
    msg = ge_msg()
    assert "E10062" in msg and "mutually exclusive" in msg
    assert "RunGraphWithStreamAsync was already called" in msg
    ok(env.run_stream(gid, out))  # the same mode again is fine
    assert lib.aclrtSynchronizeStream(env.stream) == 0
    lib.aa_tensor_release(out)


def test_stream_async_after_run_graph_is_failed(env: Env, programs: dict[str, bytes]) -> None:
    gid = env.add(programs["add"])
    st, out, n = env.run_sync(gid)
    ok(st)
    release_all(out, n)
    slot = ffi.new("aa_tensor[1]")
    assert env.run_stream(gid, slot) == FAILED == 4294967295
    assert "mutually exclusive" in ge_msg()
    assert slot[0].owner == ffi.NULL  # nothing was allocated


@pytest.mark.parametrize("first", ["run_graph", "stream"])
def test_run_graph_async_after_another_mode(env: Env, programs: dict[str, bytes], first: str) -> None:
    gid = env.add(programs["add"])
    if first == "run_graph":
        st, out, n = env.run_sync(gid)
        ok(st)
        release_all(out, n)
    else:
        out = ffi.new("aa_tensor[1]")
        ok(env.run_stream(gid, out))
        assert lib.aclrtSynchronizeStream(env.stream) == 0
        lib.aa_tensor_release(out)
    watch = lib.aa_watch_create(ffi.NULL, ffi.NULL)
    try:
        outs = ffi.new("aa_tensor[2]")
        slot = ffi.new("aa_cb_slot*", {"watch": watch, "token": 77, "status": 12345})
        slot.capacity = 2
        slot.outputs = outs
        slot.n_outputs = 99
        st = lib.aa_session_run_graph_async(env.session, gid, env.host_inputs(), 1, lib.aa_watch_run_callback, slot)
        assert st == UNSUPPORTED
        # The callback already ran, synchronously, with UNSUPPORTED and no outputs.
        assert slot.status == UNSUPPORTED
        assert slot.n_outputs == 0
        assert "mutually exclusive" in ge_msg()
        tokens, codes = ffi.new("uint64_t[4]"), ffi.new("int32_t[4]")
        assert lib.aa_watch_wait(watch, tokens, codes, ffi.NULL, 4, 0) == 1
        assert tokens[0] == 77
    finally:
        lib.aa_watch_destroy(watch)


def test_run_graph_async_delivers_host_outputs(env: Env, programs: dict[str, bytes]) -> None:
    gid = env.add(programs["add"])
    watch = lib.aa_watch_create(ffi.NULL, ffi.NULL)
    try:
        outs = ffi.new("aa_tensor[2]")
        slot = ffi.new("aa_cb_slot*", {"watch": watch, "token": 5, "status": 12345})
        slot.capacity = 2
        slot.outputs = outs
        x = env.host_inputs()  # kept alive until the callback ran
        ok(lib.aa_session_run_graph_async(env.session, gid, x, 1, lib.aa_watch_run_callback, slot))
        tokens, codes = ffi.new("uint64_t[4]"), ffi.new("int32_t[4]")
        assert lib.aa_watch_wait(watch, tokens, codes, ffi.NULL, 4, 5000) == 1
        assert tokens[0] == 5
        assert slot.status == SUCCESS and slot.n_outputs == 1
        assert outs[0].placement == 1 and outs[0].owner != ffi.NULL
        np.testing.assert_array_equal(env.read(outs[0].addr, 1), env.x * 2)
        release_all(outs, 1)
        st, _, _ = env.run_sync(gid)
        assert st == UNSUPPORTED
    finally:
        lib.aa_watch_destroy(watch)


def test_remove_graph_resets_the_mode(env: Env, programs: dict[str, bytes]) -> None:
    gid = env.add(programs["add"])
    out = ffi.new("aa_tensor[1]")
    ok(env.run_stream(gid, out))
    assert lib.aclrtSynchronizeStream(env.stream) == 0
    lib.aa_tensor_release(out)
    env.remove(gid)
    env.add(programs["add"], gid)
    st, hout, n = env.run_sync(gid)
    ok(st)
    np.testing.assert_array_equal(env.read(hout[0].addr, 1), env.x * 2)
    release_all(hout, n)


def test_modes_are_per_graph(env: Env, programs: dict[str, bytes]) -> None:
    g1, g2 = env.add(programs["add"]), env.add(programs["add"])
    out = ffi.new("aa_tensor[1]")
    ok(env.run_stream(g1, out))
    assert lib.aclrtSynchronizeStream(env.stream) == 0
    lib.aa_tensor_release(out)
    st, hout, n = env.run_sync(g2)
    ok(st)
    release_all(hout, n)


# --------------------------------------------------------------------------------------------
# Output allocation rules


def test_caller_outputs_are_used_as_is(env: Env, programs: dict[str, bytes]) -> None:
    gid = env.add(programs["add"])
    out = ffi.new("aa_tensor[1]")
    buf = env.malloc(40)
    out[0].addr = buf
    out[0].size = 40
    before = stats().ge_outputs
    ok(env.run_stream(gid, out))
    assert out[0].addr == buf and out[0].size == 40
    assert out[0].owner == ffi.NULL
    assert out[0].placement == 0
    assert stats().ge_outputs == before
    assert lib.aclrtSynchronizeStream(env.stream) == 0
    np.testing.assert_array_equal(env.read(buf), env.x * 2)


def test_caller_output_too_small_or_not_device_fails(env: Env, programs: dict[str, bytes]) -> None:
    gid = env.add(programs["add"])
    out = ffi.new("aa_tensor[1]")
    out[0].addr = env.malloc(16)
    out[0].size = 16
    assert env.run_stream(gid, out) == FAILED
    host = ffi.new("char[]", 64)
    out[0].addr = host
    out[0].size = 64
    assert env.run_stream(gid, out) == FAILED
    assert "not device memory" in ge_msg()


def test_builtin_allocator_outputs(env: Env, programs: dict[str, bytes]) -> None:
    gid = env.add(programs["add"])
    out = ffi.new("aa_tensor[1]")
    before = stats().ge_outputs
    ok(env.run_stream(gid, out))
    nbytes = N * 4
    assert out[0].owner != ffi.NULL
    assert out[0].addr != ffi.NULL
    assert out[0].size == ((nbytes + 31) // 32) * 32 + 32 == 96
    assert out[0].placement == 0
    assert int(ffi.cast("uintptr_t", out[0].addr)) % 32 == 0
    assert stats().ge_outputs == before + 1
    assert lib.aclrtSynchronizeStream(env.stream) == 0
    np.testing.assert_array_equal(env.read(out[0].addr), env.x * 2)
    lib.aa_tensor_release(out)
    assert out[0].owner == ffi.NULL and out[0].addr == ffi.NULL
    assert stats().ge_outputs == before
    lib.aa_tensor_release(out)  # a second release is a no-op


def test_external_allocator_outputs(env: Env, programs: dict[str, bytes]) -> None:
    gid = env.add(programs["add"])
    pool = lib.aa_pool_create(0, 1 << 20)
    alloc = ffi.new("aa_allocator*")
    lib.aa_pool_lane_allocator(lib.aa_pool_lane_open(pool), alloc)  # one stream: its own lane
    pst = ffi.new("aa_pool_stats*")
    try:
        ok(lib.aa_session_register_external_allocator(env.session, env.stream, alloc))
        ge_before = stats().ge_outputs
        out = ffi.new("aa_tensor[1]")
        ok(env.run_stream(gid, out))
        lib.aa_pool_get_stats(pool, pst)
        # The output and GE's workspace (freed by GE at submit, kept for this stream's lane).
        assert pst.live_blocks == 1 and pst.misses == 2 and pst.stream_cached_blocks == 1
        assert out[0].owner != ffi.NULL and out[0].placement == 0
        assert out[0].size == 96
        assert lib.aclrtSynchronizeStream(env.stream) == 0
        np.testing.assert_array_equal(env.read(out[0].addr), env.x * 2)
        lib.aa_tensor_release(out)
        lib.aa_pool_get_stats(pool, pst)
        assert pst.live_blocks == 0 and pst.stream_cached_blocks == 2 and pst.cached_blocks == 0
        # The next run reuses the cached blocks (workspace and output).
        ok(env.run_stream(gid, out))
        lib.aa_pool_get_stats(pool, pst)
        assert pst.hits == 2 and pst.live_blocks == 1
        assert lib.aclrtSynchronizeStream(env.stream) == 0
        lib.aa_tensor_release(out)
        assert stats().ge_outputs == ge_before
        ok(lib.aa_session_unregister_external_allocator(env.session, env.stream))
        ok(lib.aa_session_unregister_external_allocator(env.session, env.stream))  # no-op
        # Unregistered: back to the built-in allocator.
        ok(env.run_stream(gid, out))
        lib.aa_pool_get_stats(pool, pst)
        assert pst.live_blocks == 0
        assert stats().ge_outputs == ge_before + 1
        assert lib.aclrtSynchronizeStream(env.stream) == 0
        lib.aa_tensor_release(out)
    finally:
        lib.aa_session_unregister_external_allocator(env.session, env.stream)
        assert lib.aa_pool_destroy(pool) == 0


def test_register_allocator_null_args_fail(env: Env) -> None:
    alloc = ffi.new("aa_allocator*")
    assert lib.aa_session_register_external_allocator(env.session, ffi.NULL, alloc) == FAILED
    assert lib.aa_session_register_external_allocator(env.session, env.stream, ffi.NULL) == FAILED


def test_run_graph_outputs_are_host_memory(env: Env, programs: dict[str, bytes]) -> None:
    gid = env.add(programs["add"])
    before = stats().ge_outputs
    st, out, n = env.run_sync(gid)
    ok(st)
    assert n == 1
    assert out[0].placement == 1 and out[0].owner != ffi.NULL
    assert (out[0].ndim, out[0].dims[0], out[0].dtype) == (1, N, 0)
    np.testing.assert_array_equal(env.read(out[0].addr, 1), env.x * 2)
    assert stats().ge_outputs == before + 1
    release_all(out, n)
    assert stats().ge_outputs == before


def test_concurrent_run_graph_in_one_session_fails_one(env: Env, programs: dict[str, bytes]) -> None:
    gid = env.add(programs["add"])
    barrier = threading.Barrier(2)
    results: list[int] = []
    msgs: list[str] = []
    timing = ffi.new("aa_sim_timing*", {"min_graph_us": 300_000})

    def worker() -> None:
        barrier.wait()
        st, out, n = env.run_sync(gid)
        if st != SUCCESS:
            msgs.append(ge_msg())
        results.append(st)
        release_all(out, n if st == SUCCESS else 0)

    lib.aa_sim_set_timing(timing)
    try:
        threads = [threading.Thread(target=worker) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        lib.aa_sim_set_timing(ffi.new("aa_sim_timing*"))
    assert sorted(results) == [SUCCESS, FAILED]
    assert "already running" in msgs[0]


def test_session_switches_thread_context_to_device_default() -> None:
    _init()
    box: dict[str, bytes] = {}

    def worker() -> None:
        cur = ffi.new("aclrtContext*")
        ctx = ffi.new("aclrtContext*")
        assert lib.aclrtCreateContext(ctx, 0) == 0
        assert lib.aclrtGetCurrentContext(cur) == 0 and cur[0] == ctx[0]
        p = ffi.new("aa_session**")
        ok(lib.aa_session_create(ffi.NULL, 0, p))
        assert lib.aclrtGetCurrentContext(cur) == 0
        box["switched"] = cur[0] != ctx[0]
        ok(lib.aa_session_destroy(p[0]))
        assert lib.aclrtDestroyContext(ctx[0]) == 0
        # A fresh thread: no context before, the device's default one after.
        fresh = ffi.new("aclrtContext*")

        def inner() -> None:
            box["before"] = lib.aclrtGetCurrentContext(fresh)
            q = ffi.new("aa_session**")
            ok(lib.aa_session_create(ffi.NULL, 0, q))
            box["after"] = lib.aclrtGetCurrentContext(fresh)
            s = ffi.new("aclrtStream*")
            box["stream"] = lib.aclrtCreateStream(s)
            if box["stream"] == 0:
                lib.aclrtDestroyStream(s[0])
            ok(lib.aa_session_destroy(q[0]))

        t = threading.Thread(target=inner)
        t.start()
        t.join()

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert box == {"switched": True, "before": 107002, "after": 0, "stream": 0}


# --------------------------------------------------------------------------------------------
# GE global state


def test_ge_initialize_idempotent_and_finalize(programs: dict[str, bytes]) -> None:
    _init()
    ok(lib.aa_ge_initialize(ffi.NULL, 0))  # again: SUCCESS
    bad = ffi.new("aa_option[1]", [{"key": ffi.NULL, "value": ffi.NULL}])
    assert lib.aa_ge_initialize(bad, 1) == FAILED
    e = Env()
    try:
        gid = e.add(programs["add"])
        ok(lib.aa_ge_finalize())
        try:
            st, _, _ = e.run_sync(gid)
            assert st == FAILED
            assert "not initialized" in ge_msg()
            out = ffi.new("aa_tensor[1]")
            assert e.run_stream(gid, out) == FAILED
            assert lib.aa_session_load_graph(e.session, gid, ffi.NULL, 0, e.stream) == FAILED
            model = programs["add"]
            assert lib.aa_session_add_graph_onnx(e.session, gid + 1, model, len(model), ffi.NULL, 0) == FAILED
            p = ffi.new("aa_session**")
            assert lib.aa_session_create(ffi.NULL, 0, p) == FAILED
            assert p[0] == ffi.NULL
            ok(lib.aa_ge_finalize())  # finalize without init: SUCCESS
        finally:
            ok(lib.aa_ge_initialize(ffi.NULL, 0))
        st, out2, n = e.run_sync(gid)  # usable again after re-initializing
        ok(st)
        release_all(out2, n)
    finally:
        e.close()


# --------------------------------------------------------------------------------------------
# The floor (aa_floor_run)


@pytest.mark.parametrize("window", [1, 8])
def test_floor_run(env: Env, programs: dict[str, bytes], window: int) -> None:
    gid = env.add(programs["add"])
    out = ffi.new("aa_tensor[1]")
    out[0].addr = env.malloc(64)
    out[0].size = 64
    ns = ffi.new("uint64_t*")
    base = stats()
    assert lib.aa_floor_run(env.session, gid, env.stream, env.dev_inputs(), 1, out, 1, 50, window, ns) == 0
    after = stats()
    assert after.graph_runs - base.graph_runs == 50
    assert after.events == base.events  # its events are destroyed
    assert ns[0] > 0
    np.testing.assert_array_equal(env.read(out[0].addr), env.x * 2)


def test_floor_run_reports_failures(env: Env, programs: dict[str, bytes]) -> None:
    gid = env.add(programs["add"])
    out = ffi.new("aa_tensor[1]")
    out[0].addr = env.malloc(64)
    out[0].size = 64
    ns = ffi.new("uint64_t*")
    assert lib.aa_floor_run(env.session, 424242, env.stream, env.dev_inputs(), 1, out, 1, 5, 2, ns) == FAILED
    assert lib.aa_sim_inject_fault(env.stream, 1, 507015) == 0
    assert lib.aa_floor_run(env.session, gid, env.stream, env.dev_inputs(), 1, out, 1, 5, 2, ns) == 507015
    # The stream stays faulted: close() would fail its synchronize, so replace the stream here.
    assert lib.aclrtDestroyStream(env.stream) == 0
    sp = ffi.new("aclrtStream*")
    assert lib.aclrtCreateStream(sp) == 0
    env.stream = sp[0]


# --------------------------------------------------------------------------------------------
# When the mode is recorded (§2.11)


def const_add_program() -> bytes:
    """y = x + c with a float32[N] initializer c (placed in device memory at load)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [N])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [N])
    c = helper.make_tensor("c", TensorProto.FLOAT, [N], np.ones(N, np.float32).tolist())
    g = helper.make_graph([helper.make_node("Add", ["x", "c"], ["y"])], "cadd", [x], [y], [c])
    return _bytes(g)


def test_mode_recorded_even_when_the_run_fails(env: Env, programs: dict[str, bytes]) -> None:
    gid = env.add(programs["add"])
    out = ffi.new("aa_tensor[2]")
    # Two slots for a one-output graph: the run fails after the (auto-)load ...
    st = lib.aa_session_run_graph_with_stream_async(env.session, gid, env.stream, env.dev_inputs(), 1, out, 2)
    assert st == FAILED
    # ... and the mode is recorded anyway.
    st, _, _ = env.run_sync(gid)
    assert st == UNSUPPORTED


def test_failed_auto_load_records_no_mode(env: Env) -> None:
    gid = env.add(const_add_program())
    free_, total = ffi.new("size_t*"), ffi.new("size_t*")
    assert lib.aclrtGetMemInfo(1, free_, total) == 0
    out = ffi.new("aa_tensor[1]")
    out[0].addr = env.malloc(64)
    out[0].size = 64
    try:
        assert lib.aa_sim_set_memory_capacity(0, int(total[0]) - int(free_[0])) == 0
        assert env.run_stream(gid, out) == FAILED  # the constants do not fit: load fails
        assert "weights" in ge_msg()
    finally:
        assert lib.aa_sim_set_memory_capacity(0, int(total[0])) == 0
    st, hout, n = env.run_sync(gid)  # no mode was recorded: RunGraph is allowed
    ok(st)
    np.testing.assert_array_equal(env.read(hout[0].addr, 1), env.x + 1)
    release_all(hout, n)


def test_error_text_size_query_keeps_the_text(env: Env) -> None:
    assert lib.aa_session_remove_graph(env.session, 4242) == FAILED
    n = lib.aa_ge_get_error_msg(ffi.NULL, 0)
    assert n > 0
    assert lib.aa_ge_get_error_msg(ffi.NULL, 0) == n  # still there
    assert "does not exist" in ge_msg()
    assert lib.aa_ge_get_error_msg(ffi.NULL, 0) == 0  # read and cleared


# --------------------------------------------------------------------------------------------
# AddGraph from ONNX bytes, and graph lifetime


def test_add_graph_refuses_bytes_that_are_not_a_model(env: Env) -> None:
    junk = b"\x08\x07not a model at all" * 10
    assert lib.aa_session_add_graph_onnx(env.session, 777, junk, len(junk), ffi.NULL, 0) == FAILED
    assert "onnxruntime" in ge_msg()
    assert lib.aa_session_add_graph_onnx(env.session, 777, junk, 0, ffi.NULL, 0) == FAILED
    assert "empty" in ge_msg()
    assert lib.aa_session_remove_graph(env.session, 777) == FAILED  # nothing was added


def test_add_graph_unknown_op_is_unsupported(env: Env) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [N])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [N])
    model = _bytes(helper.make_graph([helper.make_node("NoSuchOp", ["x"], ["y"])], "bad", [x], [y]))
    st = lib.aa_session_add_graph_onnx(env.session, 778, model, len(model), ffi.NULL, 0)
    assert st in (FAILED, UNSUPPORTED)
    assert "NoSuchOp" in ge_msg()


def test_graph_ids_with_equal_bytes_share_one_model(env: Env, programs: dict[str, bytes]) -> None:
    before = stats().models
    g1 = env.add(programs["add"])
    g2 = env.add(programs["add"])
    assert stats().models == before + 1
    env.remove(g1)
    assert stats().models == before + 1  # g2 still uses it
    env.remove(g2)
    assert stats().models == before


def test_remove_graph_with_runs_in_flight_is_refused(env: Env, programs: dict[str, bytes]) -> None:
    gid = env.add(programs["add"])
    out = ffi.new("aa_tensor[1]")
    with held(env.stream):
        ok(env.run_stream(gid, out))
        assert lib.aa_session_remove_graph(env.session, gid) == FAILED
        assert "1 run(s) on the device" in ge_msg()
    assert lib.aclrtSynchronizeStream(env.stream) == 0
    np.testing.assert_array_equal(env.read(out[0].addr), env.x * 2)
    lib.aa_tensor_release(ffi.addressof(out, 0))
    env.remove(gid)  # drained: allowed now
    assert lib.aa_session_remove_graph(env.session, gid) == FAILED  # and only once


def test_remove_graph_races_runs_without_freeing_memory_in_use(env: Env, programs: dict[str, bytes]) -> None:
    """Submitters and a remover race on one graph id: every submit either runs to a right
    answer or is refused with "does not exist"; removal never frees a graph a run uses.
    Outputs come from an external allocator, so they outlive the graph (built-in blocks die
    with it, as in GE)."""
    pool = lib.aa_pool_create(0, 1 << 20)
    alloc = ffi.new("aa_allocator*")
    lib.aa_pool_lane_allocator(lib.aa_pool_lane_open(pool), alloc)  # a lane: stream-ordered
    ok(lib.aa_session_register_external_allocator(env.session, env.stream, alloc))
    try:
        _race_remove(env, programs["add"])
    finally:
        assert lib.aclrtSynchronizeStream(env.stream) == 0
        ok(lib.aa_session_unregister_external_allocator(env.session, env.stream))
        assert lib.aa_pool_destroy(pool) == 0


def _race_remove(env: Env, model: bytes) -> None:
    rounds, submitters = 30, 3
    ctx = ffi.new("aclrtContext*")
    assert lib.aclrtGetCurrentContext(ctx) == 0
    errors: list[str] = []
    done: list[Any] = []

    def submit(gid: int, start: threading.Barrier) -> None:
        assert lib.aclrtSetCurrentContext(ctx[0]) == 0
        start.wait()
        for _ in range(4):
            out = ffi.new("aa_tensor[1]")
            st = lib.aa_session_run_graph_with_stream_async(env.session, gid, env.stream, env.dev_inputs(), 1, out, 1)
            if st == SUCCESS:
                done.append(out)
            elif "does not exist" not in (msg := ge_msg()):
                errors.append(msg)

    for r in range(rounds):
        gid = 5000 + r
        ok(lib.aa_session_add_graph_onnx(env.session, gid, model, len(model), ffi.NULL, 0))
        start = threading.Barrier(submitters + 1)
        threads = [threading.Thread(target=submit, args=(gid, start)) for _ in range(submitters)]
        for t in threads:
            t.start()
        start.wait()
        while lib.aa_session_remove_graph(env.session, gid) != SUCCESS:
            msg = ge_msg()
            if "on the device" not in msg:
                errors.append(msg)
                break
            lib.aclrtSynchronizeStream(env.stream)
        for t in threads:
            t.join()
        assert lib.aclrtSynchronizeStream(env.stream) == 0
        for out in done:
            np.testing.assert_array_equal(env.read(out[0].addr), env.x * 2)
            lib.aa_tensor_release(ffi.addressof(out, 0))
        done.clear()
    assert not errors


def test_graph_can_be_removed_from_its_run_graph_async_callback(env: Env, programs: dict[str, bytes]) -> None:
    """The run is over before GE calls back: whoever the callback wakes may remove the graph at
    once (it used to count as in flight until the task's cleanup, after the callback)."""
    gid = env.add(programs["add"])
    seen: dict[str, Any] = {}
    done = threading.Event()

    @ffi.callback("void(void *, aa_status, aa_tensor *, size_t)")
    def on_done(_user: Any, status: int, outputs: Any, n: int) -> None:
        seen["status"] = status
        for i in range(n):
            lib.aa_tensor_release(ffi.addressof(outputs, i))
        seen["remove"] = lib.aa_session_remove_graph(env.session, gid)
        seen["text"] = ge_msg() if seen["remove"] else ""
        done.set()

    ok(lib.aa_session_run_graph_async(env.session, gid, env.host_inputs(), 1, on_done, ffi.NULL))
    assert done.wait(10)
    assert seen["status"] == SUCCESS
    assert seen["remove"] == SUCCESS, seen["text"]
    env.graphs.discard(gid)
    # GE's own stream drains at session destroy (Env.close); the graph's memory went with its last run.
