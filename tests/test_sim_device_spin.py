"""The sim's device threads spin for more work only inside a host submission (issue 21 item 8).

A device thread that runs out of work looks again for a few microseconds before it sleeps, to
catch the next task of the same submission (copies, graph, record arrive back to back). After
an event record, which ends a submission, it sleeps at once: the host thread waiting for that
event may share its core, and a spin there delayed the completion's notice by the whole spin
(a flat +30 us on 2 cores). Counted by ``aa_sim_stats.device_spins``; after each task the test
gives the device thread ample time to decide (a spin or a sleep follows in microseconds)."""

from __future__ import annotations

import time

from helpers import sim_stats

import ascend_async as aa


def _spins_after(submit: object, stream: aa.Stream) -> int:
    stream.synchronize()
    time.sleep(0.05)  # every device thread has settled: asleep, no spin under way
    before = sim_stats()["device_spins"]
    submit()  # type: ignore[operator]
    stream.synchronize()
    time.sleep(0.05)  # room for the device thread to spin, or to sleep
    return sim_stats()["device_spins"] - before


def test_no_spin_after_an_event_record_and_one_after_a_copy() -> None:
    with aa.Session(streams=1) as s:
        dev = s._device
        lib = dev.backend.lib
        stream = s.streams[0]
        ev = dev.new_event(None)
        dst = dev.alloc(dev.device_pool, 64, "test")
        src = dev.alloc(dev.host_pool, 64, "test")
        try:
            dev.ensure_current()
            # An event record ends a submission: the thread sleeps at once.
            assert _spins_after(lambda: lib.aclrtRecordEvent(ev, stream.handle), stream) == 0
            # A copy may be followed by more of its submission: the thread looks again once.
            h2d = lib.ACL_MEMCPY_HOST_TO_DEVICE
            assert _spins_after(lambda: lib.aclrtMemcpyAsync(dst, 64, src, 64, h2d, stream.handle), stream) == 1
        finally:
            stream.synchronize()
            lib.aa_pool_free(dev.device_pool, dst)
            lib.aa_pool_free(dev.host_pool, src)
            dev.destroy_event(ev)
