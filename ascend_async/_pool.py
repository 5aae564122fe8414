"""DevicePool: a session per device (or several), one graph added to all, each run routed to the
least-loaded healthy device; a device that faults leaves the rotation until a probe run on it
succeeds.

Threads: the pool may be shared by several event loops and threads; the routing state (in-flight
counts, health) is guarded by one lock, held only for the pick and the bookkeeping, never
across an await.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import anyio
import anyio.lowlevel

from ._backend import get_backend
from ._errors import AclError, DeviceError
from ._graph import Graph, GraphSource
from ._session import Session

if TYPE_CHECKING:
    from ._batcher import Batcher

__all__ = ["DevicePool", "PoolDeviceStatistics", "PoolStatistics", "device_count"]

_HEALTHY, _OUT, _PROBING = "healthy", "out", "probing"
_MAX_RETRY_S = 60.0


def device_count() -> int:
    """How many devices this process sees (logical ids ``0..n-1``, over ``ASCEND_RT_VISIBLE_DEVICES``
    when it is set, as ACL numbers them)."""
    b = get_backend()
    count = b.ffi.new("uint32_t*")
    b.check(b.lib.aclrtGetDeviceCount(count), "aclrtGetDeviceCount")
    return int(count[0])


@dataclass(frozen=True)
class PoolDeviceStatistics:
    """One device of a pool: ``state`` is "healthy", "out" (after a fault, until
    ``retry_in_s``) or "probing" (one run is testing it)."""

    device_id: int
    state: str
    in_flight: int
    completed: int
    failed: int
    faults: int
    retry_in_s: float | None


@dataclass(frozen=True)
class PoolStatistics:
    """A snapshot of a pool: per device, in the pool's order."""

    devices: tuple[PoolDeviceStatistics, ...]

    @property
    def in_flight(self) -> int:
        return sum(d.in_flight for d in self.devices)

    @property
    def completed(self) -> int:
        return sum(d.completed for d in self.devices)


class _Member:
    """One device of the pool: its sessions and routing state (guarded by the pool's lock)."""

    def __init__(self, device_id: int, sessions: list[Session]) -> None:
        self.device_id = device_id
        self.sessions = sessions
        self.loads = [0] * len(sessions)
        self.in_flight = 0
        self.state = _HEALTHY
        self.retry_at = 0.0
        self.backoff = 0.0
        self.last_code = 0
        self.completed = 0
        self.failed = 0
        self.faults = 0


