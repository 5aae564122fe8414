"""The loop side of completion (``_loop.LoopBridge``, issue 21 item 8): how a loop admits a
closed loop of submissions, and how an idle loop is woken.

- A burst of new callers parks in ``admit`` (a loop iteration admits ``SUBMIT_BUDGET``
  submissions), but a run that finished frees a place for the run replacing it: the backlog
  drains and, after it, runs no longer park (they used to, nearly every one at c=64: each then
  suspended twice).
- On asyncio and uvloop the C watch wakes an idle loop through an eventfd its selector watches:
  the watcher thread never posts a wake-up there (trio still gets posted ones), and the fd is
  closed once the loop is gone.
"""

from __future__ import annotations

import asyncio
import gc
import os
import weakref
from typing import Any

import anyio
import numpy as np
import pytest
from helpers import add_model

import ascend_async
from ascend_async import _loop
from ascend_async._loop import SUBMIT_BUDGET, current_bridge

CONCURRENCY = 64
RUNS_EACH = 30


@pytest.mark.anyio
async def test_a_closed_loop_parks_only_its_first_burst_and_every_result_is_its_own() -> None:
    async with ascend_async.Session(streams=2, max_in_flight=1000) as s:
        g = add_model(s)
        await s.load(g)
        bridge = current_bridge()
        parked0 = bridge.parked
        rng = np.random.default_rng(11)
        xs = rng.standard_normal((CONCURRENCY, 3, 4)).astype(np.float32)
        ys = rng.standard_normal((CONCURRENCY, 3, 4)).astype(np.float32)
        wrong: list[int] = []

        async def worker(i: int) -> None:
            for _ in range(RUNS_EACH):
                out = await s.run(g, {"x": xs[i], "y": ys[i]})
                if not np.array_equal(out["z"], xs[i] + ys[i]):
                    wrong.append(i)

        async with anyio.create_task_group() as tg:
            for i in range(CONCURRENCY):
                tg.start_soon(worker, i)
        parked = bridge.parked - parked0
        assert wrong == []
        # The first burst parks (all but SUBMIT_BUDGET of it), and the backlog takes a few
        # iterations to drain; the steady state parks nothing. Before a finished run freed a
        # place, about nine runs in ten parked here (some 1,700 of these 1,920).
        assert CONCURRENCY - SUBMIT_BUDGET <= parked <= 4 * CONCURRENCY, parked
        assert s.statistics().completed >= CONCURRENCY * RUNS_EACH


def _count_posted_wakeups(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    posted = [0]
    real = _loop.LoopBridge.wake

    def wake(self: _loop.LoopBridge) -> bool:
        posted[0] += 1
        return real(self)

    monkeypatch.setattr(_loop.LoopBridge, "wake", wake)
    return posted


@pytest.mark.anyio
async def test_an_idle_loop_is_woken_by_its_eventfd_on_asyncio_and_by_a_post_on_trio(
    anyio_backend: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    posted = _count_posted_wakeups(monkeypatch)
    async with ascend_async.Session(streams=1) as s:
        g = add_model(s)
        await s.load(g)
        bridge = current_bridge()
        woken0, posted0 = bridge.wakeups, posted[0]
        x = np.arange(12, dtype=np.float32).reshape(3, 4)
        for k in range(20):
            # Idle between runs: the drain that found nothing disarmed the channel, so each
            # completion has to wake the loop.
            await anyio.sleep(0.002)
            out = await s.run(g, {"x": x, "y": x * k})
            np.testing.assert_array_equal(out["z"], x + x * k)
        woken = bridge.wakeups - woken0
        posted[0] -= posted0
    trio_loop = anyio_backend[0] == "trio"
    assert woken >= 1
    if trio_loop:
        assert posted[0] >= 1  # trio: the watcher thread posts them (run_sync_soon)
    else:
        assert posted[0] == 0  # the C watch wrote the loop's eventfd; the watcher thread never posted
        assert bridge._wake_fd is not None


def test_a_loops_eventfd_is_closed_once_the_loop_is_gone() -> None:
    """Where there is no ``os.eventfd`` (not Linux), the loop has none and is woken by posts,
    which the test above covers; the runs still come back right."""
    has_eventfd = hasattr(os, "eventfd")
    seen: dict[str, Any] = {}

    async def main(s: ascend_async.Session, g: ascend_async.Graph) -> None:
        x = np.ones((3, 4), np.float32)
        out = await s.run(g, {"x": x, "y": x})
        np.testing.assert_array_equal(out["z"], x + x)
        wake_fd = current_bridge()._wake_fd
        if not has_eventfd:
            assert wake_fd is None
            return
        assert wake_fd is not None
        seen["fd"] = wake_fd.fd
        seen["ref"] = weakref.ref(wake_fd)
        os.fstat(wake_fd.fd)  # open while the loop runs

    with ascend_async.Session(streams=1) as s:
        g = add_model(s)
        asyncio.run(main(s, g))
        gc.collect()
        if has_eventfd:
            assert seen["ref"]() is None, "the loop is gone but its eventfd is still held"
            watcher = s._device.get_watcher()
            assert all(n.fd != seen["fd"] for n in watcher._notify.values())
        # And a new loop gets a fresh one that works.
        asyncio.run(main(s, g))
