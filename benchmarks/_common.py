"""Shared pieces of the benchmark suite: the tiny graph, raw-ffi helpers (the naive loop poller
and the C floor), hand-off baselines, the watcher's thread CPU and the results table.

Everything here runs on the simulated device unless ASCEND_ASYNC_BACKEND says otherwise; the
numbers are host-side costs of the library around a near-zero-cost graph.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import onnx
from onnx import TensorProto, helper

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import anyio.lowlevel

import ascend_async as aa
from ascend_async import _probe
from ascend_async._probe import thread_cpu_s

X = np.arange(4, dtype=np.float32).reshape(1, 4)
LOOPS = ("asyncio", "uvloop", "trio")


def tiny_model() -> onnx.ModelProto:
    """y = relu(x), x: float32[1, 4]: the device work is next to nothing, so the library's
    own costs dominate."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "tiny", [x], [y])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def run_on(loop: str, fn: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    if loop == "trio":
        return anyio.run(fn, backend="trio")
    if loop == "uvloop":
        import uvloop

        return anyio.run(fn, backend="asyncio", backend_options={"loop_factory": uvloop.new_event_loop})
    return anyio.run(fn, backend="asyncio")


def have_loop(loop: str) -> bool:
    try:
        __import__({"asyncio": "asyncio", "uvloop": "uvloop", "trio": "trio"}[loop])
    except ImportError:
        return False
    return True


@contextmanager
def session(strategy: str = "poll", streams: int = 2, max_in_flight: int = 1000, **tuning: int) -> Iterator[aa.Session]:
    """A fresh session whose watcher uses ``strategy`` (the watcher starts with its first run;
    it stops when the device's last session closes, so strategies never mix)."""
    aa.configure_watcher(0, strategy, **tuning)
    s = aa.Session(0, streams=streams, max_in_flight=max_in_flight)
    try:
        yield s
    finally:
        s.close()
        aa.configure_watcher(0, "poll")


def watcher_tid() -> int | None:
    for t in threading.enumerate():
        if t.name == "ascend-async-watcher-0":
            return t.native_id
    return None


def sim_device_cpu_s() -> float:
    """CPU seconds so far of the simulated device's threads (named ``aa-sim-dev*``; Linux
    /proc schedstat, ns resolution). On an NPU that work is not host CPU: host-side CPU per run
    is the process's minus this. 0.0 where /proc is missing or no sim device runs."""
    total = 0
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return 0.0
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                if not f.read().startswith("aa-sim-dev"):
                    continue
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total / 1e9


def wakeups() -> int:
    """Wake-ups the watcher posted to the running loop (internal counter)."""
    return _probe.loop_wakeups()


# -- the hand-off baseline: a bare thread waking the loop -----------------------------------------


def _loop_post() -> Callable[..., object]:
    """The running loop's own thread-safe "call soon" (asyncio, uvloop or trio), bare: the
    hand-off the library's wake-up is compared with, without the library's bridge around it."""
    import asyncio

    try:
        return asyncio.get_running_loop().call_soon_threadsafe
    except RuntimeError:
        import trio

        return trio.lowlevel.current_trio_token().run_sync_soon  # type: ignore[no-any-return]


class HandOff:
    """A plain thread that, when asked, stamps time.monotonic_ns() and wakes the loop with its
    thread-safe entry (call_soon_threadsafe / run_sync_soon). Nothing else."""

    def __init__(self) -> None:
        self.q: queue.SimpleQueue[tuple[Callable[..., object], anyio.Event, list[int]] | None] = queue.SimpleQueue()
        self.t = threading.Thread(target=self._main, daemon=True, name="bench-handoff")
        self.t.start()

    def _main(self) -> None:
        while True:
            item = self.q.get()
            if item is None:
                return
            post, ev, box = item
            box.append(time.monotonic_ns())
            post(ev.set)

    async def once(self) -> tuple[int, int]:
        """Returns (round trip ns from the loop, thread-post-to-resume ns)."""
        ev = anyio.Event()
        box: list[int] = []
        t0 = time.perf_counter_ns()
        self.q.put((_loop_post(), ev, box))
        await ev.wait()
        now = time.monotonic_ns()
        return time.perf_counter_ns() - t0, now - box[0]

    def close(self) -> None:
        self.q.put(None)
        self.t.join()


# -- device completion timestamps through an internal hook -----------------------------------------

