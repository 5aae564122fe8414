"""Session: graphs, streams and the three GE run modes, with ``await session.run(...)``."""

from __future__ import annotations

import functools
import itertools
import json
import os
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import anyio
import anyio.lowlevel
import numpy as np

from . import _hooks, _offline
from ._cann_check import CHECK_ENV, CHECK_MODES, CHECK_OPTION
from ._device import Device, acquire_device, check_not_forked, release_device
from ._errors import AscendWarning, GraphError, SessionClosedError, ge_error
from ._event import Event
from ._ge import ge_initialize, global_options, option_array
from ._ge_options import GRAPH, SESSION, validate
from ._graph import Graph, GraphSource
from ._loop import Limit, LoopBridge, current_bridge, on_event_loop
from ._offline import ModelReplica, OfflineModel
from ._streams import Stream, StreamPool
from ._submit import (
    CallbackModelRun,
    CallbackRun,
    Replica,
    Run,
    describe_host_inputs,
    model_run_sync,
    read_host_outputs,
)
from ._tuning import Dumper, Gears, Trace, WarmupReport, graph_gears
from ._watcher import Watcher, current_watcher

if TYPE_CHECKING:
    from ._batcher import Batcher

__all__ = ["Event", "RunProfile", "Session", "SessionStatistics", "Stream", "WarmupReport"]

_MODE_API = {"stream": "RunGraphWithStreamAsync", "sync": "RunGraph", "callback": "RunGraphAsync"}
_MODE_CALL = {"stream": "await session.run", "sync": "session.run_sync", "callback": "session.run_with_callback"}

_DEFAULT_MAX_IN_FLIGHT = 512


@dataclass(frozen=True)
class SessionStatistics:
    """A snapshot of a session's activity. ``device_events`` is the device's event budget,
    shared with every session and loop on it: ``limit``, ``used``, ``peak``, ``waiting`` (runs
    waiting for events now) and ``waited`` (runs that had to wait)."""

    in_flight: int
    completed: int
    failed: int
    cancelled: int
    streams: int
    device_pool: Mapping[str, int]
    host_pool: Mapping[str, int]
    watcher: Mapping[str, int]
    device_events: Mapping[str, int]
    #: GE's options in force for this session (global, then session level), each with what the
    #: backend does with it: "honoured" (the sim acts on it), "recorded" (passed to GE; the sim
    #: only records it) or "set by the library" (the README's GE options table).
    ge_options: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    #: offline models loaded here: ``models``, ``loads`` (one per stream that ran one, plus
    #: run_sync's), and the device memory those loads hold, ``work_bytes`` and ``weight_bytes``
    offline_models: Mapping[str, int] = field(default_factory=dict)


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


class _GraphState:
    """A graph inside one session: its replicas (one GE graph id per stream) and its mode."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.ids: dict[Stream | None, int] = {}
        self.loaded: set[Stream] = set()
        self.replicas: dict[Stream, Replica] = {}  # loaded replicas, with their run descriptors
        self.mode: str | None = None
        self.removed = False  # remove_graph succeeded: no replica may be added again
        self.lock = threading.Lock()
        # One token per run between looking up its GE graph id and GE's answer to the submit
        # (any thread; list.append/remove are atomic): remove_graph refuses meanwhile, as GE
        # does for runs it counts in flight, so a run never submits to a removed id.
        self.submitting: list[object] = []
        self.options: dict[str, str] = {}  # AddGraph's GE options (graph level, gears included)
        self.gears: Gears | None = None  # static gears: the only shapes its runs may have


class _OpensDevice:
    """A Session attribute of its device part before that part is opened (see Session.__init__):
    reading it opens the part. A non-data descriptor, so once the part is open the instance's
    own value shadows it, and reading the attribute costs what any attribute costs (a
    ``__getattr__`` hook would slow every attribute of the session down)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        if obj is None:
            return self
        obj._open_device()
        try:
            return obj.__dict__[self.name]
        except KeyError:
            raise AttributeError(self.name) from None


