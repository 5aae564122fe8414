"""Devices: the runtime context every thread must set, pools, events and the watcher.

One ``Device`` per device id per process, shared by every session on it and reference counted
by them. Its resources are thread-safe: the C pools lock internally; the event pool is a list
guarded by a lock; the watcher is started on the first run.

The device's hardware events are one budget (:class:`EventBudget`) shared by every loop,
session and pool instance on it: a run is admitted only when its events fit, and otherwise
waits on its own loop, so no thread ever waits for a free event inside ``aclrtRecordEvent``.
"""

from __future__ import annotations

import atexit
import os
import threading
import weakref
from collections import deque
from typing import TYPE_CHECKING, Any

from ._backend import Backend, get_backend
from ._errors import BackendUnavailableError, acl_error
from ._loop import Waiter
from ._watcher import Watcher

if TYPE_CHECKING:
    from ._loop import LoopBridge

__all__ = [
    "Device",
    "EventBudget",
    "acquire_device",
    "check_not_forked",
    "configure_watcher",
    "event_limit",
    "release_device",
]

#: The per-device hardware event limit assumed on CANN, where the runtime does not report it:
#: the smallest one documented (1023, Atlas inference; A2/A3 have 65536). Set
#: ASCEND_ASYNC_EVENT_BUDGET to use another.
_CANN_EVENT_LIMIT = 1023

_tls = threading.local()


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    return int(raw) if raw else default


def event_limit(backend: Backend) -> int:
    """The device's hardware event budget: the sim's ``max_events``, 1023 on CANN, or
    ``ASCEND_ASYNC_EVENT_BUDGET`` (at least 4: a profiled run records four events; on the sim
    at most its ``max_events``)."""
    if backend.is_sim:
        cfg = backend.ffi.new("aa_sim_config*")
        backend.lib.aa_sim_get_config(cfg)
        hw = int(cfg.max_events)
    else:
        hw = _CANN_EVENT_LIMIT
    raw = os.environ.get("ASCEND_ASYNC_EVENT_BUDGET", "").strip()
    if not raw:
        return hw
    try:
        want = int(raw)
    except ValueError:
        raise ValueError(f"ASCEND_ASYNC_EVENT_BUDGET={raw!r} is not an integer") from None
    if want < 4:
        raise ValueError(f"ASCEND_ASYNC_EVENT_BUDGET={want} is below 4 (a profiled run records four events)")
    return min(want, hw) if backend.is_sim else want


class _Ticket:
    """One run waiting for events: granted (under the budget's lock) on any thread, woken on
    its own loop."""

    __slots__ = ("bridge", "granted", "n", "waiter")

    def __init__(self, n: int, bridge: LoopBridge) -> None:
        self.n = n
        self.bridge = bridge
        self.granted = False
        self.waiter = Waiter()