_runs_var: contextvars.ContextVar[list[Any] | None] = contextvars.ContextVar("bench_runs", default=None)
_stamps: dict[int, int] = {}
_complete_ns: dict[int, int] = {}  # how long Run.complete took (read-back, recycle, wake)
_tracked: set[int] = set()


def _on_submit(run: Any) -> None:
    box = _runs_var.get()
    if box is not None:
        box.append(run)
        _tracked.add(run.token)


def _on_complete(run: Any, complete: Callable[[], None]) -> None:
    if run.token not in _tracked:
        complete()
        return
    lib, ffi = run.replica.device.backend.lib, run.replica.device.backend.ffi
    ts = ffi.new("uint64_t*")
    if lib.aclrtEventGetTimestamp(run.event, ts) == 0:  # before the event goes back to the pool
        _stamps[run.token] = int(ts[0])
    token = run.token
    t = time.perf_counter_ns()
    complete()
    _complete_ns[token] = time.perf_counter_ns() - t


@contextmanager
def completion_stamps() -> Iterator[None]:
    """Hook the runs (``_probe.run_hooks``, benchmark only) so runs made under ``tracked_run``
    record the device's completion timestamp of their event (aclrtEventGetTimestamp;
    CLOCK_MONOTONIC ns in the sim), read before the event goes back to the device's pool."""
    try:
        with _probe.run_hooks(_on_submit, _on_complete):
            yield
    finally:
        _stamps.clear()
        _complete_ns.clear()
        _tracked.clear()


async def tracked_run(s: aa.Session, g: aa.Graph) -> tuple[int, int, int] | None:
    """One ``await s.run`` -> (resume - device completion ns, resume - completion noticed ns,
    ns spent in ``Run.complete``)."""
    box: list[Any] = []
    token = _runs_var.set(box)
    try:
        await s.run(g, {"x": X})
    finally:
        _runs_var.reset(token)
    now = time.monotonic_ns()
    if not box:
        return None
    run = box[0]
    _tracked.discard(run.token)
    ts = _stamps.pop(run.token, None)
    spent = _complete_ns.pop(run.token, 0)
    if ts is None:
        return None
    return now - ts, now - int(run.noticed_ns), spent


# -- raw pieces: naive loop polling and the C floor -----------------------------------------------


