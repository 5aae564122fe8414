"""The event-loop side: one ``LoopBridge`` per running loop collects that loop's completions.

A loop collects its completions itself, where it already does work, through the non-blocking
C harvest of its channel (``aa_watch_harvest``):

- when a run is submitted on it (unless a collection is already scheduled; at most
  ``_SUBMIT_HARVEST`` per submission and ``DRAIN_CHUNK`` per iteration in all), and
- in a drain scheduled with the loop's own ``call_soon``, which keeps rescheduling itself while
  completions keep coming (the channel stays "armed": the watcher thread posts nothing).

Only when no collection is scheduled is the loop woken. On asyncio and uvloop (Linux) the C
watch writes an eventfd that the loop's own selector watches (``add_reader``): the watcher
thread never takes the GIL for it, and the loop runs ``_fd_ready`` in its next poll. Elsewhere
(trio, no eventfd) the watcher thread posts the wake-up (one hand-off,
``call_soon_threadsafe`` / ``TrioToken.run_sync_soon``). Loop health by construction: one
drain completes at most ``DRAIN_CHUNK`` runs, submissions collect at most ``DRAIN_CHUNK`` more
in passing, and one loop iteration admits at most ``SUBMIT_BUDGET`` submissions (more wait for
the next iteration), so the library's own work per iteration is bounded whatever the number of
runs in flight or arriving. The two allowances are apart: a completion collected in passing
does not take a submission's place (it used to, and at c=64 most runs then parked in
``admit`` and suspended twice).

Nothing here outlives its loop: a bridge holds its loop only through weak methods, ``_bridges``
is keyed weakly by the loop (asyncio) or its ``TrioToken`` (trio), and the watchers hold
bridges weakly. When a loop is gone its bridge goes, with its limiters, and the bridge's
finalizer gives its channels back.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
import weakref
from asyncio import _get_running_loop
from collections import deque
from collections.abc import Callable
from typing import Any

import anyio
import anyio.lowlevel

from ._watcher import Watcher

__all__ = ["DRAIN_CHUNK", "SUBMIT_BUDGET", "Limit", "LoopBridge", "Waiter", "current_bridge", "on_event_loop"]

#: Most runs one drain completes (and one submission collects in passing).
DRAIN_CHUNK = 16
#: Most submissions one loop iteration admits.
SUBMIT_BUDGET = 16
_SUBMIT_HARVEST = 4


class Waiter:
    """A one-shot wake-up for one task, lighter than ``anyio.Event``: a bare future (asyncio,
    uvloop) or a parked task (trio). ``set`` runs on the loop's thread (``LoopBridge.call``
    brings it there); ``wait`` is always a checkpoint, as anyio's waits are."""

    __slots__ = ("_fut", "_task", "fired")

    def __init__(self) -> None:
        self.fired = False
        self._fut: Any = None  # asyncio: the future the task awaits
        self._task: Any = None  # trio: the parked task

    def set(self) -> None:
        if self.fired:
            return
        self.fired = True
        fut = self._fut
        if fut is not None:
            if not fut.done():  # not cancelled meanwhile
                fut.set_result(None)
            return
        task = self._task
        if task is not None:
            self._task = None
            import trio.lowlevel

            trio.lowlevel.reschedule(task)

    async def wait(self, trio_loop: bool) -> None:
        if self.fired:
            await anyio.lowlevel.checkpoint()
        elif trio_loop:
            import trio.lowlevel

            self._task = trio.lowlevel.current_task()

            def abort(_: Any) -> Any:
                self._task = None
                return trio.lowlevel.Abort.SUCCEEDED

            await trio.lowlevel.wait_task_rescheduled(abort)
        else:
            self._fut = fut = asyncio.get_running_loop().create_future()
            await fut