class EventBudget:
    """The hardware events of one device, counted across every loop, session and pool instance
    that uses it (any thread; one lock, held for a few operations, never across a wait).

    ``used`` counts the events runs hold (one per run, four per profiled run) and the user's
    recorded :class:`Event` objects. A run that does not fit waits on its own loop, in FIFO
    order and cancellably; when events come back on any thread, the runs now admitted are woken
    through their loops' thread-safe entries.
    """

    def __init__(self, limit: int, lock: threading.Lock | None = None) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0  # most events held at once
        self.waited = 0  # runs that had to wait for events
        # The device's lock (its event pool's), so a run takes its event and its place in one
        # step (Device.take_run_event). Never held across a call into the other's methods.
        self._lock = lock or threading.Lock()
        self._waiters: deque[_Ticket] = deque()

    def try_take(self, n: int) -> bool:
        """Take ``n`` events if they fit and nobody waits (the common path: no await)."""
        with self._lock:
            return self._try_take_locked(n)

    def _try_take_locked(self, n: int) -> bool:
        used = self.used + n
        if self._waiters or used > self.limit:
            return False
        self.used = used
        if used > self.peak:
            self.peak = used
        return True

    def take_now(self, n: int) -> bool:
        """Take ``n`` events if they fit, ahead of waiting runs (a synchronous caller that
        cannot wait: ``Stream.record``)."""
        with self._lock:
            used = self.used + n
            if used > self.limit:
                return False
            self.used = used
            if used > self.peak:
                self.peak = used
            return True

    async def take(self, n: int, bridge: LoopBridge) -> None:
        """Take ``n`` events, waiting on the calling loop (FIFO) until they fit. Cancelling the
        wait takes nothing (or gives back what was granted meanwhile)."""
        if self.try_take(n):
            return
        ticket = _Ticket(n, bridge)
        with self._lock:
            self.waited += 1
            self._waiters.append(ticket)
            granted = self._grant_locked()  # ours may fit already (events came back meanwhile)
        self._wake(granted)
        try:
            await ticket.waiter.wait(bridge.trio)
        except BaseException:
            with self._lock:
                refund = ticket.granted
                if not refund:
                    self._waiters.remove(ticket)
                    granted = self._grant_locked()  # a smaller run behind us may fit now
            if refund:
                self.give(n)
            else:
                self._wake(granted)
            raise

    def give(self, n: int) -> None:
        """Give back ``n`` events (any thread) and admit the runs that fit now, in order."""
        with self._lock:
            granted = self._give_locked(n)
        if granted:
            self._wake(granted)

    def _give_locked(self, n: int) -> list[_Ticket] | None:
        self.used -= n
        return self._grant_locked() if self._waiters else None

    def _grant_locked(self) -> list[_Ticket]:
        granted = []
        waiters = self._waiters
        while waiters and self.used + waiters[0].n <= self.limit:
            t = waiters.popleft()
            t.granted = True
            self.used += t.n
            granted.append(t)
        if self.used > self.peak:
            self.peak = self.used
        return granted

    def _wake(self, granted: list[_Ticket]) -> None:
        # Hand-off: a ticket granted here (any thread) is set on its own loop's thread; a loop
        # that has closed never runs its task, so its events come back at once.
        for t in granted:
            bridge = t.bridge
            if threading.get_ident() == bridge.thread:
                t.waiter.set()
            elif not bridge.post(t.waiter.set):
                self.give(t.n)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "limit": self.limit,
                "used": self.used,
                "peak": self.peak,
                "waiting": len(self._waiters),
                "waited": self.waited,
            }