class Raw:
    """The tiny graph loaded on one stream of ``s``, driven with raw AscendCL/GE calls (reaches
    into Session internals: benchmark-only)."""

    def __init__(self, s: aa.Session, g: aa.Graph, lane: int = 0) -> None:
        raw = _probe.raw_graph(s, g, lane)
        dev = self.dev = raw.device
        self.ffi, self.lib = raw.ffi, raw.lib
        self.handle, self.gid, self.stream_handle = raw.session_handle, raw.graph_id, raw.stream_handle
        dev.ensure_current()
        self.din = dev.alloc(dev.device_pool, X.nbytes, "bench input")
        h = dev.alloc(dev.host_pool, X.nbytes, "bench staging")
        self.ffi.memmove(h, X, X.nbytes)
        self.lib.aclrtMemcpy(self.din, X.nbytes, h, X.nbytes, 1)
        self.lib.aa_pool_free(dev.host_pool, h)
        self.tin = self._tensor(self.din)
        # The sim has 1023 hardware events per device: cap runs on the device like the
        # library's own limiter does (more callers just wait here).
        self.limit = anyio.Semaphore(512)

    def _tensor(self, addr: Any) -> Any:
        t = self.ffi.new("aa_tensor[]", 1)
        t[0].addr = addr
        t[0].size = X.nbytes
        t[0].dtype = self.lib.AA_DT_FLOAT
        t[0].format = self.lib.AA_FORMAT_ND
        t[0].placement = self.lib.AA_PLACEMENT_DEVICE_HBM
        t[0].ndim = 2
        t[0].dims[0], t[0].dims[1] = 1, 4
        return t

    async def naive_run(self) -> None:
        """Submit the run and its event, then poll aclrtQueryEventStatus from the loop with
        ``await sleep(0)`` between polls (no watcher thread)."""
        async with self.limit:
            await self._naive_run()

    async def _record_and_poll(self) -> None:
        """Record an event behind the enqueued work and poll it from the loop, ``await sleep(0)``
        between polls, until it completed."""
        dev, lib, ffi = self.dev, self.lib, self.ffi
        ev = dev.take_event()
        lib.aclrtRecordEvent(ev, self.stream_handle)
        st = ffi.new("aclrtEventRecordedStatus*")
        while True:
            lib.aclrtQueryEventStatus(ev, st)
            if st[0] == lib.ACL_EVENT_RECORDED_STATUS_COMPLETE:
                break
            await anyio.lowlevel.checkpoint()
        dev.give_event(ev)

    async def _naive_run(self) -> None:
        dev, lib = self.dev, self.lib
        dev.ensure_current()
        dout = dev.alloc(dev.device_pool, X.nbytes, "bench output")
        tout = self._tensor(dout)
        rc = lib.aa_session_run_graph_with_stream_async(self.handle, self.gid, self.stream_handle, self.tin, 1, tout, 1)
        if rc:
            raise RuntimeError(f"RunGraphWithStreamAsync: {rc}")
        await self._record_and_poll()
        lib.aa_pool_free(dev.device_pool, dout)

    async def naive_run_host(self) -> np.ndarray:
        """The same work as ``await session.run(g, {"x": X})``, written by hand: the input staged
        in page-locked memory, H2D, the graph, D2H, an event polled from the loop with
        ``await sleep(0)`` between polls, and the output copied into a fresh array."""
        async with self.limit:
            return await self._naive_run_host()

    async def _naive_run_host(self) -> np.ndarray:
        dev, lib, ffi = self.dev, self.lib, self.ffi
        dev.ensure_current()
        n = X.nbytes
        h_in = dev.alloc(dev.host_pool, n, "bench staging")
        d_in = dev.alloc(dev.device_pool, n, "bench input")
        d_out = dev.alloc(dev.device_pool, n, "bench output")
        h_out = dev.alloc(dev.host_pool, n, "bench read-back")
        ffi.memmove(h_in, X, n)
        lib.aclrtMemcpyAsync(d_in, n, h_in, n, lib.ACL_MEMCPY_HOST_TO_DEVICE, self.stream_handle)
        tin, tout = self._tensor(d_in), self._tensor(d_out)
        rc = lib.aa_session_run_graph_with_stream_async(self.handle, self.gid, self.stream_handle, tin, 1, tout, 1)
        if rc:
            raise RuntimeError(f"RunGraphWithStreamAsync: {rc}")
        lib.aclrtMemcpyAsync(h_out, n, d_out, n, lib.ACL_MEMCPY_DEVICE_TO_HOST, self.stream_handle)
        await self._record_and_poll()
        out = np.empty(X.shape, X.dtype)
        ffi.memmove(out, h_out, n)
        for pool, block in ((dev.host_pool, h_in), (dev.device_pool, d_in)):
            lib.aa_pool_free(pool, block)
        for pool, block in ((dev.device_pool, d_out), (dev.host_pool, h_out)):
            lib.aa_pool_free(pool, block)
        return out

    def floor(self, n: int, window: int) -> float | None:
        """The C floor (aa_floor_run): runs/s with ``window`` in flight, no Python in the loop."""
        if not hasattr(self.lib, "aa_floor_run"):
            return None
        return n / (self.floor_ns(n, window) / 1e9)

    def floor_ns(self, n: int, window: int) -> int:
        """aa_floor_run on this lane: ``n`` runs with ``window`` in flight; elapsed ns (the cffi
        call releases the GIL, so lanes on different threads run side by side)."""
        self.dev.ensure_current()
        dout = self.dev.alloc(self.dev.device_pool, X.nbytes, "bench output")
        tout = self._tensor(dout)
        el = self.ffi.new("uint64_t*")
        rc = self.lib.aa_floor_run(self.handle, self.gid, self.stream_handle, self.tin, 1, tout, 1, n, window, el)
        self.lib.aa_pool_free(self.dev.device_pool, dout)
        if rc:
            raise RuntimeError(f"aa_floor_run: {rc}")
        return int(el[0])

    def close(self) -> None:
        self.lib.aclrtSynchronizeStream(self.stream_handle)
        self.lib.aa_pool_free(self.dev.device_pool, self.din)


