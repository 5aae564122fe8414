"""Dynamic batching: concurrent requests concatenated on the graph's batch dimension, run once,
and split back.

Where it lives. A batcher has no thread. Each event loop that calls ``run`` gets its own queue
and, while that queue has work, one worker task on that loop (an asyncio task, or a trio system
task) that forms batches and runs them through the target's ``run`` (a :class:`Session` or a
:class:`DevicePool`). The worker exits when its queue is empty and nothing is in flight; the next
request starts a new one. Requests from different loops are **kept apart**: they never share a
batch, because a batch's result is delivered on one loop and waking tasks of another loop per
request would add a cross-thread hand-off to every request. The configuration and statistics
are shared by all loops (the configuration is an immutable object replaced in one assignment;
the statistics are guarded by a lock).

Cross-thread hand-offs (the only ones): :meth:`Batcher.configure` called from another thread
wakes each loop's worker through that loop's thread-safe entry (``call_soon_threadsafe`` /
``TrioToken.run_sync_soon``), so a shorter delay applies at once; statistics are read under
``_stats_lock``.

Every request ends in exactly one outcome (completed, failed, cancelled, timed out), and the first
party to settle it owns it: its caller (a cancellation, or its deadline) or its batch (a result,
or an error). Both run on the loop thread that owns the request's queue, so settling is a plain
check-and-set of ``_Request.outcome`` there, with no lock; only the counters it bumps are shared.
"""

from __future__ import annotations

import heapq
import itertools
import math
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import anyio.lowlevel
import numpy as np

from . import _hooks
from ._errors import GraphError, InputError, SessionClosedError
from ._graph import Graph
from ._loop import LoopBridge, current_bridge

if TYPE_CHECKING:
    from ._pool import DevicePool
    from ._session import Session

__all__ = ["Batcher", "BatcherConfig", "BatcherStatistics"]


class _Target(Protocol):
    async def run(self, graph: Graph, inputs: Sequence[Any]) -> dict[str, Any]: ...


@dataclass(frozen=True)
class BatcherConfig:
    """A batcher's parameters (see :meth:`Session.batcher`). Immutable: :meth:`Batcher.configure`
    replaces it as a whole, so a batch is always formed under one consistent configuration."""

    max_batch_size: int
    max_delay_ms: float
    preferred_batch_sizes: tuple[int, ...] = ()
    max_concurrent_batches: int = 2
    pad_to_preferred: bool = False


@dataclass(frozen=True)
class BatcherStatistics:
    """A snapshot of a batcher's activity (all loops together).

    ``batch_sizes`` is the histogram of requests' rows per batch (before padding);
    ``fill_ratio`` is rows run / ``max_batch_size`` at the time, over all batches;
    ``padded_rows`` counts the zero rows added for static or preferred sizes;
    ``queue_delay_ms`` has ``mean``, ``p50``, ``p99`` and ``max`` of the time from ``run`` to the
    batch's submission, over the last 4096 requests.

    Every request is counted once, by the outcome that settled it first: ``requests`` equals
    ``completed + failed + cancelled + timed_out`` plus the requests still waiting (queued, or in a
    batch in flight). A request cancelled (or past its deadline) before its batch settled it is
    cancelled (timed out), even though its batch runs on; one whose batch settled it first stays
    completed (or failed), even if its caller was cancelled before it resumed. A deadline that
    passes after the result arrived returns the result. Requests refused with ``InputError`` or
    cancelled on entry were never queued and are not counted.
    """

    requests: int
    completed: int
    failed: int
    cancelled: int
    timed_out: int
    queued: int
    batches: int
    in_flight_batches: int
    batch_sizes: Mapping[int, int]
    fill_ratio: float
    padded_rows: int
    queue_delay_ms: Mapping[str, float]
    config: BatcherConfig
    #: rows of requests run (padding excluded) and the histogram of the sizes batches ran at
    #: (after padding: a geared graph's gears, a static batch size, a preferred size)
    rows: int = 0
    run_sizes: Mapping[int, int] = field(default_factory=dict)


