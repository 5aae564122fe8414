"""The allocation-failure policy (ascend_async/_native/alloc_policy.h) where it can be driven
from outside: a request too large to charge is the documented OOM and leaves nothing behind, and
a runtime start that cannot have its device threads fails with ACL_ERROR_BAD_ALLOC, started
nothing, and may be configured and started again.

The start test runs in a fresh interpreter under an address-space limit (RLIMIT_AS), so that
thread stacks run out long before the configured worker count; the sanitizer jobs, whose
runtimes reserve terabytes of shadow memory, leave this file out."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

from ascend_async._native import _sim

ffi = _sim.ffi
lib = _sim.lib

SIZE_MAX = 2**64 - 1
ACL_ERROR_BAD_ALLOC = 200000
ACL_ERROR_RT_MEMORY_ALLOCATION = 207001


def err_msg() -> str:
    p = lib.aclGetRecentErrMsg()
    return ffi.string(p).decode() if p != ffi.NULL else ""


def sim_stats() -> tuple[int, int, int]:
    st = ffi.new("aa_sim_stats*")
    lib.aa_sim_get_stats(st)
    return st.device_allocations, st.device_bytes, st.host_allocations


@pytest.fixture
def dev() -> Iterator[None]:
    assert lib.aclInit(ffi.NULL) in (0, 100002)
    assert lib.aclrtSetDevice(0) == 0
    yield
    assert lib.aclrtResetDevice(0) == 0


@pytest.mark.parametrize("size", [SIZE_MAX, SIZE_MAX - 31, SIZE_MAX - 62])
def test_a_request_whose_charge_wraps_around_is_out_of_memory(dev: None, size: int) -> None:
    """round_up(n, 32) + 32 wrapped to a few bytes: the block was made that small and recorded
    with `size` usable bytes, so bounds checks let copies run far past it."""
    before = sim_stats()
    p = ffi.new("void**")
    assert lib.aclrtMalloc(p, size, 0) == ACL_ERROR_RT_MEMORY_ALLOCATION
    assert "out of memory" in err_msg()
    assert lib.aclrtMallocHost(p, size) == ACL_ERROR_RT_MEMORY_ALLOCATION
    assert str(size) in err_msg()
    assert sim_stats() == before


def test_the_largest_request_that_still_charges_is_refused_by_capacity(dev: None) -> None:
    """SIZE_MAX - 63 is the first size whose charge does not wrap: the capacity check sees it."""
    p = ffi.new("void**")
    assert lib.aclrtMalloc(p, SIZE_MAX - 63, 0) == ACL_ERROR_RT_MEMORY_ALLOCATION
    assert "in use" in err_msg()  # the capacity message, with the device's usage


START_SCRIPT = textwrap.dedent(
    """
    import resource, sys
    from ascend_async._native import _sim
    ffi, lib = _sim.ffi, _sim.lib

    def msg():
        p = lib.aclGetRecentErrMsg()
        return ffi.string(p).decode() if p != ffi.NULL else ""

    # Room for the interpreter and a few thread stacks, not for 100,000 of them.
    vm_kb = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize:"))
    limit = (vm_kb << 10) + (256 << 20)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    cfg = ffi.new("aa_sim_config*", {"device_count": 2, "workers": 100000})
    assert lib.aa_sim_configure(cfg) == 0
    count = ffi.new("uint32_t*")
    rc = lib.aclrtGetDeviceCount(count)
    print("start", rc, msg())
    # Nothing started: the configuration may still change, and the next call starts afresh.
    print("reconfigure", lib.aa_sim_configure(ffi.new("aa_sim_config*", {"device_count": 2, "workers": 2})))
    print("set", lib.aclrtSetDevice(1), msg())
    print("count", lib.aclrtGetDeviceCount(count), count[0])
    # The restarted device runs work: a memset on a stream, then synchronize.
    stream = ffi.new("aclrtStream*")
    assert lib.aclrtCreateStream(stream) == 0
    buf = ffi.new("void**")
    assert lib.aclrtMalloc(buf, 4096, 0) == 0
    assert lib.aclrtMemsetAsync(buf[0], 4096, 7, 4096, stream[0]) == 0
    assert lib.aclrtSynchronizeStream(stream[0]) == 0
    print("byte", ffi.cast("unsigned char*", buf[0])[4095])
    assert lib.aclrtFree(buf[0]) == 0
    assert lib.aclrtDestroyStream(stream[0]) == 0
    assert lib.aclrtResetDevice(1) == 0
    sys.stdout.flush()
    """
)


def test_a_start_without_its_device_threads_fails_and_starts_again() -> None:
    """Before: pthread_create's failures were ignored, the runtime counted as started with the
    threads it got, and the configuration could no longer change."""
    proc = subprocess.run(
        [sys.executable, "-c", START_SCRIPT], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines())
    rc, message = lines["start"].split(" ", 1)
    assert int(rc) == ACL_ERROR_BAD_ALLOC
    assert "cannot create a device thread" in message
    assert lines["reconfigure"] == "0"
    assert lines["set"].split(" ", 1)[0] == "0"
    assert lines["count"] == "0 2"
    assert lines["byte"] == "7"