class Thin:
    """The thinnest Python over the library's own C path, for a bound: ``aa_run_submit`` with
    reused descriptors and a watch channel of its own, woken by an eventfd the C watch writes,
    collected with ``aa_watch_harvest`` in one drain per loop iteration. No input checks, no
    in-flight limit, event budget, stream choice, counts or cancellation path: what the
    library's own bookkeeping costs is the difference between it and ``await session.run``.
    asyncio and uvloop on Linux only (``os.eventfd``)."""

    def __init__(self, s: aa.Session, g: aa.Graph, lanes: int = 2) -> None:
        self.raws = [_probe.raw_graph(s, g, i) for i in range(lanes)]
        raw = self.raws[0]
        self.dev, self.ffi, self.lib = raw.device, raw.ffi, raw.lib
        self.watcher = self.dev.get_watcher()
        self.ch = self.lib.aa_watch_channel_open(self.watcher.handle)
        if self.ch <= 0:
            raise RuntimeError("no watch channel left")
        self.efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.lib.aa_watch_channel_notify_fd(self.watcher.handle, self.ch, self.efd)
        self.pending: dict[int, tuple[Any, Any, Any, Any]] = {}
        self.free: list[tuple[Any, Any, Any, Any, Any]] = []
        self.seq = 0
        self.scheduled = False
        self.loop: Any = None
        n = 64
        self.buf = (self.ffi.new("uint64_t[]", n), self.ffi.new("int32_t[]", n), self.ffi.new("uint64_t[]", n))

    def _descriptor(self, raw: Any) -> tuple[Any, Any, Any, Any, Any]:
        ffi, lib, dev = self.ffi, self.lib, self.dev
        run, ins, outs, slots = (
            ffi.new("aa_run*"),
            ffi.new("aa_run_io[]", 1),
            ffi.new("aa_run_io[]", 1),
            ffi.new("aa_tensor[]", 1),
        )
        run.session, run.graph_id, run.stream = raw.session_handle, raw.graph_id, raw.stream_handle
        run.device_pool, run.host_pool, run.watch = dev.device_pool, dev.host_pool, self.watcher.handle
        run.n_inputs = run.n_outputs = 1
        run.inputs, run.outputs, run.slots = ins, outs, slots
        run.outputs_to_host = 1
        io = ins[0]
        io.nbytes = X.nbytes
        io.tensor.dtype = lib.AA_DT_FLOAT
        io.tensor.ndim = 2
        io.tensor.dims[0], io.tensor.dims[1] = 1, 4
        return run, ins, outs, slots, raw

    def _drain(self) -> None:
        self.scheduled = False
        tokens, codes, noticed = self.buf
        n = self.lib.aa_watch_harvest(self.watcher.handle, self.ch, tokens, codes, noticed, 64, 1)
        memmove, release, free, pending = self.ffi.memmove, self.lib.aa_run_release, self.free, self.pending
        for i in range(n):
            fut, d, ev, _keep = pending.pop(tokens[i])
            io = d[2][0]
            out = np.empty((1, 4), np.float32)
            memmove(out, io.host_block, io.nbytes)
            release(d[0])
            self.dev.give_event(ev)
            free.append(d)
            fut.set_result(out)
        if n and not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self._drain)

    def _fd_ready(self) -> None:
        with contextlib.suppress(BlockingIOError):  # (read back already)
            os.eventfd_read(self.efd)
        if not self.scheduled:
            self._drain()

    async def run(self, x: np.ndarray = X) -> np.ndarray:
        if self.loop is None:
            import asyncio

            self.loop = asyncio.get_running_loop()
            self.loop.add_reader(self.efd, self._fd_ready)
        self.seq += 1
        d = self.free.pop() if self.free else self._descriptor(self.raws[self.seq % len(self.raws)])
        run = d[0]
        buf = self.ffi.from_buffer(x)
        d[1][0].host = buf
        ev = self.dev.take_event()
        run.event = ev
        run.token = token = (self.ch << 48) | self.seq
        fut = self.loop.create_future()
        self.pending[token] = (fut, d, ev, buf)
        if self.lib.aa_run_submit(run):
            raise RuntimeError("aa_run_submit failed")
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self._drain)
        return await fut  # type: ignore[no-any-return]

    def close(self) -> None:
        if self.loop is not None:
            self.loop.remove_reader(self.efd)
        self.lib.aa_watch_channel_close(self.watcher.handle, self.ch)
        os.close(self.efd)


def floor_lanes(lanes: list[Raw], n: int, total_window: int) -> float | None:
    """The C floor over several streams at once: one thread per lane, each ``aa_floor_run``
    with ``total_window / len(lanes)`` in flight; total runs / the slowest lane's time."""
    if not lanes or not hasattr(lanes[0].lib, "aa_floor_run"):
        return None
    window = max(1, total_window // len(lanes))
    el: list[int] = [0] * len(lanes)
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(lanes))

    def work(i: int) -> None:
        try:
            barrier.wait()
            el[i] = lanes[i].floor_ns(n, window)
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=work, args=(i,), name=f"bench-floor-{i}") for i in range(len(lanes))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return n * len(lanes) / (max(el) / 1e9)