_QUEUED, _TAKEN, _GONE = 0, 1, 2  # where a request is: in its loop's queue, in a batch, left the queue
# How a request ended; set once, by whoever settles it first (see the module docstring).
_PENDING, _COMPLETED, _FAILED, _CANCELLED, _TIMED_OUT = 0, 1, 2, 3, 4


@dataclass(eq=False)
class _Request:
    values: list[np.ndarray]
    rows: int
    key: tuple[Any, ...]
    priority: int
    seq: int
    enqueued: float  # anyio.current_time()
    enqueued_ns: int
    done: anyio.Event = field(default_factory=anyio.Event)
    state: int = _QUEUED
    outcome: int = _PENDING
    result: dict[str, np.ndarray] | None = None
    error: BaseException | None = None

    def __lt__(self, other: _Request) -> bool:  # heap order: higher priority first, then FIFO
        return (-self.priority, self.seq) < (-other.priority, other.seq)


@dataclass
class _Batch:
    requests: list[_Request]
    rows: int
    run_rows: int  # after padding
    capacity: int  # max_batch_size when formed


class _LoopQueue:
    """One event loop's requests and worker, kept on that loop's bridge (``LoopBridge.slot``).
    Touched only on that loop's thread, except :meth:`post` (its thread-safe entry). Holds the
    bridge weakly: the loop must not outlive its run because of a batcher."""

    def __init__(self, bridge: LoopBridge) -> None:
        self.heap: list[_Request] = []
        self.live = 0
        self.in_flight = 0
        self.running = False
        self.wake_event: anyio.Event | None = None
        self._bridge = weakref.ref(bridge)
        self._tasks: set[Any] = set()  # asyncio: the worker task while it runs

    def wake(self) -> None:
        if self.wake_event is not None:
            self.wake_event.set()

    def post(self, fn: Callable[[], object]) -> None:
        """From any thread: run ``fn`` on this queue's loop soon (a no-op once it is gone)."""
        bridge = self._bridge()
        if bridge is not None:
            bridge.post(fn)

    def spawn(self, fn: Callable[[], Any]) -> None:
        """On the loop thread: start ``fn()`` as a task that belongs to no caller's scope."""
        bridge = self._bridge()
        assert bridge is not None  # called on the loop, whose bridge lives while it runs
        bridge.spawn(fn, self._tasks)


def _active_trace(target: Any) -> Any:
    """The trace being recorded on the target (a Session, or a pool's first session), or None."""
    t = getattr(target, "_trace", None)
    if t is None and hasattr(target, "sessions"):
        t = next((s._trace for s in target.sessions if getattr(s, "_trace", None) is not None), None)
    return t


def batch_dimension(graph: Graph) -> int | None:
    """The graph's static batch size, or None when its batch dimension is dynamic.

    :raises GraphError: an input has no batch dimension (unknown rank, a scalar), or the inputs
        disagree on it.
    """
    if not graph.inputs:
        raise GraphError(f"{graph.name}: has no inputs to batch")
    firsts = []
    for spec in graph.inputs:
        if spec.shape is None or len(spec.shape) == 0:
            what = "unknown rank" if spec.shape is None else "a scalar"
            raise GraphError(f"{graph.name}: input {spec} has no batch dimension ({what}); it cannot be batched")
        firsts.append(spec.shape[0])
    statics = {d for d in firsts if isinstance(d, int)}
    if statics and len(statics) == len(firsts) and len(statics) == 1:
        return statics.pop()
    if statics:
        raise GraphError(
            f"{graph.name}: the inputs disagree on the batch dimension ({', '.join(map(str, graph.inputs))}); "
            "the batcher needs dim 0 of every input to be the same batch dimension"
        )
    return None