class Limit:
    """One owner's in-flight limit on one loop (a session's ``max_in_flight``): a count of free
    places and a FIFO of parked waiters. Loop thread only, so no lock: lighter than
    ``anyio.Semaphore`` on the path every run takes twice (take, give back)."""

    __slots__ = ("_trio", "_waiting", "value")

    def __init__(self, value: int, trio_loop: bool) -> None:
        self.value = value  # free places (0 while runs wait: a place given back passes on)
        self._trio = trio_loop
        self._waiting: deque[Waiter] = deque()

    def acquire_nowait(self) -> None:
        """Take a place, or raise ``anyio.WouldBlock`` (none free, or others wait first)."""
        if self.value <= 0 or self._waiting:
            raise anyio.WouldBlock
        self.value -= 1

    async def acquire(self) -> None:
        """Take a place, waiting (FIFO, parked) until one is given back. Cancelled, it takes
        nothing: a place handed to it meanwhile passes on to the next waiter."""
        if self.value > 0 and not self._waiting:
            self.value -= 1
            await anyio.lowlevel.checkpoint()
            return
        ticket = Waiter()
        self._waiting.append(ticket)
        try:
            await ticket.wait(self._trio)
        except BaseException:
            if ticket.fired:
                self.release()
            else:
                self._waiting.remove(ticket)
            raise

    def release(self) -> None:
        """Give a place back: to the first waiter, else to the free count."""
        if self._waiting:
            self._waiting.popleft().set()
        else:
            self.value += 1


