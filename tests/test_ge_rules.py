"""GE's rules for RunGraphWithStreamAsync that CANN applies and the sim now enforces
(ge_acl_facts.md §2.10, §2.13, §2.3): 32-byte aligned device addresses; a stream-ordered external
allocator (GE frees a run's workspace as soon as the run is submitted, while the stream still
uses it); one allocator shared by streams that run concurrently; a GeSession serializes the
submissions into it. Each rule is checked at the C ABI, where the sim enforces it, and through
Session, which must never trip it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import anyio
import numpy as np
import onnxruntime as ort
import pytest
from helpers import add_model, add_model_proto, held, sim_stats, wait_for
from onnx import TensorProto, helper

import ascend_async
from ascend_async import DeviceTensor, InputError
from ascend_async._engine import open_engine
from ascend_async._native import _sim

ffi, lib = _sim.ffi, _sim.lib

FAILED = 0xFFFFFFFF
MODEL_EXECUTE = 507011
N = 16  # float32 elements: 64 bytes


def ge_msg() -> str:
    buf = ffi.new("char[]", 4096)
    lib.aa_ge_get_error_msg(buf, 4096)
    return ffi.string(buf).decode()


def ok(rc: int) -> None:
    assert rc == 0, f"status {rc}: {ge_msg()}"


def _double_model() -> bytes:
    """y = x + x, float32[N] (a static graph: GE takes a workspace for each run)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [N])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [N])
    g = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "double", [x], [y])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


class Abi:
    """A session, two streams and the Add graph, at the C ABI; torn down in order."""

    def __init__(self) -> None:
        open_engine(ffi, lib)
        assert lib.aclInit(ffi.NULL) in (0, 100002)
        ok(lib.aa_ge_initialize(ffi.NULL, 0))
        p = ffi.new("aa_session**")
        ok(lib.aa_session_create(ffi.NULL, 0, p))
        self.session = p[0]
        self.streams = []
        for _ in range(2):
            sp = ffi.new("aclrtStream*")
            assert lib.aclrtCreateStream(sp) == 0
            self.streams.append(sp[0])
        self.gid = 7
        model = _double_model()
        ok(lib.aa_session_add_graph_onnx(self.session, self.gid, model, len(model), ffi.NULL, 0))
        self.mem: list[Any] = []
        self.pool = lib.aa_pool_create(lib.AA_POOL_DEVICE, 1 << 20)

    def malloc(self, n: int) -> Any:
        p = ffi.new("void**")
        assert lib.aclrtMalloc(p, n, 0) == 0
        self.mem.append(p[0])
        return p[0]

    def device_input(self, x: np.ndarray, offset: int = 0) -> Any:
        base = self.malloc(x.nbytes + 64)
        addr = ffi.cast("char*", base) + offset
        assert lib.aclrtMemcpy(addr, x.nbytes, ffi.from_buffer(x), x.nbytes, 1) == 0
        t = ffi.new("aa_tensor[1]")
        t[0].addr, t[0].size, t[0].dtype, t[0].format, t[0].placement = addr, x.nbytes, 0, 2, 0
        t[0].ndim, t[0].dims[0] = 1, N
        return t

    def submit(self, stream: Any, x: np.ndarray, out: Any) -> int:
        return lib.aa_session_run_graph_with_stream_async(
            self.session, self.gid, stream, self.device_input(x), 1, out, 1
        )

    @staticmethod
    def read(t: Any) -> np.ndarray:
        y = np.empty(N, dtype=np.float32)
        assert lib.aclrtMemcpy(ffi.from_buffer(y), y.nbytes, t.addr, y.nbytes, 2) == 0
        return y

    def close(self) -> None:
        for s in self.streams:
            lib.aa_sim_stream_release(s)
            lib.aclrtSynchronizeStream(s)
            lib.aclGetRecentErrMsg()
            ok(lib.aa_session_unregister_external_allocator(self.session, s))
        ok(lib.aa_session_remove_graph(self.session, self.gid))
        for s in self.streams:
            assert lib.aclrtDestroyStream(s) == 0
        for m in self.mem:
            assert lib.aclrtFree(m) == 0
        leaked = lib.aa_pool_destroy(self.pool)
        ok(lib.aa_session_destroy(self.session))
        assert leaked == 0


@pytest.fixture
def abi() -> Iterator[Abi]:
    a = Abi()
    try:
        yield a
    finally:
        a.close()