class Device:
    """Process-wide state of one device (context, pools, events, watcher)."""

    def __init__(self, backend: Backend, device_id: int) -> None:
        ffi, lib = backend.ffi, backend.lib
        self.backend = backend
        self.id = device_id
        self.refs = 0
        self.alive = True
        self._lock = threading.Lock()
        backend.check(lib.aclrtSetDevice(device_id), "aclrtSetDevice")
        ctx = ffi.new("aclrtContext*")
        backend.check(lib.aclrtGetCurrentContext(ctx), "aclrtGetCurrentContext")
        self.context = ctx[0]
        _tls.context = self.context
        cache = _env_int("ASCEND_ASYNC_POOL_CACHE_BYTES", 1 << 30)
        self.device_pool = lib.aa_pool_create(lib.AA_POOL_DEVICE, cache)
        self.host_pool = lib.aa_pool_create(lib.AA_POOL_HOST, cache)
        if self.device_pool == ffi.NULL or self.host_pool == ffi.NULL:
            for pool in (self.device_pool, self.host_pool):
                if pool != ffi.NULL:
                    lib.aa_pool_destroy(pool)
            raise MemoryError("no host memory for the device's caching pools")
        # GE's external allocator is per stream: each Stream registers a lane of device_pool.
        self.events = EventBudget(event_limit(backend), self._lock)
        self._events: list[Any] = []  # the run-event pool: idle events, each recorded before
        self._live = 0  # events made here and not destroyed (pooled, in use, stage, user)
        self.watcher: Watcher | None = None
        # Objects to disable in a child process after fork (sessions: ``_after_fork()``).
        self.users: weakref.WeakSet[Any] = weakref.WeakSet()
        # DeviceTensors holding GE output blocks: released at shutdown, before the pool they
        # were allocated from (GE's external allocator) is destroyed.
        self.ge_tensors: weakref.WeakSet[Any] = weakref.WeakSet()

    # -- context -----------------------------------------------------------------------------

    def ensure_current(self) -> None:
        """Make this device's context current on the calling thread (cheap when it is)."""
        if getattr(_tls, "context", None) != self.context:
            check_not_forked()  # a forked child takes this path: its thread-local was cleared
            self.backend.check(self.backend.lib.aclrtSetCurrentContext(self.context), "aclrtSetCurrentContext")
            _tls.context = self.context

    # -- memory ------------------------------------------------------------------------------

    def alloc(self, pool: Any, nbytes: int, what: str) -> Any:
        """A block from ``pool``; raises DeviceMemoryError naming ``what`` when memory ran out."""
        err = self.backend.ffi.new("aclError*")
        p = self.backend.lib.aa_pool_alloc(pool, nbytes, err)
        if p == self.backend.ffi.NULL:
            raise acl_error(int(err[0]), "aclrtMalloc", f"{what}: {nbytes} bytes: {self.backend.acl_message()}")
        return p

    def pool_stats(self) -> dict[str, dict[str, int]]:
        ffi, lib = self.backend.ffi, self.backend.lib
        out = {}
        for name, pool in (("device", self.device_pool), ("host", self.host_pool)):
            st = ffi.new("aa_pool_stats*")
            lib.aa_pool_get_stats(pool, st)
            out[name] = {
                k: int(getattr(st, k))
                for k in (
                    "live_blocks",
                    "live_bytes",
                    "cached_blocks",
                    "cached_bytes",
                    "hits",
                    "misses",
                    "stream_cached_blocks",
                    "stream_cached_bytes",
                )
            }
        return out

    # -- events ------------------------------------------------------------------------------

    # Each event recorded once holds a hardware event until it is destroyed, pooled or not.
    # The caller of take_event/new_event holds events from ``self.events`` for what it takes, so
    # the events out of the pool never pass the budget; creating one trims the pool so that the
    # pooled and the taken ones together never pass it either.

    def take_event(self) -> Any:
        """A run's event: a pooled one, else a new one. The caller holds one from the budget."""
        with self._lock:
            if self._events:
                return self._events.pop()
        return self.new_event(None)

    def new_event(self, flags: int | None) -> Any:
        """A new event (``aclrtCreateEventWithFlag`` with ``flags``; None: a plain one), making
        room among the pooled ones if the device's budget needs it. The caller holds one from
        the budget; give it back with :meth:`destroy_event` (or :meth:`give_event`)."""
        with self._lock:
            self._live += 1
            extra = self._live - self.events.limit
            drop = [self._events.pop() for _ in range(min(extra, len(self._events)))] if extra > 0 else []
            self._live -= len(drop)
        lib = self.backend.lib
        self.ensure_current()
        for old in drop:
            lib.aclrtDestroyEvent(old)
        ev = self.backend.ffi.new("aclrtEvent*")
        rc = lib.aclrtCreateEvent(ev) if flags is None else lib.aclrtCreateEventWithFlag(ev, flags)
        if rc:
            with self._lock:
                self._live -= 1
            self.backend.check(rc, "aclrtCreateEvent")
        return ev[0]

    def take_run_event(self) -> Any:
        """An unstaged run's event and its place in the budget, in one step (the fast path of
        ``EventBudget.try_take(1)`` then :meth:`take_event`); None, with nothing taken, when
        the budget has no room or runs wait for it. Give both back with :meth:`give_run_event`."""
        budget = self.events
        with self._lock:  # (the budget's lock too)
            if not budget._try_take_locked(1):
                return None
            if self._events:
                return self._events.pop()
        try:
            return self.new_event(None)
        except BaseException:
            budget.give(1)
            raise

    def give_run_event(self, event: Any) -> None:
        """:meth:`give_event` and ``EventBudget.give(1)`` in one step (any thread)."""
        budget = self.events
        with self._lock:  # (the budget's lock too)
            self._events.append(event)
            granted = budget._give_locked(1)
        if granted:
            budget._wake(granted)

    def give_event(self, event: Any) -> None:
        """Pool a run's event whose record succeeded (it may be taken again at once)."""
        with self._lock:
            self._events.append(event)

    def destroy_event(self, event: Any) -> None:
        """Destroy an event made here (its record may still be pending: ACL frees it when done).
        An event whose record failed is destroyed, never pooled: the next run would take it."""
        with self._lock:
            self._live -= 1
        if self.alive:
            self.ensure_current()
            self.backend.lib.aclrtDestroyEvent(event)

    # -- watcher -----------------------------------------------------------------------------

    def get_watcher(self) -> Watcher:
        w = self.watcher
        if w is None:
            with self._lock:
                if self.watcher is None:
                    strategy, config = _watch_configs.get(self.id, ("poll", {}))
                    lib = self.backend.lib
                    code = lib.AA_WATCH_REPORT if strategy == "report" else lib.AA_WATCH_POLL
                    self.ensure_current()
                    self.watcher = Watcher(self.backend, self.context, self.id, code, config)
                w = self.watcher
        return w

    def shutdown(self) -> None:
        """Free everything (the last session on the device closed)."""
        lib = self.backend.lib
        self.ensure_current()
        if self.watcher is not None:
            self.watcher.close()
            self.watcher = None
        for tensor in list(self.ge_tensors):
            tensor.close()
        self.alive = False
        for ev in self._events:
            lib.aclrtDestroyEvent(ev)
        self._live -= len(self._events)
        self._events.clear()
        lib.aa_pool_destroy(self.device_pool)
        lib.aa_pool_destroy(self.host_pool)
        lib.aclrtResetDevice(self.id)
        _tls.context = None


