"""The simulated AscendCL runtime at the C ABI: the behaviours issue 2 pins (ge_acl_facts §6, §9).

Every test drives the sim through ``_sim.lib`` directly, gates device progress with
``aa_sim_stream_hold``/``release`` and injected delays/faults (never with sleeps), and frees
everything it made so the conftest leak check reads zero.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import held

from ascend_async._native import _sim

ffi = _sim.ffi
lib = _sim.lib

NOT_READY = 0  # ACL_EVENT_RECORDED_STATUS_NOT_READY
COMPLETE = 1  # ACL_EVENT_RECORDED_STATUS_COMPLETE


def err_msg() -> str:
    p = lib.aclGetRecentErrMsg()
    return ffi.string(p).decode() if p != ffi.NULL else ""


def ok(rc: int) -> None:
    assert rc == 0, f"aclError {rc}: {err_msg()}"


@pytest.fixture
def dev() -> Iterator[None]:
    """aclInit once, device 0 set on this thread for the test (reference counted)."""
    assert lib.aclInit(ffi.NULL) in (0, 100002)
    ok(lib.aclrtSetDevice(0))
    yield
    ok(lib.aclrtResetDevice(0))


class Res:
    """Tracks streams/events/memory and frees them in reverse order at the end of a test."""

    def __init__(self) -> None:
        self.streams: list[Any] = []
        self.events: list[Any] = []
        self.mem: list[Any] = []

    def stream(self) -> Any:
        p = ffi.new("aclrtStream*")
        ok(lib.aclrtCreateStream(p))
        self.streams.append(p[0])
        return p[0]

    def event(self, flag: int | None = None) -> Any:
        p = ffi.new("aclrtEvent*")
        ok(lib.aclrtCreateEvent(p) if flag is None else lib.aclrtCreateEventWithFlag(p, flag))
        self.events.append(p[0])
        return p[0]

    def malloc(self, n: int) -> Any:
        p = ffi.new("void**")
        ok(lib.aclrtMalloc(p, n, 0))
        self.mem.append(p[0])
        return p[0]

    def close(self) -> None:
        for s in self.streams:
            lib.aa_sim_stream_release(s)
        for s in self.streams:
            lib.aclrtSynchronizeStream(s)  # faulted streams return the fault; still destroyable
            ok(lib.aclrtDestroyStream(s))
        for e in self.events:
            ok(lib.aclrtDestroyEvent(e))
        for m in self.mem:
            ok(lib.aclrtFree(m))


@pytest.fixture
def res(dev: None) -> Iterator[Res]:
    r = Res()
    yield r
    r.close()


def query(event: Any) -> int:
    st = ffi.new("aclrtEventRecordedStatus*")
    ok(lib.aclrtQueryEventStatus(event, st))
    return int(st[0])


def stream_status(stream: Any) -> tuple[int, int]:
    st = ffi.new("aclrtStreamStatus*", 0xFFFF)
    rc = lib.aclrtStreamQuery(stream, st)
    return rc, int(st[0])


def timestamp(event: Any) -> int:
    t = ffi.new("uint64_t*")
    ok(lib.aclrtEventGetTimestamp(event, t))
    return int(t[0])


# --------------------------------------------------------------------------------------------
# Order and concurrency


def test_tasks_on_one_stream_run_in_submission_order(res: Res) -> None:
    s = res.stream()
    n = 64
    dev_buf = res.malloc(n)
    host_srcs = []
    with held(s):
        for i in range(200):
            if i % 3 == 0:
                ok(lib.aclrtMemsetAsync(dev_buf, n, i & 0xFF, n, s))
            else:
                src = ffi.new("char[]", bytes([i & 0xFF]) * n)
                host_srcs.append(src)  # kept alive until the sync
                h = ffi.new("void**")
                ok(lib.aclrtMallocHost(h, n))  # pinned: really asynchronous
                ffi.memmove(h[0], src, n)
                host_srcs.append(h)
                ok(lib.aclrtMemcpyAsync(dev_buf, n, h[0], n, 1, s))
        # Nothing has run while held.
        assert stream_status(s) == (0, 1)
    ok(lib.aclrtSynchronizeStream(s))
    out = ffi.new("char[]", n)
    ok(lib.aclrtMemcpy(out, n, dev_buf, n, 2))
    assert ffi.buffer(out)[:] == bytes([199]) * n  # the last write wins
    for h in host_srcs:
        if ffi.typeof(h) is ffi.typeof("void**"):
            ok(lib.aclrtFreeHost(h[0]))


def test_held_stream_does_not_block_another_stream(res: Res) -> None:
    a, b = res.stream(), res.stream()
    ea, eb = res.event(), res.event()
    buf = res.malloc(32)
    with held(a):
        ok(lib.aclrtMemsetAsync(buf, 32, 1, 32, a))
        ok(lib.aclrtRecordEvent(ea, a))
        ok(lib.aclrtMemsetAsync(buf, 32, 2, 32, b))
        ok(lib.aclrtRecordEvent(eb, b))
        ok(lib.aclrtSynchronizeStream(b))
        assert query(eb) == COMPLETE
        assert query(ea) == NOT_READY
        assert stream_status(a) == (0, 1)  # ACL_STREAM_STATUS_NOT_READY
    ok(lib.aclrtSynchronizeEvent(ea))
    assert query(ea) == COMPLETE
    assert stream_status(a) == (0, 0)  # ACL_STREAM_STATUS_COMPLETE


def test_two_streams_overlap_in_time(res: Res) -> None:
    a, b = res.stream(), res.stream()
    a0, a1, b0, b1 = (res.event() for _ in range(4))
    bufs = {a: res.malloc(32), b: res.malloc(32)}  # one each: the streams run at once (no race)
    delay_us = 100_000
    with held(a, b):  # both start together when the block ends
        for s, e0, e1 in ((a, a0, a1), (b, b0, b1)):
            ok(lib.aclrtRecordEvent(e0, s))
            ok(lib.aa_sim_inject_delay(s, 1, delay_us))
            ok(lib.aclrtMemsetAsync(bufs[s], 32, 0, 32, s))
            ok(lib.aclrtRecordEvent(e1, s))
    ok(lib.aclrtSynchronizeStream(a))
    ok(lib.aclrtSynchronizeStream(b))
    # Each stream's delayed task lies between its two events; the intervals intersect.
    assert timestamp(a1) - timestamp(a0) >= delay_us * 1000
    assert timestamp(b1) - timestamp(b0) >= delay_us * 1000
    assert max(timestamp(a0), timestamp(b0)) < min(timestamp(a1), timestamp(b1))


def test_stream_wait_event_orders_across_streams(res: Res) -> None:
    a, b = res.stream(), res.stream()
    e, eb = res.event(), res.event()
    with held(a):
        ok(lib.aclrtRecordEvent(e, a))
        ok(lib.aclrtStreamWaitEvent(b, e))
        ok(lib.aclrtRecordEvent(eb, b))
        assert lib.aclrtSynchronizeStreamWithTimeout(b, 0) == 507046  # b waits for held a
        assert query(eb) == NOT_READY
    ok(lib.aclrtSynchronizeStream(b))
    assert query(eb) == COMPLETE
    assert timestamp(eb) >= timestamp(e)


# --------------------------------------------------------------------------------------------
# Events


def test_event_status_values_and_inversion(res: Res) -> None:
    s = res.stream()
    e = res.event()
    assert query(e) == NOT_READY == 0  # never recorded
    ok(lib.aclrtSynchronizeEvent(e))  # a never-recorded event: returns at once
    ok(lib.aclrtSynchronizeEventWithTimeout(e, 0))
    with held(s):
        ok(lib.aclrtRecordEvent(e, s))
        assert query(e) == NOT_READY
        assert stream_status(s) == (0, 1)  # stream NOT_READY is 1 ...
    ok(lib.aclrtSynchronizeStream(s))
    assert query(e) == COMPLETE == 1  # ... while event COMPLETE is 1 and stream COMPLETE is 0
    assert stream_status(s) == (0, 0)


def test_event_timestamp_needs_completion(res: Res) -> None:
    s = res.stream()
    e = res.event(8)  # ACL_EVENT_TIME_LINE
    t = ffi.new("uint64_t*")
    assert lib.aclrtEventGetTimestamp(e, t) != 0  # never recorded
    assert lib.aclrtEventGetTimestamp(ffi.NULL, t) == 100000
    assert lib.aclrtEventGetTimestamp(e, ffi.NULL) == 100000
    before = lib.aa_monotonic_ns()
    ok(lib.aclrtRecordEvent(e, s))
    ok(lib.aclrtSynchronizeEvent(e))
    after = lib.aa_monotonic_ns()
    assert before <= timestamp(e) <= after


def test_elapsed_time_covers_injected_delay(res: Res) -> None:
    s = res.stream()
    e0, e1 = res.event(), res.event()
    buf = res.malloc(64)
    ok(lib.aclrtRecordEvent(e0, s))
    ok(lib.aa_sim_inject_delay(s, 1, 30_000))
    ok(lib.aclrtMemsetAsync(buf, 64, 7, 64, s))
    ok(lib.aclrtRecordEvent(e1, s))
    ms = ffi.new("float*")
    ok(lib.aclrtSynchronizeStream(s))
    ok(lib.aclrtEventElapsedTime(ms, e0, e1))
    assert ms[0] >= 30.0
    assert lib.aclrtEventElapsedTime(ffi.NULL, e0, e1) == 100000


def test_inject_delay_slows_only_the_nth_task(res: Res) -> None:
    s = res.stream()
    ev = [res.event() for _ in range(4)]
    buf = res.malloc(32)
    ok(lib.aclrtRecordEvent(ev[0], s))
    ok(lib.aclrtMemsetAsync(buf, 32, 0, 32, s))  # task 2 (record was 1)
    ok(lib.aclrtRecordEvent(ev[1], s))
    ok(lib.aa_sim_inject_delay(s, 1, 50_000))
    ok(lib.aclrtMemsetAsync(buf, 32, 0, 32, s))
    ok(lib.aclrtRecordEvent(ev[2], s))
    ok(lib.aclrtSynchronizeStream(s))
    fast = timestamp(ev[1]) - timestamp(ev[0])
    slow = timestamp(ev[2]) - timestamp(ev[1])
    assert slow >= 50_000_000
    assert fast < slow


# --------------------------------------------------------------------------------------------
# Timeouts and codes


def test_synchronize_stream_timeouts(res: Res) -> None:
    s = res.stream()
    buf = res.malloc(32)
    with held(s):
        ok(lib.aclrtMemsetAsync(buf, 32, 0, 32, s))
        assert lib.aclrtSynchronizeStreamWithTimeout(s, 0) == 507046
        assert lib.aclrtSynchronizeStreamWithTimeout(s, 20) == 507046
        assert "timed out" in err_msg()
        assert lib.aclrtSynchronizeStreamWithTimeout(s, -2) == 107000
    ok(lib.aclrtSynchronizeStreamWithTimeout(s, -1))
    ok(lib.aclrtSynchronizeStreamWithTimeout(s, 0))  # idle now


def test_synchronize_event_timeouts(res: Res) -> None:
    s = res.stream()
    e = res.event()
    with held(s):
        ok(lib.aclrtRecordEvent(e, s))
        assert lib.aclrtSynchronizeEventWithTimeout(e, 0) == 507047
        assert lib.aclrtSynchronizeEventWithTimeout(e, 20) == 507047
        assert lib.aclrtSynchronizeEventWithTimeout(e, -2) == 107000
    ok(lib.aclrtSynchronizeEventWithTimeout(e, -1))
    assert query(e) == COMPLETE


def test_null_arguments_are_invalid_param(res: Res) -> None:
    s = res.stream()
    assert lib.aclrtCreateStream(ffi.NULL) == 100000
    assert lib.aclrtCreateEvent(ffi.NULL) == 100000
    assert lib.aclrtQueryEventStatus(ffi.NULL, ffi.new("aclrtEventRecordedStatus*")) == 100000
    assert lib.aclrtStreamQuery(s, ffi.NULL) == 100000
    assert lib.aclrtMalloc(ffi.NULL, 32, 0) == 100000
    assert lib.aclrtFree(ffi.NULL) == 100000


# --------------------------------------------------------------------------------------------
# Memory


def test_oom_and_restore_capacity(res: Res) -> None:
    info_free, info_total = ffi.new("size_t*"), ffi.new("size_t*")
    ok(lib.aclrtGetMemInfo(1, info_free, info_total))
    total = int(info_total[0])
    keep = res.malloc(4096)
    ok(lib.aclrtGetMemInfo(1, info_free, info_total))
    used = int(info_total[0]) - int(info_free[0])  # live blocks are kept when shrinking
    p = ffi.new("void**")
    try:
        ok(lib.aa_sim_set_memory_capacity(0, used + 2048))
        assert lib.aclrtMalloc(p, 1 << 20, 0) == 207001
        assert "out of memory" in err_msg()
        ok(lib.aclrtMalloc(p, 1024, 0))  # still fits beside the live block
        ok(lib.aclrtFree(p[0]))
    finally:
        ok(lib.aa_sim_set_memory_capacity(0, total))
    ok(lib.aclrtMalloc(p, 1 << 20, 0))
    ok(lib.aclrtFree(p[0]))
    assert keep


def test_malloc_size_zero_and_charge(res: Res) -> None:
    p = ffi.new("void**")
    assert lib.aclrtMalloc(p, 0, 0) == 100000
    assert lib.aclrtMallocHost(p, 0) == 100000
    st0 = ffi.new("aa_sim_stats*")
    lib.aa_sim_get_stats(st0)
    ptr = res.malloc(100)
    assert int(ffi.cast("uintptr_t", ptr)) % 64 == 0
    st1 = ffi.new("aa_sim_stats*")
    lib.aa_sim_get_stats(st1)
    assert st1.device_bytes - st0.device_bytes == 128 + 32  # round_up(100, 32) + 32


def test_out_of_bounds_copies_are_errors(res: Res) -> None:
    d = res.malloc(64)
    host = ffi.new("char[]", 256)
    assert lib.aclrtMemcpy(d, 256, host, 128, 1) == 107000  # beyond the device allocation
    assert "overruns" in err_msg()
    assert lib.aclrtMemcpy(host, 256, d, 128, 2) == 107000
    assert lib.aclrtMemcpy(d, 16, host, 32, 1) == 100000  # count > destMax
    assert lib.aclrtMemcpy(d, 64, host, 0, 1) == 0  # count 0: no-op
    assert lib.aclrtMemcpy(ffi.NULL, 64, host, 0, 1) == 0
    assert lib.aclrtMemcpy(d, 64, host, 64, 2) == 107000  # kind says src is device: it isn't
    assert lib.aclrtMemcpy(d, 64, host, 64, 99) == 100000  # unknown kind
    s = res.stream()
    assert lib.aclrtMemcpyAsync(host, 256, host, 16, 0, s) == 207000  # HOST_TO_HOST
    assert lib.aclrtMemcpyAsync(d, 256, host, 128, 1, s) == 107000
    assert lib.aclrtMemcpyAsync(d, 64, host, 0, 1, s) == 0
    assert lib.aclrtMemset(d, 256, 0, 128) == 107000
    assert lib.aclrtMemset(d, 8, 0, 16) == 100000
    assert lib.aclrtMemsetAsync(d, 256, 0, 128, s) == 107000
    assert lib.aclrtMemsetAsync(d, 64, 0, 0, s) == 0
    assert lib.aclrtMemset(host, 256, 0, 16) == 107000  # not acl memory
    ok(lib.aclrtSynchronizeStream(s))


def test_memcpy_round_trip_and_default_kind(res: Res) -> None:
    d = res.malloc(16)
    src = ffi.new("char[]", b"0123456789abcdef")
    out = ffi.new("char[]", 16)
    ok(lib.aclrtMemcpy(d, 16, src, 16, 4))  # DEFAULT infers host-to-device
    ok(lib.aclrtMemcpy(out, 16, d, 16, 4))
    assert ffi.buffer(out)[:] == b"0123456789abcdef"


# --------------------------------------------------------------------------------------------
# Contexts per thread


def _in_thread(fn: Any) -> Any:
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:
            box["error"] = e

    t = threading.Thread(target=run)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box.get("value")


def test_fresh_thread_has_no_context(dev: None) -> None:
    cur = ffi.new("aclrtContext*")
    ok(lib.aclrtGetCurrentContext(cur))
    main_ctx = cur[0]

    def worker() -> None:
        p = ffi.new("aclrtStream*")
        c = ffi.new("aclrtContext*")
        assert lib.aclrtCreateStream(p) == 107002
        assert lib.aclrtGetCurrentContext(c) == 107002
        assert lib.aclrtSynchronizeStream(ffi.NULL) == 107002
        assert lib.aclrtMalloc(ffi.new("void**"), 32, 0) == 107002
        ok(lib.aclrtSetCurrentContext(main_ctx))
        ok(lib.aclrtGetCurrentContext(c))
        assert c[0] == main_ctx
        ok(lib.aclrtCreateStream(p))
        ok(lib.aclrtSynchronizeStream(p[0]))
        ok(lib.aclrtDestroyStream(p[0]))

    _in_thread(worker)


def test_create_context_makes_it_current(dev: None) -> None:
    def worker() -> None:
        ctx = ffi.new("aclrtContext*")
        ok(lib.aclrtCreateContext(ctx, 0))
        cur = ffi.new("aclrtContext*")
        ok(lib.aclrtGetCurrentContext(cur))
        assert cur[0] == ctx[0]
        p = ffi.new("aclrtStream*")
        ok(lib.aclrtCreateStream(p))
        ok(lib.aclrtDestroyStream(p[0]))
        ok(lib.aclrtDestroyContext(ctx[0]))
        assert lib.aclrtGetCurrentContext(cur) == 107002  # destroying the current one clears it

    _in_thread(worker)
    assert lib.aclrtCreateContext(ffi.new("aclrtContext*"), 7) == 107001


def test_stream_of_a_context_used_from_another_thread(dev: None) -> None:
    """A stream created in thread A is usable from thread B once B sets a context on its device."""
    ctx = ffi.new("aclrtContext*")
    ok(lib.aclrtGetCurrentContext(ctx))
    p = ffi.new("aclrtStream*")
    ok(lib.aclrtCreateStream(p))
    s = p[0]

    def worker() -> None:
        assert lib.aclrtSynchronizeStream(s) == 107002
        ok(lib.aclrtSetCurrentContext(ctx[0]))
        ok(lib.aclrtSynchronizeStream(s))

    try:
        _in_thread(worker)
    finally:
        ok(lib.aclrtDestroyStream(s))


# --------------------------------------------------------------------------------------------
# Report callbacks


class ReportThread:
    """A Python thread that sets the context and runs aclrtProcessReport until stopped."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self.ident: int | None = None
        self.ready = threading.Event()
        self.stop = threading.Event()
        self.go = threading.Event()
        self.codes: list[int] = []
        self.thread = threading.Thread(target=self._run)
        self.thread.start()
        self.ready.wait()

    def _run(self) -> None:
        ok(lib.aclrtSetCurrentContext(self.ctx))
        self.ident = threading.get_ident()
        self.ready.set()
        self.go.wait()
        while not self.stop.is_set():
            self.codes.append(lib.aclrtProcessReport(20))

    def join(self) -> None:
        self.stop.set()
        self.go.set()
        self.thread.join()


