"""The device's completion watcher thread, over the C ``aa_watch`` core.

The watcher sees only ``(token, code, noticed_ns)``. It sits in ``aa_watch_wait`` with the GIL
released; the C core polls the oldest event of each busy stream, spins briefly, backs off and
probes for faults. A completion whose token names a loop channel waits in C until that loop
collects it (``aa_watch_harvest``, see ``_loop.py``); the watcher thread takes the GIL only to

- post a wake-up to a loop that has no collection scheduled (one hand-off), and
- complete channel-0 tokens itself: RunGraphAsync callbacks, and the completions of a loop that
  left a wake-up unanswered too long or has closed.

It completes a token by calling ``complete(code, noticed_ns, on_loop=False)`` on the object
registered under it (``pending``); it never calls into Session.

User code runs on this thread (RunGraphAsync callbacks): whatever it raises, ``BaseException``
included, is reported as an :class:`AscendWarning` (:func:`report_ignored`) and the thread goes
on. A ``Session.close()`` from such a callback is deferred (:meth:`Watcher.defer`): it runs on a
thread of its own once the callback returned, because it waits for runs this thread completes
and may stop this thread.
"""

from __future__ import annotations

import itertools
import threading
import warnings
import weakref
from collections.abc import Callable
from typing import Any, Protocol

from ._errors import AscendWarning, WatcherError, acl_error

__all__ = ["Completion", "Watcher", "current_watcher", "report_ignored"]

_BATCH = 64  # completions per GIL hold on the watcher thread
_CHANNEL_SHIFT = 48
#: How long close() waits for the thread (a user callback may hold it); past that the thread
#: frees the watch itself when it leaves.
_JOIN_TIMEOUT_S = 10.0


class Completion(Protocol):
    """What a token is registered with: completes a run (or a wait) exactly once."""

    def complete(self, code: int, noticed_ns: int, on_loop: bool) -> None: ...

    def fail(self, error: BaseException) -> None: ...


class Wakeable(Protocol):
    def wake(self) -> bool: ...


_tls = threading.local()  # .watcher: set on a watcher thread, for its whole life


def current_watcher() -> Watcher | None:
    """The watcher whose thread is calling (inside a RunGraphAsync callback), else None."""
    return getattr(_tls, "watcher", None)


def report_ignored(exc: BaseException, what: str) -> None:
    """Report ``exc``, which cannot propagate (raised by ``what`` on a watcher thread), as an
    :class:`AscendWarning` whose ``__cause__`` is ``exc``. Where warnings are errors the
    escalated warning goes to ``threading.excepthook`` instead; either way the thread lives on."""
    warning = AscendWarning(f"{what} raised {exc!r}; it was ignored and the device's watcher goes on")
    warning.__cause__ = exc
    try:
        warnings.warn(warning, stacklevel=2)
    except BaseException as escalated:
        try:
            args = (type(escalated), escalated, escalated.__traceback__, threading.current_thread())
            threading.excepthook(threading.ExceptHookArgs(args))
        except BaseException:  # a hook that raises too: nothing is left to report to
            pass