def _validate_config(cfg: BatcherConfig, graph: Graph, static: int | None) -> None:
    if not isinstance(cfg.max_batch_size, int) or cfg.max_batch_size < 1:
        raise ValueError(f"max_batch_size must be a positive int, not {cfg.max_batch_size!r}")
    if static is not None and cfg.max_batch_size > static:
        raise ValueError(
            f"max_batch_size={cfg.max_batch_size} is larger than {graph.name!r} allows: its batch dimension is "
            f"static ({static}); use max_batch_size <= {static}, or export the model with a dynamic batch dimension"
        )
    if not (cfg.max_delay_ms >= 0 and math.isfinite(cfg.max_delay_ms)):
        raise ValueError(f"max_delay_ms must be a finite number >= 0, not {cfg.max_delay_ms!r}")
    for p in cfg.preferred_batch_sizes:
        if not isinstance(p, int) or not 1 <= p <= cfg.max_batch_size:
            raise ValueError(f"preferred_batch_sizes must be ints in 1..max_batch_size, got {p!r}")
    if not isinstance(cfg.max_concurrent_batches, int) or cfg.max_concurrent_batches < 1:
        raise ValueError(f"max_concurrent_batches must be a positive int, not {cfg.max_concurrent_batches!r}")


class Batcher:
    """Concurrent requests to one graph, batched on its batch dimension (dim 0 of every input
    and output). Make one with :meth:`Session.batcher` or :meth:`DevicePool.batcher`.

    .. code-block:: python

        batcher = session.batcher(graph, max_batch_size=32, max_delay_ms=2)
        out = await batcher.run({"x": x})        # x: (rows, ...) -> out["y"]: (rows, ...)

    A batch is sent when it reaches ``max_batch_size`` rows, when it reaches one of
    ``preferred_batch_sizes`` (the largest it can), or when its oldest request has waited
    ``max_delay_ms`` — and only while fewer than ``max_concurrent_batches`` of this loop's
    batches are in flight: requests that arrive meanwhile make the next batch bigger.
    Requests whose inputs differ in dtype or trailing dims go in separate batches. A graph with
    a static batch size is padded with zero rows up to it; with ``pad_to_preferred`` a dynamic
    one is padded up to the next preferred size. A graph added with static gears
    (``add_graph(gears=...)``) is padded to the smallest gear that holds the batch;
    ``max_batch_size`` defaults to (and may not exceed) its largest gear.
    """

    def __init__(
        self,
        target: Session | DevicePool,
        graph: Graph,
        *,
        max_batch_size: int | None = None,
        max_delay_ms: float = 1.0,
        preferred_batch_sizes: Sequence[int] = (),
        max_concurrent_batches: int | None = None,
        pad_to_preferred: bool = False,
    ) -> None:
        self._target: _Target = target  # type: ignore[assignment]
        self.graph = graph
        self._static = batch_dimension(graph)
        gear_set = getattr(target, "_gear_set", None)
        self._gears = gear_set(graph) if gear_set is not None else None
        self._gear_max: int | None = None
        if self._gears is not None:
            self._gear_max = max(g[self._names_of(graph)[0]][0] for g in self._gears.gears)
        if max_batch_size is None:
            max_batch_size = self._static if self._static is not None else self._gear_max or 32
        if max_concurrent_batches is None:  # one batch per stream keeps every lane busy
            lanes = getattr(target, "_batch_lanes", None)
            max_concurrent_batches = max(1, lanes() if lanes is not None else len(getattr(target, "streams", ())))
        cfg = BatcherConfig(
            max_batch_size=max_batch_size,
            max_delay_ms=float(max_delay_ms),
            preferred_batch_sizes=tuple(sorted(set(preferred_batch_sizes))),
            max_concurrent_batches=max_concurrent_batches,
            pad_to_preferred=bool(pad_to_preferred),
        )
        self._check_gears(cfg)
        _validate_config(cfg, graph, self._static)
        self._config = cfg
        self._run_sizes: dict[int, int] = {}
        self._names = tuple(s.name for s in graph.inputs)
        self._seq = itertools.count()
        # Every loop's queue, for reconfigure's wake-ups (any thread, under the lock); each
        # queue itself lives on its loop's bridge.
        self._queues: weakref.WeakSet[_LoopQueue] = weakref.WeakSet()
        self._queues_lock = threading.Lock()
        self._closed = False
        self._stats_lock = threading.Lock()
        self._requests = self._completed = self._failed = self._cancelled = self._timed_out = 0
        self._batches = self._padded = 0
        self._rows_run = 0
        self._capacity_run = 0
        self._sizes: dict[int, int] = {}
        self._delays: deque[float] = deque(maxlen=4096)
        self._delay_sum = 0.0
        self._delay_n = 0
        self._delay_max = 0.0

    @staticmethod
    def _names_of(graph: Graph) -> tuple[str, ...]:
        return tuple(s.name for s in graph.inputs)

    def _check_gears(self, cfg: BatcherConfig) -> None:
        if self._gear_max is not None and isinstance(cfg.max_batch_size, int) and cfg.max_batch_size > self._gear_max:
            raise ValueError(
                f"max_batch_size={cfg.max_batch_size} is larger than {self.graph.name!r}'s largest gear "
                f"({self._gear_max} rows; gears: {self._gears.describe() if self._gears else ''})"
            )

    def __repr__(self) -> str:
        c = self._config
        return f"<Batcher {self.graph.name!r} max_batch_size={c.max_batch_size} max_delay_ms={c.max_delay_ms}>"

    # -- configuration --------------------------------------------------------------------------

    @property
    def config(self) -> BatcherConfig:
        """The current parameters."""
        return self._config

    def configure(
        self,
        *,
        max_batch_size: int | None = None,
        max_delay_ms: float | None = None,
        preferred_batch_sizes: Sequence[int] | None = None,
        max_concurrent_batches: int | None = None,
        pad_to_preferred: bool | None = None,
    ) -> BatcherConfig:
        """Change parameters while running (from any thread). The next batch formed uses them;
        batches already formed are not changed. Requests already queued with more rows than a
        lowered ``max_batch_size`` run alone. Returns the new configuration.

        :raises ValueError: a bad value (nothing changes), e.g. ``max_batch_size`` above a static
            graph's batch size.
        """
        changes: dict[str, Any] = {}
        if max_batch_size is not None:
            changes["max_batch_size"] = max_batch_size
        if max_delay_ms is not None:
            changes["max_delay_ms"] = float(max_delay_ms)
        if preferred_batch_sizes is not None:
            changes["preferred_batch_sizes"] = tuple(sorted(set(preferred_batch_sizes)))
        if max_concurrent_batches is not None:
            changes["max_concurrent_batches"] = max_concurrent_batches
        if pad_to_preferred is not None:
            changes["pad_to_preferred"] = bool(pad_to_preferred)
        cfg = replace(self._config, **changes)
        self._check_gears(cfg)
        _validate_config(cfg, self.graph, self._static)
        self._config = cfg  # one assignment: workers read either the old or the new config
        with self._queues_lock:
            queues = list(self._queues)
        for lq in queues:
            lq.post(lq.wake)  # hand-off: wake each loop's worker on its own thread (dropped if it closed)
        return cfg

    async def warmup(self) -> Any:
        """Warm the target up for the batches this batcher will run (:meth:`Session.warmup`,
        or :meth:`DevicePool.warmup`): each gear of a geared graph, a static graph's shape, or —
        for a dynamic batch dimension whose other dims are fixed — 1 row, each preferred size
        and ``max_batch_size`` rows; otherwise compile and load only. Returns the target's report(s)."""
        shapes = None
        if self._gears is None and self._static is None:
            trailing = [
                tuple(d for d in spec.shape[1:] if isinstance(d, int))
                for spec in self.graph.inputs
                if spec.shape is not None and all(isinstance(d, int) for d in spec.shape[1:])
            ]
            if len(trailing) == len(self.graph.inputs):  # every input's other dims are fixed
                c = self._config
                sizes = sorted({1, *c.preferred_batch_sizes, c.max_batch_size})
                shapes = [
                    {spec.name: (n, *t) for spec, t in zip(self.graph.inputs, trailing, strict=True)} for n in sizes
                ]
        return await self._target.warmup(self.graph, shapes)  # type: ignore[attr-defined]

    def close(self) -> None:
        """Refuse new requests (:class:`SessionClosedError`, an ``anyio.ClosedResourceError``);
        queued and running ones finish."""
        self._closed = True

    # -- requests -------------------------------------------------------------------------------

    def _request(self, inputs: Mapping[str, Any] | Sequence[Any], priority: int) -> _Request:
        g = self.graph
        specs = g.inputs
        if isinstance(inputs, Mapping):
            unknown = [k for k in inputs if k not in self._names]
            if unknown:
                takes = ", ".join(map(str, specs))
                raise InputError(f"{g.name}: unknown input {unknown[0]!r}; the graph takes {takes}")
            missing = [n for n in self._names if n not in inputs]
            if missing:
                raise InputError(f"{g.name}: missing input {missing[0]!r}")
            values = [inputs[n] for n in self._names]
        elif isinstance(inputs, Sequence) and not isinstance(inputs, (str, bytes)):
            if len(inputs) != len(specs):
                raise InputError(f"{g.name}: takes {len(specs)} inputs, got {len(inputs)}")
            values = list(inputs)
        else:
            raise InputError(f"{g.name}: inputs must be a mapping by name or a sequence, not {type(inputs).__name__}")
        rows: int | None = None
        key: list[Any] = []
        for spec, v in zip(specs, values, strict=True):
            if not isinstance(v, np.ndarray):
                raise InputError(
                    f"{g.name}: input {spec.name!r}: the batcher takes numpy arrays, not {type(v).__name__} "
                    "(it concatenates requests on the host)"
                )
            assert spec.shape is not None
            if v.dtype != spec.dtype:
                raise InputError(f"{g.name}: input {spec.name!r} has dtype {v.dtype}, the graph expects {spec.dtype}")
            if v.ndim == len(spec.shape) - 1:
                raise InputError(
                    f"{g.name}: input {spec.name!r} has shape {v.shape}, without the batch dimension: the graph "
                    f"expects {spec} with the batch first; pass x[None] for one sample"
                )
            if v.ndim != len(spec.shape):
                raise InputError(f"{g.name}: input {spec.name!r} has shape {v.shape}, the graph expects {spec}")
            for axis, want in enumerate(spec.shape[1:], 1):
                if isinstance(want, int) and v.shape[axis] != want:
                    raise InputError(
                        f"{g.name}: input {spec.name!r} has shape {v.shape}, dim {axis} must be {want} ({spec})"
                    )
            if rows is None:
                rows = int(v.shape[0])
            elif v.shape[0] != rows:
                raise InputError(
                    f"{g.name}: inputs disagree on the batch dimension: {self._names[0]!r} has {rows} rows, "
                    f"{spec.name!r} has {v.shape[0]}"
                )
            key.append((v.dtype.str, v.shape[1:]))
        assert rows is not None
        if rows < 1:
            raise InputError(f"{g.name}: a request needs at least one row (got {rows})")
        if self._static is not None and rows > self._static:
            raise InputError(
                f"{g.name}: a request of {rows} rows does not fit the graph's static batch size {self._static}"
            )
        if self._gears is not None and self._gears.fit(rows, [v.shape[1:] for v in values]) is None:
            raise InputError(
                f"{g.name}: a request of shapes {[v.shape for v in values]} fits none of the graph's gears "
                f"({self._gears.describe()})"
            )
        return _Request(
            values=values,
            rows=rows,
            key=tuple(key),
            priority=priority,
            seq=next(self._seq),
            enqueued=anyio.current_time(),
            enqueued_ns=time.perf_counter_ns(),
        )

    def _loop_queue(self) -> _LoopQueue:
        bridge = current_bridge()
        return bridge.slot(self, lambda: self._new_queue(bridge))  # type: ignore[no-any-return]

    def _new_queue(self, bridge: LoopBridge) -> _LoopQueue:
        lq = _LoopQueue(bridge)
        with self._queues_lock:
            self._queues.add(lq)
        return lq

    async def run(
        self,
        inputs: Mapping[str, Any] | Sequence[Any],
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - per-request deadline, counted in statistics
        priority: int = 0,
    ) -> dict[str, np.ndarray]:
        """Queue one request (numpy inputs with the batch dimension first), wait for the batch
        it joins, and return exactly its rows of every output.

        Always a checkpoint; cancelled on entry, nothing is queued. Cancelled (or past its
        ``timeout``) while queued: the request leaves the queue and nothing else changes.
        Cancelled after its batch was submitted: the session's contract — control returns at
        once, the batch runs on, the other requests get their results, this one is dropped.
        Higher ``priority`` joins batches first; equal priorities go in arrival order.

        :raises InputError: inputs without the batch dimension, wrong dtype or trailing dims,
            rows that disagree between inputs, more rows than a static batch size.
        :raises TimeoutError: ``timeout`` seconds passed first (only this request fails).
        :raises SessionClosedError: the batcher is closed (an ``anyio.ClosedResourceError`` too).
        :raises DeviceError: the batch failed on the device (every request in it fails).
        """
        await anyio.lowlevel.checkpoint_if_cancelled()
        if self._closed:
            raise SessionClosedError(f"{self.graph.name}: the batcher is closed")
        req = self._request(inputs, priority)
        lq = self._loop_queue()
        heapq.heappush(lq.heap, req)
        lq.live += 1
        with self._stats_lock:
            self._requests += 1
        if not lq.running:
            lq.running = True
            lq.spawn(lambda: self._work(lq))
        else:
            lq.wake()
        try:
            if timeout is None:
                await req.done.wait()
            else:
                with anyio.move_on_after(timeout):
                    await req.done.wait()
        except BaseException:
            self._abandon(lq, req, _CANCELLED)
            raise
        if req.outcome == _PENDING:  # the deadline passed before the batch settled it
            self._abandon(lq, req, _TIMED_OUT)
            raise TimeoutError(f"{self.graph.name}: the request got no result within its timeout of {timeout} s")
        if req.error is not None:
            raise req.error
        assert req.result is not None
        return req.result

    def _abandon(self, lq: _LoopQueue, req: _Request, outcome: int) -> None:
        """On the loop thread: the caller gives up (cancelled, or past its deadline). Settles the
        request unless its batch already did; a queued request leaves the queue, and nothing
        else changes; one in a batch runs on, and its rows are dropped when the batch ends."""
        if req.outcome != _PENDING:  # its batch settled it first: counted there
            return
        req.outcome = outcome
        with self._stats_lock:
            if outcome == _TIMED_OUT:
                self._timed_out += 1
            else:
                self._cancelled += 1
        if req.state == _QUEUED:
            req.state = _GONE
            lq.live -= 1
            lq.wake()

    def _settle(
        self, reqs: Sequence[_Request], results: Sequence[dict[str, np.ndarray]] | None, error: BaseException | None
    ) -> None:
        """On the loop thread: a batch (or the worker) ends its requests, with their results or
        one error. A request its caller already gave up is not counted again, and its result is
        dropped; every waiter is woken."""
        won = 0
        for i, r in enumerate(reqs):
            if r.outcome == _PENDING:
                won += 1
                if error is None:
                    assert results is not None
                    r.outcome, r.result = _COMPLETED, results[i]
                else:
                    r.outcome, r.error = _FAILED, error
            r.done.set()
        with self._stats_lock:
            if error is None:
                self._completed += won
            else:
                self._failed += won

    # -- the worker (one per loop while it has work) --------------------------------------------

    async def _work(self, lq: _LoopQueue) -> None:
        try:
            async with anyio.create_task_group() as tg:
                while True:
                    if lq.live == 0 and lq.in_flight == 0:
                        lq.running = False  # decided with no await since the check: a new request spawns anew
                        break
                    cfg = self._config
                    wait = math.inf
                    if lq.live and lq.in_flight < cfg.max_concurrent_batches:
                        batch, wait = self._form(lq, cfg)
                        if batch is not None:
                            lq.in_flight += 1
                            tg.start_soon(self._run_batch, lq, batch)
                            continue
                    lq.wake_event = anyio.Event()
                    with anyio.move_on_after(wait):
                        await lq.wake_event.wait()
                    lq.wake_event = None
        except BaseException as exc:
            lq.running = False
            lq.wake_event = None
            # The loop is going away (or a bug): fail what is still queued rather than hang it.
            err = exc if isinstance(exc, Exception) else anyio.BrokenResourceError("the batcher's worker was stopped")
            queued = [req for req in lq.heap if req.state == _QUEUED]
            for req in queued:
                req.state = _GONE
            self._settle(queued, None, err)
            lq.heap.clear()
            lq.live = 0
            if not isinstance(exc, Exception):
                raise
            # An Exception here would be a bug; it reached every queued request. Do not let it
            # escape a trio system task (that would crash the run).

    def _form(self, lq: _LoopQueue, cfg: BatcherConfig) -> tuple[_Batch | None, float]:
        """A batch ready to send now, or (None, seconds until one will be by the delay rule)."""
        heap = lq.heap
        while heap and heap[0].state != _QUEUED:
            heapq.heappop(heap)
        if not heap:
            return None, math.inf
        cap = cfg.max_batch_size
        groups: dict[tuple[Any, ...], list[_Request]] = {}
        for req in sorted(heap):
            if req.state == _QUEUED:
                groups.setdefault(req.key, []).append(req)
        now = anyio.current_time()
        delay = cfg.max_delay_ms / 1000.0
        soonest = math.inf
        for reqs in groups.values():  # in priority order of each group's first request
            take: list[_Request] = []
            rows = 0
            for req in reqs:
                if rows + req.rows <= cap or not take:
                    take.append(req)
                    rows += req.rows
                    if rows >= cap:
                        break
            ready = rows >= cap
            if not ready and cfg.preferred_batch_sizes:
                # the largest preferred size that a prefix of the taken requests makes exactly
                acc, cut = 0, 0
                for i, req in enumerate(take):
                    acc += req.rows
                    if acc in cfg.preferred_batch_sizes:
                        cut = i + 1
                if cut:
                    take = take[:cut]
                    rows = sum(r.rows for r in take)
                    ready = True
            oldest = min(r.enqueued for r in take)
            if not ready and now - oldest >= delay:
                ready = True
            if ready:
                return self._take(lq, cfg, take, rows), 0.0
            soonest = min(soonest, oldest + delay - now)
        return None, max(soonest, 0.0)

    def _take(self, lq: _LoopQueue, cfg: BatcherConfig, take: list[_Request], rows: int) -> _Batch:
        for req in take:
            req.state = _TAKEN
        lq.live -= len(take)
        run_rows = rows
        if self._static is not None:
            run_rows = self._static
        elif self._gears is not None:  # the smallest gear that holds the batch (checked per request)
            fit = self._gears.fit(rows, [v.shape[1:] for v in take[0].values])
            run_rows = fit if fit is not None else rows
        elif cfg.pad_to_preferred:
            run_rows = next((p for p in cfg.preferred_batch_sizes if p >= rows), rows)
        return _Batch(take, rows, run_rows, cfg.max_batch_size)

    async def _run_batch(self, lq: _LoopQueue, batch: _Batch) -> None:
        reqs = batch.requests
        now_ns = time.perf_counter_ns()
        delays = [(now_ns - r.enqueued_ns) / 1e6 for r in reqs]
        try:
            inputs = []
            for i in range(len(self._names)):
                parts = [r.values[i] for r in reqs]
                if batch.run_rows > batch.rows:
                    first = parts[0]
                    parts.append(np.zeros((batch.run_rows - batch.rows, *first.shape[1:]), first.dtype))
                inputs.append(parts[0] if len(parts) == 1 else np.concatenate(parts))
            for r in reqs:
                r.values = []  # the batch holds the rows now
            self._record_batch(batch, delays)
            trace = _active_trace(self._target)
            t_sent = time.perf_counter_ns()
            out = await self._target.run(self.graph, inputs)
            if trace is not None:
                pid = getattr(getattr(self._target, "_device", None), "id", 0)
                trace.batch(pid, t_sent, time.perf_counter_ns(), batch.rows, batch.run_rows, len(reqs))
            results = self._split(out, batch)
        except Exception as exc:
            self._settle(reqs, None, exc)
            return
        except BaseException:
            err = anyio.BrokenResourceError("the batcher's worker was stopped (its event loop is shutting down)")
            self._settle(reqs, None, err)
            raise
        finally:
            lq.in_flight -= 1
            lq.wake()
        self._settle(reqs, results, None)

    def _split(self, out: Mapping[str, Any], batch: _Batch) -> list[dict[str, np.ndarray]]:
        results: list[dict[str, np.ndarray]] = [{} for _ in batch.requests]
        for name, arr in out.items():
            if not isinstance(arr, np.ndarray) or arr.ndim == 0 or arr.shape[0] != batch.run_rows:
                shape = getattr(arr, "shape", None)
                raise GraphError(
                    f"{self.graph.name}: output {name!r} has shape {shape}, not the batch dimension first "
                    f"({batch.run_rows} rows were run): the batcher cannot split it"
                )
            off = 0
            for res, r in zip(results, batch.requests, strict=True):
                res[name] = arr[off : off + r.rows]
                off += r.rows
        return results

    def _record_batch(self, batch: _Batch, delays: list[float]) -> None:
        with self._stats_lock:
            self._batches += 1
            self._sizes[batch.rows] = self._sizes.get(batch.rows, 0) + 1
            self._rows_run += batch.rows
            self._capacity_run += max(batch.capacity, batch.rows)
            self._padded += batch.run_rows - batch.rows
            self._run_sizes[batch.run_rows] = self._run_sizes.get(batch.run_rows, 0) + 1
            self._delays.extend(delays)
            self._delay_sum += sum(delays)
            self._delay_n += len(delays)
            self._delay_max = max(self._delay_max, *delays)
        hook = _hooks.metrics
        if hook is not None:  # a Prometheus exporter is installed
            hook.batch(self, batch.rows, batch.run_rows, delays)

    # -- introspection --------------------------------------------------------------------------

    def statistics(self) -> BatcherStatistics:
        """Counters, the batch-size histogram, queue delay and fill ratio (all loops)."""
        with self._queues_lock:
            queues = list(self._queues)
        queued = sum(lq.live for lq in queues)
        in_flight = sum(lq.in_flight for lq in queues)
        with self._stats_lock:
            d = sorted(self._delays)
            q = {
                "mean": self._delay_sum / self._delay_n if self._delay_n else 0.0,
                "p50": d[len(d) // 2] if d else 0.0,
                "p99": d[min(len(d) - 1, int(len(d) * 0.99))] if d else 0.0,
                "max": self._delay_max,
            }
            return BatcherStatistics(
                requests=self._requests,
                completed=self._completed,
                failed=self._failed,
                cancelled=self._cancelled,
                timed_out=self._timed_out,
                queued=queued,
                batches=self._batches,
                in_flight_batches=in_flight,
                batch_sizes=dict(sorted(self._sizes.items())),
                fill_ratio=self._rows_run / self._capacity_run if self._capacity_run else 0.0,
                padded_rows=self._padded,
                queue_delay_ms=q,
                config=self._config,
                rows=self._rows_run,
                run_sizes=dict(sorted(self._run_sizes.items())),
            )


_hooks.make_batcher = Batcher  # Session.batcher (the core never imports this module)