def test_process_report_codes(dev: None) -> None:
    assert lib.aclrtProcessReport(0) == 100000
    assert lib.aclrtProcessReport(-2) == 100000
    assert lib.aclrtProcessReport(10) == 107012  # this thread is not subscribed
    p = ffi.new("aclrtStream*")
    ok(lib.aclrtCreateStream(p))
    s = p[0]
    me = threading.get_ident()
    try:
        ok(lib.aclrtSubscribeReport(me, s))
        assert lib.aclrtSubscribeReport(me + 1, s) != 0  # one thread per stream
        assert lib.aclrtProcessReport(10) == 507012  # subscribed, nothing queued
        ok(lib.aclrtUnSubscribeReport(me, s))
        assert lib.aclrtUnSubscribeReport(me, s) == 100034
        assert lib.aclrtProcessReport(10) == 107012
    finally:
        ok(lib.aclrtDestroyStream(s))


def test_launch_callback_needs_subscription(res: Res) -> None:
    s = res.stream()

    @ffi.callback("void(void*)")
    def cb(_user: Any) -> None:  # pragma: no cover - never runs
        pass

    assert lib.aclrtLaunchCallback(cb, ffi.NULL, 0, s) == 100034
    assert lib.aclrtLaunchCallback(ffi.NULL, ffi.NULL, 0, s) == 100000