class Session:
    """A GE session on one device, with a pool of streams and a completion watcher.

    Use it as an async (or plain) context manager. Every method may be called from any
    thread; several event loops may share one session.

    Opening the device, GE's process-wide state and the GeSession takes seconds on an NPU the
    first time. Made on an event loop's thread, ``Session(...)`` only checks its arguments:
    ``async with`` opens it in a worker thread while the loop goes on (a failure raises there,
    and the session is closed), and a session used without ``async with`` opens at its first
    use. Made anywhere else, it opens at once. A child process forked after the
    first session was opened cannot use sessions (:class:`BackendUnavailableError`).

    ``max_in_flight`` caps the runs each event loop has in flight in this session; the
    device's hardware events are one budget for every loop, session and pool instance on it
    (1023 on the sim and, unless ``ASCEND_ASYNC_EVENT_BUDGET`` says otherwise, on CANN), and a
    run that does not fit waits on its loop for events to come back. A ``max_in_flight`` above
    the budget is clamped to it with an :class:`AscendWarning` (the default, silently).

    .. code-block:: python

        async with ascend_async.Session(device_id=0) as session:
            graph = session.add_graph("mlp.onnx")
            out = await session.run(graph, {"x": x})
    """

    if not TYPE_CHECKING:  # (the device part's attributes, until it is opened)
        _device = _OpensDevice()
        _ffi = _OpensDevice()
        _lib = _OpensDevice()
        _pool = _OpensDevice()
        _max_in_flight = _OpensDevice()

    def __init__(
        self,
        device_id: int = 0,
        *,
        streams: int = 2,
        options: Mapping[str, str] | None = None,
        max_in_flight: int = _DEFAULT_MAX_IN_FLIGHT,
    ) -> None:
        _check_count("device_id", device_id, 0)
        _check_count("streams", streams, 1)
        _check_count("max_in_flight", max_in_flight, 1)
        if options is not None and (not isinstance(options, Mapping) or not all(isinstance(k, str) for k in options)):
            raise TypeError(f"options must be a mapping of str keys to values, not {options!r}")
        options, self._cann_check_mode = _sim_options(options)
        inherited = global_options()
        options = validate(options, SESSION, inherited)  # before anything is created
        self._ge_options: dict[str, str] = {**inherited, **options}
        self._dumper = Dumper(self._ge_options) if self._ge_options.get("ge.exec.enableDump") == "1" else None
        self._trace: Trace | None = None
        self._profile_trace: Trace | None = None  # ge.exec.profilingMode=1 on the sim: written at close
        self._closed = False
        self._forked = False
        self._bridges: weakref.WeakSet[LoopBridge] = weakref.WeakSet()  # loops holding a limiter of ours
        self._closer: int | None = None  # the thread tearing the session down
        self._torn_down = threading.Event()  # set once close() has freed everything
        self._handle: Any = None
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
        self._events: weakref.WeakSet[Event] = weakref.WeakSet()  # closed at teardown
        # The device part (the device, GE's process-wide state, the GeSession, the streams): at
        # once, except on an event loop's thread, where it waits for ``async with`` to open it
        # in a worker thread (__aenter__), or for the first use that needs it (_OpensDevice).
        self._open_args = (device_id, streams, options, max_in_flight)
        self._open_lock = threading.Lock()
        self._open_error: BaseException | None = None
        if not on_event_loop():
            self._open_device()

    def _open_device(self) -> None:
        """Open the device part once (any thread; later callers wait for the first). A failure
        is kept: every later use raises it again."""
        with self._open_lock:
            if self._open_error is not None:
                raise self._open_error
            if "_device" in self.__dict__:
                return
            self._check_open()
            try:
                self._open_device_now(*self._open_args)
            except BaseException as exc:
                self._open_error = exc
                raise

    def _open_device_now(self, device_id: int, streams: int, options: dict[str, str], max_in_flight: int) -> None:
        device = acquire_device(device_id)
        try:
            b = device.backend
            self._ffi, self._lib = b.ffi, b.lib
            ge_initialize(b)
            opts = {"ge.session_device_id": str(device_id), **(options or {})}
            keep, arr = option_array(b.ffi, opts)
            out = b.ffi.new("aa_session**")
            device.ensure_current()
            b.check_ge(b.lib.aa_session_create(arr, len(opts), out), "GeSession")
            del keep
            self._handle = out[0]
            # GeSession's constructor switched this thread's context; set ours again.
            b.lib.aclrtSetCurrentContext(device.context)
            budget = device.events.limit
            if max_in_flight > budget and max_in_flight != _DEFAULT_MAX_IN_FLIGHT:
                warnings.warn(
                    AscendWarning(
                        f"Session(max_in_flight={max_in_flight}) is above device {device_id}'s event budget "
                        f"({budget} hardware events, shared by every session and loop on the device); "
                        f"using max_in_flight={budget}"
                    ),
                    stacklevel=4,
                )
            self._max_in_flight = min(max_in_flight, budget)
            if b.is_sim and self._ge_options.get("ge.exec.profilingMode") == "1":
                self._profile_trace = self._trace = Trace(_profile_path(self._ge_options))
            self._device: Device = device
            self._pool = StreamPool(self._make_stream, streams, self._forget_stream)
            device.users.add(self)
        except BaseException:
            self._teardown(device)
            raise

    def __repr__(self) -> str:
        dev = self.__dict__.get("_device")
        if dev is None and not self._closed:
            return "<Session not opened yet>"
        if dev is None:
            return "<Session closed>"
        state = "closing" if self._closed else f"{len(self._pool.streams)} streams"
        return f"<Session device={dev.id} backend={dev.backend.name} {state}>"

    # -- lifecycle ---------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        device_id: int = 0,
        *,
        streams: int = 2,
        options: Mapping[str, str] | None = None,
        max_in_flight: int = _DEFAULT_MAX_IN_FLIGHT,
    ) -> _Opening:
        """Open a session off the event loop: ``session = await Session.open(...)``, or
        ``async with Session.open(...) as session:`` (closed on the way out).

        Opening takes seconds on an NPU the first time. ``Session.open`` does it in a worker
        thread while the loop goes on, as ``async with Session(...)`` does; awaited, it also
        serves code that keeps the session without a ``with`` block. The arguments are checked
        before the worker starts, with the constructor's errors.
        """
        _check_count("device_id", device_id, 0)
        _check_count("streams", streams, 1)
        _check_count("max_in_flight", max_in_flight, 1)
        return _Opening(lambda: cls(device_id, streams=streams, options=options, max_in_flight=max_in_flight))

    async def __aenter__(self) -> Session:
        """Opens the device part in a worker thread if the constructor left it (made on an
        event loop's thread), so the loop goes on meanwhile; closed again if that fails or
        the caller is cancelled."""
        await self._open_off_loop()
        return self

    async def _open_off_loop(self) -> None:
        """The device part, opened in a worker thread if it is not yet (the serving layer's
        pools use it too); the session is closed if that fails or the caller is cancelled."""
        if "_device" in self.__dict__:
            return
        try:
            await anyio.to_thread.run_sync(self._open_device)
        except BaseException:
            self.close()
            raise

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
        """The session's streams, by index. Reading it changes nothing: a stream that faulted
        is replaced on the submitting side, when the task whose run failed resumes, else at the
        next submission, so a stream seen here is never a destroyed one, and is a faulted one
        only if it faulted since (its fault surfaces as :class:`DeviceError` from its runs)."""
        self._check_open()
        return self._pool.snapshot()

    def _make_stream(self, index: int) -> Stream:
        return Stream(self._device, self._handle, index, self)

    def _forget_stream(self, stream: Stream) -> None:
        """A replaced stream drained: remove its graph replicas (it is destroyed next)."""
        with self._lock:
            states = list(self._graphs.values())
        for state in states:
            with state.lock:
                gid = state.ids.pop(stream, None)
                state.loaded.discard(stream)
                replica = state.replicas.pop(stream, None)
            if isinstance(replica, ModelReplica):
                replica.destroy()
            if gid is not None and isinstance(state.graph, OfflineModel):
                self._lib.aclmdlUnload(gid)  # the stream drained: none of its runs is in flight
            elif gid is not None:
                self._lib.aa_session_remove_graph(self._handle, gid)

    def close(self) -> None:
        """Wait for the runs in flight, then free the session's graphs and streams.

        Idempotent: a call while another close is under way waits for it to finish. Later
        calls of other methods raise :class:`SessionClosedError`.

        From a :meth:`run_with_callback` callback (the device's watcher thread) it returns at
        once: the session is closed to new work, and the wait and teardown run on a thread of
        their own after the callback returned (waiting there would wait for the very thread
        that completes the runs). In a forked child it does nothing (the parent owns the
        device).
        """
        if self._forked:
            return
        with self._lock:
            first = not self._closed
            self._closed = True
        # The session's in-flight limiters go now, not when the garbage collector finds the
        # session: a loop bridge lives as long as its loop. (A dict pop, atomic under the GIL,
        # from whichever thread closes; the loops no longer create one for a closed session.)
        for bridge in list(self._bridges):
            bridge.limiters.pop(self, None)
        watcher = current_watcher()
        if not first:
            if watcher is None and self._closer != threading.get_ident():
                self._torn_down.wait()
            return
        if watcher is not None:
            watcher.defer(self._finish_close)  # hand-off: runs on its own thread after the callback
            return
        self._finish_close()

    def _finish_close(self) -> None:
        self._closer = threading.get_ident()
        try:
            with self._lock:
                while self._pending or self._busy:
                    self._idle.wait()
            if self._profile_trace is not None:  # the sim's profiling: every run of the session
                try:
                    self._profile_trace.write()
                except OSError as exc:
                    warnings.warn(AscendWarning(f"ge.exec.profilingMode: cannot write the trace: {exc}"), stacklevel=2)
            self._teardown()
        finally:
            self._torn_down.set()

    def _after_fork(self) -> None:
        """In a forked child (Device's fork hook): every later call raises the fork error."""
        self._forked = True
        self._closed = True

    async def aclose(self) -> None:
        """:meth:`close` on a worker thread, so the event loop keeps serving the runs it waits
        for. Idempotent."""
        if self._torn_down.is_set() or self._forked:
            await anyio.lowlevel.checkpoint()
            return
        await anyio.to_thread.run_sync(self.close)

    def _teardown(self, dev: Device | None = None) -> None:
        """Free what the session holds. ``dev``: the device of an open that failed half-way
        (not yet ``self._device``)."""
        dev = dev or self.__dict__.get("_device")
        if dev is None:
            return
        lib = dev.backend.lib
        dev.ensure_current()
        for ev in list(getattr(self, "_events", ())):
            # Its waiters wake with this error; nothing else on its stream is failed for it.
            ev._close("the session was closed while a task awaited the event")
        if self._handle is not None:
            for st in getattr(self, "_graphs", {}).values():
                model = isinstance(st.graph, OfflineModel)
                for gid in st.ids.values():
                    if model:  # an offline model's loads are the process's, not the session's
                        lib.aclmdlUnload(gid)
                    else:
                        lib.aa_session_remove_graph(self._handle, gid)
                for replica in st.replicas.values():
                    if isinstance(replica, ModelReplica):
                        replica.destroy()
            pool = self.__dict__.get("_pool")
            if pool is not None:
                pool.close()
            lib.aa_session_destroy(self._handle)
            dev.backend.ge_message()
            self._handle = None
        self._device = None  # type: ignore[assignment]
        release_device(dev)

    def _check_open(self) -> None:
        if self._closed:
            if self._forked:
                check_not_forked()
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
                if not self._busy and self._closed:
                    self._idle.notify_all()

    def _device_for_tensors(self) -> Device:
        self._check_open()
        return self._device

    # -- graphs ------------------------------------------------------------------------------

    def add_graph(
        self,
        source: GraphSource | Graph,
        *,
        name: str | None = None,
        base_dir: str | os.PathLike[str] | None = None,
        options: Mapping[str, str] | None = None,
        gears: Mapping[str, Sequence[Sequence[int]]] | None = None,
    ) -> Graph:
        """Add an ONNX model (path, bytes, ModelProto or Graph) and return its Graph.

        ``options`` are GE's graph-level options (AddGraph's; see the README's GE options table),
        checked before anything is read or created. ``gears={input: [shape, ...]}`` (one shape
        per gear for every input; or ``ge.inputShape``/``ge.dynamicDims`` in ``options``, or at
        session level) compiles the graph at those static shapes: a run at any other shape is
        refused with :class:`InputError` before it is submitted, as GE refuses it.

        Parsing and lowering happen here, on the calling thread; for big models prefer
        :meth:`add_graph_async`. Compile and load happen later, off the event loop.

        External data is read from the model's own folder (a path's directory) or from
        ``base_dir``, which bytes and ModelProto with external data need; never from the
        working directory (see :class:`Graph`).

        :raises GraphError: unreadable model, every structural problem GE refuses, an external
            data location outside the folder, or an op/attribute/dtype the backend refuses.
        :raises ValueError: an unknown GE option, one of another level, a bad value, or gears
            that do not fit the graph's inputs.
        """
        self._check_open()
        graph_opts = validate(options, GRAPH)
        if source is None:
            raise TypeError("add_graph: source is None (expected a path, bytes, an onnx.ModelProto or a Graph)")
        if isinstance(source, Graph) and base_dir is not None:
            raise TypeError("add_graph: base_dir applies when a model is read; pass it to Graph(...) instead")
        graph = source if isinstance(source, Graph) else Graph(source, name=name, base_dir=base_dir)
        with self._lock:
            added = self._graphs.get(id(graph))
        if added is not None and added.graph is graph:
            if graph_opts or gears is not None:
                raise ValueError(
                    f"{graph.name}: already added to this session; its options and gears are fixed at AddGraph "
                    "(remove_graph first to add it with others)"
                )
            return graph
        state = _GraphState(graph)
        state.options, state.gears = graph_gears(graph, graph_opts, gears)
        if state.gears is None and "ge.inputShape" in self._ge_options:  # the session's gears (GE has them)
            _, state.gears = graph_gears(
                graph, {k: self._ge_options[k] for k in ("ge.inputShape", "ge.dynamicDims")}, None
            )
        self._apply_cann_check(graph)
        with self._working():
            self._add_replica(state, self._pool.streams[0])
        with self._lock:
            self._graphs[id(graph)] = state
        return graph

    def _apply_cann_check(self, graph: Graph) -> None:
        """On the sim, say now what CANN's ONNX parser would refuse (on CANN, GE's parser decides)."""
        mode = self._cann_check_mode
        if mode == "off" or self._device.backend.name != "sim" or graph.cann_check.ok:
            return
        text = graph.cann_check.refusal()
        if mode == "error":
            raise GraphError(f"{graph.name}: {text} (the sim refuses it: {CHECK_OPTION}='error')")
        warnings.warn(
            f"{graph.name}: {text} The sim runs it; set {CHECK_OPTION}='error' (or {CHECK_ENV}=error) to refuse.",
            AscendWarning,
            stacklevel=3,
        )

    async def add_graph_async(
        self,
        source: GraphSource | Graph,
        *,
        name: str | None = None,
        base_dir: str | os.PathLike[str] | None = None,
        options: Mapping[str, str] | None = None,
        gears: Mapping[str, Sequence[Sequence[int]]] | None = None,
    ) -> Graph:
        """:meth:`add_graph` on a worker thread."""
        return await anyio.to_thread.run_sync(
            lambda: self.add_graph(source, name=name, base_dir=base_dir, options=options, gears=gears)
        )

    def remove_graph(self, graph: Graph) -> None:
        """Remove the graph (all its replicas); its run mode is forgotten.

        Transactional: GE refuses while runs of the graph are still on the device; the graph
        then stays added and fully usable (a replica already removed is added again by its
        stream's next run), and a later call removes it once those runs finished.

        :raises GraphError: the graph is not added to this session.
        :raises GeError: GE refused (runs in flight); nothing was forgotten.
        """
        self._check_open()
        if not isinstance(graph, Graph):
            raise TypeError(f"graph must be a Graph from session.add_graph, not {type(graph).__name__}")
        with self._lock:
            state = self._graphs.get(id(graph))
        if state is None or state.graph is not graph:
            raise GraphError(f"{graph.name}: not added to this session")
        with self._working(), state.lock:  # no replica is added meanwhile (_ensure_loaded)
            if state.removed:
                raise GraphError(f"{graph.name}: not added to this session")
            self._device.ensure_current()
            # Every replica out of the run path first: a run registers in state.submitting
            # before it looks its replica up, so it either registered before the check below
            # (refused here, everything put back) or finds no replica and waits for state.lock
            # (then runs on what is left, or learns the graph was removed). Put back if refused.
            taken = {
                stream: (state.replicas.pop(stream, None), stream in state.loaded)
                for stream in state.ids
                if stream is not None
            }
            state.loaded.difference_update(taken)

            def put_back() -> None:
                for stream, (replica, was_loaded) in taken.items():
                    if replica is not None:
                        state.replicas[stream] = replica
                    if was_loaded:
                        state.loaded.add(stream)

            if state.submitting:
                put_back()
                raise ge_error(
                    self._lib.AA_GE_FAILED,
                    "RemoveGraph",
                    f"graph {graph.name!r} has a run being submitted; remove it once its runs finished",
                )
            model = isinstance(graph, OfflineModel)
            if model:  # unloading a model under its runs is undefined in ACL: refused
                busy = sum(r.busy() for r, _ in taken.values() if isinstance(r, ModelReplica))
                if busy:
                    put_back()
                    raise self._device.backend.acl_error(
                        self._lib.ACL_ERROR_INVALID_PARAM,
                        "aclmdlUnload",
                        f"model {graph.name!r} has {busy} run(s) in flight; unload it once they finished",
                    )
            for stream, gid in list(state.ids.items()):
                if model:
                    rc = self._lib.aclmdlUnload(gid)
                    if rc:
                        put_back()
                        self._device.backend.check(rc, "aclmdlUnload")
                    replica = taken.get(stream, (None, False))[0] if stream is not None else None
                    if isinstance(replica, ModelReplica):
                        replica.destroy()
                else:
                    status = self._lib.aa_session_remove_graph(self._handle, gid)
                    if status:
                        put_back()  # this replica and those not asked for yet
                        self._device.backend.check_ge(status, "RemoveGraph")
                del state.ids[stream]
                taken.pop(stream, None)  # type: ignore[arg-type]
            state.removed = True
            with self._lock:
                if self._graphs.get(id(graph)) is state:
                    del self._graphs[id(graph)]

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
            if not isinstance(graph, Graph):  # checked off the hot path: only what is not found
                raise TypeError(f"graph must be a Graph from session.add_graph, not {type(graph).__name__}")
            raise GraphError(f"{graph.name}: not added to this session (call session.add_graph first)")
        return state

    def _add_replica(self, state: _GraphState, stream: Stream | None) -> int:
        if isinstance(state.graph, OfflineModel):  # one load per stream (one modelId, one stream)
            mid = _offline.load_id(self._device, state.graph.model_bytes, state.graph.name)
            state.ids[stream] = mid
            return mid
        with self._lock:
            gid = self._next_id
            self._next_id += 1
        b = self._device.backend
        self._device.ensure_current()
        data = state.graph.model_bytes
        options, n_options, keep = state.graph._add_options(b.ffi)
        if state.options:  # GE's graph-level options, beside our external-data ones
            pairs = [
                (bytes(b.ffi.string(options[i].key)), bytes(b.ffi.string(options[i].value))) for i in range(n_options)
            ]
            pairs += [(k.encode(), v.encode()) for k, v in state.options.items()]
            keep = [b.ffi.new("char[]", x) for pair in pairs for x in pair]
            options, n_options = b.ffi.new("aa_option[]", len(pairs)), len(pairs)
            for i in range(n_options):
                options[i].key, options[i].value = keep[2 * i], keep[2 * i + 1]
        status = self._lib.aa_session_add_graph_onnx(self._handle, gid, data, len(data), options, n_options)
        del keep  # the option strings lived through AddGraph
        if status:
            err = b.ge_error(status, "AddGraph")
            raise GraphError(f"{state.graph.name}: {state.graph.explain_refusal(str(err))}") from err
        state.ids[stream] = gid
        return gid

    def _ensure_loaded(self, state: _GraphState, stream: Stream) -> int | None:
        """On a worker thread: the graph's replica on ``stream``, compiled and loaded; None for
        a faulted stream (it is retired, with its replicas, once drained: none is added)."""
        with self._working(), state.lock:
            if state.removed:
                raise GraphError(f"{state.graph.name}: not added to this session (it was removed)")
            if stream.fault:
                return None
            gid = state.ids.get(stream)
            if gid is None:
                gid = self._add_replica(state, stream)
            if stream not in state.loaded and isinstance(state.graph, OfflineModel):
                state.loaded.add(stream)  # loaded by _add_replica: nothing else to do
                state.replicas[stream] = ModelReplica(self._device, gid, stream, state.graph)
            if stream not in state.loaded:
                self._device.ensure_current()
                b = self._device.backend
                b.check_ge(
                    self._lib.aa_session_load_graph(self._handle, gid, b.ffi.NULL, 0, stream.handle), "LoadGraph"
                )
                state.loaded.add(stream)
                names = [spec.name for spec in state.graph.outputs]
                state.replicas[stream] = Replica(
                    self._device,
                    self._handle,
                    gid,
                    stream,
                    names,
                    len(state.graph.inputs),
                    static=state.graph.static_outputs,
                )
            return gid

    def _bind_mode(self, state: _GraphState, mode: str) -> None:
        if state.mode == mode:  # bound already: set once, under the lock, and never unset
            return
        if isinstance(state.graph, OfflineModel):  # GE's run modes are a GeSession rule
            return
        with state.lock:
            if state.mode is None:
                state.mode = mode
            elif state.mode != mode:
                api = _MODE_API[mode]
                # GE's answer to a conflict: UNSUPPORTED from RunGraph/RunGraphAsync, FAILED from
                # RunGraphWithStreamAsync (refused here, before GE is asked).
                status = self._lib.AA_GE_FAILED if mode == "stream" else self._lib.AA_GE_UNSUPPORTED
                raise ge_error(  # a ModeConflictError: its message adds what to do
                    status,
                    api,
                    f"graph {state.graph.name!r} is bound to {_MODE_API[state.mode]} ({_MODE_CALL[state.mode]}), "
                    f"so {api} ({_MODE_CALL[mode]}) is refused",
                    bound_mode=state.mode,
                    mode=mode,
                )

    # -- async runs (RunGraphWithStreamAsync) -------------------------------------------------

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
        # The common case inline (one coroutine, no stage events, nothing recorded or dumped):
        # the checks of _run, then _launch_now and the wait; anything else takes _run.
        if self._trace is not None or self._dumper is not None or _hooks.metrics is not None:
            result, _ = await self._run(graph, inputs, stream, outputs, profile=False)
            return result
        if outputs == "numpy":
            to_device = False
        elif outputs == "device":
            to_device = True
        else:
            raise ValueError(f"outputs must be 'numpy' or 'device', not {outputs!r}")
        state = self._graphs.get(id(graph))
        if state is None or state.graph is not graph or self._closed:
            state = self._state(graph)  # (raises the error that says why)
        bridge = current_bridge()
        cancel_called = bridge.cancel_called
        if cancel_called is None or cancel_called():
            await bridge.checkpoint_if_cancelled()  # (raises here when cancelled: nothing is submitted)
        values = graph.bind(inputs)
        if state.gears is not None:
            state.gears.check(graph, values)
        if state.mode != "stream":
            self._bind_mode(state, "stream")
        run = self._launch_now(state, values, stream, to_device, bridge)
        if run is None:  # something to wait for first (admission, budget, a first load)
            limiter = await self._admit(bridge, 1)
            run = await self._launch(state, values, stream, to_device, False, bridge, limiter, 1)
        try:
            await run.wait(bridge.trio)
        except BaseException:
            run.abandoned = True  # (Run.wait_done, inline)
            raise
        if run.error is not None:
            self._replace_faulted()
            raise run.error
        return run.result  # type: ignore[return-value]

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
        """One ``await session.run``: checks, then admission -> lane -> submit -> result."""
        t_entry = time.perf_counter_ns()
        if outputs not in ("numpy", "device"):
            raise ValueError(f"outputs must be 'numpy' or 'device', not {outputs!r}")
        state = self._state(graph)
        bridge = current_bridge()
        await bridge.checkpoint_if_cancelled()  # (anyio.lowlevel's, its backend looked up once)
        values = graph.bind(inputs)
        if state.gears is not None:
            state.gears.check(graph, values)
        if state.mode != "stream":
            self._bind_mode(state, "stream")
        staged = profile or self._trace is not None  # a traced run records its stage events
        run = None if staged else self._launch_now(state, values, stream, outputs == "device", bridge)
        if run is None:  # something to wait for (admission, budget, a first load) or a staged run
            need = 4 if staged else 1  # the run's events: a staged run records three stage events too
            limiter = await self._admit(bridge, need)
            run = await self._launch(state, values, stream, outputs == "device", staged, bridge, limiter, need)
        await run.wait_done()
        if run.error is None and not profile and _hooks.metrics is None and self._trace is None:
            if self._dumper is None:  # _result's common case, inline: nothing to record or dump
                return run.result, None  # type: ignore[return-value]
        return await self._result(graph, values, run, t_entry, profile)

    def _launch_now(
        self, state: _GraphState, values: list[Any], want: Stream | int | None, to_device: bool, bridge: LoopBridge
    ) -> Run | None:
        """The common case of :meth:`_admit` and :meth:`_launch` in one call, for an unstaged run
        that waits for nothing: a place under the in-flight limit, one event of the device's
        budget and one submission of this iteration's are free, and the graph has a replica on
        every stream. Returns the submitted run, or None with nothing taken when any of that
        does not hold (the caller then takes the general path, which waits where it must)."""
        limiter = bridge.limiters.get(self)
        pool = self._pool
        if (
            limiter is None
            or limiter.value <= 0
            or bridge.budget <= 0
            or bridge._admit  # submissions wait for the next iteration: they go first
            or len(state.replicas) < len(pool.streams)
        ):
            return None
        dev = self._device
        # The one step other threads share (the device's event budget), taken first and
        # undone below; with it, the run's event.
        event = dev.take_run_event()
        if event is None:
            return None
        pin = object()  # from the replica lookup to the submit: remove_graph refuses meanwhile
        state.submitting.append(pin)
        try:
            try:
                stream = pool.start(want)  # (counted as running there: finished() below if not submitted)
            except BaseException:  # (a stream argument that names no stream of the session)
                dev.give_run_event(event)
                raise
            replica = state.replicas.get(stream)
            if replica is None:  # a stream was replaced and has no replica yet: the general path
                pool.finished(stream, 0)
                dev.give_run_event(event)
                return None
            with self._lock:  # (_submit, inline: counted as pending, close() waits for it)
                closed = self._closed
                if not closed:
                    self._pending += 1
            if closed:
                pool.finished(stream, 0)
                dev.give_run_event(event)
                self._check_open()
            limiter.value -= 1  # (acquire_nowait: a free place and nobody waits, checked above)
            bridge.budget -= 1  # (bridge.take_budget, checked above)
            run = Run(replica, pool, self._account, bridge, to_device)
            run.event, run.slots = event, 1  # the run gives both back when it is recycled
            run.limiter = limiter
            try:
                watcher = dev.watcher or dev.get_watcher()
                dev.ensure_current()
                run.submit(values, watcher, False, started=True)
            except BaseException:
                # The failed submit recycled the run (event and budget place back, the stream
                # count settled) unless it failed before reaching it.
                if run.event is not None:
                    pool.finished(stream, 0)
                    dev.give_run_event(event)
                limiter.release()
                self._account(0, False, counted=False)
                raise
        finally:
            state.submitting.remove(pin)  # (an object() compares by identity only)
        if not bridge.scheduled:  # (collect_after_submit's own first test, inline)
            bridge.collect_after_submit(watcher)
        return run

    async def _admit(self, bridge: LoopBridge, need: int) -> Limit:
        """Admission: a place under this loop's in-flight limit for the session, then ``need``
        events from the device's budget, shared with every loop, session and pool on the device
        (a run that does not fit waits here, on this loop, never inside aclrtRecordEvent).
        Returns the limiter, held; nothing is held if it raises."""
        limiter = bridge.limiters.get(self)
        if limiter is None:
            limiter = bridge.limiter_for(self, self._max_in_flight)
            self._bridges.add(bridge)  # close() drops the limiter from it
        try:  # the run's schedule point is its wait: no extra loop round trip here
            limiter.acquire_nowait()
        except anyio.WouldBlock:
            await limiter.acquire()
        events = self._device.events
        try:
            if not events.try_take(need):
                await events.take(need, bridge)
        except BaseException:
            limiter.release()
            raise
        return limiter

    async def _launch(
        self,
        state: _GraphState,
        values: list[Any],
        want: Stream | int | None,
        to_device: bool,
        staged: bool,
        bridge: LoopBridge,
        limiter: Limit,
        need: int,
    ) -> Run:
        """This iteration's submission budget, the lane (stream and replica), the submit. The
        run owns the limiter and the events from here; if it raises, they are given back."""
        events = self._device.events
        run: Run | None = None
        pin = object()  # from the replica lookup to the submit: remove_graph refuses meanwhile
        try:
            if not bridge.take_budget():
                await bridge.admit()  # this loop iteration's submissions are spent: wait for the next
            state.submitting.append(pin)
            lane = self._pool.pick(want)
            replica = state.replicas.get(lane)
            if replica is None:  # (the lane has no replica yet: _lane loads it; else no coroutine)
                replica = await self._lane(state, want, lane)
            run = Run(replica, self._pool, self._account, bridge, to_device)
            run.slots, need = need, 0  # the run gives them back when it is recycled
            watcher = self._submit(run, values, staged)
        except BaseException:
            if run is not None:
                run._give_slots()  # a no-op once a failed submit recycled the run
            if need:
                events.give(need)
            limiter.release()
            raise
        finally:
            if pin in state.submitting:
                state.submitting.remove(pin)
        run.limiter = limiter
        bridge.collect_after_submit(watcher)
        return run

    async def _lane(self, state: _GraphState, want: Stream | int | None, lane: Stream | None = None) -> Replica:
        """The run's lane: the stream (``lane`` if picked already, else ``want``, else the least
        loaded; a faulted one is replaced first) and the graph's replica on it, compiled and
        loaded off the loop on the graph's first run there."""
        if lane is None:
            lane = self._pool.pick(want)
        replica = state.replicas.get(lane)
        while replica is None:
            await anyio.to_thread.run_sync(self._ensure_loaded, state, lane)
            replica = state.replicas.get(lane)
            if replica is None:  # the stream faulted meanwhile (no replica on it): its replacement
                lane = self._pool.pick(want)
                replica = state.replicas.get(lane)
        return replica

    def _submit(self, run: Run, values: list[Any], staged: bool) -> Watcher:
        """Counted as pending (close() waits for it from here), then the one C call. Returns
        the device's watcher."""
        run.submit_at = t = time.perf_counter_ns()
        with self._lock:
            self._check_open()
            self._pending += 1
        try:
            watcher = self._device.get_watcher()
            self._device.ensure_current()
            run.submit(values, watcher, staged)
        except BaseException:
            self._account(0, False, counted=False)
            raise
        stages = run.stages  # the device clock's zero for the run's queued time (see StageEvents)
        run.attach_at = stages.submitted_ns if stages is not None else t
        run.submit_ns = time.perf_counter_ns() - t
        return watcher

    async def _result(
        self, graph: Graph, values: list[Any], run: Run, t_entry: int, profile: bool
    ) -> tuple[dict[str, Any], RunProfile | None]:
        """The completed run's outcome: its outputs (and profile), or its error."""
        if _hooks.metrics is not None:  # a Prometheus exporter is installed (ascend_async._metrics)
            _hooks.metrics.run(self, graph, run, t_entry)
        if run.error is not None:
            self._replace_faulted()
            raise run.error
        result = run.result
        assert result is not None
        trace = self._trace
        if trace is not None and run.timing is not None:
            exact = bool(self._device.backend.is_sim)
            t_now = time.perf_counter_ns()
            lane = run.replica.stream.index
            trace.run(
                self._device.id, lane, graph.name, run.submit_at, run.submit_ns, run.timing, t_now, exact, run.attach_at
            )
        if self._dumper is not None:
            await self._dump(graph, values, result)
        if not profile:
            return result, None
        assert run.timing is not None
        h2d, compute, d2h, queued = run.timing
        return result, RunProfile(
            h2d_ms=h2d,
            compute_ms=compute,
            d2h_ms=d2h,
            submit_ms=run.submit_ns / 1e6,
            queued_ms=queued,
            end_to_end_ms=(time.perf_counter_ns() - t_entry) / 1e6,
        )

    def _replace_faulted(self) -> None:
        """On the submitting side, when a run's task learns that its run failed: a stream that
        faulted gets its replacement now, so the caller's next look at :attr:`streams` shows a
        live stream in its slot (a fault nobody awaited is replaced at the next submission)."""
        if not self._pool.stale:
            return
        try:
            with self._working():
                self._pool.refresh()
        except SessionClosedError:  # closing meanwhile: its streams go with it, nothing to replace
            pass

    def _account(self, code: int, abandoned: bool, counted: bool = True) -> None:
        """A run finished (any thread): count it and let close() go on when none is left."""
        with self._lock:
            if counted:
                if code:
                    self._failed += 1
                elif abandoned:
                    self._cancelled += 1
                else:
                    self._completed += 1
            self._pending -= 1
            if not self._pending and self._closed:  # close() waits only once it set _closed
                self._idle.notify_all()

    # -- the other GE modes -------------------------------------------------------------------

    def _primary_id(self, state: _GraphState) -> int:
        with state.lock:
            if state.removed:
                raise GraphError(f"{state.graph.name}: not added to this session (it was removed)")
            gid = state.ids.get(None)
            if gid is None:
                gid = self._add_replica(state, None)
            return gid

    def run_sync(self, graph: Graph, inputs: Mapping[str, Any] | Sequence[Any]) -> dict[str, np.ndarray]:
        """GE's RunGraph: run to completion on the calling thread (blocks it).

        GE refuses concurrent RunGraph calls in one session, so callers here are serialized.
        :raises ModeConflictError: the graph is already bound to another run mode.
        """
        state = self._state(graph)
        values = graph.bind(inputs)
        if state.gears is not None:
            state.gears.check(graph, values)
        self._bind_mode(state, "sync")
        with self._working():
            if isinstance(graph, OfflineModel):
                out = self._run_sync_model(state, graph, values)
            else:
                out = self._run_sync(state, graph, values)
        if self._dumper is not None:
            target = self._dumper.take(graph)
            if target is not None:
                self._dumper.write(target[0], graph, values, out)
        return out

    def _run_sync(self, state: _GraphState, graph: Graph, values: list[Any]) -> dict[str, np.ndarray]:
        ffi, lib = self._ffi, self._lib
        n_out = len(graph.outputs)
        tin = ffi.new("aa_tensor[]", max(len(values), 1))
        describe_host_inputs(ffi, lib, values, tin)
        tout = ffi.new("aa_tensor[]", max(n_out, 1))
        count = ffi.new("size_t*", n_out)
        pin = object()  # from the id lookup to GE's answer: remove_graph refuses meanwhile
        state.submitting.append(pin)
        try:
            gid = self._primary_id(state)
            with self._sync_lock:
                self._check_open()
                self._device.ensure_current()
                status = lib.aa_session_run_graph(self._handle, gid, tin, len(values), tout, count)
        finally:
            state.submitting.remove(pin)
        if status:  # GE's error text is per thread: read here, after the lock
            with self._lock:
                self._failed += 1
            raise self._device.backend.ge_error(status, "RunGraph", bound_mode=state.mode, mode="sync")
        with self._lock:
            self._completed += 1
        return read_host_outputs(ffi, lib, tout, int(count[0]), [spec.name for spec in graph.outputs])

    def run_with_callback(
        self,
        graph: Graph,
        inputs: Mapping[str, Any] | Sequence[Any],
        callback: Callable[[dict[str, np.ndarray] | None, BaseException | None], object],
    ) -> None:
        """GE's RunGraphAsync: submit and return; ``callback(outputs, error)`` is called on the
        device's watcher thread when the run finishes (keep it short; it holds the GIL).

        Whatever the callback raises, ``BaseException`` included, is reported as an
        :class:`AscendWarning` (its ``__cause__``) and contained: the watcher and every session
        on the device go on. :meth:`close` may be called from it (deferred, see there).

        :raises ModeConflictError: the graph is already bound to another run mode.
        :raises TypeError: ``callback`` is not callable.
        """
        state = self._state(graph)
        if not callable(callback):
            raise TypeError(f"callback must be callable, not {type(callback).__name__}")
        values = graph.bind(inputs)
        if state.gears is not None:
            state.gears.check(graph, values)
        self._bind_mode(state, "callback")
        with self._working():
            if isinstance(graph, OfflineModel):
                self._run_with_callback_model(state, graph, values, callback)
                return
            self._run_with_callback(state, graph, values, callback)

    def _run_with_callback(
        self,
        state: _GraphState,
        graph: Graph,
        values: list[Any],
        callback: Callable[[dict[str, np.ndarray] | None, BaseException | None], object],
    ) -> None:
        dev = self._device
        ffi, lib = self._ffi, self._lib
        watcher = dev.get_watcher()
        tin = ffi.new("aa_tensor[]", max(len(values), 1))
        describe_host_inputs(ffi, lib, values, tin)
        names = [spec.name for spec in graph.outputs]
        pin = object()  # from the id lookup to GE's answer: remove_graph refuses meanwhile
        state.submitting.append(pin)
        try:
            gid = self._primary_id(state)
            read = functools.partial(read_host_outputs, ffi, lib)
            run = CallbackRun(dev, watcher, names, tin, values, callback, self._account, read)
            with self._lock:
                self._check_open()
                self._pending += 1
            watcher.expect(run.token, run)
            dev.ensure_current()
            status = lib.aa_session_run_graph_async(
                self._handle, gid, tin, len(values), lib.aa_watch_run_callback, run.slot
            )
        finally:
            state.submitting.remove(pin)
        if status:
            # A refused run may already have called back (GE does so on a mode conflict); the
            # watcher then finds no run under the token.
            if watcher.pending.pop(run.token, None) is not None:
                self._account(0, False, counted=False)
            raise dev.backend.ge_error(status, "RunGraphAsync", bound_mode=state.mode, mode="callback")

    # -- introspection ------------------------------------------------------------------------

    def statistics(self) -> SessionStatistics:
        """Counts of runs in flight / completed / failed / cancelled, pool and watcher usage."""
        self._check_open()
        pools = self._device.pool_stats()
        w = self._device.watcher
        with self._lock:
            models = [st for st in self._graphs.values() if isinstance(st.graph, OfflineModel)]
            loads = [(st.graph, len(st.ids)) for st in models]
            return SessionStatistics(
                in_flight=self._pending,
                completed=self._completed,
                failed=self._failed,
                cancelled=self._cancelled,
                streams=len(self._pool.streams),
                device_pool=pools["device"],
                host_pool=pools["host"],
                watcher=w.stats() if w is not None else {},
                device_events=self._device.events.stats(),
                ge_options=self._options_report(),
                offline_models={
                    "models": len(loads),
                    "loads": sum(n for _, n in loads),
                    "work_bytes": sum(m.work_bytes * n for m, n in loads),  # type: ignore[attr-defined]
                    "weight_bytes": sum(m.weight_bytes * n for m, n in loads),  # type: ignore[attr-defined]
                },
            )

    @property
    def ge_options(self) -> Mapping[str, str]:
        """GE's options in force for this session: the global ones (:func:`set_ge_options`),
        then its own (``Session(options=...)``), as validated."""
        return dict(self._ge_options)

    def _options_report(self) -> dict[str, dict[str, str]]:
        from ._ge_options import OPTIONS

        sim = self._device.backend.is_sim
        return {
            k: {
                "value": v,
                "backend": OPTIONS[k].sim if sim else "passed to GE",
                "note": OPTIONS[k].sim_note if sim else "",
            }
            for k, v in self._ge_options.items()
        }

    def gears(self, graph: Graph) -> dict[str, list[tuple[int, ...]]] | None:
        """The graph's static gears in this session, ``{input: [shape per gear]}`` smallest
        first; None for a graph without gears."""
        state = self._state(graph)
        return state.gears.as_dict() if state.gears is not None else None

    def _gear_set(self, graph: Graph) -> Gears | None:
        return self._state(graph).gears

    # -- tuning: warm-up, trace, dump (logic in _tuning.py) -----------------------------------

    async def warmup(self, graph: Graph, shapes: Sequence[Mapping[str, Sequence[int]]] | None = None) -> WarmupReport:
        """Compile and load ``graph`` on every stream (worker threads), then run each of its
        gears — or each of ``shapes`` (``[{input: shape}, ...]``), or its static shape — once per
        stream with zeros, so that no later run pays for the first run of a shape. A dynamic
        graph without gears or shapes is only compiled and loaded (said in ``notes``). The runs
        use :meth:`run` (RunGraphWithStreamAsync), or :meth:`run_sync` on a worker thread for a
        graph already bound to it.

        :raises ValueError: a shape that does not name every input.
        :raises InputError: a shape the graph (or its gears) refuses; nothing was run at it.
        """
        from ._tuning import static_shape, zeros_for

        state = self._state(graph)
        t0 = time.perf_counter()
        await self.load(graph)
        t_load = time.perf_counter() - t0
        notes: list[str] = []
        if shapes is None:
            if isinstance(graph, OfflineModel) and graph.gears is not None:
                shapes = graph.gear_shapes()  # the model's own gears (aclmdl), each once per stream
            elif state.gears is not None:
                shapes = [dict(g) for g in state.gears.gears]
            else:
                fixed = static_shape(graph)
                shapes = [fixed] if fixed is not None else []
                if fixed is None:
                    notes.append("dynamic input shapes and no gears: compiled and loaded only (pass shapes= to run)")
        feeds = [zeros_for(graph, s) for s in shapes]  # every shape checked before the first run
        for f in feeds:
            values = graph.bind(f)
            if state.gears is not None:
                state.gears.check(graph, values)
        streams = self.streams
        runs = 0
        for f in feeds:
            for st in streams:
                if state.mode == "sync":
                    await anyio.to_thread.run_sync(self.run_sync, graph, f)
                elif state.mode == "callback":
                    notes.append("bound to RunGraphAsync: warm-up runs skipped (GE's run modes are exclusive)")
                    break
                else:
                    await self.run(graph, f, stream=st)
                runs += 1
        return WarmupReport(
            graph=graph.name,
            streams=len(streams),
            shapes=tuple({k: tuple(int(d) for d in v) for k, v in s.items()} for s in shapes),
            runs=runs,
            seconds=time.perf_counter() - t0,
            load_seconds=t_load,
            notes=tuple(dict.fromkeys(notes)),
        )

    @contextmanager
    def trace(self, path: str | os.PathLike[str] | None = None, *, _trace: Trace | None = None) -> Iterator[Trace]:
        """Record a Chrome trace (open it in Perfetto or chrome://tracing) of the runs made
        while the block runs, written to ``path`` on exit: one track per stream with each run's
        H2D, compute and D2H (device events: traced runs record them, as :meth:`run_profiled`),
        one per event-loop thread with each run's submit and resume, and the batches of
        batchers over this session. On the sim the stages sit where they ran (one clock); on
        CANN they are placed to end when the loop resumed. One trace per session at a time.

        :raises RuntimeError: a trace is already being recorded on this session.
        """
        self._check_open()
        if self._trace is not None:
            why = " (ge.exec.profilingMode=1 records every run)" if self._profile_trace is not None else ""
            raise RuntimeError(f"this session is already recording a trace{why}")
        t = _trace if _trace is not None else Trace(os.fspath(path) if path is not None else None)
        self._trace = t
        try:
            yield t
        finally:
            self._trace = None
            if path is not None:
                t.write(path)

    async def _dump(self, graph: Graph, values: list[Any], outputs: Mapping[str, Any]) -> None:
        assert self._dumper is not None
        target = self._dumper.take(graph)
        if target is not None:  # written off the loop
            await anyio.to_thread.run_sync(self._dumper.write, target[0], graph, values, outputs)

    # -- serving (logic in _batcher.py, reached through _hooks) --------------------------------

    def batcher(self, graph: Graph, **params: Any) -> Batcher:
        """A dynamic :class:`Batcher` for ``graph`` on this session: ``max_batch_size`` (default:
        a static graph's batch size, else 32), ``max_delay_ms`` (1.0), ``preferred_batch_sizes``,
        ``max_concurrent_batches`` (default: the number of streams), ``pad_to_preferred``.

        :raises GraphError: the graph is not added here, or an input has no batch dimension.
        :raises ValueError: a bad parameter, e.g. ``max_batch_size`` above a static batch size.
        """
        self._state(graph)
        if isinstance(graph, OfflineModel):  # batches padded to the smallest gear that holds them
            params = graph.batcher_params(params)
        return _hooks.make_batcher(self, graph, **params)  # type: ignore[no-any-return]

    # -- offline models (logic in _offline.py) -------------------------------------------------

    def load_model(
        self, source: str | os.PathLike[str] | bytes | OfflineModel, *, name: str | None = None
    ) -> OfflineModel:
        """Load an offline model (.om: a path or its bytes) and return it, usable wherever a
        :class:`Graph` is (run, run_sync, run_with_callback, run_profiled, batcher, DevicePool).

        It is loaded here on the first stream (aclmdlLoadFromMem), then once more on each
        stream that runs it (one modelId never executes on two streams at once), off the loop.
        Its signature and gears come from the model's description. On the sim, the model is a
        simulated offline model (``ascend-async compile MODEL.onnx -o MODEL.om`` on the sim).

        :raises GraphError: unreadable or refused model (a real .om on the sim, a sim container
            on CANN, a corrupt file), with the runtime's reason.
        """
        self._check_open()
        if isinstance(source, OfflineModel):
            self.add_graph(source)
            return source
        data, label = _offline.read_source(source)
        stream = self._pool.streams[0]
        with self._working():
            mid = _offline.load_id(self._device, data, label)
            try:
                model = OfflineModel(self._device, mid, data, name or label)
            except BaseException:
                self._lib.aclmdlUnload(mid)
                raise
        state = _GraphState(model)
        state.ids[stream] = mid
        with self._lock:
            self._graphs[id(model)] = state
        return model

    async def load_model_async(
        self, source: str | os.PathLike[str] | bytes | OfflineModel, *, name: str | None = None
    ) -> OfflineModel:
        """:meth:`load_model` on a worker thread."""
        return await anyio.to_thread.run_sync(lambda: self.load_model(source, name=name))

    def _run_sync_model(self, state: _GraphState, model: OfflineModel, values: list[Any]) -> dict[str, np.ndarray]:
        pin = object()
        state.submitting.append(pin)
        try:
            gid = self._primary_id(state)  # the model's own load, used by run_sync alone
            try:
                out = model_run_sync(self._device, model, gid, values)
            except BaseException:
                with self._lock:
                    self._failed += 1
                raise
        finally:
            state.submitting.remove(pin)
        with self._lock:
            self._completed += 1
        return out

    def _run_with_callback_model(
        self,
        state: _GraphState,
        model: OfflineModel,
        values: list[Any],
        callback: Callable[[dict[str, np.ndarray] | None, BaseException | None], object],
    ) -> None:
        """aclmdlExecuteAsync on a stream's load, completed by the watcher thread, which calls
        ``callback`` (as RunGraphAsync's)."""
        events = self._device.events
        if not events.try_take(1):
            raise self._device.backend.acl_error(
                self._lib.ACL_ERROR_RT_NO_EVENT_RESOURCE, "aclrtRecordEvent", "the device's event budget is spent"
            )
        pin = object()
        state.submitting.append(pin)
        run: CallbackModelRun | None = None
        try:
            lane = self._pool.pick(None)
            replica = state.replicas.get(lane)
            if replica is None:
                self._ensure_loaded(state, lane)
                replica = state.replicas[lane]
            run = CallbackModelRun(replica, self._pool, self._account, callback)
            run.slots = 1
            self._submit(run, values, False)
        except BaseException:
            if run is not None:
                run._give_slots()
            else:
                events.give(1)
            raise
        finally:
            state.submitting.remove(pin)


