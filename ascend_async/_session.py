"""Session: graphs, streams and the three GE run modes, with ``await session.run(...)``."""

from __future__ import annotations

import itertools
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import anyio
import anyio.lowlevel
import numpy as np

from . import _metrics
from ._device import Device, acquire_device, release_device
from ._errors import DeviceError, GraphError, ModeConflictError, SessionClosedError
from ._event import Event
from ._graph import GE_TO_NUMPY, NUMPY_TO_GE, Graph, GraphSource
from ._memory import DeviceTensor
from ._watcher import Job, current_bridge

if TYPE_CHECKING:
    from ._batcher import Batcher

__all__ = ["Event", "RunProfile", "Session", "SessionStatistics", "Stream"]

_MODE_API = {"stream": "RunGraphWithStreamAsync", "sync": "RunGraph", "callback": "RunGraphAsync"}

_ge_lock = threading.Lock()
_ge_ready = False


@dataclass(frozen=True)
class SessionStatistics:
    """A snapshot of a session's activity."""

    in_flight: int
    completed: int
    failed: int
    cancelled: int
    streams: int
    device_pool: Mapping[str, int]
    host_pool: Mapping[str, int]
    watcher: Mapping[str, int]


@dataclass(frozen=True)
class RunProfile:
    """Where one run's time went (:meth:`Session.run_profiled`), in milliseconds.

    ``h2d_ms``, ``compute_ms`` and ``d2h_ms`` come from device events recorded between the
    stages on the run's stream. ``submit_ms`` is the host's submit call; ``queued_ms`` the wait
    from the end of submit until the device started the run (None where device and host clocks
    differ, as on CANN); ``end_to_end_ms`` from entering ``run_profiled`` to its result.
    """

    h2d_ms: float
    compute_ms: float
    d2h_ms: float
    submit_ms: float
    queued_ms: float | None
    end_to_end_ms: float


class _StageEvents:
    """Three timing events around one run's stages; owned by its job, destroyed after it."""

    def __init__(self, dev: Device) -> None:
        b = dev.backend
        self._dev = dev
        self.handles: list[Any] = []
        for _ in range(3):
            ev = b.ffi.new("aclrtEvent*")
            rc = b.lib.aclrtCreateEventWithFlag(ev, 1 | 8)  # SYNC | TIME_LINE
            if rc:
                self.close()
                b.check(rc, "aclrtCreateEventWithFlag")
            self.handles.append(ev[0])
        self.submitted_ns = 0

    def attach(self, run: Any) -> None:
        for i, h in enumerate(self.handles):
            run.stage_events[i] = h
        self.submitted_ns = time.monotonic_ns()

    def read(self, end: Any) -> tuple[float, float, float, float | None]:
        """(h2d, compute, d2h, queued) in ms, once `end` completed (on the watcher thread)."""
        b = self._dev.backend
        ms = b.ffi.new("float*")
        marks = [*self.handles, end]
        spans = []
        for a, z in itertools.pairwise(marks):
            b.check(b.lib.aclrtEventElapsedTime(ms, a, z), "aclrtEventElapsedTime")
            spans.append(float(ms[0]))
        queued = None
        if b.is_sim:  # the sim's event clock is CLOCK_MONOTONIC, as time.monotonic_ns()
            ts = b.ffi.new("uint64_t*")
            b.check(b.lib.aclrtEventGetTimestamp(self.handles[0], ts), "aclrtEventGetTimestamp")
            queued = max(0.0, (int(ts[0]) - self.submitted_ns) / 1e6)
        return spans[0], spans[1], spans[2], queued

    def close(self) -> None:
        lib = self._dev.backend.lib
        for h in self.handles:
            lib.aclrtDestroyEvent(h)
        self.handles = []


def _noop(job: Job) -> None:
    """A placeholder finisher."""