def test_callbacks_run_on_the_subscribed_thread_in_order(res: Res) -> None:
    s = res.stream()
    ctx = ffi.new("aclrtContext*")
    ok(lib.aclrtGetCurrentContext(ctx))
    seen: list[tuple[int, int]] = []
    all_ran = threading.Event()

    @ffi.callback("void(void*)")
    def cb(user: Any) -> None:
        seen.append((int(ffi.cast("intptr_t", user)), threading.get_ident()))
        if len(seen) == 5:
            all_ran.set()

    rt = ReportThread(ctx[0])
    assert rt.ident is not None
    try:
        ok(lib.aclrtSubscribeReport(rt.ident, s))
        for i in range(5):
            ok(lib.aclrtLaunchCallback(cb, ffi.cast("void*", i), 0, s))
        rt.go.set()
        ok(lib.aclrtSynchronizeStream(s))  # NO_BLOCK: retired once queued, not once run
        assert all_ran.wait(10)
    finally:
        rt.join()
        ok(lib.aclrtUnSubscribeReport(rt.ident, s))
    assert [u for u, _ in seen] == [0, 1, 2, 3, 4]
    assert {t for _, t in seen} == {rt.ident}
    assert 0 in rt.codes


def test_blocking_callback_holds_later_tasks(res: Res) -> None:
    s = res.stream()
    e_before, e_after = res.event(), res.event()
    ctx = ffi.new("aclrtContext*")
    ok(lib.aclrtGetCurrentContext(ctx))
    ran = threading.Event()

    @ffi.callback("void(void*)")
    def cb(_user: Any) -> None:
        ran.set()

    rt = ReportThread(ctx[0])
    assert rt.ident is not None
    try:
        ok(lib.aclrtSubscribeReport(rt.ident, s))
        ok(lib.aclrtRecordEvent(e_before, s))
        ok(lib.aclrtLaunchCallback(cb, ffi.NULL, 1, s))  # ACL_CALLBACK_BLOCK
        ok(lib.aclrtRecordEvent(e_after, s))
        ok(lib.aclrtSynchronizeEvent(e_before))
        # The report thread has not processed yet: the stream is stuck behind the callback.
        assert lib.aclrtSynchronizeEventWithTimeout(e_after, 30) == 507047
        assert query(e_after) == NOT_READY
        assert not ran.is_set()
        rt.go.set()
        ok(lib.aclrtSynchronizeEvent(e_after))
        assert ran.is_set()
    finally:
        rt.join()
        ok(lib.aclrtUnSubscribeReport(rt.ident, s))