class _Opening:
    """What :meth:`Session.open` returns: awaitable once (the open session), or an async
    context manager that opens, yields and closes it."""

    __slots__ = ("_make", "_session")

    def __init__(self, make: Callable[[], Session]) -> None:
        self._make = make
        self._session: Session | None = None

    async def _open(self) -> Session:
        if self._session is not None:
            raise RuntimeError("Session.open(...) was already awaited; call it again for another session")
        # A worker thread constructs the session and hands it over through `made` (written by
        # the worker before it returns, read here after the thread finished). A caller
        # cancelled meanwhile still waits for the thread (anyio does not abandon it), and the
        # session it made is closed here rather than leaked.
        made: list[Session] = []

        def work() -> None:
            made.append(self._make())

        try:
            await anyio.to_thread.run_sync(work)
        except BaseException:
            for session in made:
                session.close()
            raise
        self._session = made[0]
        return made[0]

    def __await__(self) -> Any:
        return self._open().__await__()

    async def __aenter__(self) -> Session:
        return await self._open()

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.aclose()


def _check_count(name: str, value: object, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {value!r}")
    if value < least:
        raise ValueError(f"{name} must be >= {least}, not {value}")


def _sim_options(options: Mapping[str, str] | None) -> tuple[dict[str, str], str]:
    """The options for GE, and the sim's own ("sim.*": never passed to GE, which would refuse
    them on CANN): the add_graph CANN check's mode, from the option, else the environment."""
    ge: dict[str, str] = {}
    mode = os.environ.get(CHECK_ENV) or "warn"
    source = f"the environment variable {CHECK_ENV}"
    for key, value in (options or {}).items():
        if key == CHECK_OPTION:
            mode, source = value, f"option {CHECK_OPTION!r}"
        elif key.startswith("sim."):
            raise ValueError(f"unknown sim option {key!r} (the sim's options: {CHECK_OPTION!r})")
        else:
            ge[key] = value
    if mode not in CHECK_MODES:
        raise ValueError(f"{source} is {mode!r}; expected one of {', '.join(map(repr, CHECK_MODES))}")
    return ge, mode


_profile_count = itertools.count(1)


def _profile_path(options: Mapping[str, str]) -> str:
    """Where the sim writes a session's trace under ``ge.exec.profilingMode=1``: the ``output``
    folder of ``ge.exec.profilingOptions`` (GE's own default: the working directory), one file
    per session."""
    out = json.loads(options.get("ge.exec.profilingOptions", "{}")).get("output") or os.getcwd()
    return os.path.join(str(out), f"ascend_async_trace_{os.getpid()}_{next(_profile_count)}.json")
