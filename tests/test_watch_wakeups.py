"""Which submissions wake the watcher thread (issue 21 item 8): while a loop collects its own
completions (its channel is armed, aa_watch_harvest polls), the watcher thread naps, and that
loop's next submission must not wake it (a futex call and a needless poll pass per run on
another core); a submission whose completion nobody polls for (channel 0: a RunGraphAsync or a
watcher-completed run) still wakes it at once.

Driven through the public ABI on a sim stream held by a gate, so nothing completes behind the
test's back; the watcher thread is a plain thread in aa_watch_wait (GIL released by cffi)."""

from __future__ import annotations

import threading
import time
from typing import Any

from helpers import held, wait_until

import ascend_async as aa


def _stats(lib: Any, ffi: Any, w: Any) -> Any:
    st = ffi.new("aa_watch_stats*")
    lib.aa_watch_get_stats(w, st)
    return st


def test_an_armed_loops_own_submission_leaves_the_napping_watcher_asleep() -> None:
    with aa.Session(streams=1) as s:
        dev = s._device
        b = dev.backend
        lib, ffi = b.lib, b.ffi
        dev.ensure_current()
        cfg = ffi.new("aa_watch_config*")
        lib.aa_watch_default_config(cfg)
        cfg.wake_after_us = 20_000_000  # the armed nap: half of it (10 s), longer than the test
        cfg.fault_probe_us = 20_000_000
        w = lib.aa_watch_create(dev.context, cfg)
        assert w != ffi.NULL
        shift = lib.AA_WATCH_CHANNEL_SHIFT
        c = lib.aa_watch_channel_open(w)
        assert c > 0
        # Arm the channel: the loop harvested a completion and says it collects again soon.
        slot = ffi.new("aa_cb_slot*")
        slot.watch = w
        slot.token = (c << shift) | 1
        lib.aa_watch_run_callback(slot, 0, ffi.NULL, 0)
        tokens, codes = ffi.new("uint64_t[]", 8), ffi.new("int32_t[]", 8)
        assert lib.aa_watch_harvest(w, c, tokens, codes, ffi.NULL, 8, 1) == 1
        stream = s.streams[0]
        events = [dev.new_event(None) for _ in range(3)]
        returned: list[int] = []
        thread = None
        try:
            with held(stream):
                for ev in events:
                    assert lib.aclrtRecordEvent(ev, stream.handle) == 0  # held: never completes here
                assert lib.aa_watch_add(w, stream.handle, events[0], (c << shift) | 2) == 0

                def watcher() -> None:
                    t, k = ffi.new("uint64_t[]", 8), ffi.new("int32_t[]", 8)
                    returned.append(lib.aa_watch_wait(w, t, k, ffi.NULL, 8, 30_000))

                thread = threading.Thread(target=watcher, daemon=True)
                thread.start()
                wait_until(lambda: _stats(lib, ffi, w).sleeps >= 1, "the watcher's armed nap")
                before = _stats(lib, ffi, w)
                sleeps, polls = before.sleeps, before.polls
                # The armed loop submits again: its own harvest will find the run.
                assert lib.aa_watch_add(w, stream.handle, events[1], (c << shift) | 3) == 0
                time.sleep(0.2)  # room for a woken watcher to poll and nap again (it must not)
                after = _stats(lib, ffi, w)
                assert (after.sleeps, after.polls) == (sleeps, polls), "the armed loop's submission woke the watcher"
                # A run nobody polls for (channel 0) wakes it at once: it polls the stream.
                assert lib.aa_watch_add(w, stream.handle, events[2], 4) == 0
                wait_until(lambda: _stats(lib, ffi, w).polls > polls, "the channel-0 submission's wake-up")
            stream.synchronize()
        finally:
            lib.aa_watch_close(w)
            if thread is not None:
                thread.join()
            lib.aa_watch_channel_close(w, c)
            lib.aa_watch_destroy(w)
            for ev in events:
                dev.destroy_event(ev)
        assert returned, "the watcher thread returned"