def test_non_blocking_callback_does_not_hold_the_stream(res: Res) -> None:
    s = res.stream()
    e_after = res.event()
    ctx = ffi.new("aclrtContext*")
    ok(lib.aclrtGetCurrentContext(ctx))
    ran = threading.Event()

    @ffi.callback("void(void*)")
    def cb(_user: Any) -> None:
        ran.set()

    rt = ReportThread(ctx[0])
    assert rt.ident is not None
    try:
        ok(lib.aclrtSubscribeReport(rt.ident, s))
        ok(lib.aclrtLaunchCallback(cb, ffi.NULL, 0, s))
        ok(lib.aclrtRecordEvent(e_after, s))
        ok(lib.aclrtSynchronizeEvent(e_after))  # completes before the callback is processed
        assert not ran.is_set()
        rt.go.set()
        assert ran.wait(5)
    finally:
        rt.join()
        ok(lib.aclrtUnSubscribeReport(rt.ident, s))


# --------------------------------------------------------------------------------------------
# Faults


def test_injected_fault_surfaces_and_is_contained(res: Res) -> None:
    s, other = res.stream(), res.stream()
    e, e_other = res.event(), res.event()
    buf = res.malloc(32)
    st0 = ffi.new("aa_sim_stats*")
    lib.aa_sim_get_stats(st0)
    ok(lib.aa_sim_inject_fault(s, 1, 507015))
    ok(lib.aclrtMemsetAsync(buf, 32, 1, 32, s))  # the faulting task
    ok(lib.aclrtRecordEvent(e, s))
    ok(lib.aclrtMemsetAsync(buf, 32, 2, 32, other))
    ok(lib.aclrtRecordEvent(e_other, other))
    assert lib.aclrtSynchronizeStream(s) == 507015
    assert "injected fault" in err_msg()
    rc, _ = stream_status(s)
    assert rc == 507015
    assert lib.aclrtSynchronizeStreamWithTimeout(s, 0) == 507015
    assert lib.aclrtSynchronizeEvent(e) == 507015
    assert query(e) == NOT_READY  # recorded after the fault: never completes
    assert query(e) == NOT_READY
    ok(lib.aclrtSynchronizeStream(other))
    assert query(e_other) == COMPLETE
    assert stream_status(other) == (0, 0)
    st1 = ffi.new("aa_sim_stats*")
    lib.aa_sim_get_stats(st1)
    assert st1.tasks_failed - st0.tasks_failed == 1
    assert lib.aa_sim_inject_fault(s, 1, 0) == 100000
    assert lib.aa_sim_inject_fault(s, 0, 507015) == 100000