class DevicePool:
    """Every device of a host (or the ones named), behind one ``run``.

    ``devices=None`` opens every visible device; otherwise the logical ids given, which count
    over ``ASCEND_RT_VISIBLE_DEVICES`` as ACL does. Each device gets ``instances`` sessions of
    ``streams_per_device`` streams each. A run goes to the device with the fewest runs in
    flight through this pool (ties rotate), and within it to the least-loaded instance.

    A run that fails with :class:`DeviceError` takes its device out of rotation: runs already in
    flight there fail the same way (they were on the device), new runs go to the other devices.
    After ``retry_after_s`` the next run is sent there as a probe; if it succeeds the device is
    back, if it faults again the wait doubles (up to 60 s). When every device is out, ``run``
    raises :class:`DeviceError` at once.

    .. code-block:: python

        async with ascend_async.DevicePool() as pool:          # every visible device
            graph = pool.add_graph("cnn.onnx")
            out = await pool.run(graph, {"x": x})
            batcher = pool.batcher(graph, max_batch_size=32)   # batches routed the same way
    """

    def __init__(
        self,
        devices: Sequence[int] | None = None,
        *,
        streams_per_device: int = 2,
        instances: int = 1,
        options: Mapping[str, str] | None = None,
        max_in_flight: int = 512,
        retry_after_s: float = 1.0,
    ) -> None:
        import threading

        if instances < 1:
            raise ValueError("instances must be >= 1")
        if retry_after_s < 0:
            raise ValueError("retry_after_s must be >= 0")
        n = device_count()
        if devices is None:
            ids = list(range(n))
            if not ids:
                raise AclError(107001, "DevicePool", "no device is visible" + _visibility())
        else:
            ids = [int(d) for d in devices]
            if not ids:
                raise ValueError("devices: name at least one device id, or pass None for every visible device")
            if len(set(ids)) != len(ids):
                raise ValueError(f"devices: {ids} names a device twice (use instances= for more sessions per device)")
            bad = [d for d in ids if not 0 <= d < n]
            if bad:
                raise AclError(
                    107001,
                    "DevicePool",
                    f"device {bad[0]} is not visible: this process sees {n} device(s), logical ids 0..{n - 1}"
                    + _visibility(),
                )
        self._lock = threading.Lock()
        self._retry_after = float(retry_after_s)
        self._members: list[_Member] = []
        self._rr = 0
        self._closed = False
        try:
            for d in ids:
                sessions = [
                    Session(d, streams=streams_per_device, options=options, max_in_flight=max_in_flight)
                    for _ in range(instances)
                ]
                self._members.append(_Member(d, sessions))
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        ids = ",".join(str(m.device_id) for m in self._members)
        return f"<DevicePool devices=[{ids}]{' closed' if self._closed else ''}>"

    # -- lifecycle ------------------------------------------------------------------------------

    async def __aenter__(self) -> DevicePool:
        """Opens the sessions the constructor left unopened (made on an event loop's thread:
        see :class:`Session`) in a worker thread, so the loop goes on; closed if that fails."""
        try:
            for member in self._members:
                for session in member.sessions:
                    await session._open_off_loop()
        except BaseException:
            self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __enter__(self) -> DevicePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every session (each waits for its runs in flight). Idempotent."""
        self._closed = True
        for m in self._members:
            for s in m.sessions:
                s.close()

    async def aclose(self) -> None:
        """:meth:`close` off the event loop, the sessions in parallel. Idempotent."""
        self._closed = True
        async with anyio.create_task_group() as tg:
            for m in self._members:
                for s in m.sessions:
                    tg.start_soon(s.aclose)

    # -- graphs ---------------------------------------------------------------------------------

    @property
    def devices(self) -> tuple[int, ...]:
        """The pool's logical device ids."""
        return tuple(m.device_id for m in self._members)

    @property
    def sessions(self) -> tuple[Session, ...]:
        """Every session of the pool, device by device."""
        return tuple(s for m in self._members for s in m.sessions)

    def add_graph(
        self,
        source: GraphSource | Graph,
        *,
        name: str | None = None,
        options: Mapping[str, str] | None = None,
        gears: Mapping[str, Sequence[Sequence[int]]] | None = None,
    ) -> Graph:
        """Read the model once and add it to every session (with GE's graph-level ``options``
        and static ``gears``, as :meth:`Session.add_graph`); returns the Graph for :meth:`run`.

        :raises GraphError: unreadable model or an op the backend refuses.
        :raises ValueError: a GE option or gears refused (checked before any session adds it).
        """
        from ._ge_options import GRAPH, validate

        validate(options, GRAPH)
        graph = source if isinstance(source, Graph) else Graph(source, name=name)
        for s in self.sessions:
            s.add_graph(graph, options=options, gears=gears)
        return graph

    def _gear_set(self, graph: Graph) -> Any:
        return self.sessions[0]._gear_set(graph)

    async def warmup(self, graph: Graph, shapes: Sequence[Mapping[str, Sequence[int]]] | None = None) -> list[Any]:
        """:meth:`Session.warmup` on every session of the pool, devices in parallel; returns
        their :class:`WarmupReport` in the order of :attr:`sessions`."""
        reports: list[Any] = [None] * len(self.sessions)

        async def one(i: int, s: Session) -> None:
            reports[i] = await s.warmup(graph, shapes)

        async with anyio.create_task_group() as tg:
            for i, s in enumerate(self.sessions):
                tg.start_soon(one, i, s)
        return reports

    @contextmanager
    def trace(self, path: str | os.PathLike[str] | None = None) -> Iterator[Any]:
        """:meth:`Session.trace` over every session of the pool, into one file (a process per
        device)."""
        from ._tuning import Trace

        t = Trace(os.fspath(path) if path is not None else None)
        with ExitStack() as stack:
            for s in self.sessions:
                stack.enter_context(s.trace(None, _trace=t))
            yield t
        if path is not None:
            t.write(path)

    async def add_graph_async(
        self,
        source: GraphSource | Graph,
        *,
        name: str | None = None,
        options: Mapping[str, str] | None = None,
        gears: Mapping[str, Sequence[Sequence[int]]] | None = None,
    ) -> Graph:
        """:meth:`add_graph` on a worker thread."""
        return await anyio.to_thread.run_sync(lambda: self.add_graph(source, name=name, options=options, gears=gears))

    def load_model(self, source: Any, *, name: str | None = None) -> Graph:
        """Load an offline model (.om path or bytes) in every session (:meth:`Session.load_model`);
        returns the :class:`OfflineModel` for :meth:`run` and :meth:`batcher`."""
        sessions = self.sessions
        model = sessions[0].load_model(source, name=name)
        for s in sessions[1:]:
            s.add_graph(model)
        return model

    async def load(self, graph: Graph) -> None:
        """Compile and load ``graph`` on every stream of every device now, devices in parallel."""
        async with anyio.create_task_group() as tg:
            for s in self.sessions:
                tg.start_soon(s.load, graph)

    def batcher(self, graph: Graph, **params: Any) -> Batcher:
        """A dynamic :class:`Batcher` whose batches are routed like :meth:`run` (parameters as
        :meth:`Session.batcher`; ``max_concurrent_batches`` defaults to the pool's stream count)."""
        from ._batcher import Batcher

        for s in self.sessions:
            s._state(graph)
        batcher_params = getattr(graph, "batcher_params", None)  # an offline model: pad to its gears
        if batcher_params is not None:
            params = batcher_params(params)
        return Batcher(self, graph, **params)

    def _batch_lanes(self) -> int:
        return sum(len(s.streams) for s in self.sessions if not s.is_closed)

    # -- runs -----------------------------------------------------------------------------------

    def _pick(self) -> tuple[_Member, int, bool]:
        """(member, instance, is_probe): the least-loaded healthy device, or a device due for a
        probe (preferred, so a recovered device comes back promptly)."""
        now = time.monotonic()
        with self._lock:
            n = len(self._members)
            self._rr = (self._rr + 1) % n
            best: _Member | None = None
            for k in range(n):
                m = self._members[(self._rr + k) % n]
                if m.state == _OUT and now >= m.retry_at:
                    m.state = _PROBING
                    best, probe = m, True
                    break
                if m.state == _HEALTHY and (best is None or m.in_flight < best.in_flight):
                    best = m
            else:
                probe = False
            if best is None:
                soon = min(self._members, key=lambda m: m.retry_at)
                raise DeviceError(
                    soon.last_code or 507000,
                    "DevicePool",
                    f"every device of the pool is out of rotation after a fault; device {soon.device_id} is retried "
                    f"in {max(0.0, soon.retry_at - now):.3g} s",
                )
            i = min(range(len(best.loads)), key=best.loads.__getitem__)
            best.loads[i] += 1
            best.in_flight += 1
            return best, i, probe

    def _settle(self, m: _Member, i: int, probe: bool, error: BaseException | None) -> None:
        with self._lock:
            m.loads[i] -= 1
            m.in_flight -= 1
            if isinstance(error, DeviceError):
                m.failed += 1
                m.last_code = error.code
                if probe or m.state == _HEALTHY:  # a new fault (not a run that was in flight with it)
                    m.faults += 1
                    # out for retry_after_s; each failed probe doubles the wait
                    m.backoff = min(_MAX_RETRY_S, (m.backoff or self._retry_after) * 2) if probe else self._retry_after
                    m.state = _OUT
                    m.retry_at = time.monotonic() + m.backoff
            elif error is None:
                m.completed += 1
                if probe:
                    m.state = _HEALTHY
                    m.backoff = 0.0
            elif probe:  # the probe told nothing (cancelled, bad input): probe again next time
                if isinstance(error, Exception):
                    m.failed += 1
                m.state = _OUT
                m.retry_at = time.monotonic()
            elif isinstance(error, Exception):
                m.failed += 1

    async def run(
        self,
        graph: Graph,
        inputs: Mapping[str, Any] | Sequence[Any],
        *,
        outputs: Literal["numpy", "device"] = "numpy",
    ) -> dict[str, Any]:
        """:meth:`Session.run` on the least-loaded healthy device; same checkpoint and
        cancellation contract. ``outputs="device"`` returns DeviceTensors on that device.

        :raises DeviceError: the run faulted on its device (which leaves the rotation), or every
            device is out of rotation.
        """
        await anyio.lowlevel.checkpoint_if_cancelled()
        if self._closed:
            from ._errors import SessionClosedError

            raise SessionClosedError("the device pool is closed")
        m, i, probe = self._pick()
        error: BaseException | None = None
        try:
            return await m.sessions[i].run(graph, inputs, outputs=outputs)
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._settle(m, i, probe, error)

    # -- introspection --------------------------------------------------------------------------

    def statistics(self) -> PoolStatistics:
        """Per device: health, runs in flight, completed, failed, faults."""
        now = time.monotonic()
        with self._lock:
            return PoolStatistics(
                tuple(
                    PoolDeviceStatistics(
                        device_id=m.device_id,
                        state=m.state,
                        in_flight=m.in_flight,
                        completed=m.completed,
                        failed=m.failed,
                        faults=m.faults,
                        retry_in_s=max(0.0, m.retry_at - now) if m.state == _OUT else None,
                    )
                    for m in self._members
                )
            )


def _visibility() -> str:
    env = os.environ.get("ASCEND_RT_VISIBLE_DEVICES")
    return f" (ASCEND_RT_VISIBLE_DEVICES={env!r})" if env is not None else ""
