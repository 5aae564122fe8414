"""The simulated device never needs the GIL: device work progresses while a Python thread holds
it, and a thread blocked in a C call (GIL released by cffi) does not stop other Python threads."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import held

from ascend_async._native import _sim

ffi = _sim.ffi
lib = _sim.lib


def ok(rc: int) -> None:
    assert rc == 0, f"aclError {rc}"


class Dev:
    def __init__(self) -> None:
        p = ffi.new("aclrtStream*")
        ok(lib.aclrtCreateStream(p))
        self.stream = p[0]
        self.events: list[Any] = []
        b = ffi.new("void**")
        ok(lib.aclrtMalloc(b, 64, 0))
        self.buf = b[0]

    def event(self) -> Any:
        p = ffi.new("aclrtEvent*")
        ok(lib.aclrtCreateEvent(p))
        self.events.append(p[0])
        return p[0]

    def close(self) -> None:
        lib.aa_sim_stream_release(self.stream)
        ok(lib.aclrtSynchronizeStream(self.stream))
        ok(lib.aclrtDestroyStream(self.stream))
        for e in self.events:
            ok(lib.aclrtDestroyEvent(e))
        ok(lib.aclrtFree(self.buf))


@pytest.fixture
def dev() -> Iterator[Dev]:
    assert lib.aclInit(ffi.NULL) in (0, 100002)
    ok(lib.aclrtSetDevice(0))
    d = Dev()
    yield d
    d.close()
    ok(lib.aclrtResetDevice(0))


@pytest.fixture
def gil_hog() -> Iterator[None]:
    """A long switch interval: a busy Python thread keeps the GIL instead of handing it over."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(5.0)
    yield
    sys.setswitchinterval(old)


def busy(seconds: float) -> int:
    """A pure-Python loop that holds the GIL; returns the monotonic ns at its end."""
    end = lib.aa_monotonic_ns() + int(seconds * 1e9)
    n = 0
    while lib.aa_monotonic_ns() < end:
        n += 1
    return lib.aa_monotonic_ns()


def test_device_completes_while_python_holds_the_gil(dev: Dev, gil_hog: None) -> None:
    """Gated: the stream is held until this thread, busy in Python with the GIL, releases it;
    the device then finishes while this thread keeps the GIL (it never waits in C)."""
    e = dev.event()
    with held(dev.stream):
        ok(lib.aclrtMemsetAsync(dev.buf, 64, 1, 64, dev.stream))
        ok(lib.aclrtRecordEvent(e, dev.stream))
        st = ffi.new("aclrtEventRecordedStatus*")
        ok(lib.aclrtQueryEventStatus(e, st))
        assert st[0] == 0  # the gate holds it
    deadline = lib.aa_monotonic_ns() + 5_000_000_000
    spins = 0
    while lib.aa_monotonic_ns() < deadline:
        spins += 1
        if spins % 1000 == 0:
            ok(lib.aclrtQueryEventStatus(e, st))
            if st[0] == 1:
                break
    assert st[0] == 1, "the device did not finish while Python held the GIL"
    ts = ffi.new("uint64_t*")
    ok(lib.aclrtEventGetTimestamp(e, ts))
    assert ts[0] < lib.aa_monotonic_ns()


def test_device_completes_while_another_python_thread_holds_the_gil(dev: Dev, gil_hog: None) -> None:
    e = dev.event()
    with held(dev.stream) as gate:
        ok(lib.aa_sim_inject_delay(dev.stream, 1, 50_000))
        ok(lib.aclrtMemsetAsync(dev.buf, 64, 1, 64, dev.stream))
        ok(lib.aclrtRecordEvent(e, dev.stream))
        box: dict[str, int] = {}

        def hog() -> None:
            gate.release()  # released from the GIL-holding thread
            box["end"] = busy(0.3)
            st = ffi.new("aclrtEventRecordedStatus*")
            ok(lib.aclrtQueryEventStatus(e, st))
            box["status"] = int(st[0])

        t = threading.Thread(target=hog)
        t.start()
        t.join()
    ts = ffi.new("uint64_t*")
    ok(lib.aclrtEventGetTimestamp(e, ts))
    assert box["status"] == 1
    assert ts[0] < box["end"]


def test_blocked_synchronize_does_not_stop_python(dev: Dev) -> None:
    """Gated: while one thread sits in aclrtSynchronizeStream on a held stream, this thread runs
    Python; only then is the stream released."""
    ctx = ffi.new("aclrtContext*")
    ok(lib.aclrtGetCurrentContext(ctx))
    span: dict[str, int] = {}
    entering = threading.Event()

    def syncer() -> None:
        ok(lib.aclrtSetCurrentContext(ctx[0]))
        span["start"] = lib.aa_monotonic_ns()
        entering.set()
        span["rc"] = lib.aclrtSynchronizeStream(dev.stream)
        span["end"] = lib.aa_monotonic_ns()

    with held(dev.stream):
        ok(lib.aclrtMemsetAsync(dev.buf, 64, 1, 64, dev.stream))
        t = threading.Thread(target=syncer)
        t.start()
        entering.wait()
        ticks: list[int] = []
        for _ in range(50):
            ticks.append(lib.aa_monotonic_ns())  # Python work in this thread
            t.join(0.001)
        alive = t.is_alive()
    t.join(10)
    assert alive and not t.is_alive()
    assert span["rc"] == 0
    inside = [x for x in ticks if span["start"] < x < span["end"]]
    assert len(inside) == 50, "the main thread could not run Python while the other was blocked in C"


def test_blocked_watch_wait_does_not_stop_python(dev: Dev) -> None:
    ctx = ffi.new("aclrtContext*")
    ok(lib.aclrtGetCurrentContext(ctx))
    watch = lib.aa_watch_create(ctx[0], ffi.NULL)
    try:
        e = dev.event()
        got: list[int] = []
        tokens, codes = ffi.new("uint64_t[4]"), ffi.new("int32_t[4]")

        def waiter() -> None:
            n = lib.aa_watch_wait(watch, tokens, codes, ffi.NULL, 4, 10_000)
            got.extend(int(tokens[i]) for i in range(n))

        with held(dev.stream):
            ok(lib.aclrtMemsetAsync(dev.buf, 64, 1, 64, dev.stream))
            ok(lib.aclrtRecordEvent(e, dev.stream))
            ok(lib.aa_watch_add(watch, dev.stream, e, 9))
            t = threading.Thread(target=waiter)
            t.start()
            # This thread runs Python (and the release) while the waiter sits in C.
            total = sum(range(200_000))
            assert t.is_alive()
        t.join(10)
        assert not t.is_alive()
        assert got == [9] and total > 0
    finally:
        lib.aa_watch_destroy(watch)