def test_event_recorded_before_fault_completes(res: Res) -> None:
    s = res.stream()
    e_ok, e_bad = res.event(), res.event()
    buf = res.malloc(32)
    ok(lib.aclrtRecordEvent(e_ok, s))
    ok(lib.aa_sim_inject_fault(s, 2, 507015))
    ok(lib.aclrtMemsetAsync(buf, 32, 1, 32, s))
    ok(lib.aclrtMemsetAsync(buf, 32, 1, 32, s))  # the faulting task
    ok(lib.aclrtRecordEvent(e_bad, s))
    ok(lib.aclrtSynchronizeEvent(e_ok))
    assert query(e_ok) == COMPLETE
    assert lib.aclrtSynchronizeStream(s) == 507015
    assert query(e_bad) == NOT_READY


def test_record_captures_only_work_submitted_before_it(res: Res) -> None:
    s = res.stream()
    e = res.event()
    buf = res.malloc(32)
    ok(lib.aclrtMemsetAsync(buf, 32, 1, 32, s))
    ok(lib.aclrtRecordEvent(e, s))
    ok(lib.aclrtSynchronizeEvent(e))
    with held(s):
        ok(lib.aclrtMemsetAsync(buf, 32, 2, 32, s))  # after the record: not captured
        assert query(e) == COMPLETE
        ok(lib.aclrtSynchronizeEvent(e))
        ok(lib.aclrtRecordEvent(e, s))  # re-recording captures the new work
        assert query(e) == NOT_READY
    ok(lib.aclrtSynchronizeEvent(e))
    assert query(e) == COMPLETE


