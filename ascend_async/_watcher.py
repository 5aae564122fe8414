"""The completion watcher and the loop bridges.

Threads and hand-offs (each crossing is made exactly here):

- An **event-loop thread** submits a run, records its event, stores the job under a fresh
  token in ``Watcher.jobs`` and only then hands (stream, event, token) to the C watch
  (``aa_watch_add``). From then on the watcher owns the job's device resources.
- The **watcher thread** (one per device, started lazily) sits in ``aa_watch_wait`` with the GIL
  released: the C core polls the oldest event of each busy stream, spins briefly and backs off,
  and probes for faults. It returns completions in batches. With the GIL the watcher then
  finishes each job (copies outputs out of pinned memory, returns buffers and the event to
  their pools) and posts **one** callback per event loop per batch through that loop's
  thread-safe entry (``call_soon_threadsafe`` / ``TrioToken.run_sync_soon``).
- The posted callback runs on the **loop thread** and wakes each waiting task.

A loop that closed before its runs completed gets nothing: its jobs' resources were already
released by the watcher, and the failed post is ignored. If the watcher itself fails, every
pending and later job fails with :class:`WatcherError`.
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio

from ._errors import WatcherError

if TYPE_CHECKING:
    from ._device import Device

__all__ = ["Job", "LoopBridge", "Watcher", "current_bridge"]

_BATCH = 64  # completions per GIL hold: bounds how long the watcher can keep a loop waiting
#: Most tasks one drain wakes on a loop (see LoopBridge._drain).
DRAIN_CHUNK = 4


class LoopBridge:
    """One event loop's non-blocking, thread-safe entry, and the in-flight limit of each
    session (owner) that runs on this loop.

    Wake-ups coalesce: while a posted drain has not run yet on the loop ("armed"), further
    completions only join its queue, so a busy loop is woken once per burst rather than once
    per batch. The queue and the flag are shared by the watcher thread (``deliver``) and the
    loop thread (``_drain``) under ``_lock``.
    """

    __slots__ = ("__weakref__", "_armed", "_local_post", "_lock", "_queue", "limiters", "post", "wakeups")

    def __init__(self, post: Callable[..., object], local_post: Callable[..., object] | None = None) -> None:
        self.post = post  # thread-safe entry (call_soon_threadsafe / run_sync_soon)
        self._local_post = local_post or post  # from the loop thread itself (call_soon)
        self.limiters: weakref.WeakKeyDictionary[Any, anyio.Semaphore] = weakref.WeakKeyDictionary()
        self.wakeups = 0
        self._lock = threading.Lock()
        self._queue: list[Job] = []
        self._armed = False

    def limiter_for(self, owner: Any, limit: int) -> anyio.Semaphore:
        """``owner``'s in-flight limit on this loop (only this loop's thread calls this)."""
        limiter = self.limiters.get(owner)
        if limiter is None:
            limiter = self.limiters[owner] = anyio.Semaphore(limit)
        return limiter

    def deliver(self, jobs: list[Job]) -> None:
        """Called on the watcher thread: queue the jobs; post one drain unless one is pending."""
        with self._lock:
            self._queue.extend(jobs)
            if self._armed:
                return
            self._armed = True
        self.wakeups += 1
        try:
            self.post(self._drain)
        except RuntimeError:  # asyncio: the loop is closed; trio: RunFinishedError
            with self._lock:
                self._queue.clear()
                self._armed = False

    def _drain(self) -> None:
        # Runs on the loop thread. Wakes at most DRAIN_CHUNK tasks per loop iteration, so a
        # burst of completions cannot starve the loop's timers: the rest go in the next drain.
        with self._lock:
            jobs = self._queue[:DRAIN_CHUNK]
            del self._queue[:DRAIN_CHUNK]
            more = bool(self._queue)
            if not more:
                self._armed = False
        if more:
            self._local_post(self._drain)
        _resolve_batch(jobs)


def _resolve_batch(jobs: list[Job]) -> None:
    # Runs on the loop thread.
    for job in jobs:
        if job.done is not None:
            job.done.set()
        if job.limiter is not None:
            job.limiter.release()


_bridges: weakref.WeakKeyDictionary[Any, LoopBridge] = weakref.WeakKeyDictionary()
_bridges_lock = threading.Lock()


def current_bridge() -> LoopBridge:
    """The bridge of the running event loop (asyncio, uvloop or trio), made on first use."""
    import asyncio

    key: Any
    try:
        key = asyncio.get_running_loop()
    except RuntimeError:  # not asyncio: trio
        import trio

        key = trio.lowlevel.current_trio_token()
    bridge = _bridges.get(key)
    if bridge is None:
        with _bridges_lock:
            bridge = _bridges.get(key)
            if bridge is None:
                if isinstance(key, asyncio.AbstractEventLoop):
                    bridge = LoopBridge(key.call_soon_threadsafe, key.call_soon)
                else:
                    bridge = LoopBridge(key.run_sync_soon)
                _bridges[key] = bridge
    return bridge


class Job:
    """One submitted run as the watcher sees it.

    On the watcher thread, in this order and exactly once: ``finisher`` (read the outputs),
    the C release of ``run`` (batched: everything the device touched goes back to the pools),
    then ``after`` (bookkeeping). ``done`` is then set on the loop thread.
    """

    __slots__ = (
        "abandoned",
        "after",
        "bridge",
        "callback",
        "code",
        "done",
        "error",
        "finisher",
        "lane",
        "limiter",
        "noticed_ns",
        "result",
        "run",
        "stages",
        "token",
    )

    def __init__(self, bridge: LoopBridge | None, finisher: Callable[[Job], None]) -> None:
        self.bridge = bridge
        self.finisher = finisher
        self.done = anyio.Event() if bridge is not None else None
        self.abandoned = False
        self.code = 0
        self.error: BaseException | None = None
        self.result: Any = None
        self.noticed_ns = 0
        self.token = 0
        self.lane: Any = None
        self.limiter: anyio.Semaphore | None = None  # released on the loop thread when done
        self.callback: Callable[[Job], None] | None = None
        self.run: Any = None  # an aa_run* released in C after the finisher
        self.stages: Any = None  # (h2d, compute, d2h, queued) ms when profiled
        self.after: Callable[[Job], None] | None = None


class Watcher:
    """The per-device completion watcher thread over the C ``aa_watch`` core."""

    def __init__(self, device: Device, strategy: int, config: dict[str, int]) -> None:
        self.device = device
        b = device.backend
        self._ffi, self._lib = b.ffi, b.lib
        cfg = self._ffi.new("aa_watch_config*")
        cfg.strategy = strategy
        for key, value in config.items():
            setattr(cfg, key, value)
        device.ensure_current()
        self.handle = self._lib.aa_watch_create(device.context, cfg)
        self.jobs: dict[int, Job] = {}
        self._tokens = itertools.count(1)
        self.broken: BaseException | None = None
        self.completions = 0
        self._thread = threading.Thread(target=self._main, name=f"ascend-async-watcher-{device.id}", daemon=True)
        self._thread.start()

    # -- submitting side (any thread) ---------------------------------------------------------

    def new_token(self) -> int:
        return next(self._tokens)

    def add(self, job: Job, stream: Any, event: Any) -> None:
        """Hand a job whose event was just recorded to the watcher (raises on failure)."""
        if self.broken is not None:
            raise WatcherError("the completion watcher has failed") from self.broken
        self.jobs[job.token] = job  # before aa_watch_add: the watcher may answer at once
        rc = self._lib.aa_watch_add(self.handle, stream, event, job.token)
        if rc:
            self.jobs.pop(job.token, None)
            raise self.device.backend.acl_error(rc, "aclrtLaunchCallback/aa_watch_add")

    def expect(self, job: Job) -> None:
        """Register a job whose event (aa_run_submit) or callback slot (RunGraphAsync) reaches
        the C watch by another path; call it before that path can complete."""
        if self.broken is not None:
            raise WatcherError("the completion watcher has failed") from self.broken
        self.jobs[job.token] = job

    def fail_stream(self, stream: Any, code: int) -> None:
        self._lib.aa_watch_fail_stream(self.handle, stream, code)

    def stats(self) -> dict[str, int]:
        st = self._ffi.new("aa_watch_stats*")
        self._lib.aa_watch_get_stats(self.handle, st)
        return {
            k: int(getattr(st, k))
            for k in ("added", "completed", "failed", "polls", "probes", "batches", "sleeps", "pending")
        }

    def close(self) -> None:
        """Stop the thread (pending jobs fail) and free the C watch."""
        self._lib.aa_watch_close(self.handle)
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        self._fail_all(WatcherError("the device watcher was shut down"))
        self.device.ensure_current()
        self._lib.aa_watch_destroy(self.handle)
        self.handle = self._ffi.NULL

    # -- the watcher thread ------------------------------------------------------------------

    def _main(self) -> None:
        ffi, lib = self._ffi, self._lib
        tokens = ffi.new("uint64_t[]", _BATCH)
        codes = ffi.new("int32_t[]", _BATCH)
        noticed = ffi.new("uint64_t[]", _BATCH)
        try:
            self.device.ensure_current()
            while True:
                n = lib.aa_watch_wait(self.handle, tokens, codes, noticed, _BATCH, -1)
                if n < 0:
                    return
                if n:
                    self._dispatch(n, tokens, codes, noticed)
        except BaseException as exc:  # the watcher must never die silently
            self.broken = exc
            self._fail_all(WatcherError(f"the completion watcher failed: {exc!r}"))

    def _dispatch(self, n: int, tokens: Any, codes: Any, noticed: Any) -> None:
        detail: str | None = None
        jobs: list[Job] = []
        for i in range(n):
            job = self.jobs.pop(tokens[i], None)
            if job is None:
                continue
            job.code = codes[i]
            job.noticed_ns = noticed[i]
            if job.code and detail is None:
                detail = self.device.backend.acl_message()
            self._finish(job, detail or "")
            jobs.append(job)
        # One GIL-free C call gives back every finished run's buffers and GE outputs.
        runs = [job.run for job in jobs if job.run is not None]
        if runs:
            self._lib.aa_run_release_many(runs, len(runs))
        batches: dict[LoopBridge, list[Job]] = {}
        for job in jobs:
            job.run = None
            if job.after is not None:
                _call_quietly(job.after, job)
            self.completions += 1
            if job.callback is not None:
                _call_quietly(job.callback, job)
            if job.bridge is not None:
                batches.setdefault(job.bridge, []).append(job)
        for bridge, js in batches.items():
            bridge.deliver(js)

    def _finish(self, job: Job, detail: str) -> None:
        try:
            job.finisher(job)
        except BaseException as exc:  # a finisher bug fails that run, not the watcher
            job.error = exc
        if job.code and job.error is None:
            job.error = self.device.backend.acl_error(job.code, "device stream", detail or "device task failed")

    def _fail_all(self, error: BaseException) -> None:
        jobs = list(self.jobs.values())
        self.jobs.clear()
        batches: dict[LoopBridge, list[Job]] = {}
        for job in jobs:
            job.error = error
            # Its buffers may still be in use on the device: they are not released (the device's
            # pools free them at shutdown), but the session stops counting the run as pending.
            job.run = None
            if job.after is not None:
                _call_quietly(job.after, job)
            if job.bridge is not None:
                batches.setdefault(job.bridge, []).append(job)
        for bridge, js in batches.items():
            bridge.deliver(js)


def _call_quietly(fn: Callable[[Job], None], job: Job) -> None:
    try:
        fn(job)
    except Exception:  # a user callback's error must not kill the watcher
        import traceback

        traceback.print_exc()