class Watcher:
    """The per-device completion watcher thread."""

    def __init__(self, backend: Any, context: Any, device_id: int, strategy: int, config: dict[str, int]) -> None:
        self._ffi, self._lib = backend.ffi, backend.lib
        self.backend = backend
        # From the C watch's defaults, so that every key set here takes effect alone (the watch
        # reads a zero as "default", and spin_us=0 means no spinning).
        cfg = self._ffi.new("aa_watch_config*")
        self._lib.aa_watch_default_config(cfg)
        cfg.strategy = strategy
        for key, value in config.items():
            setattr(cfg, key, value)
        if "max_sleep_us" in config and "min_sleep_us" not in config:
            cfg.min_sleep_us = min(cfg.min_sleep_us, cfg.max_sleep_us)  # a lower cap alone lowers the floor
        self.handle = self._lib.aa_watch_create(context, cfg)
        if self.handle == self._ffi.NULL:
            raise MemoryError("no host memory (or thread) for the completion watcher")
        self._context = context
        self.pending: dict[int, Completion] = {}
        self._seq = itertools.count(1)
        # channel -> its loop's bridge, held weakly: a bridge lives as long as its loop, and its
        # finalizer closes the channel (LoopBridge.channel)
        self._channels: dict[int, weakref.ref[Wakeable]] = {}
        self._notify: dict[int, Any] = {}  # channel -> the WakeFd its C channel writes (held)
        # The handle's lifetime against loop-side harvests. Re-entrant: a bridge's finalizer
        # (close_channel) may run on a thread that holds it, wherever the collector runs.
        self.lock = threading.RLock()
        self._deferred: list[Callable[[], object]] = []  # closes asked for by callbacks
        self.closed = False
        self.broken: BaseException | None = None
        self.failed_here = 0  # runs failed by this side (shut down or broken), not by the device
        # The C watch's lifetime against its thread: whoever comes last frees it, close() or the
        # thread on its way out (when close() could not wait for it: a callback held it).
        self._exit_lock = threading.Lock()
        self._exited = False
        self._orphan: Any = None  # a closed watch the thread frees when it leaves
        self._thread = threading.Thread(target=self._main, name=f"ascend-async-watcher-{device_id}", daemon=True)
        self._thread.start()

    # -- any thread -----------------------------------------------------------------------------

    def token(self, channel: int = 0) -> int:
        """A fresh token whose completion goes to ``channel`` (0: this thread)."""
        return (channel << _CHANNEL_SHIFT) | next(self._seq)

    def expect(self, token: int, completion: Completion) -> None:
        """Register ``completion`` under ``token`` before the C call that can complete it."""
        if self.broken is not None:
            raise WatcherError("the completion watcher has failed") from self.broken
        if self.closed:
            raise WatcherError("the device watcher was shut down")
        self.pending[token] = completion

    def add(self, token: int, completion: Completion, stream: Any, event: Any) -> None:
        """Hand a recorded event to the watch under ``token`` (raises on failure)."""
        self.expect(token, completion)
        rc = self._lib.aa_watch_add(self.handle, stream, event, token)
        if rc:
            self.pending.pop(token, None)
            raise acl_error(rc, "aa_watch_add", self.backend.acl_message())

    def open_channel(self, bridge: Wakeable, notify: Any = None) -> int:
        """A channel for one event loop's completions (0 when none is left: this thread then
        completes that loop's runs and posts each wake-up). It stays the bridge's until the
        bridge is gone (a finalizer closes it): only then can no run of the bridge still carry
        the channel in its token, so only then may the number go to another loop.

        ``notify`` (a ``_loop.WakeFd``): the C watch wakes the loop by writing its fd, and this
        thread never does; the channel holds it until the channel is closed in C."""
        with self.lock:
            if self.closed:
                return 0
            ch = int(self._lib.aa_watch_channel_open(self.handle))
            if ch <= 0:
                return 0
            ref = self._channels[ch] = weakref.ref(bridge)
            if notify is not None:
                self._notify[ch] = notify
                self._lib.aa_watch_channel_notify_fd(self.handle, ch, notify.fd)
        weakref.finalize(bridge, self.close_channel, ch, ref)
        return ch

    def close_channel(self, ch: int, owner: weakref.ref[Wakeable]) -> None:
        """``owner``'s loop is gone: what its channel holds, and will get, comes to this thread.
        A no-op when the channel is no longer ``owner``'s (closed already, maybe reopened for
        another loop, whose channel this must not close)."""
        with self.lock:
            if self._channels.get(ch) is owner:
                del self._channels[ch]
                if not self.closed:
                    self._lib.aa_watch_channel_close(self.handle, ch)
                self._notify.pop(ch, None)  # nothing writes its fd now

    def defer(self, fn: Callable[[], object]) -> None:
        """On this watcher's thread (a callback): run ``fn`` on a thread of its own once the
        callback has returned."""
        self._deferred.append(fn)

    def after_fork_in_child(self) -> None:
        """In a forked child: this thread does not exist here. Closed for every caller, with a
        fresh lock (a parent thread may have held the old one), and nothing calls into C."""
        self.lock = threading.RLock()
        self.closed = True
        self._channels.clear()
        self.pending.clear()

    def fail_stream(self, stream: Any, code: int) -> None:
        self._lib.aa_watch_fail_stream(self.handle, stream, code)

    def stats(self) -> dict[str, int]:
        st = self._ffi.new("aa_watch_stats*")
        self._lib.aa_watch_get_stats(self.handle, st)
        keys = ("added", "completed", "failed", "polls", "probes", "batches", "sleeps", "pending")
        out = {k: int(getattr(st, k)) for k in (*keys, "harvested", "wakes", "takeovers")}
        out["failed"] += self.failed_here  # runs this side failed count as failures too
        return out

    def close(self) -> None:
        """Stop the thread (pending completions fail) and free the C watch — now if the thread
        has ended, else (a callback still holds it past ``_JOIN_TIMEOUT_S``, or this is the
        watcher thread) by the thread itself when it leaves: never under a live thread."""
        handle = self.handle
        self._lib.aa_watch_close(handle)
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=_JOIN_TIMEOUT_S)
        with self.lock:
            self.closed = True
            self._channels.clear()
        self._fail_all(WatcherError("the device watcher was shut down"))
        self.handle = self._ffi.NULL
        with self._exit_lock:
            if not self._exited:
                self._orphan = handle  # the thread frees it (see _main)
                return
        self._destroy(handle)

    def _destroy(self, handle: Any) -> None:
        self._lib.aclrtSetCurrentContext(self._context)
        self._lib.aa_watch_destroy(handle)
        self._notify.clear()  # the C watch is gone: nothing writes the loops' fds

    # -- the watcher thread ----------------------------------------------------------------------

    def _main(self) -> None:
        ffi, lib = self._ffi, self._lib
        tokens = ffi.new("uint64_t[]", _BATCH)
        codes = ffi.new("int32_t[]", _BATCH)
        noticed = ffi.new("uint64_t[]", _BATCH)
        wake = lib.AA_WATCH_WAKE
        handle = self.handle  # close() clears self.handle; the watch lives until this thread leaves
        _tls.watcher = self
        try:
            self._loop(handle, tokens, codes, noticed, wake)
        finally:
            with self._exit_lock:
                self._exited = True
                orphan, self._orphan = self._orphan, None
            if orphan is not None:  # close() gave up waiting for this thread: free it now
                # (no context switch: the device may be reset by now; a poll watch needs none)
                self._lib.aa_watch_destroy(orphan)
                self._notify.clear()

    def _loop(self, handle: Any, tokens: Any, codes: Any, noticed: Any, wake: int) -> None:
        lib = self._lib
        try:
            while True:
                n = lib.aa_watch_wait(handle, tokens, codes, noticed, _BATCH, -1)
                if n < 0:
                    return
                for i in range(n):
                    code = codes[i]
                    if code == wake:
                        ref = self._channels.get(tokens[i])
                        bridge = ref() if ref is not None else None
                        if ref is not None and bridge is None:
                            self.close_channel(tokens[i], ref)
                        elif bridge is not None:
                            # False: the loop has closed. Its channel stays open while the
                            # bridge lives (runs it abandoned still carry the channel in their
                            # tokens: closed now, the number could be reopened for another loop,
                            # which would collect them); the C watch hands what arrives on it to
                            # this thread once the wake-up goes unanswered (takeover_us).
                            bridge.wake()
                        del bridge
                        continue
                    c = self.pending.pop(tokens[i], None)
                    if c is not None:
                        _contained(c.complete, code, noticed[i], False)
                        if self._deferred:
                            self._start_deferred()
                    # Not kept alive while this thread sleeps: a run holds its loop's bridge,
                    # and the bridge its channel (and its loop) until it is gone.
                    del c
        except BaseException as exc:  # the watcher must never die silently
            self.broken = exc
            self._fail_all(WatcherError(f"the completion watcher failed: {exc!r}"))

    def _fail_all(self, error: BaseException) -> None:
        while self.pending:
            try:
                _token, c = self.pending.popitem()
            except KeyError:  # emptied meanwhile by another thread (close and a dying thread)
                break
            self.failed_here += 1
            _contained(c.fail, error)
            if self._deferred:
                self._start_deferred()

    def _start_deferred(self) -> None:
        todo, self._deferred = self._deferred, []
        for fn in todo:
            threading.Thread(target=fn, name="ascend-async-deferred-close", daemon=True).start()


def _contained(fn: Any, *args: Any) -> None:
    """Call ``fn`` on the watcher thread; nothing it raises (``BaseException`` included) stops
    the thread. User callbacks are contained one level down (``CallbackRun``), with their name."""
    try:
        fn(*args)
    except BaseException as exc:
        report_ignored(exc, getattr(fn, "__qualname__", repr(fn)))