def test_synchronize_device_waits_for_all_streams_and_reports_faults(res: Res) -> None:
    a, b = res.stream(), res.stream()
    ea, eb = res.event(), res.event()
    buf, buf_b = res.malloc(32), res.malloc(32)  # one per stream: they run at once (no race)
    ok(lib.aa_sim_inject_delay(a, 1, 20_000))
    ok(lib.aclrtMemsetAsync(buf, 32, 1, 32, a))
    ok(lib.aclrtRecordEvent(ea, a))
    ok(lib.aclrtMemsetAsync(buf_b, 32, 1, 32, b))
    ok(lib.aclrtRecordEvent(eb, b))
    ok(lib.aclrtSynchronizeDevice())
    assert (query(ea), query(eb)) == (COMPLETE, COMPLETE)
    ok(lib.aa_sim_inject_fault(b, 1, 507015))
    ok(lib.aclrtMemsetAsync(buf_b, 32, 1, 32, b))
    assert lib.aclrtSynchronizeDevice() == 507015


def test_unsubscribe_drops_queued_callbacks(res: Res) -> None:
    """Callbacks queued for a stream and not yet processed never reach a later subscription of
    the same thread id (their user data may be gone: the watcher's report mode relies on it)."""
    s, s2 = res.stream(), res.stream()
    calls: list[int] = []

    @ffi.callback("void(void*)")
    def cb(user: Any) -> None:
        calls.append(int(ffi.cast("intptr_t", user)))

    me = threading.get_ident()
    ok(lib.aclrtSubscribeReport(me, s))
    ok(lib.aclrtLaunchCallback(cb, ffi.cast("void*", 1), 0, s))
    ok(lib.aclrtSynchronizeStream(s))  # queued for this thread, not processed
    ok(lib.aclrtUnSubscribeReport(me, s))
    ok(lib.aclrtSubscribeReport(me, s2))
    try:
        assert lib.aclrtProcessReport(20) == 507012
        assert calls == []
        ok(lib.aclrtLaunchCallback(cb, ffi.cast("void*", 2), 0, s2))
        ok(lib.aclrtSynchronizeStream(s2))
        ok(lib.aclrtProcessReport(1000))
        assert calls == [2]
    finally:
        ok(lib.aclrtUnSubscribeReport(me, s2))