class Bridge:
    """Our design before issue 18, at the ABI: each stream registers its own allocator object
    (as the CANN shim makes one ge::Allocator bridge per registration), but every bridge draws
    on the one shared caching pool. With ``lane``, it draws on that lane instead (the design
    now, with a Python hook)."""

    def __init__(self, pool: Any, lane: Any = None) -> None:
        self.pool = pool
        self.lane = lane
        self._alloc = ffi.callback("void *(void *, size_t, void **)", self.alloc)
        self._free = ffi.callback("void (void *, void *)", self.free)
        self._ctx = ffi.new("char[1]")  # a distinct ctx: a distinct allocator object
        self.table = ffi.new("aa_allocator*")
        self.table.ctx, self.table.alloc, self.table.free = self._ctx, self._alloc, self._free

    def alloc(self, ctx: Any, size: int, addr: Any) -> Any:
        if self.lane is None:
            p = lib.aa_pool_alloc(self.pool, size, ffi.NULL)
        else:
            p = lib.aa_pool_lane_alloc(self.lane, size, ffi.NULL)
        addr[0] = p
        return p

    def free(self, ctx: Any, block: Any) -> None:
        if self.lane is None:
            lib.aa_pool_free(self.pool, block)
        else:
            lib.aa_pool_lane_free(self.lane, block)


def _lane(pool: Any) -> Any:
    table = ffi.new("aa_allocator*")
    lib.aa_pool_lane_allocator(lib.aa_pool_lane_open(pool), table)
    return table


# --------------------------------------------------------------------------------------------
# The allocator must be stream-ordered: GE frees a run's workspace at submit


def _reuse_across_streams(abi: Abi, tables: list[Any]) -> tuple[int, str, np.ndarray, np.ndarray]:
    """Stream A is held with a run submitted (its workspace already freed by GE); stream B then
    runs. Returns A's synchronize code and text, and both outputs."""
    a, b = abi.streams
    for stream, table in zip(abi.streams, tables, strict=True):
        ok(lib.aa_session_register_external_allocator(abi.session, stream, table))
    xa, xb = np.arange(N, dtype=np.float32), np.full(N, 3.0, dtype=np.float32)
    out_a, out_b = ffi.new("aa_tensor[1]"), ffi.new("aa_tensor[1]")
    with held(a):
        ok(abi.submit(a, xa, out_a))  # A's run cannot start: its workspace is still A's
        ok(abi.submit(b, xb, out_b))
        assert lib.aclrtSynchronizeStream(b) == 0
        yb = abi.read(out_b[0])
    rc = lib.aclrtSynchronizeStream(a)
    text = ffi.string(lib.aclGetRecentErrMsg()).decode() if rc else ""
    ya = abi.read(out_a[0]) if not rc else np.full(N, np.nan, dtype=np.float32)
    lib.aa_tensor_release(out_a)
    lib.aa_tensor_release(out_b)
    np.testing.assert_array_equal(yb, xb * 2)
    return rc, text, ya, xa * 2


def test_sim_faults_a_run_whose_workspace_another_stream_was_handed(abi: Abi) -> None:
    """The old design: one bridge per stream over one shared pool. GE freed A's workspace at
    submit; B's run got the same block from the pool while A's run had not even started. The
    sim fails A's run (its stream faults) and says why."""
    rc, text, _, _ = _reuse_across_streams(abi, [Bridge(abi.pool).table, Bridge(abi.pool).table])
    assert rc == MODEL_EXECUTE
    assert "handed a block GE had freed to other work while this stream still used it" in text
    assert "handed to a run on stream" in text and "not stream-ordered" in text


def test_pool_lanes_keep_workspaces_stream_ordered(abi: Abi) -> None:
    """The design now: each stream registers its own lane of the pool. The same schedule runs
    both runs right, and A's workspace waits in A's lane until A is idle."""
    rc, text, ya, want = _reuse_across_streams(abi, [_lane(abi.pool), _lane(abi.pool)])
    assert rc == 0, text
    np.testing.assert_array_equal(ya, want)
    st = ffi.new("aa_pool_stats*")
    lib.aa_pool_get_stats(abi.pool, st)
    assert st.live_blocks == 0 and st.stream_cached_blocks == 4  # a workspace and an output each


