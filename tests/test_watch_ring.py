"""aa_watch's completion queues are growable rings (issue 21): pushes and pops across the ring's
wrap-around and across its growth keep FIFO order, with each token's code and time. Through the
public ABI only: aa_watch_run_callback queues a completion under a token (its top bits name the
channel), aa_watch_harvest pops a loop channel's queue, aa_watch_wait pops channel 0's, and
closing a channel moves its queue to channel 0. No runtime call is made (no stream, no event).

The schedules know the ring's first capacity (256 items) so that they wrap before they grow;
the random phase pushes and pops in uneven bursts through several growths. The reference is a
plain deque."""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterator
from typing import Any

import pytest

from ascend_async._native import _sim

ffi = _sim.ffi
lib = _sim.lib

FIRST_CAPACITY = 256  # the ring's first allocation (common/watch.c)
WAKE = lib.AA_WATCH_WAKE


class Queue:
    """One completion queue of a watch and its reference model: tokens pushed on `channel`
    (0 = the watcher thread's queue) must come back exactly in push order, codes with them."""

    def __init__(self, watch: Any, channel: int) -> None:
        self.watch = watch
        self.channel = channel
        self.slot = ffi.new("aa_cb_slot*")
        self.slot.watch = watch
        self.model: deque[tuple[int, int]] = deque()
        self.seq = 0
        self.cap = 4096
        self.tokens = ffi.new("uint64_t[]", self.cap)
        self.codes = ffi.new("int32_t[]", self.cap)
        self.ns = ffi.new("uint64_t[]", self.cap)
        self.last_ns = 0
        self.check_ns = True  # noticed times rise in FIFO order (not across a channel's move)

    def push(self, count: int) -> None:
        for _ in range(count):
            self.seq += 1
            token = (self.channel << lib.AA_WATCH_CHANNEL_SHIFT) | self.seq
            status = self.seq % 3  # 0: success; 1, 2: a failed run's GE status, carried as the code
            self.slot.token = token
            lib.aa_watch_run_callback(self.slot, status, ffi.NULL, 0)
            self.model.append((token, status))

    def _check(self, n: int) -> None:
        for i in range(n):
            want = self.model.popleft()
            assert (self.tokens[i], self.codes[i]) == want, f"item {i} of a pop of {n}"
            if self.check_ns:
                assert self.ns[i] >= self.last_ns, "completions came back out of the order they were noticed"
            self.last_ns = self.ns[i]

    def pop(self, most: int) -> int:
        """Pops up to `most` and checks them against the model; returns how many came back."""
        if self.channel:
            n = lib.aa_watch_harvest(self.watch, self.channel, self.tokens, self.codes, self.ns, most, -1)
        else:
            n = lib.aa_watch_wait(self.watch, self.tokens, self.codes, self.ns, most, 0)
            assert all(self.codes[i] != WAKE for i in range(max(n, 0))), "no channel is open: no wake-ups"
            n = max(n, 0)
        assert n == min(most, len(self.model)), f"popped {n} of {len(self.model)} queued (asked for {most})"
        self._check(n)
        return n


@pytest.fixture
def watch() -> Iterator[Any]:
    w = lib.aa_watch_create(ffi.NULL, ffi.NULL)
    assert w != ffi.NULL
    yield w
    lib.aa_watch_destroy(w)


def wrap_then_grow(q: Queue) -> None:
    """Fills the first ring with its oldest item in the middle, so the items wrap past its end,
    then pushes one more: the growth must lay out both segments in order."""
    q.push(200)
    assert q.pop(150) == 150  # the oldest item now sits at index 150
    q.push(FIRST_CAPACITY - 50)  # full: indices 150..255, then 0..149
    q.push(1)  # grows with a wrapped ring
    assert q.pop(7) == 7
    q.push(300)  # wraps in the grown ring, then grows again past 512
    while q.model:
        q.pop(61)


def random_bursts(q: Queue, rng: random.Random) -> None:
    for _ in range(400):
        q.push(rng.randrange(0, 90))
        q.pop(rng.randrange(0, 80))
    while q.model:
        q.pop(rng.randrange(1, 500))


def test_loop_channel_queue_keeps_fifo_order_across_wrap_and_growth(watch: Any) -> None:
    channel = lib.aa_watch_channel_open(watch)
    assert channel > 0
    q = Queue(watch, channel)
    wrap_then_grow(q)
    random_bursts(q, random.Random(21))
    assert q.pop(64) == 0
    lib.aa_watch_channel_close(watch, channel)
    st = ffi.new("aa_watch_stats*")
    lib.aa_watch_get_stats(watch, st)
    assert st.harvested == q.seq
    assert st.completed + st.failed == q.seq
    assert st.failed == sum(1 for s in range(1, q.seq + 1) if s % 3)


def test_channel_zero_queue_keeps_fifo_order_across_wrap_and_growth(watch: Any) -> None:
    q = Queue(watch, 0)
    wrap_then_grow(q)
    random_bursts(q, random.Random(2021))
    assert q.pop(64) == 0


def test_closing_a_wrapped_channel_moves_its_queue_to_channel_zero_in_order(watch: Any) -> None:
    channel = lib.aa_watch_channel_open(watch)
    q = Queue(watch, channel)
    q.push(200)
    assert q.pop(150) == 150
    q.push(FIRST_CAPACITY - 50)  # a full, wrapped ring
    zero = Queue(watch, 0)
    zero.push(5)  # channel 0 already holds some: the moved ones queue behind them
    lib.aa_watch_channel_close(watch, channel)
    zero.model.extend(q.model)  # what the channel held, oldest first
    zero.check_ns = False  # the moved ones were noticed before channel 0's five
    q.model.clear()
    zero.pop(3)
    zero.pop(1000)
    assert not zero.model