class LoopBridge:
    """One event loop's channels into the device watchers, its drains and wake-ups, and the
    in-flight limit of each session that runs on it."""

    __slots__ = (
        "__weakref__",
        "_admit",
        "_buf",
        "_channels",
        "_local_post",
        "_post",
        "_reader",
        "_slots",
        "_wake_fd",
        "budget",
        "cancel_called",
        "checkpoint_if_cancelled",
        "dead",
        "limiters",
        "parked",
        "passing",
        "scheduled",
        "thread",
        "trio",
        "wakeups",
    )

    def __init__(
        self,
        post: Callable[..., object],
        local_post: Callable[..., object] | None = None,
        *,
        trio: bool = False,
        add_reader: Callable[..., object] | None = None,
    ) -> None:
        # The loop's entries, held weakly (the loop must not outlive its run because of us):
        # thread-safe (call_soon_threadsafe / run_sync_soon) and local (call_soon).
        self._post = weakref.WeakMethod(post)  # type: ignore[arg-type]
        self._local_post = weakref.WeakMethod(local_post or post)  # type: ignore[arg-type]
        # The loop's add_reader (held weakly too), for the eventfd wake-up; None: posted wake-ups.
        self._reader = weakref.WeakMethod(add_reader) if add_reader is not None else None  # type: ignore[arg-type]
        self._wake_fd: WakeFd | None = None
        self.limiters: weakref.WeakKeyDictionary[Any, Limit] = weakref.WeakKeyDictionary()
        self._channels: dict[Watcher, int] = {}
        self.thread = threading.get_ident()
        self.trio = trio  # the loop is trio's (else asyncio's or uvloop's)
        self.wakeups = 0  # wake-ups the loop got (it had no collection scheduled)
        self.parked = 0  # submissions that waited for a later iteration's budget (admit)
        self.scheduled = False  # a drain is queued with local_post
        self.budget = SUBMIT_BUDGET
        self.passing = DRAIN_CHUNK  # completions submissions may still collect in passing
        self.dead = False
        self._buf: Any = None
        self._admit: deque[Waiter] = deque()  # submissions waiting for the next iteration
        # Per-owner state that lives on this loop (a batcher's queue): made and read on the
        # loop's thread only; held as long as both the loop's bridge and its owner live.
        self._slots: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
        # anyio.lowlevel.checkpoint_if_cancelled, with anyio's backend looked up once per loop
        # rather than per call (await session.run starts with it).
        self.checkpoint_if_cancelled: Callable[[], Any] = _checkpoint_if_cancelled(trio)
        # Where it can be asked without an await: whether that checkpoint would raise (None:
        # await it every time).
        self.cancel_called: Callable[[], bool] | None = None if trio else _asyncio_cancel_called()

    def slot(self, owner: Any, make: Callable[[], Any]) -> Any:
        """``owner``'s state on this loop, made by ``make()`` on first use (loop thread only)."""
        state = self._slots.get(owner)
        if state is None:
            state = self._slots[owner] = make()
        return state

    def spawn(self, fn: Callable[[], Any], keep: set[Any]) -> None:
        """On the loop thread: start ``fn()`` (a coroutine function) as a task that belongs to
        no caller's scope (trio: a system task). asyncio holds its tasks weakly: ``keep`` holds
        the task until it ends. The caller owns ``keep``, not the bridge: a task references its
        loop, and a bridge that held one would keep its own loop (its weak key) alive."""
        if self.trio:
            import trio

            trio.lowlevel.spawn_system_task(fn)
            return
        task = asyncio.get_running_loop().create_task(fn())
        keep.add(task)
        task.add_done_callback(keep.discard)

    def limiter_for(self, owner: Any, limit: int) -> Limit:
        """``owner``'s in-flight limit on this loop (only this loop's thread calls this)."""
        limiter = self.limiters.get(owner)
        if limiter is None:
            limiter = self.limiters[owner] = Limit(limit, self.trio)
        return limiter

    def channel(self, watcher: Watcher) -> int:
        """This loop's channel in ``watcher`` (opened on first use; 0 = none available)."""
        ch = self._channels.get(watcher)
        if ch is None:  # the watcher closes it when this bridge is gone (Watcher.open_channel)
            ch = self._channels[watcher] = watcher.open_channel(self, self._notify_fd())
        return ch

    def _notify_fd(self) -> WakeFd | None:
        """This loop's eventfd, watched by its selector (made on first use; loop thread only),
        or None where there is none (trio, no ``os.eventfd``, a loop without ``add_reader``)."""
        if self._wake_fd is None and self._reader is not None:
            add_reader = self._reader()
            wake_fd = WakeFd.make()
            if add_reader is None or wake_fd is None:
                self._reader = None
                return None
            try:
                add_reader(wake_fd.fd, _fd_ready, weakref.ref(self), wake_fd.fd)
            except (NotImplementedError, RuntimeError, OSError):  # a loop that watches no fds
                self._reader = None
                return None
            self._wake_fd = wake_fd
        return self._wake_fd

    # -- the loop thread ------------------------------------------------------------------------

    def take_budget(self) -> bool:
        """Take one submission from this iteration's budget, if any is left and nobody waits."""
        if self.budget > 0 and not self._admit:
            self.budget -= 1
            return True
        return False

    async def admit(self) -> None:
        """Take one submission from this iteration's budget. When it is spent, wait (in FIFO
        order, parked, not polling) for a drain of a later iteration to hand out its budget."""
        if self.take_budget():
            return
        ticket = Waiter()
        self.parked += 1
        self._admit.append(ticket)
        self.schedule()
        try:
            await ticket.wait(self.trio)
        except BaseException:
            if not ticket.fired:
                self._admit.remove(ticket)
            raise

    def schedule(self) -> None:
        if not self.scheduled:
            self.scheduled = True
            post = self._local_post()
            if post is None:  # the loop is gone
                return
            try:
                post(self._drain)
            except RuntimeError:
                # The loop is shutting down: trio runs its last run_sync_soon callbacks (a
                # wake-up's _woken among them) after it stopped taking new ones, and a callback
                # that raises there kills the run (TrioInternalError). What is left on the
                # channel reaches the watcher thread (takeover).
                self.dead = True

    def collect_after_submit(self, watcher: Watcher) -> None:
        """A submission just happened on this loop: collect a few finished runs in passing."""
        if not self.scheduled and self.passing > 0:
            ch = self._channels.get(watcher)
            if ch:
                n = self._harvest(watcher, ch, min(_SUBMIT_HARVEST, self.passing), -1)
                self.passing -= n
                self.budget += n  # each finished run frees a place for the run replacing it

    def _drain(self) -> None:
        self.scheduled = False
        self._collect()

    def _fd_woken(self, fd: int) -> None:
        """The watch wrote this loop's eventfd: read it back to zero first (a completion that
        comes after this read writes it again), then collect."""
        with contextlib.suppress(BlockingIOError):  # (read back already by an earlier wake-up)
            os.eventfd_read(fd)
        self.wakeups += 1
        self._woken()

    def _woken(self) -> None:
        if self.scheduled:  # a drain is queued already: it collects, and answers the wake-up
            return
        self._collect()

    def _collect(self) -> None:
        got = 0
        for watcher, ch in list(self._channels.items()):
            if ch:
                got += self._harvest(watcher, ch, DRAIN_CHUNK, 1)
        # This iteration's submissions: SUBMIT_BUDGET, plus one for each run just finished (its
        # task submits the run that replaces it). A backlog of parked submissions (a burst of
        # new callers) therefore shrinks by SUBMIT_BUDGET per iteration instead of standing.
        self.budget = SUBMIT_BUDGET + got
        self.passing = DRAIN_CHUNK
        waiting = self._admit
        while waiting and self.budget > 0:
            self.budget -= 1
            waiting.popleft().set()
        if waiting or got:  # parked submissions, or completions flowing: again next iteration
            self.schedule()

    def _harvest(self, watcher: Watcher, ch: int, most: int, armed: int) -> int:
        buf = self._buf
        if buf is None:
            ffi = watcher.backend.ffi
            buf = self._buf = (
                ffi.new("uint64_t[]", DRAIN_CHUNK),
                ffi.new("int32_t[]", DRAIN_CHUNK),
                ffi.new("uint64_t[]", DRAIN_CHUNK),
            )
        tokens, codes, noticed = buf
        with watcher.lock:
            if watcher.closed:
                self._channels.pop(watcher, None)
                return 0
            n: int = watcher.backend.lib.aa_watch_harvest(watcher.handle, ch, tokens, codes, noticed, most, armed)
        pending = watcher.pending
        for i in range(n):
            c = pending.pop(tokens[i], None)
            if c is not None:
                c.complete(codes[i], noticed[i], True)
        return n

    # -- the watcher thread ---------------------------------------------------------------------

    def post(self, fn: Callable[[], object]) -> bool:
        """Hand ``fn`` to the loop (thread-safe); False once the loop has closed or is gone."""
        entry = None if self.dead else self._post()
        if entry is None:
            self.dead = True
            return False
        try:
            entry(fn)
        except RuntimeError:  # asyncio: the loop is closed; trio: RunFinishedError
            self.dead = True
            return False
        return True

    def wake(self) -> bool:
        """Post a collection to the loop; False once the loop has closed."""
        if self.dead:
            return False
        self.wakeups += 1
        return self.post(self._woken)

    def call(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` on the loop (from any thread); dropped if the loop has closed."""
        if threading.get_ident() == self.thread:
            fn()
            return
        self.post(fn)


class WakeFd:
    """A non-blocking eventfd that wakes one loop. Every watch channel it is set on holds it
    (``Watcher.open_channel``) until that channel is closed in C, and the bridge holds it: it is
    closed only when nothing can write it any more. Its loop is gone by then (a bridge outlives
    its loop), so no selector still watches the number."""

    __slots__ = ("__weakref__", "fd")

    def __init__(self, fd: int) -> None:
        self.fd = fd

    @staticmethod
    def make() -> WakeFd | None:
        eventfd = getattr(os, "eventfd", None)  # Linux, Python 3.10+
        if eventfd is None:
            return None
        try:
            return WakeFd(eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC))
        except OSError:
            return None

    def __del__(self) -> None:
        os.close(self.fd)


def _fd_ready(ref: weakref.ref[LoopBridge], fd: int) -> None:
    """The loop's reader callback for its eventfd (the bridge held weakly: the loop must not
    keep it alive)."""
    bridge = ref()
    if bridge is not None:
        bridge._fd_woken(fd)
        return
    with contextlib.suppress(BlockingIOError):  # (nobody to wake: just read it back)
        os.eventfd_read(fd)


def _checkpoint_if_cancelled(trio_loop: bool) -> Callable[[], Any]:
    """What ``anyio.lowlevel.checkpoint_if_cancelled`` calls on this kind of loop."""
    try:
        from anyio._core._eventloop import get_async_backend
    except ImportError:  # another anyio layout: its public function, which looks it up per call
        return anyio.lowlevel.checkpoint_if_cancelled
    return get_async_backend("trio" if trio_loop else "asyncio").checkpoint_if_cancelled


def _asyncio_cancel_called() -> Callable[[], bool] | None:
    """A synchronous form of anyio's asyncio ``checkpoint_if_cancelled`` test: whether the
    calling task's innermost unshielded anyio cancel scopes include a cancelled one. Reads
    anyio's task states (an internal of anyio 4); None if this anyio has none, and the caller
    then awaits anyio's own check."""
    try:
        from anyio._backends._asyncio import _task_states
    except ImportError:
        return None
    from asyncio import current_task

    # A WeakKeyDictionary: its own dict (keyed by weak references, equal when their tasks are)
    # is read directly, as WeakKeyDictionary.get does, without that method's Python frame.
    states: Any = getattr(_task_states, "data", None)
    if not isinstance(states, dict):
        return None
    ref = weakref.ref

    def cancel_called() -> bool:
        state = states.get(ref(current_task()))  # type: ignore[arg-type]
        if state is None:  # not a task anyio manages: no scope of anyio's to be cancelled by
            return False
        scope = state.cancel_scope
        while scope is not None:
            if scope.cancel_called:
                return True
            if scope.shield:
                return False
            scope = scope._parent_scope
        return False

    return cancel_called


_bridges: weakref.WeakKeyDictionary[Any, LoopBridge] = weakref.WeakKeyDictionary()
_bridges_lock = threading.Lock()
_last = threading.local()  # .pair: weakrefs to this thread's last loop key and its bridge


def _after_fork_in_child() -> None:
    global _bridges_lock
    _bridges_lock = threading.Lock()  # another thread may have held it at the fork


os.register_at_fork(after_in_child=_after_fork_in_child)


def on_event_loop() -> bool:
    """Whether the calling thread is running an event loop (asyncio, uvloop or trio)."""
    if _get_running_loop() is not None:
        return True
    trio = sys.modules.get("trio")  # (not imported: no trio loop can be running)
    if trio is None:
        return False
    try:
        trio.lowlevel.current_trio_token()
    except RuntimeError:
        return False
    return True


def current_bridge() -> LoopBridge:
    """The bridge of the running event loop (asyncio, uvloop or trio), made on first use."""
    key: Any = _get_running_loop()
    if key is None:  # not asyncio: trio
        import trio

        key = trio.lowlevel.current_trio_token()
    last = getattr(_last, "pair", None)  # this thread's last answer (both held weakly)
    if last is not None and last[0]() is key:
        bridge = last[1]()
        if bridge is not None:
            return bridge  # type: ignore[no-any-return]
    bridge = _bridges.get(key)
    if bridge is None:
        with _bridges_lock:
            bridge = _bridges.get(key)
            if bridge is None:
                if isinstance(key, asyncio.AbstractEventLoop):
                    bridge = LoopBridge(key.call_soon_threadsafe, key.call_soon, add_reader=key.add_reader)
                else:
                    bridge = LoopBridge(key.run_sync_soon, trio=True)
                _bridges[key] = bridge
    _last.pair = (weakref.ref(key), weakref.ref(bridge))
    return bridge