def test_a_dynamic_runs_outputs_never_take_a_block_a_later_submission_freed(abi: Abi) -> None:
    """The sim places a dynamic graph's outputs when the stream reaches the run. A static run
    submitted after it on the same stream has by then given its workspace back to the stream's
    lane, which hands such a block only to later work on the stream, and the dynamic run is
    earlier work: its output must not land in that block (the later run's workspace fill
    overwrote it, found by the isolation fuzzer with the workspace model on). Nor may it live
    only as long as the graph (the fuzzer's next finding, when GE's built-in memory was used)."""
    lib.aa_sim_set_workspace_model(1)  # the sim's default, said here
    a = abi.streams[0]
    ok(lib.aa_session_register_external_allocator(abi.session, a, _lane(abi.pool)))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [N])
    y = helper.make_tensor_value_info("y", TensorProto.INT64, [1, "k"])  # its shape follows from values
    g = helper.make_graph([helper.make_node("NonZero", ["x"], ["y"])], "nonzero", [x], [y])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    dyn: int | None = 8
    ok(lib.aa_session_add_graph_onnx(abi.session, dyn, model, len(model), ffi.NULL, 0))
    xd, xs = np.arange(N, dtype=np.float32), np.full(N, 5.0, dtype=np.float32)
    out_d, out_s = ffi.new("aa_tensor[1]"), ffi.new("aa_tensor[1]")
    try:
        with held(a):
            ok(lib.aa_session_run_graph_with_stream_async(abi.session, dyn, a, abi.device_input(xd), 1, out_d, 1))
            ok(abi.submit(a, xs, out_s))  # its workspace is back in the lane when this returns
        assert lib.aclrtSynchronizeStream(a) == 0, ffi.string(lib.aclGetRecentErrMsg())
        ok(lib.aa_session_resolve_outputs(out_d, 1))
        # GE's memory that lives as long as the tensor, as the allocator's blocks do: the graph
        # may go first (the library removes graphs while their outputs are still held).
        ok(lib.aa_session_remove_graph(abi.session, dyn))
        dyn = None
        got = np.empty((1, N - 1), dtype=np.int64)  # arange: every element but the first is nonzero
        assert out_d[0].ndim == 2 and list(out_d[0].dims[0:2]) == [1, N - 1]
        assert lib.aclrtMemcpy(ffi.from_buffer(got), got.nbytes, out_d[0].addr, got.nbytes, 2) == 0
        np.testing.assert_array_equal(got, np.stack(np.nonzero(xd)))
        np.testing.assert_array_equal(abi.read(out_s[0]), xs * 2)
    finally:
        lib.aa_tensor_release(out_d)
        lib.aa_tensor_release(out_s)
        if dyn is not None:
            ok(lib.aa_session_remove_graph(abi.session, dyn))


def test_lane_reuses_its_blocks_on_its_stream_and_shares_them_once_closed(abi: Abi) -> None:
    """A block GE gives back through a lane serves later work on that stream only; closing the
    lane (its stream drained) moves it to the shared cache, for any stream."""
    lane = lib.aa_pool_lane_open(abi.pool)
    st = ffi.new("aa_pool_stats*")
    p = lib.aa_pool_lane_alloc(lane, 100, ffi.NULL)
    lib.aa_pool_lane_free(lane, p)
    q = lib.aa_pool_alloc(abi.pool, 100, ffi.NULL)
    assert q != p  # the shared pool does not see it
    lib.aa_pool_get_stats(abi.pool, st)
    assert st.stream_cached_blocks == 1 and st.live_blocks == 1
    lib.aa_pool_free(abi.pool, q)
    assert lib.aa_pool_lane_alloc(lane, 100, ffi.NULL) == p  # the lane's own stream does
    lib.aa_pool_lane_free(lane, p)
    lib.aa_pool_lane_close(lane)
    lib.aa_pool_get_stats(abi.pool, st)
    assert st.stream_cached_blocks == 0 and st.cached_blocks == 2
    assert lib.aa_pool_alloc(abi.pool, 100, ffi.NULL) == p
    lib.aa_pool_lane_free(lane, p)  # through a closed lane: straight to the shared cache
    lib.aa_pool_get_stats(abi.pool, st)
    assert st.cached_blocks == 2 and st.stream_cached_blocks == 0 and st.live_blocks == 0
    assert lib.aa_pool_lane_open(abi.pool) == lane  # a closed lane serves the next stream
    lib.aa_pool_lane_close(lane)
    lib.aa_pool_trim(abi.pool)


# --------------------------------------------------------------------------------------------
# One allocator registered on several streams: they must not run concurrently