@contextmanager
def sim_graph_time(min_graph_us: int) -> Iterator[bool]:
    """Make every graph run occupy a sim device worker for at least ``min_graph_us`` (the sim's
    timing model, ``aa_sim_set_timing``), like real compute would; zeros again afterwards.
    Yields False (and changes nothing) when the backend is not the sim."""
    if aa.backend_info()["backend"] != "sim":
        yield False
        return
    _sim = _probe.sim()

    _sim.lib.aa_sim_set_timing(_sim.ffi.new("aa_sim_timing*", {"min_graph_us": min_graph_us}))
    try:
        yield True
    finally:
        _sim.lib.aa_sim_set_timing(_sim.ffi.new("aa_sim_timing*"))


# -- closed loops ---------------------------------------------------------------------------------


async def closed_loop(
    submit: Callable[[], Coroutine[Any, Any, Any]], conc: int, duration: float, warmup: int = 20
) -> dict[str, float]:
    """``conc`` tasks each awaiting ``submit`` back to back for ``duration`` s (after warm-up).
    Returns runs/s, process CPU s, the sim device threads' share of it, watcher CPU s, loop
    wake-ups, lag p99/max (ms)."""
    done = [0]
    stop = [False]
    measuring = [False]
    lag: list[int] = []
    marks: dict[str, float] = {}

    async def worker() -> None:
        while not stop[0]:
            await submit()
            done[0] += 1

    async def lag_task() -> None:
        while not stop[0]:
            t = time.perf_counter_ns()
            await anyio.sleep(0.001)
            if measuring[0]:
                lag.append(max(0, time.perf_counter_ns() - t - 1_000_000))

    async with anyio.create_task_group() as tg:
        for _ in range(conc):
            tg.start_soon(worker)
        tg.start_soon(lag_task)
        while done[0] < warmup and done[0] < conc * 2:  # noqa: ASYNC110 - polling a counter
            await anyio.sleep(0.005)
        tid = watcher_tid()
        marks["w0"] = thread_cpu_s(tid) or 0.0
        marks["c0"] = time.process_time()
        marks["d0"] = sim_device_cpu_s()
        try:
            marks["k0"] = wakeups()
        except Exception:
            marks["k0"] = 0
        n0, t0 = done[0], time.perf_counter()
        measuring[0] = True
        await anyio.sleep(duration)
        n1, t1 = done[0], time.perf_counter()
        measuring[0] = False
        c1 = time.process_time()
        d1 = sim_device_cpu_s()
        w1 = thread_cpu_s(tid) or 0.0
        try:
            k1 = wakeups()
        except Exception:
            k1 = 0
        stop[0] = True
    runs = n1 - n0
    lag_ms = np.asarray(lag, dtype=np.float64) / 1e6 if lag else np.zeros(1)
    return {
        "runs": runs,
        "rate": runs / (t1 - t0),
        "cpu_s": c1 - marks["c0"],
        "device_cpu_s": d1 - marks["d0"],
        "watcher_s": w1 - marks["w0"],
        "wakeups": k1 - marks["k0"],
        "lag_p99": float(np.percentile(lag_ms, 99)),
        "lag_max": float(lag_ms.max()),
    }


# -- the table ------------------------------------------------------------------------------------


@dataclass
class Row:
    section: str
    metric: str
    value: str
    target: str = ""
    verdict: str = ""  # "met", "MISSED", "" (no target)


def verdict(ok: bool | None) -> str:
    return "" if ok is None else ("met" if ok else "MISSED")


def print_rows(rows: list[Row], file: Any = None) -> str:
    cols = ("section", "metric", "measured", "[target]", "")
    data = [(r.section, r.metric, r.value, f"[{r.target}]" if r.target else "", r.verdict) for r in rows]
    widths = [max(len(c), *(len(d[i]) for d in data)) for i, c in enumerate(cols)] if data else [len(c) for c in cols]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(d, widths, strict=True)) for d in data]
    text = "\n".join(lines)
    print(text, file=file or sys.stdout, flush=True)
    return text


def environment_line() -> str:
    info = aa.backend_info()
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return (
        f"backend {info['backend']} ({info['reason']}); {cpu} x{os.cpu_count()}; "
        f"python {sys.version.split()[0]}; numpy {np.__version__}; ascend_async {aa.__version__}"
    )
