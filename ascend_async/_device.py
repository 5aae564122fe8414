"""Devices: the runtime context every thread must set, pools, events and the watcher.

One ``Device`` per device id per process, shared by every session on it and reference counted
by them. Its resources are thread-safe: the C pools lock internally; the event pool is a list
guarded by a lock; the watcher is started on the first run.
"""

from __future__ import annotations

import atexit
import os
import threading
import weakref
from typing import Any

from ._backend import Backend, get_backend
from ._errors import BackendUnavailableError, acl_error
from ._watcher import Watcher

__all__ = ["Device", "acquire_device", "check_not_forked", "configure_watcher", "release_device"]

_tls = threading.local()


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    return int(raw) if raw else default


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
        self.allocator = ffi.new("aa_allocator*")
        lib.aa_pool_allocator(self.device_pool, self.allocator)
        self._events: list[Any] = []
        self._events_made = 0
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
                for k in ("live_blocks", "live_bytes", "cached_blocks", "cached_bytes", "hits", "misses")
            }
        return out

    # -- events ------------------------------------------------------------------------------

    def take_event(self) -> Any:
        with self._lock:
            if self._events:
                return self._events.pop()
            self._events_made += 1
        ev = self.backend.ffi.new("aclrtEvent*")
        self.ensure_current()
        rc = self.backend.lib.aclrtCreateEvent(ev)
        if rc:
            with self._lock:
                self._events_made -= 1
            self.backend.check(rc, "aclrtCreateEvent")
        return ev[0]

    def give_event(self, event: Any) -> None:
        with self._lock:
            self._events.append(event)

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
                raise acl_error(code, "aclrtSetDevice", f"no device {device_id}: {count[0]} visible")
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
