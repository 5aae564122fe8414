"""Event: a marker recorded on a stream; query it, block on it, time between two, or await it."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel

from ._errors import SessionClosedError, acl_error, device_fault
from ._loop import LoopBridge, Waiter, current_bridge

if TYPE_CHECKING:
    from ._device import Device

__all__ = ["Event"]


class _Wait:
    """One ``await event.wait()`` (or, with no bridge, a closed event's pending destroy): a
    watch entry on the event's handle. The entry completes exactly once (on a loop or the
    watcher thread); the waiter is settled once, by that completion or earlier by a close."""

    __slots__ = ("bridge", "done", "error", "event", "settled")

    def __init__(self, bridge: LoopBridge | None, event: Event) -> None:
        self.bridge = bridge
        self.event = event
        self.done = Waiter() if bridge is not None else None  # the runs' one-shot wake-up
        self.error: BaseException | None = None
        self.settled = bridge is None

    def complete(self, code: int, noticed_ns: int, on_loop: bool) -> None:
        if self._settle():
            if code:
                self.error = device_fault(code, "device stream", "device task failed")
            self._wake(on_loop)
        self.event._entry_done()

    def fail(self, error: BaseException) -> None:
        if self._settle():
            self.error = error
            self._wake(False)
        self.event._entry_done()

    def abort(self, error: BaseException) -> None:
        """The event (or its session) was closed: the waiter gets ``error`` now; the watch entry
        stays until the event completes, and the handle with it."""
        if self._settle():
            self.error = error
            self._wake(False)

    def _settle(self) -> bool:
        with self.event._lock:
            first = not self.settled
            self.settled = True
            return first

    def _wake(self, on_loop: bool) -> None:
        assert self.bridge is not None and self.done is not None
        if on_loop:
            self.done.set()
        else:
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

    An event holds one of the device's hardware events (the budget runs share) until it is
    closed and its recorded work has completed.
    """

    def __init__(self, device: Device, stream_handle: Any) -> None:
        # Internal: use Stream.record().
        b = device.backend
        self._device = device
        self._stream = stream_handle
        self._lock = threading.Lock()
        self._entries = 0  # watch entries on the handle (waits, a pending destroy)
        self._waits: set[_Wait] = set()  # waits not settled yet
        self._doomed: Any = None  # closed while watch entries remained: destroyed by the last
        self._handle: Any = None
        if not device.events.take_now(1):
            budget = device.events
            raise acl_error(
                b.lib.ACL_ERROR_RT_NO_EVENT_RESOURCE,
                "aclrtRecordEvent",
                f"device {device.id}'s {budget.limit} hardware events are all held by runs in flight and "
                "recorded events; close the events you no longer need",
            )
        try:
            h = device.new_event(b.lib.ACL_EVENT_SYNC | b.lib.ACL_EVENT_TIME_LINE)
        except BaseException:
            device.events.give(1)
            raise
        device.ensure_current()
        rc = b.lib.aclrtRecordEvent(h, stream_handle)
        if rc:
            self._destroy(h)
            b.check(rc, "aclrtRecordEvent")
        self._handle = h

    def _live(self) -> Any:
        if self._handle is None or not self._device.alive:
            from ._device import check_not_forked

            check_not_forked()  # in a forked child, say so: that is why the event is gone
            raise SessionClosedError("the event was closed")
        self._device.ensure_current()
        return self._handle

    def _destroy(self, h: Any) -> None:
        self._device.destroy_event(h)
        self._device.events.give(1)

    def _entry_done(self) -> None:
        """A watch entry on the handle completed (any thread): the last one destroys a closed
        event's handle, which nothing queries any more."""
        with self._lock:
            self._entries -= 1
            h = self._doomed if not self._entries else None
            if h is not None:
                self._doomed = None
        if h is not None:
            self._destroy(h)

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
        :raises SessionClosedError: the event, or its session, was closed (before or while
            waiting).
        """
        await anyio.lowlevel.checkpoint_if_cancelled()
        watcher = self._device.get_watcher()
        bridge = current_bridge()
        with self._lock:  # against close(): the entry is added on a live handle, or not at all
            h = self._live()
            wait = _Wait(bridge, self)
            watcher.add(watcher.token(bridge.channel(watcher)), wait, self._stream, h)
            self._entries += 1
            self._waits.add(wait)
        try:
            await wait.done.wait(bridge.trio)  # type: ignore[union-attr]
        finally:
            with self._lock:
                self._waits.discard(wait)
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
        """Close the event (idempotent; allowed before it completes). Tasks awaiting it get
        :class:`SessionClosedError` at once; the handle is destroyed once the device no longer
        needs it (its recorded work completed), and nothing else on the stream is touched."""
        self._close("the event was closed while a task awaited it")

    def _close(self, why: str) -> None:
        """Close; each waiter gets its own SessionClosedError(``why``)."""
        with self._lock:
            h, self._handle = self._handle, None
            if h is None:
                return
            waits = list(self._waits)
            self._waits.clear()
            if self._entries:  # the watch still polls the handle: the last entry destroys it
                self._doomed, h = h, None
        for w in waits:
            w.abort(SessionClosedError(why))
        if h is not None and self._device.alive:
            self._release_when_done(h)

    def _release_when_done(self, h: Any) -> None:
        """Destroy ``h`` now if its work completed, else when it does (through the watcher), so
        that the hardware event it holds returns to the budget when the device frees it."""
        b = self._device.backend
        self._device.ensure_current()
        status = b.ffi.new("aclrtEventRecordedStatus*")
        rc = b.lib.aclrtQueryEventStatus(h, status)
        if rc or int(status[0]) == b.lib.ACL_EVENT_RECORDED_STATUS_COMPLETE:
            self._destroy(h)
            return
        watcher = self._device.get_watcher()
        if watcher.closed or watcher.broken is not None:
            self._destroy(h)
            return
        with self._lock:
            self._entries += 1
            self._doomed = h
        try:
            watcher.add(watcher.token(0), _Wait(None, self), self._stream, h)
        except Exception:
            self._entry_done()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"<Event {'closed' if self._handle is None else 'recorded'} on device {self._device.id}>"
