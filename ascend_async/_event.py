"""Event: a marker recorded on a stream; query it, block on it, time between two, or await it."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel

from ._errors import SessionClosedError, device_fault
from ._loop import LoopBridge, current_bridge

if TYPE_CHECKING:
    from ._device import Device

__all__ = ["Event"]


class _Wait:
    """One ``await event.wait()``: completes on its loop (or via the watcher thread)."""

    __slots__ = ("bridge", "done", "error")

    def __init__(self, bridge: LoopBridge) -> None:
        self.bridge = bridge
        self.done = anyio.Event()
        self.error: BaseException | None = None

    def complete(self, code: int, noticed_ns: int, on_loop: bool) -> None:
        if code:
            self.error = device_fault(code, "device stream", "device task failed")
        if on_loop:
            self.done.set()
        else:
            self.bridge.call(self.done.set)

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.bridge.call(self.done.set)


class Event:
    """A device event, made by :meth:`Stream.record`: it completes when every task submitted
    to its stream before the record has finished.

    .. code-block:: python

        start = stream.record()
        out = await session.run(graph, x, stream=stream)
        end = stream.record()
        await end.wait()
        print(start.elapsed_ms(end))
    """

    def __init__(self, device: Device, stream_handle: Any) -> None:
        # Internal: use Stream.record().
        b = device.backend
        self._device = device
        self._stream = stream_handle
        device.ensure_current()
        ev = b.ffi.new("aclrtEvent*")
        flags = b.lib.ACL_EVENT_SYNC | b.lib.ACL_EVENT_TIME_LINE
        b.check(b.lib.aclrtCreateEventWithFlag(ev, flags), "aclrtCreateEventWithFlag")
        self._handle: Any = ev[0]
        self._lock = threading.Lock()
        rc = b.lib.aclrtRecordEvent(self._handle, stream_handle)
        if rc:
            b.lib.aclrtDestroyEvent(self._handle)
            self._handle = None
            b.check(rc, "aclrtRecordEvent")

    def _live(self) -> Any:
        if self._handle is None or not self._device.alive:
            from ._device import check_not_forked

            check_not_forked()  # in a forked child, say so: that is why the event is gone
            raise SessionClosedError("the event was closed")
        self._device.ensure_current()
        return self._handle

    def query(self) -> bool:
        """True once the recorded work has completed (never blocks)."""
        h = self._live()
        b = self._device.backend
        status = b.ffi.new("aclrtEventRecordedStatus*")
        b.check(b.lib.aclrtQueryEventStatus(h, status), "aclrtQueryEventStatus")
        return bool(int(status[0]) == b.lib.ACL_EVENT_RECORDED_STATUS_COMPLETE)

    def synchronize(self, timeout: float | None = None) -> None:
        """Block the calling thread until the event completes.

        :raises AscendTimeoutError: ``timeout`` (seconds) passed first (507047); the event is
            untouched and may still complete.
        :raises DeviceError: the stream faulted before the event.
        """
        h = self._live()
        b = self._device.backend
        ms = -1 if timeout is None else max(0, int(timeout * 1000))
        b.check(b.lib.aclrtSynchronizeEventWithTimeout(h, ms), "aclrtSynchronizeEventWithTimeout")

    async def wait(self) -> None:
        """Await completion without blocking the event loop (the device's watcher resolves it).

        A checkpoint. Cancelling it leaves the event untouched.
        :raises DeviceError: the stream faulted before the event.
        """
        await anyio.lowlevel.checkpoint_if_cancelled()
        h = self._live()
        watcher = self._device.get_watcher()
        bridge = current_bridge()
        wait = _Wait(bridge)
        watcher.add(watcher.token(bridge.channel(watcher)), wait, self._stream, h)
        await wait.done.wait()
        if wait.error is not None:
            raise wait.error

    def elapsed_ms(self, end: Event) -> float:
        """Milliseconds from this event to ``end`` (both completed, recorded on one stream)."""
        b = self._device.backend
        ms = b.ffi.new("float*")
        b.check(b.lib.aclrtEventElapsedTime(ms, self._live(), end._live()), "aclrtEventElapsedTime")
        return float(ms[0])

    @property
    def is_closed(self) -> bool:
        return self._handle is None

    def close(self) -> None:
        """Destroy the event (idempotent; allowed before it completes)."""
        with self._lock:
            h, self._handle = self._handle, None
        if h is not None and self._device.alive:
            self._device.ensure_current()
            self._device.backend.lib.aclrtDestroyEvent(h)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"<Event {'closed' if self._handle is None else 'recorded'} on device {self._device.id}>"