_devices: dict[int, Device] = {}
_devices_lock = threading.Lock()


def acquire_device(device_id: int) -> Device:
    """The shared Device for ``device_id`` (one more reference)."""
    global _runtime_started
    check_not_forked()
    backend = get_backend()
    with _devices_lock:
        _runtime_started = True
        dev = _devices.get(device_id)
        if dev is None:
            count = backend.ffi.new("uint32_t*")
            backend.check(backend.lib.aclrtGetDeviceCount(count), "aclrtGetDeviceCount")
            if not 0 <= device_id < count[0]:
                code = backend.lib.ACL_ERROR_RT_INVALID_DEVICEID
                where = (
                    "the simulated device has ASCEND_ASYNC_SIM_DEVICES devices (default 1), read when it starts"
                    if backend.is_sim
                    else "see npu-smi info"
                )
                raise acl_error(
                    code,
                    "aclrtSetDevice",
                    f"no device {device_id}: {count[0]} visible ({where}; ASCEND_RT_VISIBLE_DEVICES picks among them)",
                )
            dev = _devices[device_id] = Device(backend, device_id)
        dev.refs += 1
        return dev


def release_device(dev: Device) -> None:
    """Drop one reference; the last one frees the device's resources."""
    with _devices_lock:
        dev.refs -= 1
        if dev.refs > 0:
            return
        _devices.pop(dev.id, None)
    dev.shutdown()


_watch_configs: dict[int, tuple[str, dict[str, int]]] = {}

#: configure_watcher's tuning keys (aa_watch_config's uint32 fields, in microseconds) and the
#: least value each takes (0 for spin_us: no spinning).
_WATCH_KEYS = {
    "spin_us": 0,
    "min_sleep_us": 1,
    "max_sleep_us": 1,
    "fault_probe_us": 1,
    "wake_after_us": 1,
    "takeover_us": 1,
}
_WATCH_MAX = 60_000_000  # a minute: more is a mistake, not a tuning