def test_event_sync_after_its_faulted_stream_was_destroyed() -> None:
    """An event recorded behind a fault keeps reporting the fault after the stream is gone
    (the event keeps the stream's state alive) instead of waiting forever."""
    assert lib.aclInit(ffi.NULL) in (0, 100002)
    assert lib.aclrtSetDevice(0) == 0
    try:
        s = ffi.new("aclrtStream*")
        e = ffi.new("aclrtEvent*")
        assert lib.aclrtCreateStream(s) == 0
        assert lib.aclrtCreateEvent(e) == 0
        assert lib.aa_sim_inject_fault(s[0], 1, 507015) == 0
        assert lib.aclrtMemsetAsync(_dev_block(), 64, 0, 64, s[0]) in (0, 107000)
        assert lib.aclrtRecordEvent(e[0], s[0]) == 0
        assert lib.aclrtSynchronizeStream(s[0]) == 507015
        assert lib.aclrtDestroyStream(s[0]) == 0
        assert lib.aclrtSynchronizeEventWithTimeout(e[0], 1000) == 507015
        status = ffi.new("aclrtEventRecordedStatus*")
        assert lib.aclrtQueryEventStatus(e[0], status) == 0
        assert status[0] == lib.ACL_EVENT_RECORDED_STATUS_NOT_READY
        assert lib.aclrtDestroyEvent(e[0]) == 0
    finally:
        _free_dev_block()
        lib.aclGetRecentErrMsg()
        assert lib.aclrtResetDevice(0) == 0


_blocks: list[Any] = []


def _dev_block() -> Any:
    p = ffi.new("void**")
    assert lib.aclrtMalloc(p, 64, 0) == 0
    _blocks.append(p[0])
    return p[0]


def _free_dev_block() -> None:
    while _blocks:
        assert lib.aclrtFree(_blocks.pop()) == 0


def test_device_threads_are_named_for_the_device(res: Res) -> None:
    """The simulated device's worker threads carry its name (``aa-sim-dev0``), so its CPU time
    can be told from the host's (the benchmarks subtract it: on an NPU it is not host CPU)."""
    s = res.stream()
    ok(lib.aclrtSynchronizeStream(s))
    cfg = ffi.new("aa_sim_config*")
    lib.aa_sim_get_config(cfg)
    names = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                names.append(f.read().strip())
        except FileNotFoundError:  # a thread (another test's worker) ended since the listing
            continue
    # At least this runtime's workers (the CANN stand-in tests may load a second copy of the sim).
    assert names.count("aa-sim-dev0") >= cfg.workers
