"""A session's streams: the pool that picks one per run, and fault replacement.

A run that fails on the device marks its stream faulted (``finished``, on whichever thread
completed the run). The replacement happens on the submitting side only: the task whose run
failed (``Session._replace_faulted``) or the next ``pick`` puts a fresh stream in the faulted
one's slot (``Session.streams`` only reads the slots), and a replaced
stream is destroyed, with its graph replicas, once its last run has completed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._event import Event

if TYPE_CHECKING:
    from ._device import Device

__all__ = ["Stream", "StreamPool"]


class Stream:
    """One of a session's device streams (a lane graphs are loaded on). Runs on one stream
    complete in submission order."""

    def __init__(self, device: Device, ge_session: Any, index: int, owner: Any) -> None:
        b = device.backend
        self._device = device
        self._ge = ge_session
        self._owner = owner  # the Session (for repr and its closed check)
        self.index = index
        device.ensure_current()
        s = b.ffi.new("aclrtStream*")
        b.check(b.lib.aclrtCreateStream(s), "aclrtCreateStream")
        self.handle: Any = s[0]
        # GE's external allocator registry is keyed by stream, and the allocator must be
        # stream-ordered: GE frees a run's workspace as soon as the run is submitted, while the
        # stream still uses it, and one allocator must not serve streams that run concurrently.
        # So each stream registers its own lane of the device's caching pool: what GE gives back
        # through it is reused by this stream alone until the lane is closed (_destroy, after
        # the stream drained), when it joins the shared cache.
        self._lane = b.lib.aa_pool_lane_open(device.device_pool)
        if self._lane == b.ffi.NULL:
            b.lib.aclrtDestroyStream(self.handle)
            raise MemoryError("no host memory for the stream's allocator lane")
        self._allocator = b.ffi.new("aa_allocator*")  # GE copies the table; kept for clarity
        b.lib.aa_pool_lane_allocator(self._lane, self._allocator)
        st = b.lib.aa_session_register_external_allocator(ge_session, self.handle, self._allocator)
        if st:
            b.lib.aclrtDestroyStream(self.handle)
            b.lib.aa_pool_lane_close(self._lane)
            b.check_ge(st, "RegisterExternalAllocator")
        self.in_flight = 0
        self.fault = 0

    def __repr__(self) -> str:
        return f"<Stream {self.index} of {self._owner!r}{' faulted' if self.fault else ''}>"

    def record(self) -> Event:
        """Record an event behind everything submitted to this stream so far."""
        self._owner._check_open()
        ev = Event(self._device, self.handle)
        self._owner._events.add(ev)
        return ev

    def synchronize(self) -> None:
        """Block the calling thread until the stream's work is done (raises DeviceError)."""
        dev = self._device
        dev.ensure_current()
        dev.backend.check(dev.backend.lib.aclrtSynchronizeStream(self.handle), "aclrtSynchronizeStream")

    def _destroy(self) -> None:
        dev = self._device
        lib = dev.backend.lib
        dev.ensure_current()
        lib.aa_session_unregister_external_allocator(self._ge, self.handle)
        if dev.watcher is not None:
            dev.watcher.fail_stream(self.handle, self.fault or lib.ACL_ERROR_RT_INTERNAL_ERROR)
        lib.aclrtDestroyStream(self.handle)
        lib.aclGetRecentErrMsg()
        # The stream's work has drained (a stream is destroyed after its last run completed):
        # the blocks its lane kept may now serve any stream.
        lib.aa_pool_lane_close(self._lane)


class StreamPool:
    """The session's streams by index, the least-loaded pick, and fault replacement."""

    def __init__(self, make: Callable[[int], Stream], count: int, retire: Callable[[Stream], None]) -> None:
        self._make = make
        self._retire = retire  # removes a retired stream's graph replicas
        self._lock = threading.Lock()
        self.streams: list[Stream] = []
        self._replaced: list[Stream] = []  # faulted, out of the pool, runs still in flight
        self._faulted = False
        self._rr = 0
        # Runs a dead watcher failed: their blocks may still be in use on the device, so they
        # are given back at close, once every stream has drained.
        self._orphans: list[Callable[[], None]] = []
        for i in range(count):
            self.streams.append(make(i))

    def snapshot(self) -> tuple[Stream, ...]:
        """The streams by index, as they are (no replacement here: reading has no effects)."""
        with self._lock:
            return tuple(self.streams)

    @property
    def stale(self) -> bool:
        """A stream faulted since the last refresh, or a replaced one awaits destruction."""
        return self._faulted or bool(self._replaced)

    def pick(self, want: Stream | int | None) -> Stream:
        """The stream for the next run: ``want``, or the least loaded (ties rotate)."""
        if self.stale:
            self.refresh()
        with self._lock:
            return self._pick_locked(want)

    def start(self, want: Stream | int | None) -> Stream:
        """:meth:`pick` and :meth:`started` in one step: the stream for the next run, counted
        as running there."""
        if self.stale:
            self.refresh()
        with self._lock:
            best = self._pick_locked(want)
            best.in_flight += 1
            return best

    def _pick_locked(self, want: Stream | int | None) -> Stream:
        streams = self.streams
        if want is None:
            self._rr = rr = (self._rr + 1) % len(streams)
            best = streams[rr]
            for s in streams:
                if s.in_flight < best.in_flight:
                    best = s
            return best
        if isinstance(want, int):
            if not 0 <= want < len(streams):
                raise ValueError(f"stream={want}: this session has streams 0..{len(streams) - 1}")
            return streams[want]
        if want not in streams:
            raise ValueError(f"{want!r} is not a live stream of this session")
        return want

    def started(self, stream: Stream) -> None:
        with self._lock:
            stream.in_flight += 1

    def finished(self, stream: Stream, code: int) -> None:
        """A run on ``stream`` completed (any thread); a failed one marks the stream faulted."""
        with self._lock:
            stream.in_flight -= 1
            if code and not stream.fault:
                stream.fault = code
                self._faulted = True

    def refresh(self) -> None:
        """Replace faulted streams and destroy replaced ones that have drained (submitting side)."""
        with self._lock:
            self._faulted = False
            todo = [(i, s) for i, s in enumerate(self.streams) if s.fault]
        for i, old in todo:
            fresh = self._make(old.index)
            with self._lock:
                self.streams[i] = fresh
                self._replaced.append(old)
        with self._lock:
            drained = [s for s in self._replaced if s.in_flight == 0]
            self._replaced = [s for s in self._replaced if s.in_flight]
        for s in drained:
            self._retire(s)
            s._destroy()

    def orphan(self, release: Callable[[], None]) -> None:
        """Call ``release`` at :meth:`close`, after the streams drained (any thread)."""
        with self._lock:
            self._orphans.append(release)

    def close(self) -> None:
        """Destroy every stream (teardown: nothing is in flight), then give back what runs
        failed by a dead watcher held (destroying a stream waits for its work)."""
        with self._lock:
            every = self._replaced + self.streams
            self._replaced, self.streams = [], []
            orphans, self._orphans = self._orphans, []
        for s in every:
            s._destroy()
        for release in orphans:
            release()