def configure_watcher(device_id: int = 0, strategy: str = "poll", **config: int) -> None:
    """Choose the completion strategy ("poll" or "report") and its tuning for a device.

    Tuning keys (integers, microseconds, at most 60,000,000): spin_us (>= 0), min_sleep_us,
    max_sleep_us (>= min_sleep_us), fault_probe_us, wake_after_us, takeover_us (>= 1). Applies
    to watchers started afterwards (a device's watcher starts with its first run).

    :raises TypeError: a key that is not a tuning key, or a value that is not an int.
    :raises ValueError: a bad ``device_id``, ``strategy`` or a value out of range.
    """
    if isinstance(device_id, bool) or not isinstance(device_id, int) or device_id < 0:
        raise ValueError(f"device_id must be an int >= 0, not {device_id!r}")
    if strategy not in ("poll", "report"):
        raise ValueError(f"strategy must be 'poll' or 'report', not {strategy!r}")
    for key, value in config.items():
        least = _WATCH_KEYS.get(key)
        if least is None:
            raise TypeError(f"configure_watcher: unknown key {key!r}; the keys are {', '.join(_WATCH_KEYS)}")
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"configure_watcher: {key} must be an int (microseconds), not {value!r}")
        if not least <= value <= _WATCH_MAX:
            raise ValueError(f"configure_watcher: {key}={value} is out of range {least}..{_WATCH_MAX}")
    lo, hi = config.get("min_sleep_us"), config.get("max_sleep_us")
    if lo is not None and hi is not None and hi < lo:
        raise ValueError(f"configure_watcher: max_sleep_us={hi} is below min_sleep_us={lo}")
    _watch_configs[device_id] = (strategy, dict(config))


# -- fork ------------------------------------------------------------------------------------------
# The runtime's threads (device workers, watchers, the engine's) do not survive fork(), and
# locks they held stay held in the child. A child of a process that started the runtime must
# not touch it: every entry (a new Session, a session's methods, a device's context) raises
# BackendUnavailableError there; close() is a no-op. A child forked before the first Session
# starts afresh.

_runtime_started = False  # a device was opened in this process (its threads may exist)
_forked_from: int | None = None  # in a child forked after that: the parent's pid


def check_not_forked() -> None:
    """Raise the fork error in a child forked from a process that had started the runtime."""
    if _forked_from is not None:
        raise BackendUnavailableError(
            f"this process was forked (from pid {_forked_from}) after ascend_async started the "
            "device runtime there; the runtime's threads do not survive fork(), so no session can "
            "be used or created in the child. Start workers with the 'spawn' or 'forkserver' "
            "method (multiprocessing.get_context('spawn')), or fork before the first Session."
        )


def _before_fork() -> None:
    _devices_lock.acquire()  # a consistent _devices for the child (nobody is mid-acquire)


def _after_fork_in_parent() -> None:
    _devices_lock.release()


def _after_fork_in_child() -> None:
    global _devices_lock, _forked_from
    _devices_lock = threading.Lock()
    if not _runtime_started:
        return
    _forked_from = os.getppid()
    _tls.context = None  # the next ensure_current on this thread checks for the fork
    _skip_native_exit_handlers()
    for dev in _devices.values():
        dev.alive = False  # finalizers (events, tensors) must not call into the runtime
        dev._lock = threading.Lock()
        if dev.watcher is not None:
            dev.watcher.after_fork_in_child()
        for user in list(dev.users):
            user._after_fork()


def _skip_native_exit_handlers() -> None:
    """End this child's exit after Python's own finalization, before the C exit handlers.

    The graph engine's library (onnxruntime, loaded in the parent) has static destructors that
    wait on its threads' condition variables; those threads do not exist in a forked child, so
    they would wait forever. A handler registered now runs before every one registered in the
    parent: it ends the process with the exit status, as ``os._exit`` does in multiprocessing's
    fork children (glibc's ``on_exit``; elsewhere nothing is done).
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        on_exit, exit_now = libc.on_exit, libc._exit
    except (OSError, AttributeError):
        return
    on_exit.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    # _exit(int) called as fn(int status, void *arg): the status is the first argument.
    on_exit(ctypes.cast(exit_now, ctypes.c_void_p), None)


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child)


@atexit.register
def _stop_watchers_at_exit() -> None:
    # Sessions left open at exit: stop the watcher threads quietly before the interpreter
    # goes away (their runs are abandoned; the device threads are plain C and just stop).
    if _forked_from is not None:  # a forked child: the watchers are the parent's
        return
    for dev in list(_devices.values()):
        w = dev.watcher
        if w is not None and w.handle != dev.backend.ffi.NULL:
            dev.backend.lib.aa_watch_close(w.handle)
