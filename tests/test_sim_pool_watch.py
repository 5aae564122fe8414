"""The backend-neutral C helpers on the sim: aa_pool (caching allocator) and aa_watch (completion
watcher, poll and report strategies). Driven by stream gates and injected faults, never sleeps."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import held

from ascend_async._native import _sim

ffi = _sim.ffi
lib = _sim.lib

POLL, REPORT = 0, 1


def ok(rc: int) -> None:
    if rc:
        p = lib.aclGetRecentErrMsg()
        raise AssertionError(f"aclError {rc}: {ffi.string(p).decode() if p != ffi.NULL else ''}")


def sim_stats() -> Any:
    st = ffi.new("aa_sim_stats*")
    lib.aa_sim_get_stats(st)
    return st


def pool_stats(pool: Any) -> Any:
    st = ffi.new("aa_pool_stats*")
    lib.aa_pool_get_stats(pool, st)
    return st


@pytest.fixture
def ctx() -> Iterator[Any]:
    assert lib.aclInit(ffi.NULL) in (0, 100002)
    ok(lib.aclrtSetDevice(0))
    c = ffi.new("aclrtContext*")
    ok(lib.aclrtGetCurrentContext(c))
    yield c[0]
    ok(lib.aclrtResetDevice(0))


# --------------------------------------------------------------------------------------------
# aa_pool


def test_pool_hits_misses_and_size_classes(ctx: Any) -> None:
    base = sim_stats().device_allocations
    pool = lib.aa_pool_create(0, 1 << 20)
    err = ffi.new("aclError*", -1)
    try:
        a = lib.aa_pool_alloc(pool, 100, err)
        assert a != ffi.NULL and err[0] == 0
        st = pool_stats(pool)
        assert (st.misses, st.hits, st.live_blocks, st.live_bytes) == (1, 0, 1, 512)
        lib.aa_pool_free(pool, a)
        st = pool_stats(pool)
        assert (st.live_blocks, st.cached_blocks, st.cached_bytes) == (0, 1, 512)
        assert sim_stats().device_allocations == base + 1  # cached, not returned
        b = lib.aa_pool_alloc(pool, 400, err)  # same 512-byte class: a hit, the same block
        assert b == a
        st = pool_stats(pool)
        assert (st.hits, st.misses, st.cached_blocks) == (1, 1, 0)
        c = lib.aa_pool_alloc(pool, 513, err)  # next class: a miss
        assert c != a
        assert pool_stats(pool).misses == 2
        assert pool_stats(pool).live_bytes == 512 + 1024
        lib.aa_pool_free(pool, b)
        lib.aa_pool_free(pool, c)
        lib.aa_pool_free(pool, c)  # unknown now: ignored, the cache is not corrupted
        lib.aa_pool_free(pool, ffi.NULL)
        st = pool_stats(pool)
        assert (st.live_blocks, st.cached_blocks, st.cached_bytes) == (0, 2, 1536)
        lib.aa_pool_trim(pool)
        st = pool_stats(pool)
        assert (st.cached_blocks, st.cached_bytes) == (0, 0)
        assert sim_stats().device_allocations == base
    finally:
        assert lib.aa_pool_destroy(pool) == 0


def test_pool_destroy_counts_and_frees_live_blocks(ctx: Any) -> None:
    base = sim_stats().device_allocations
    pool = lib.aa_pool_create(0, 1 << 20)
    blocks = [lib.aa_pool_alloc(pool, 64 * (i + 1), ffi.NULL) for i in range(3)]
    lib.aa_pool_free(pool, blocks[0])
    assert sim_stats().device_allocations == base + 3
    assert lib.aa_pool_destroy(pool) == 2  # two were still live
    assert sim_stats().device_allocations == base


def test_pool_cache_limit(ctx: Any) -> None:
    pool = lib.aa_pool_create(0, 1024)
    try:
        blocks = [lib.aa_pool_alloc(pool, 512, ffi.NULL) for _ in range(3)]
        for b in blocks:
            lib.aa_pool_free(pool, b)
        st = pool_stats(pool)
        assert (st.cached_blocks, st.cached_bytes) == (2, 1024)  # the third went back
    finally:
        assert lib.aa_pool_destroy(pool) == 0


def test_pool_host_kind(ctx: Any) -> None:
    base = sim_stats().host_allocations
    pool = lib.aa_pool_create(1, 1 << 20)
    try:
        p = lib.aa_pool_alloc(pool, 1000, ffi.NULL)
        assert sim_stats().host_allocations == base + 1
        # Host pool memory is page-locked acl memory: usable with memset.
        ok(lib.aclrtMemset(p, 1000, 3, 1000))
        lib.aa_pool_free(pool, p)
    finally:
        assert lib.aa_pool_destroy(pool) == 0
    assert sim_stats().host_allocations == base


def test_pool_trims_its_cache_on_oom_then_reports_the_error(ctx: Any) -> None:
    free_, total = ffi.new("size_t*"), ffi.new("size_t*")
    ok(lib.aclrtGetMemInfo(1, free_, total))
    pool = lib.aa_pool_create(0, 1 << 30)
    err = ffi.new("aclError*")
    try:
        big = lib.aa_pool_alloc(pool, 1 << 20, err)
        lib.aa_pool_free(pool, big)
        assert pool_stats(pool).cached_blocks == 1
        used = int(total[0]) - int(free_[0])
        ok(lib.aa_sim_set_memory_capacity(0, used + (1 << 20) + 4096))
        # Another class does not fit beside the cached block: the pool trims and retries.
        p = lib.aa_pool_alloc(pool, 1 << 19, err)
        assert p != ffi.NULL and err[0] == 0
        assert pool_stats(pool).cached_blocks == 0
        q = lib.aa_pool_alloc(pool, 2 << 20, err)
        assert q == ffi.NULL and err[0] == 207001
        lib.aa_pool_free(pool, p)
    finally:
        ok(lib.aa_sim_set_memory_capacity(0, int(total[0])))
        assert lib.aa_pool_destroy(pool) == 0


# --------------------------------------------------------------------------------------------
# aa_watch


class Streams:
    def __init__(self, n: int) -> None:
        self.streams = []
        self.events: list[Any] = []
        # One buffer per stream: streams run at once, and two writing one buffer would race
        # (ThreadSanitizer says so).
        self.bufs: dict[Any, Any] = {}
        for _ in range(n):
            p = ffi.new("aclrtStream*")
            ok(lib.aclrtCreateStream(p))
            self.streams.append(p[0])
            b = ffi.new("void**")
            ok(lib.aclrtMalloc(b, 64, 0))
            self.bufs[p[0]] = b[0]

    def record(self, s: Any) -> Any:
        e = ffi.new("aclrtEvent*")
        ok(lib.aclrtCreateEvent(e))
        self.events.append(e[0])
        ok(lib.aclrtMemsetAsync(self.bufs[s], 64, 1, 64, s))
        ok(lib.aclrtRecordEvent(e[0], s))
        return e[0]

    def close(self) -> None:
        for s in self.streams:
            lib.aa_sim_stream_release(s)
            lib.aclrtSynchronizeStream(s)
            ok(lib.aclrtDestroyStream(s))
        for e in self.events:
            ok(lib.aclrtDestroyEvent(e))
        for b in self.bufs.values():
            ok(lib.aclrtFree(b))


def make_watch(ctx: Any, strategy: int) -> Any:
    cfg = ffi.new("aa_watch_config*", {"strategy": strategy, "fault_probe_us": 1000})
    return lib.aa_watch_create(ctx, cfg)


def drain(watch: Any, want: int, idle_waits: int = 50) -> dict[int, int]:
    """Collects (token -> code) until `want` arrived; fails on a duplicate, or after
    ``idle_waits`` waits in a row (200 ms each) that brought nothing: a hang, not a speed."""
    tokens, codes, ns = ffi.new("uint64_t[64]"), ffi.new("int32_t[64]"), ffi.new("uint64_t[64]")
    got: dict[int, int] = {}
    idle = 0
    while len(got) < want:
        assert idle < idle_waits, f"only {len(got)} of {want} came back"
        n = lib.aa_watch_wait(watch, tokens, codes, ns, 64, 200)
        assert n >= 0
        idle = 0 if n else idle + 1
        for i in range(n):
            assert tokens[i] not in got, f"token {tokens[i]} came back twice"
            assert ns[i] > 0
            got[int(tokens[i])] = int(codes[i])
    return got


@pytest.mark.parametrize("strategy", [POLL, REPORT], ids=["poll", "report"])
def test_watch_returns_every_token_once(ctx: Any, strategy: int) -> None:
    ss = Streams(2)
    watch = make_watch(ctx, strategy)
    try:
        tokens, codes = ffi.new("uint64_t[4]"), ffi.new("int32_t[4]")
        with held(*ss.streams):
            for i in range(100):
                s = ss.streams[i % 2]
                ok(lib.aa_watch_add(watch, s, ss.record(s), i))
            assert lib.aa_watch_wait(watch, tokens, codes, ffi.NULL, 4, 20) == 0  # all held
        got = drain(watch, 100)
        assert got == dict.fromkeys(range(100), 0)
        assert lib.aa_watch_wait(watch, tokens, codes, ffi.NULL, 4, 20) == 0  # nothing more
        st = ffi.new("aa_watch_stats*")
        lib.aa_watch_get_stats(watch, st)
        assert (st.added, st.completed, st.failed, st.pending) == (100, 100, 0, 0)
    finally:
        lib.aa_watch_destroy(watch)
        ss.close()


@pytest.mark.parametrize("strategy", [POLL, REPORT], ids=["poll", "report"])
def test_watch_reports_a_faulted_stream(ctx: Any, strategy: int) -> None:
    ss = Streams(2)
    bad, good = ss.streams
    watch = make_watch(ctx, strategy)
    try:
        for i in range(2):
            s = bad if i % 2 else good
            ok(lib.aa_watch_add(watch, s, ss.record(s), i))
        got = drain(watch, 2)  # token 1 completed before anything faulted
        # The next task on `bad` faults (report mode queues a callback task per add, so count
        # from here rather than from the stream's start).
        ok(lib.aa_sim_inject_fault(bad, 1, 507015))
        for i in range(2, 20):
            s = bad if i % 2 else good
            ok(lib.aa_watch_add(watch, s, ss.record(s), i))
        got.update(drain(watch, 18))
        assert {t: c for t, c in got.items() if t % 2 == 0} == dict.fromkeys(range(0, 20, 2), 0)
        bad_codes = [got[t] for t in range(1, 20, 2)]
        assert bad_codes[0] == 0
        assert bad_codes[1:] == [507015] * 9
        st = ffi.new("aa_watch_stats*")
        lib.aa_watch_get_stats(watch, st)
        assert (st.completed, st.failed, st.pending) == (11, 9, 0)
    finally:
        lib.aa_watch_destroy(watch)
        ss.close()


def test_report_watch_completes_a_run_whose_own_callback_failed(ctx: Any) -> None:
    """Report mode: the event completed, then the callback task behind it faulted (so it never
    calls back). The probe must report the run as done (code 0), not lost, and not hang."""
    ss = Streams(1)
    (s,) = ss.streams
    watch = make_watch(ctx, REPORT)
    try:
        # From here: task 1 is record()'s memset, 2 the record, 3 the callback aa_watch_add launches.
        ok(lib.aa_sim_inject_fault(s, 3, 507015))
        ok(lib.aa_watch_add(watch, s, ss.record(s), 7))
        assert drain(watch, 1) == {7: 0}
    finally:
        lib.aa_watch_destroy(watch)
        ss.close()


def test_watch_fail_stream_returns_pending_tokens(ctx: Any) -> None:
    ss = Streams(1)
    (s,) = ss.streams
    watch = make_watch(ctx, POLL)
    try:
        with held(s):  # the work never runs: failing the stream returns its tokens
            for i in range(5):
                ok(lib.aa_watch_add(watch, s, ss.record(s), i))
            lib.aa_watch_fail_stream(watch, s, 107017)
            assert drain(watch, 5) == dict.fromkeys(range(5), 107017)
    finally:
        lib.aa_watch_destroy(watch)
        ss.close()


def test_watch_kick_and_close(ctx: Any) -> None:
    watch = make_watch(ctx, POLL)
    tokens, codes = ffi.new("uint64_t[4]"), ffi.new("int32_t[4]")
    results: list[int] = []
    try:
        entered = threading.Event()

        def waiter() -> None:
            entered.set()
            results.append(lib.aa_watch_wait(watch, tokens, codes, ffi.NULL, 4, -1))

        t = threading.Thread(target=waiter)
        t.start()
        entered.wait()
        lib.aa_watch_kick(watch)
        t.join(10)
        assert not t.is_alive()
        assert results == [0]
        t = threading.Thread(target=waiter)
        t.start()
        lib.aa_watch_close(watch)
        t.join(10)
        assert not t.is_alive()
        assert results == [0, -1]
        assert lib.aa_watch_wait(watch, tokens, codes, ffi.NULL, 4, -1) == -1  # stays closed
    finally:
        lib.aa_watch_destroy(watch)


def test_watch_wait_times_out_with_zero(ctx: Any) -> None:
    watch = make_watch(ctx, POLL)
    try:
        t0 = lib.aa_monotonic_ns()
        assert lib.aa_watch_wait(watch, ffi.new("uint64_t[1]"), ffi.new("int32_t[1]"), ffi.NULL, 1, 30) == 0
        assert lib.aa_monotonic_ns() - t0 >= 30_000_000
    finally:
        lib.aa_watch_destroy(watch)


def test_watch_waiter_thread_needs_no_context_of_its_own(ctx: Any) -> None:
    """aa_watch_wait sets the watch's context on whichever thread waits (a fresh Python thread)."""
    ss = Streams(1)
    (s,) = ss.streams
    watch = make_watch(ctx, POLL)
    out: list[dict[int, int]] = []
    try:
        ok(lib.aa_watch_add(watch, s, ss.record(s), 42))
        t = threading.Thread(target=lambda: out.append(drain(watch, 1)))
        t.start()
        t.join(10)
        assert out == [{42: 0}]
    finally:
        lib.aa_watch_destroy(watch)
        ss.close()