class Stream:
    """One of a session's device streams (a lane graphs are loaded on). Runs on one stream
    complete in submission order."""

    def __init__(self, session: Session, index: int) -> None:
        dev = session._device
        b = dev.backend
        self._session = session
        self.index = index
        dev.ensure_current()
        s = b.ffi.new("aclrtStream*")
        b.check(b.lib.aclrtCreateStream(s), "aclrtCreateStream")
        self.handle: Any = s[0]
        # GE's external allocator registry is keyed by stream: our caching pool serves it.
        st = b.lib.aa_session_register_external_allocator(session._handle, self.handle, dev.allocator)
        if st:
            b.lib.aclrtDestroyStream(self.handle)
            b.check_ge(st, "RegisterExternalAllocator")
        self.lock = threading.Lock()
        self.in_flight = 0
        self.fault = 0
        self.retired = False

    def __repr__(self) -> str:
        return f"<Stream {self.index} of {self._session!r}{' faulted' if self.fault else ''}>"

    def record(self) -> Event:
        """Record an event behind everything submitted to this stream so far."""
        self._session._check_open()
        ev = Event(self._session._device, self.handle)
        self._session._events.add(ev)
        return ev

    def synchronize(self) -> None:
        """Block the calling thread until the stream's work is done (raises DeviceError)."""
        dev = self._session._device
        dev.ensure_current()
        dev.backend.check(dev.backend.lib.aclrtSynchronizeStream(self.handle), "aclrtSynchronizeStream")

    def _destroy(self) -> None:
        dev = self._session._device
        lib = dev.backend.lib
        dev.ensure_current()
        lib.aa_session_unregister_external_allocator(self._session._handle, self.handle)
        if dev.watcher is not None:
            dev.watcher.fail_stream(self.handle, self.fault or 507000)
        lib.aclrtDestroyStream(self.handle)
        lib.aclGetRecentErrMsg()