def test_one_allocator_on_two_streams_refuses_a_concurrent_run(abi: Abi) -> None:
    a, b = abi.streams
    table = _lane(abi.pool)
    for s in (a, b):
        ok(lib.aa_session_register_external_allocator(abi.session, s, table))
    x = np.arange(N, dtype=np.float32)
    out_a, out_b = ffi.new("aa_tensor[1]"), ffi.new("aa_tensor[1]")
    with held(a):
        ok(abi.submit(a, x, out_a))
        before = sim_stats()
        assert abi.submit(b, x, out_b) == FAILED
        text = ge_msg()
        assert "is also registered for stream" in text and "must not run concurrently" in text
        assert out_b[0].owner == ffi.NULL and sim_stats()["ge_outputs"] == before["ge_outputs"]
    assert lib.aclrtSynchronizeStream(a) == 0
    ok(abi.submit(b, x, out_b))  # A is idle now: B may run
    assert lib.aclrtSynchronizeStream(b) == 0
    for out in (out_a, out_b):
        np.testing.assert_array_equal(abi.read(out[0]), x * 2)
        lib.aa_tensor_release(out)


@pytest.mark.anyio
async def test_session_streams_never_share_an_allocator(anyio_backend: Any) -> None:
    """Through Session: stream 0 is held with a run pending while stream 1 runs. Before issue 18
    every stream registered the device pool itself (one allocator on every stream): stream 1's
    run was refused; and with a bridge per stream, stream 0's workspace went to stream 1."""
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    async with ascend_async.Session(streams=2) as s:
        g = add_model(s)
        await s.run(g, {"x": x, "y": x}, stream=0)
        await s.run(g, {"x": x, "y": x}, stream=1)  # both replicas loaded
        results: dict[int, Any] = {}

        async def run(i: int) -> None:
            results[i] = await s.run(g, {"x": x + i, "y": x}, stream=i)

        async with anyio.create_task_group() as tg:
            with held(s.streams[0]):
                tg.start_soon(run, 0)
                await wait_for(lambda: s.streams[0].in_flight == 1, "stream 0's run submitted")
                await run(1)
                assert 0 not in results
        for i in (0, 1):
            np.testing.assert_array_equal(results[i]["z"], x + i + x)
        pools = s.statistics().device_pool
        assert pools["stream_cached_blocks"] > 0  # GE's blocks wait in their stream's lane


# --------------------------------------------------------------------------------------------
# 32-byte alignment of device addresses


def test_unaligned_device_addresses_are_refused(abi: Abi) -> None:
    x = np.arange(N, dtype=np.float32)
    out = ffi.new("aa_tensor[1]")
    before = sim_stats()
    st = lib.aa_session_run_graph_with_stream_async(
        abi.session, abi.gid, abi.streams[0], abi.device_input(x, offset=16), 1, out, 1
    )
    assert st == FAILED
    assert "input 0: device address" in (text := ge_msg()) and "not 32-byte aligned" in text
    # A caller-provided output 16 bytes past an aligned block.
    base = abi.malloc(x.nbytes + 64)
    out[0].addr, out[0].size = ffi.cast("char*", base) + 16, x.nbytes
    assert abi.submit(abi.streams[0], x, out) == FAILED
    text = ge_msg()
    assert f"output 0: device address {hex(int(ffi.cast('uintptr_t', out[0].addr)))}" in text
    assert "not 32-byte aligned" in text
    # RunGraph's device inputs too.
    outs, n = ffi.new("aa_tensor[1]"), ffi.new("size_t*", 1)
    assert lib.aa_session_run_graph(abi.session, 99, abi.device_input(x, offset=8), 1, outs, n) == FAILED
    ge_msg()
    model = _double_model()
    ok(lib.aa_session_add_graph_onnx(abi.session, 99, model, len(model), ffi.NULL, 0))
    assert lib.aa_session_run_graph(abi.session, 99, abi.device_input(x, offset=8), 1, outs, n) == FAILED
    assert "input 0: device address" in (text := ge_msg()) and "not 32-byte aligned" in text
    ok(lib.aa_session_remove_graph(abi.session, 99))
    after = sim_stats()
    assert after["ge_outputs"] == before["ge_outputs"] and after["graph_runs"] == before["graph_runs"]


@pytest.mark.anyio
async def test_device_tensors_are_always_aligned(anyio_backend: Any) -> None:
    """Our own paths never pass GE an unaligned address: pool blocks and GE's output blocks
    are aligned, there are no views at an offset, and an unaligned DeviceTensor cannot be made
    (InputError naming the address, before any run)."""
    async with ascend_async.Session() as s:
        g = add_model(s)
        for n in (1, 3, 5, 33):
            x = np.arange(n * 4, dtype=np.float32).reshape(n, 4)
            dx = DeviceTensor.from_numpy(s, x)
            r = await s.run(g, {"x": dx, "y": x}, outputs="device")
            for t in (dx, r["z"]):
                assert t.address % 32 == 0
            np.testing.assert_array_equal(r["z"].numpy(), x + x)
            r["z"].close()
            b = DeviceTensor.from_numpy(s, np.arange(n, dtype=np.int8))
            assert b.address % 32 == 0
            b.close()
            with pytest.raises(InputError, match=r"device address 0x[0-9a-f]+ is not 32-byte aligned"):
                DeviceTensor(dx._device, ffi.cast("char*", dx._addr) + 4, (n, 4), x.dtype)
            dx.close()


