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
"""

from __future__ import annotations

import itertools
import threading
from typing import Any, Protocol

from ._errors import WatcherError, acl_error

__all__ = ["Completion", "Watcher"]

_BATCH = 64  # completions per GIL hold on the watcher thread
_CHANNEL_SHIFT = 48


class Completion(Protocol):
    """What a token is registered with: completes a run (or a wait) exactly once."""

    def complete(self, code: int, noticed_ns: int, on_loop: bool) -> None: ...

    def fail(self, error: BaseException) -> None: ...


class Wakeable(Protocol):
    def wake(self) -> bool: ...


class Watcher:
    """The per-device completion watcher thread."""

    def __init__(self, backend: Any, context: Any, device_id: int, strategy: int, config: dict[str, int]) -> None:
        self._ffi, self._lib = backend.ffi, backend.lib
        self.backend = backend
        cfg = self._ffi.new("aa_watch_config*")
        cfg.strategy = strategy
        for key, value in config.items():
            setattr(cfg, key, value)
        self.handle = self._lib.aa_watch_create(context, cfg)
        self._context = context
        self.pending: dict[int, Completion] = {}
        self._seq = itertools.count(1)
        self._channels: dict[int, Wakeable] = {}  # channel -> its loop's bridge
        self.lock = threading.Lock()  # the handle's lifetime against loop-side harvests
        self.closed = False
        self.broken: BaseException | None = None
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

    def open_channel(self, bridge: Wakeable) -> int:
        """A channel for one event loop's completions (0 when none is left: this thread then
        completes that loop's runs and posts each wake-up)."""
        with self.lock:
            if self.closed:
                return 0
            ch = int(self._lib.aa_watch_channel_open(self.handle))
            if ch <= 0:
                return 0
            self._channels[ch] = bridge
            return ch

    def close_channel(self, ch: int) -> None:
        """The loop is gone: what its channel holds, and will get, comes to this thread."""
        with self.lock:
            if self._channels.pop(ch, None) is not None and not self.closed:
                self._lib.aa_watch_channel_close(self.handle, ch)

    def fail_stream(self, stream: Any, code: int) -> None:
        self._lib.aa_watch_fail_stream(self.handle, stream, code)

    def stats(self) -> dict[str, int]:
        st = self._ffi.new("aa_watch_stats*")
        self._lib.aa_watch_get_stats(self.handle, st)
        keys = ("added", "completed", "failed", "polls", "probes", "batches", "sleeps", "pending")
        return {k: int(getattr(st, k)) for k in (*keys, "harvested", "wakes", "takeovers")}

    def close(self) -> None:
        """Stop the thread (pending completions fail) and free the C watch."""
        self._lib.aa_watch_close(self.handle)
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        with self.lock:
            self.closed = True
            self._channels.clear()
        self._fail_all(WatcherError("the device watcher was shut down"))
        self._lib.aclrtSetCurrentContext(self._context)
        self._lib.aa_watch_destroy(self.handle)
        self.handle = self._ffi.NULL

    # -- the watcher thread ----------------------------------------------------------------------

    def _main(self) -> None:
        ffi, lib = self._ffi, self._lib
        tokens = ffi.new("uint64_t[]", _BATCH)
        codes = ffi.new("int32_t[]", _BATCH)
        noticed = ffi.new("uint64_t[]", _BATCH)
        wake = lib.AA_WATCH_WAKE
        try:
            while True:
                n = lib.aa_watch_wait(self.handle, tokens, codes, noticed, _BATCH, -1)
                if n < 0:
                    return
                for i in range(n):
                    code = codes[i]
                    if code == wake:
                        bridge = self._channels.get(tokens[i])
                        if bridge is not None and not bridge.wake():
                            self.close_channel(tokens[i])
                        continue
                    c = self.pending.pop(tokens[i], None)
                    if c is not None:
                        _quietly(c.complete, code, noticed[i], False)
        except BaseException as exc:  # the watcher must never die silently
            self.broken = exc
            self._fail_all(WatcherError(f"the completion watcher failed: {exc!r}"))

    def _fail_all(self, error: BaseException) -> None:
        while self.pending:
            _token, c = self.pending.popitem()
            _quietly(c.fail, error)


def _quietly(fn: Any, *args: Any) -> None:
    try:
        fn(*args)
    except Exception:  # a user callback's error must not kill the watcher
        import traceback

        traceback.print_exc()