class _GraphState:
    """A graph inside one session: its replicas (one GE graph id per stream) and its mode."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.ids: dict[Stream | None, int] = {}
        self.loaded: set[Stream] = set()
        self.mode: str | None = None
        self.lock = threading.Lock()


class Session:
    """A GE session on one device, with a pool of streams and a completion watcher.

    Use it as an async (or plain) context manager. Every method may be called from any
    thread; several event loops may share one session.

    .. code-block:: python

        async with ascend_async.Session(device_id=0) as session:
            graph = session.add_graph("mlp.onnx")
            out = await session.run(graph, {"x": x})
    """

    def __init__(
        self,
        device_id: int = 0,
        *,
        streams: int = 2,
        options: Mapping[str, str] | None = None,
        max_in_flight: int = 512,
    ) -> None:
        if streams < 1:
            raise ValueError("a session needs at least one stream")
        self._closed = False
        self._torn_down = threading.Event()  # set once close() has freed everything
        self._handle: Any = None
        self._device: Device = acquire_device(device_id)
        try:
            b = self._device.backend
            self._ffi, self._lib = b.ffi, b.lib
            _ge_initialize(b)
            opts = {"ge.session_device_id": str(device_id), **(options or {})}
            keep, arr = _options(b.ffi, opts)
            out = b.ffi.new("aa_session**")
            self._device.ensure_current()
            b.check_ge(b.lib.aa_session_create(arr, len(opts), out), "GeSession")
            del keep
            self._handle = out[0]
            # GeSession's constructor switched this thread's context; set ours again.
            b.lib.aclrtSetCurrentContext(self._device.context)
            self._max_in_flight = max_in_flight
            self._lock = threading.Lock()
            self._sync_lock = threading.Lock()
            self._idle = threading.Condition(self._lock)
            self._next_id = 1
            self._graphs: dict[int, _GraphState] = {}
            self._pending = 0
            self._busy = 0  # threads inside a _working() section
            self._completed = 0
            self._failed = 0
            self._cancelled = 0
            self._streams: list[Stream] = []
            self._events: weakref.WeakSet[Event] = weakref.WeakSet()  # closed at teardown
            for i in range(streams):
                self._streams.append(Stream(self, i))
        except BaseException:
            self._teardown()
            raise
        self._rr = 0

    def __repr__(self) -> str:
        dev = self._device
        if dev is None:
            return "<Session closed>"
        state = "closing" if self._closed else f"{len(self._streams)} streams"
        return f"<Session device={dev.id} backend={dev.backend.name} {state}>"

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def is_closed(self) -> bool:
        return self._closed

    @property
    def backend(self) -> str:
        """The backend this session runs on: "sim" or "cann"."""
        return str(self._device.backend.name)

    @property
    def streams(self) -> tuple[Stream, ...]:
        with self._lock:
            return tuple(self._streams)

    def close(self) -> None:
        """Wait for the runs in flight, then free the session's graphs and streams.

        Idempotent: a call while another close is under way waits for it to finish. Later
        calls of other methods raise :class:`SessionClosedError`.
        """
        with self._lock:
            first = not self._closed
            self._closed = True
            while first and (self._pending or self._busy):
                self._idle.wait()
        if not first:
            self._torn_down.wait()
            return
        try:
            self._teardown()
        finally:
            self._torn_down.set()

    async def aclose(self) -> None:
        """:meth:`close` on a worker thread, so the event loop keeps serving the runs it waits
        for. Idempotent."""
        if self._torn_down.is_set():
            await anyio.lowlevel.checkpoint()
            return
        await anyio.to_thread.run_sync(self.close)

    def _teardown(self) -> None:
        dev = getattr(self, "_device", None)
        if dev is None:
            return
        lib = dev.backend.lib
        dev.ensure_current()
        for ev in list(getattr(self, "_events", ())):
            ev.close()
        if self._handle is not None:
            for st in getattr(self, "_graphs", {}).values():
                for gid in st.ids.values():
                    lib.aa_session_remove_graph(self._handle, gid)
            for s in getattr(self, "_streams", []):
                s._destroy()
            lib.aa_session_destroy(self._handle)
            dev.backend.ge_message()
            self._handle = None
        self._device = None  # type: ignore[assignment]
        release_device(dev)

    def _check_open(self) -> None:
        if self._closed:
            raise SessionClosedError("the session is closed")

    @contextmanager
    def _working(self) -> Iterator[None]:
        """A section that uses the GE session/device: raises SessionClosedError if closed, and
        close() waits for it to end before tearing anything down."""
        with self._lock:
            self._check_open()
            self._busy += 1
        try:
            yield
        finally:
            with self._lock:
                self._busy -= 1
                if not self._busy:
                    self._idle.notify_all()

    def _device_for_tensors(self) -> Device:
        self._check_open()
        return self._device

    # -- graphs ------------------------------------------------------------------------------

    def add_graph(self, source: GraphSource | Graph, *, name: str | None = None) -> Graph:
        """Add an ONNX model (path, bytes, ModelProto or Graph) and return its Graph.

        Parsing and lowering happen here, on the calling thread; for big models prefer
        :meth:`add_graph_async`. Compile and load happen later, off the event loop.

        :raises GraphError: unreadable model, or an op/attribute/dtype the backend refuses.
        """
        self._check_open()
        graph = source if isinstance(source, Graph) else Graph(source, name=name)
        with self._lock:
            if id(graph) in self._graphs:
                return graph
        state = _GraphState(graph)
        with self._working():
            self._add_replica(state, self._streams[0])
        with self._lock:
            self._graphs[id(graph)] = state
        return graph

    async def add_graph_async(self, source: GraphSource | Graph, *, name: str | None = None) -> Graph:
        """:meth:`add_graph` on a worker thread."""
        return await anyio.to_thread.run_sync(lambda: self.add_graph(source, name=name))

    def remove_graph(self, graph: Graph) -> None:
        """Remove the graph (all its replicas); its run mode is forgotten."""
        self._check_open()
        with self._lock:
            state = self._graphs.pop(id(graph), None)
        if state is None:
            raise GraphError(f"{graph.name}: not added to this session")
        with self._working():
            self._device.ensure_current()
            for gid in state.ids.values():
                self._device.backend.check_ge(self._lib.aa_session_remove_graph(self._handle, gid), "RemoveGraph")

    async def load(self, graph: Graph) -> None:
        """Compile and load the graph on every stream now (on a worker thread), so the first
        runs do not pay for it."""
        state = self._state(graph)
        for s in self.streams:
            await anyio.to_thread.run_sync(self._ensure_loaded, state, s)

    def _state(self, graph: Graph) -> _GraphState:
        self._check_open()
        state = self._graphs.get(id(graph))
        if state is None or state.graph is not graph:
            raise GraphError(f"{graph.name}: not added to this session (call session.add_graph first)")
        return state

    def _add_replica(self, state: _GraphState, stream: Stream | None) -> int:
        with self._lock:
            gid = self._next_id
            self._next_id += 1
        b = self._device.backend
        self._device.ensure_current()
        if b.is_sim:
            program = state.graph.lowered(b.ffi, b.lib)
            status = self._lib.aa_sim_session_add_program(self._handle, gid, program, b.ffi.NULL, 0)
        else:
            data = state.graph.model_bytes
            status = self._lib.aa_session_add_graph_onnx(self._handle, gid, data, len(data), b.ffi.NULL, 0)
        if status:
            err = b.ge_error(status, "AddGraph")
            raise GraphError(f"{state.graph.name}: {err}") from err
        state.ids[stream] = gid
        return gid

    def _ensure_loaded(self, state: _GraphState, stream: Stream) -> int:
        """On a worker thread: the graph's replica on ``stream``, compiled and loaded."""
        with self._working(), state.lock:
            gid = state.ids.get(stream)
            if gid is None:
                gid = self._add_replica(state, stream)
            if stream not in state.loaded:
                self._device.ensure_current()
                b = self._device.backend
                b.check_ge(
                    self._lib.aa_session_load_graph(self._handle, gid, b.ffi.NULL, 0, stream.handle), "LoadGraph"
                )
                state.loaded.add(stream)
            return gid

    def _bind_mode(self, state: _GraphState, mode: str) -> None:
        with state.lock:
            if state.mode is None:
                state.mode = mode
            elif state.mode != mode:
                raise ModeConflictError(
                    0xFFFFFFFF,
                    _MODE_API[mode],
                    f"graph {state.graph.name!r} is already bound to {_MODE_API[state.mode]}; GE's run modes "
                    "are exclusive per graph until it is removed (session.remove_graph)",
                )

    # -- async runs (RunGraphWithStreamAsync) -------------------------------------------------

    def _pick_stream(self, stream: Stream | int | None) -> Stream:
        with self._lock:
            if stream is None:
                # The least loaded stream; ties rotate.
                n = len(self._streams)
                self._rr = (self._rr + 1) % n
                best = self._streams[self._rr]
                for s in self._streams:
                    if s.in_flight < best.in_flight:
                        best = s
                return best
            if isinstance(stream, int):
                if not 0 <= stream < len(self._streams):
                    raise ValueError(f"stream={stream}: this session has streams 0..{len(self._streams) - 1}")
                return self._streams[stream]
            if stream not in self._streams:
                raise ValueError(f"{stream!r} is not a live stream of this session")
            return stream

    async def run(
        self,
        graph: Graph,
        inputs: Mapping[str, Any] | Sequence[Any],
        *,
        stream: Stream | int | None = None,
        outputs: Literal["numpy", "device"] = "numpy",
    ) -> dict[str, Any]:
        """Run ``graph`` on a device stream and wait for it without blocking the event loop.

        Inputs are checked against the signature first (:class:`InputError`, nothing
        submitted). Numpy inputs are staged through page-locked memory; the copies, the graph
        run and the event behind it are enqueued with calls that return at once. Returns
        ``{name: ndarray}``, or ``{name: DeviceTensor}`` with ``outputs="device"``.

        Always a checkpoint. Cancelled before submitting: nothing reaches the device.
        Cancelled after: control returns at once; the run finishes on the device, its buffers
        go back to the pools when it completes, and its result is dropped.

        :raises DeviceError: the run failed on the device (the stream is replaced).
        """
        result, _ = await self._run(graph, inputs, stream, outputs, profile=False)
        return result

    async def run_profiled(
        self,
        graph: Graph,
        inputs: Mapping[str, Any] | Sequence[Any],
        *,
        stream: Stream | int | None = None,
        outputs: Literal["numpy", "device"] = "numpy",
    ) -> tuple[dict[str, Any], RunProfile]:
        """:meth:`run`, plus where its time went: H2D, compute and D2H from device events
        recorded between the stages, and the host's share. Costs three extra events per run;
        meant for sampling (the benchmark runner profiles one run in sixteen)."""
        result, profile = await self._run(graph, inputs, stream, outputs, profile=True)
        assert profile is not None
        return result, profile

    async def _run(
        self,
        graph: Graph,
        inputs: Mapping[str, Any] | Sequence[Any],
        stream: Stream | int | None,
        outputs: str,
        *,
        profile: bool,
    ) -> tuple[dict[str, Any], RunProfile | None]:
        t_entry = time.perf_counter_ns()
        if outputs not in ("numpy", "device"):
            raise ValueError(f"outputs must be 'numpy' or 'device', not {outputs!r}")
        state = self._state(graph)
        await anyio.lowlevel.checkpoint_if_cancelled()
        values = graph.bind(inputs)
        self._bind_mode(state, "stream")
        bridge = current_bridge()
        limiter = bridge.limiter_for(self, self._max_in_flight)
        await limiter.acquire()
        try:
            lane = self._pick_stream(stream)
            if lane not in state.loaded:  # the first run on this stream: compile/load off-loop
                await anyio.to_thread.run_sync(self._ensure_loaded, state, lane)
            t_submit = time.perf_counter_ns()
            job = self._submit(state, lane, values, outputs == "device", bridge, profile)
            submit_ns = time.perf_counter_ns() - t_submit
        except BaseException:
            limiter.release()
            raise
        job.limiter = limiter
        done = job.done
        assert done is not None
        try:
            await done.wait()
        except BaseException:
            job.abandoned = True
            raise
        if _metrics.hook is not None:  # a Prometheus exporter is installed (ascend_async._metrics)
            _metrics.hook.run(self, graph, job, t_entry)
        if job.error is not None:
            raise job.error
        result: dict[str, Any] = job.result
        if not profile:
            return result, None
        h2d, compute, d2h, queued = job.stages
        return result, RunProfile(
            h2d_ms=h2d,
            compute_ms=compute,
            d2h_ms=d2h,
            submit_ms=submit_ns / 1e6,
            queued_ms=queued,
            end_to_end_ms=(time.perf_counter_ns() - t_entry) / 1e6,
        )

    def _submit(
        self, state: _GraphState, lane: Stream, values: list[Any], to_device: bool, bridge: Any, profile: bool = False
    ) -> Job:
        """Enqueue copies, the run and its event on ``lane`` (no waiting); hand it to the watcher."""
        with self._working():
            return self._submit_now(state, lane, values, to_device, bridge, profile)

    def _submit_now(
        self, state: _GraphState, lane: Stream, values: list[Any], to_device: bool, bridge: Any, profile: bool = False
    ) -> Job:
        dev = self._device
        ffi, lib = self._ffi, self._lib
        dev.ensure_current()
        watcher = dev.get_watcher()
        specs_out = state.graph.outputs
        n_in, n_out = len(values), len(specs_out)
        # One aa_run describes the whole submission; aa_run_submit does it in one C call.
        run = ffi.new("aa_run*")
        ins = ffi.new("aa_run_io[]", max(n_in, 1))
        outs = ffi.new("aa_run_io[]", max(n_out, 1))
        staged = []  # numpy buffers: copied into page-locked blocks during the call
        for i, v in enumerate(values):
            io = ins[i]
            if isinstance(v, DeviceTensor):
                v.ge_fill(io.tensor)
                continue
            buf = ffi.from_buffer(v)
            staged.append(buf)
            io.host = buf
            io.nbytes = v.nbytes
            t = io.tensor
            t.dtype = NUMPY_TO_GE[v.dtype]
            t.ndim = v.ndim
            t.dims[0 : v.ndim] = v.shape
        event = dev.take_event()
        stage_events = _StageEvents(dev) if profile else None
        job = Job(bridge, _noop)
        job.token = token = watcher.new_token()
        job.lane = lane
        run.session = self._handle
        run.stream = lane.handle
        run.device_pool = dev.device_pool
        run.host_pool = dev.host_pool
        run.watch = watcher.handle
        run.event = event
        run.token = token
        run.outputs_to_host = not to_device
        run.n_inputs = n_in
        run.n_outputs = n_out
        run.inputs = ins
        run.outputs = outs
        if stage_events is not None:
            stage_events.attach(run)
        job.finisher, job.after = self._finisher(
            lane, values, (run, ins, outs), specs_out, event, to_device, stage_events
        )
        job.run = run
        with lane.lock:
            if lane.fault:
                dev.give_event(event)
                raise DeviceError(lane.fault, "RunGraphWithStreamAsync", "the stream faulted; retry the run")
            run.graph_id = state.ids[lane]
            with self._lock:
                self._pending += 1
            lane.in_flight += 1
            watcher.expect(job)  # before the C call: the watcher may answer at once
            if lib.aa_run_submit(run) == 0:
                return job
            # Nothing reached the watcher; undo, then give back what the call took.
            watcher.jobs.pop(token, None)
            with self._lock:
                self._pending -= 1
            lane.in_flight -= 1
            if run.enqueued:
                # Rare error path: work already queued still reads these buffers. Wait for the
                # stream before giving them back (a faulted stream returns at once).
                lib.aclrtSynchronizeStream(lane.handle)
                lib.aclGetRecentErrMsg()
            api = ffi.string(run.failed_api).decode()
            error = (
                dev.backend.ge_error(run.ge_status, api) if run.ge_status else dev.backend.acl_error(run.acl_error, api)
            )
            lib.aa_run_release(run)
            dev.give_event(event)
            if stage_events is not None:
                stage_events.close()
            raise error

    def _finisher(
        self,
        lane: Stream,
        values: list[Any],
        run_parts: tuple[Any, Any, Any],
        specs_out: Sequence[Any],
        event: Any,
        to_device: bool,
        stage_events: _StageEvents | None = None,
    ) -> tuple[Callable[[Job], None], Callable[[Job], None]]:
        dev = self._device
        ffi = self._ffi
        outs = run_parts[2]

        def finish(job: Job) -> None:
            # On the watcher thread, once the run's event completed (or its stream faulted).
            # The watcher then releases `run` in C and calls `after`.
            if job.code or job.abandoned:
                return
            result: dict[str, Any] = {}
            for j, spec in enumerate(specs_out):
                io = outs[j]
                src = io.tensor
                shape = tuple(src.dims[0 : src.ndim])
                dtype = GE_TO_NUMPY[src.dtype]
                if to_device:
                    t = ffi.new("aa_tensor*")
                    t[0] = src
                    src.owner = ffi.NULL  # the DeviceTensor owns the GE block now
                    result[spec.name] = DeviceTensor(dev, t.addr, shape, dtype, ge_tensor=t)
                else:
                    arr = np.empty(shape, dtype)
                    if io.nbytes:
                        ffi.memmove(arr, io.host_block, io.nbytes)
                    result[spec.name] = arr
            job.result = result
            if stage_events is not None:
                job.stages = stage_events.read(event)

        def after(job: Job, _keep: tuple[Any, Any, Any] = run_parts) -> None:
            # The aa_run and its io arrays lived until the watcher released them in C.
            dev.give_event(event)
            if stage_events is not None:
                stage_events.close()
            values.clear()  # DeviceTensor inputs stay referenced until here
            self._retire(job, lane)

        return finish, after

    def _retire(self, job: Job, lane: Stream) -> None:
        """Account for a finished job; replace a faulted stream once it has drained.

        The job stays counted as pending until the replacement and retirement are done, so
        close() cannot tear the session down under them. A faulted stream that could not be
        replaced (the session is closing) stays in ``_streams`` for the teardown to destroy.
        """
        replace = False
        with self._lock:
            lane.in_flight -= 1
            if job.code:
                self._failed += 1
                if not lane.fault:
                    lane.fault = job.code
                    replace = lane in self._streams and not self._closed
            elif job.abandoned:
                self._cancelled += 1
            else:
                self._completed += 1
        try:
            if replace:
                fresh = Stream(self, lane.index)
                with self._lock:
                    self._streams[self._streams.index(lane)] = fresh
            with self._lock:
                retire_now = bool(lane.fault) and lane.in_flight == 0 and not lane.retired
                retire_now = retire_now and lane not in self._streams
                if retire_now:
                    lane.retired = True
            if retire_now:
                for state in list(self._graphs.values()):
                    with state.lock:
                        gid = state.ids.pop(lane, None)
                        state.loaded.discard(lane)
                    if gid is not None:
                        self._lib.aa_session_remove_graph(self._handle, gid)
                lane._destroy()
        finally:
            with self._lock:
                self._pending -= 1
                if not self._pending:
                    self._idle.notify_all()

    # -- the other GE modes -------------------------------------------------------------------

    def _primary_id(self, state: _GraphState) -> int:
        with state.lock:
            gid = state.ids.get(None)
            if gid is None:
                gid = self._add_replica(state, None)
            return gid

    def _host_inputs(self, values: list[Any], tin: Any) -> None:
        ffi = self._ffi
        for i, v in enumerate(values):
            t = tin[i]
            if isinstance(v, DeviceTensor):
                v.ge_fill(t)
                continue
            t.addr = ffi.cast("void*", ffi.from_buffer(v)) if v.nbytes else ffi.NULL
            t.size = v.nbytes
            t.dtype = NUMPY_TO_GE[v.dtype]
            t.format = 2
            t.placement = 1
            t.ndim = v.ndim
            for k, dim in enumerate(v.shape):
                t.dims[k] = dim

    def _host_outputs(self, tout: Any, n: int, specs: Sequence[Any]) -> dict[str, np.ndarray]:
        ffi, lib = self._ffi, self._lib
        out: dict[str, np.ndarray] = {}
        for j, spec in enumerate(specs[:n]):
            t = tout[j]
            shape = tuple(int(t.dims[k]) for k in range(t.ndim))
            arr = np.empty(shape, GE_TO_NUMPY[t.dtype])
            if arr.nbytes:
                ffi.memmove(arr, t.addr, arr.nbytes)
            out[spec.name] = arr
        for j in range(n):
            lib.aa_tensor_release(tout + j)
        return out

    def run_sync(self, graph: Graph, inputs: Mapping[str, Any] | Sequence[Any]) -> dict[str, np.ndarray]:
        """GE's RunGraph: run to completion on the calling thread (blocks it).

        GE refuses concurrent RunGraph calls in one session, so callers here are serialized.
        :raises ModeConflictError: the graph is already bound to another run mode.
        """
        state = self._state(graph)
        values = graph.bind(inputs)
        self._bind_mode(state, "sync")
        with self._working():
            return self._run_sync(state, graph, values)

    def _run_sync(self, state: _GraphState, graph: Graph, values: list[Any]) -> dict[str, np.ndarray]:
        gid = self._primary_id(state)
        ffi, lib = self._ffi, self._lib
        n_out = len(graph.outputs)
        tin = ffi.new("aa_tensor[]", max(len(values), 1))
        self._host_inputs(values, tin)
        tout = ffi.new("aa_tensor[]", max(n_out, 1))
        count = ffi.new("size_t*", n_out)
        with self._sync_lock:
            self._check_open()
            self._device.ensure_current()
            status = lib.aa_session_run_graph(self._handle, gid, tin, len(values), tout, count)
            if status:
                with self._lock:
                    self._failed += 1
                raise self._device.backend.ge_error(status, "RunGraph")
        with self._lock:
            self._completed += 1
        return self._host_outputs(tout, int(count[0]), graph.outputs)

    def run_with_callback(
        self,
        graph: Graph,
        inputs: Mapping[str, Any] | Sequence[Any],
        callback: Callable[[dict[str, np.ndarray] | None, BaseException | None], object],
    ) -> None:
        """GE's RunGraphAsync: submit and return; ``callback(outputs, error)`` is called on the
        device's watcher thread when the run finishes (keep it short; it holds the GIL).

        :raises ModeConflictError: the graph is already bound to another run mode.
        """
        state = self._state(graph)
        values = graph.bind(inputs)
        self._bind_mode(state, "callback")
        with self._working():
            self._run_with_callback(state, graph, values, callback)

    def _run_with_callback(
        self,
        state: _GraphState,
        graph: Graph,
        values: list[Any],
        callback: Callable[[dict[str, np.ndarray] | None, BaseException | None], object],
    ) -> None:
        gid = self._primary_id(state)
        dev = self._device
        ffi, lib = self._ffi, self._lib
        watcher = dev.get_watcher()
        n_out = len(graph.outputs)
        tin = ffi.new("aa_tensor[]", max(len(values), 1))
        self._host_inputs(values, tin)
        outs = ffi.new("aa_tensor[]", max(n_out, 1))
        slot = ffi.new("aa_cb_slot*")
        slot.watch = watcher.handle
        slot.capacity = n_out
        slot.outputs = outs

        def finish(job: Job) -> None:
            # Watcher thread. The inputs (tin, values) lived until here: GE reads them until
            # the callback ran.
            keep = (tin, values)
            del keep
            status = int(slot.status)
            if status:
                job.error = dev.backend.ge_error(status, "RunGraphAsync")
                with self._lock:
                    self._failed += 1
            else:
                job.result = self._host_outputs(outs, int(slot.n_outputs), graph.outputs)
                with self._lock:
                    self._completed += 1
            with self._lock:
                self._pending -= 1
                if not self._pending:
                    self._idle.notify_all()

        job = Job(None, finish)
        job.token = slot.token = watcher.new_token()

        def deliver(j: Job) -> None:
            callback(j.result, j.error)

        job.callback = deliver
        with self._lock:
            self._check_open()
            self._pending += 1
        watcher.expect(job)
        dev.ensure_current()
        status = lib.aa_session_run_graph_async(self._handle, gid, tin, len(values), lib.aa_watch_run_callback, slot)
        if status:
            # A refused run may already have called back (GE does so on a mode conflict); the
            # watcher then finds no job for the token.
            watcher.jobs.pop(job.token, None)
            with self._lock:
                self._pending -= 1
                if not self._pending:
                    self._idle.notify_all()
            raise dev.backend.ge_error(status, "RunGraphAsync")

    # -- introspection ------------------------------------------------------------------------

    def statistics(self) -> SessionStatistics:
        """Counts of runs in flight / completed / failed / cancelled, pool and watcher usage."""
        self._check_open()
        pools = self._device.pool_stats()
        w = self._device.watcher
        with self._lock:
            return SessionStatistics(
                in_flight=self._pending,
                completed=self._completed,
                failed=self._failed,
                cancelled=self._cancelled,
                streams=len(self._streams),
                device_pool=pools["device"],
                host_pool=pools["host"],
                watcher=w.stats() if w is not None else {},
            )

    # -- serving (logic in _batcher.py) -------------------------------------------------------

    def batcher(self, graph: Graph, **params: Any) -> Batcher:
        """A dynamic :class:`Batcher` for ``graph`` on this session: ``max_batch_size`` (default:
        a static graph's batch size, else 32), ``max_delay_ms`` (1.0), ``preferred_batch_sizes``,
        ``max_concurrent_batches`` (default: the number of streams), ``pad_to_preferred``.

        :raises GraphError: the graph is not added here, or an input has no batch dimension.
        :raises ValueError: a bad parameter, e.g. ``max_batch_size`` above a static batch size.
        """
        from ._batcher import Batcher

        self._state(graph)
        return Batcher(self, graph, **params)


def _options(ffi: Any, opts: Mapping[str, str]) -> tuple[list[Any], Any]:
    keep = []
    arr = ffi.new("aa_option[]", max(len(opts), 1))
    for i, (k, v) in enumerate(opts.items()):
        kc, vc = ffi.new("char[]", k.encode()), ffi.new("char[]", str(v).encode())
        keep += [kc, vc]
        arr[i].key = kc
        arr[i].value = vc
    return keep, arr


def _ge_initialize(backend: Any) -> None:
    global _ge_ready
    with _ge_lock:
        if _ge_ready:
            return
        rc = backend.lib.aclInit(backend.ffi.NULL)
        if rc not in (0, 100002):  # a repeated aclInit is allowed
            backend.check(rc, "aclInit")
        keep, arr = _options(backend.ffi, {"ge.graphRunMode": "0"})
        backend.check_ge(backend.lib.aa_ge_initialize(arr, 1), "GEInitializeV2")
        del keep
        _ge_ready = True