# --------------------------------------------------------------------------------------------
# A GeSession serializes the submissions into it


def test_sim_serializes_submissions_into_one_session(abi: Abi) -> None:
    """Threads submit to one session on their own streams. The allocator's alloc runs inside
    each submission (GE's workspace) and waits there for another submission to enter: with
    the session's submission lock none ever does, and every output is right."""
    inside = 0
    most = 0
    entered = threading.Condition()

    class Watching(Bridge):
        def alloc(self, ctx: Any, size: int, addr: Any) -> Any:
            nonlocal inside, most
            with entered:
                inside += 1
                most = max(most, inside)
                entered.notify_all()
                entered.wait_for(lambda: inside > 1, timeout=0.02)  # give a racer the chance
                inside -= 1
            return super().alloc(ctx, size, addr)

    streams = abi.streams + [ffi.new("aclrtStream*") for _ in range(2)]
    for i in (2, 3):
        assert lib.aclrtCreateStream(streams[i]) == 0
        streams[i] = streams[i][0]
    lanes = [lib.aa_pool_lane_open(abi.pool) for _ in streams]
    bridges = [Watching(abi.pool, lane) for lane in lanes]  # stream-ordered, one per stream
    for s, br in zip(streams, bridges, strict=True):
        ok(lib.aa_session_register_external_allocator(abi.session, s, br.table))
    ctx = ffi.new("aclrtContext*")
    assert lib.aclrtGetCurrentContext(ctx) == 0
    errors: list[str] = []
    outs: list[tuple[np.ndarray, Any, Any]] = []
    lock = threading.Lock()
    start = threading.Barrier(len(streams))

    def submitter(k: int) -> None:
        assert lib.aclrtSetCurrentContext(ctx[0]) == 0
        start.wait()
        for r in range(3):
            x = np.full(N, 10.0 * k + r, dtype=np.float32)
            out = ffi.new("aa_tensor[1]")
            st = abi.submit(streams[k], x, out)
            with lock:
                if st:
                    errors.append(ge_msg())
                else:
                    outs.append((x, out, streams[k]))

    threads = [threading.Thread(target=submitter, args=(k,)) for k in range(len(streams))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert not errors
        assert most == 1, "two submissions were inside one GeSession at once"
        for s in streams:
            assert lib.aclrtSynchronizeStream(s) == 0
        for x, out, _ in outs:
            np.testing.assert_array_equal(abi.read(out[0]), x * 2)
            lib.aa_tensor_release(out)
        assert len(outs) == 3 * len(streams)
    finally:
        for s in streams[2:]:
            lib.aclrtSynchronizeStream(s)
            ok(lib.aa_session_unregister_external_allocator(abi.session, s))
            assert lib.aclrtDestroyStream(s) == 0
        for lane in lanes:
            lib.aa_pool_lane_close(lane)


@pytest.mark.anyio
async def test_threads_with_their_own_loops_share_one_session(anyio_backend: Any) -> None:
    """Several threads, each with its own event loop of this backend, run on one Session at
    once; every output matches onnxruntime's."""
    backend, options = anyio_backend
    ref = ort.InferenceSession(add_model_proto().SerializeToString(), providers=["CPUExecutionProvider"])
    errors: list[BaseException] = []
    async with ascend_async.Session(streams=3) as s:
        g = add_model(s)

        def worker(k: int) -> None:
            async def main() -> None:
                for r in range(12):
                    x = np.full((1 + r % 3, 4), k * 100.0 + r, dtype=np.float32)
                    y = np.arange(x.size, dtype=np.float32).reshape(x.shape)
                    got = await s.run(g, {"x": x, "y": y})
                    (want,) = ref.run(None, {"x": x, "y": y})
                    np.testing.assert_array_equal(got["z"], want)

            try:
                anyio.run(main, backend=backend, backend_options=options)
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        await anyio.to_thread.run_sync(lambda: [t.join() for t in threads])
    assert not errors, errors
