"""Submission: the one owner of each run, from its C descriptor to its result.

``Replica`` is a graph's GE replica on one stream, with ``aa_run`` descriptors that are built
once and reused run after run. ``Run`` owns one ``await session.run``: it fills a descriptor,
submits it with one ``aa_run_submit`` call, keeps the inputs and stage events alive, and when
its token completes (``complete``, normally on its own loop thread after a harvest) reads the
outputs back, gives the descriptor's blocks back in C, settles the stream and session counts
and wakes its task. ``CallbackRun`` does the same for RunGraphAsync, on the watcher thread.

The marshalling of every run mode lives here too: the aa_run descriptors of ``await run``
(graphs and offline models), RunGraph/RunGraphAsync's host tensors (``describe_host_inputs``,
``read_host_outputs``), and an offline model's aclmdlExecute datasets (``model_run_sync``) and
aclmdlExecuteAsync run (``CallbackModelRun``).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ._dtypes import GE_TO_NUMPY, NUMPY_TO_GE
from ._errors import GraphError, acl_error, device_fault, ge_error
from ._loop import Limit, Waiter
from ._memory import DeviceTensor
from ._watcher import report_ignored

_empty = np.empty

if TYPE_CHECKING:
    from ._device import Device
    from ._loop import LoopBridge
    from ._offline import OfflineModel
    from ._streams import Stream, StreamPool
    from ._watcher import Watcher

__all__ = [
    "CallbackModelRun",
    "CallbackRun",
    "Descriptor",
    "Replica",
    "Run",
    "StageEvents",
    "describe_host_inputs",
    "model_run_sync",
    "read_host_outputs",
]


class Descriptor:
    """One reusable ``aa_run`` with its arrays, and what its last run left in them: the
    signature its input tensors describe and, for a graph whose output shapes follow from its
    input shapes, its outputs' shapes."""

    __slots__ = ("inputs", "outputs", "run", "shapes", "signature", "slots")

    def __init__(self, run: Any, inputs: Any, outputs: Any, slots: Any, n_in: int) -> None:
        self.run = run
        self.inputs = inputs
        self.outputs = outputs
        self.slots = slots
        # per input: (dtype, shape) its tensor describes now (None: refill before the next run)
        self.signature: list[Any] = [None] * n_in
        # per output: (shape, dtype) of the last run with this signature (None: read from C)
        self.shapes: list[tuple[tuple[int, ...], np.dtype[Any]]] | None = None


class Replica:
    """A graph's replica on one stream: its GE graph id and a free list of descriptors whose
    constant fields (session, graph, stream, pools, watch, counts) are set once."""

    __slots__ = ("_free", "device", "ffi", "graph_id", "lib", "n_in", "n_out", "names", "session", "static", "stream")
    #: An offline model's load (_offline.ModelReplica): runs set their gear, outputs are pool blocks.
    is_model = False

    def __init__(
        self,
        device: Device,
        session: Any,
        graph_id: int,
        stream: Stream,
        names: Sequence[str],
        n_in: int,
        static: bool = False,
    ):
        self.device = device
        self.ffi = device.backend.ffi  # (read on every run: one lookup each instead of three)
        self.lib = device.backend.lib
        self.session = session
        self.graph_id = graph_id
        self.stream = stream
        self.names = tuple(names)
        self.n_in = n_in
        self.n_out = len(self.names)
        # The graph's output shapes follow from its input shapes (Graph.static_outputs): only
        # then may a descriptor reuse its last run's output shapes for the same signature.
        self.static = static
        self._free: list[Descriptor] = []

    def take(self, watcher: Watcher) -> Descriptor:
        if self._free:
            return self._free.pop()
        dev = self.device
        ffi = dev.backend.ffi
        run = ffi.new("aa_run*")
        ins = ffi.new("aa_run_io[]", max(self.n_in, 1))
        outs = ffi.new("aa_run_io[]", max(self.n_out, 1))
        slots = ffi.new("aa_tensor[]", max(self.n_out, 1))  # GE's output slots: alive with the descriptor
        run.session = self.session
        run.graph_id = self.graph_id
        run.stream = self.stream.handle
        run.device_pool = dev.device_pool
        run.host_pool = dev.host_pool
        run.watch = watcher.handle
        run.n_inputs = self.n_in
        run.n_outputs = self.n_out
        run.inputs = ins
        run.outputs = outs
        run.slots = slots
        return Descriptor(run, ins, outs, slots, self.n_in)

    def give(self, desc: Descriptor) -> None:
        self._free.append(desc)


class StageEvents:
    """Three timing events around one run's stages; owned by its run, destroyed after it (the
    run holds three events of the device's budget for them)."""

    def __init__(self, dev: Device) -> None:
        b = dev.backend
        self._dev = dev
        self.handles: list[Any] = []
        try:
            for _ in range(3):
                self.handles.append(dev.new_event(b.lib.ACL_EVENT_SYNC | b.lib.ACL_EVENT_TIME_LINE))
        except BaseException:
            self.close()
            raise
        self.submitted_ns = 0

    def attach(self, run: Any) -> None:
        for i, h in enumerate(self.handles):
            run.stage_events[i] = h
        self.submitted_ns = time.monotonic_ns()

    def read(self, end: Any) -> tuple[float, float, float, float | None]:
        """(h2d, compute, d2h, queued) in ms, once ``end`` completed."""
        b = self._dev.backend
        ms = b.ffi.new("float*")
        spans = []
        for a, z in itertools.pairwise([*self.handles, end]):
            b.check(b.lib.aclrtEventElapsedTime(ms, a, z), "aclrtEventElapsedTime")
            spans.append(float(ms[0]))
        queued = None
        if b.is_sim:  # the sim's event clock is CLOCK_MONOTONIC, as time.monotonic_ns()
            ts = b.ffi.new("uint64_t*")
            b.check(b.lib.aclrtEventGetTimestamp(self.handles[0], ts), "aclrtEventGetTimestamp")
            queued = max(0.0, (int(ts[0]) - self.submitted_ns) / 1e6)
        return spans[0], spans[1], spans[2], queued

    def close(self) -> None:
        for h in self.handles:
            self._dev.destroy_event(h)
        self.handles = []


class Run(Waiter):
    """One ``await session.run``: its descriptor, keep-alives, stage events and outcome. It is
    also the waiter its task parks on (:class:`Waiter`), set once the run completed.

    No ``__slots__``: the class holds the defaults of what most runs never set (a run is made
    per ``await``, and its constructor sets only what every run needs)."""

    abandoned = False
    error: BaseException | None = None
    result: dict[str, Any] | None = None
    limiter: Limit | None = None
    stages: StageEvents | None = None
    timing: tuple[float, float, float, float | None] | None = None
    noticed_ns = 0
    # Set by Session._submit for traces and profiles: perf_counter ns at submit, the submit's
    # duration, and the device clock's zero for the run's queued time (see StageEvents).
    submit_at = submit_ns = attach_at = 0
    token = 0
    slots = 0  # events held from the device's budget (Session._run took them)
    desc: Any = None  # a Descriptor while submitted
    event: Any = None  # its event (taken with its budget place by the fast path: slots == 1)
    keep: Any = None

    def __init__(
        self,
        replica: Replica,
        pool: StreamPool,
        account: Callable[[int, bool], None],
        bridge: LoopBridge,
        to_device: bool,
    ) -> None:
        self.fired = False  # (Waiter's fields, inline)
        self._fut = self._task = None
        self.replica = replica
        self.pool = pool
        self.account = account  # the session's counts: (code, abandoned)
        self.bridge = bridge
        self.to_device = to_device

    async def wait_done(self) -> None:
        """Until the run completed or failed (a checkpoint; cancelling it abandons the run)."""
        try:
            await self.wait(self.bridge.trio)
        except BaseException:
            self.abandoned = True
            raise

    def submit(self, values: list[Any], watcher: Watcher, profile: bool, started: bool = False) -> None:
        """Enqueue copies, the run and its event (no waiting); raises if nothing was enqueued
        for good. ``started``: the caller counted the run on its stream already
        (``StreamPool.start``); else this does."""
        replica = self.replica
        dev = replica.device
        ffi = replica.ffi
        free = replica._free  # (Replica.take's first step, inline)
        self.desc = desc = free.pop() if free else replica.take(watcher)
        run, ins, signature = desc.run, desc.inputs, desc.signature
        keep = []
        for i, v in enumerate(values):
            io = ins[i]
            if isinstance(v, DeviceTensor):
                io.host = ffi.NULL
                io.tensor = v.ge_input()
                keep.append(v)  # referenced until the run completed
                sig = (None, v.dtype, v.shape)  # never equal to a host input's (dtype, shape)
                if signature[i] != sig:
                    signature[i] = sig
                    desc.shapes = None
                continue
            buf = ffi.from_buffer(v)
            keep.append(buf)
            io.host = buf
            sig = signature[i]
            if sig is None or sig[1] != v.shape or (sig[0] is not v.dtype and sig[0] != v.dtype):
                # A new signature on this descriptor (else the tensor already describes it).
                io.nbytes = v.nbytes
                t = io.tensor
                t.dtype = NUMPY_TO_GE[v.dtype]
                t.ndim = v.ndim
                t.dims[0 : v.ndim] = v.shape
                signature[i] = (v.dtype, v.shape)
                desc.shapes = None
        self.keep = keep
        if replica.is_model:
            replica.set_gear(desc, values)  # type: ignore[attr-defined]
        stream = replica.stream
        try:
            event = self.event
            if event is None:
                self.event = event = dev.take_event()
            run.event = event
            run.outputs_to_host = not self.to_device
            if profile:  # (a descriptor's stage events are NULL otherwise: _recycle clears them)
                self.stages = StageEvents(dev)
                self.stages.attach(run)
            bridge = self.bridge
            ch = bridge._channels.get(watcher)  # (bridge.channel, inline: opened on first use)
            if ch is None:
                ch = bridge.channel(watcher)
            self.token = run.token = token = watcher.token(ch)
            watcher.expect(token, self)  # before the C call: the watcher may answer at once
        except BaseException:
            if started:
                self.pool.finished(stream, 0)
            self._recycle()  # nothing was recorded: the descriptor, events and budget go back
            raise
        if not started:
            self.pool.started(stream)
        lib = replica.lib
        if lib.aa_run_submit(run) == 0:
            return
        # Nothing reached the watch; undo, then give back what the call took.
        watcher.pending.pop(token, None)
        self.pool.finished(stream, 0)
        if run.enqueued:
            # Rare error path: work already queued still reads these buffers. Wait for the
            # stream before giving them back (a faulted stream returns at once).
            lib.aclrtSynchronizeStream(stream.handle)
            lib.aclGetRecentErrMsg()
        api = ffi.string(run.failed_api).decode()
        b = dev.backend
        if run.ge_status:
            oom = lib.aa_pool_take_error()  # our external allocator ran out while GE filled outputs
            error = acl_error(oom, api, b.ge_message()) if oom else b.ge_error(run.ge_status, api)
        else:
            error = b.acl_error(run.acl_error, api)
        # The event is destroyed, not pooled: a record that failed (no hardware event was free)
        # would fail, after the runtime's wait, for every later run that took it from the pool.
        self._recycle(pool_event=False)
        raise error

    def _recycle(self, pool_event: bool = True) -> None:
        replica = self.replica
        dev = replica.device
        desc = self.desc
        replica.lib.aa_run_release(desc.run)
        if self.stages is not None:
            self.stages.close()
            self.stages = None
            run = desc.run
            run.stage_events[0] = run.stage_events[1] = run.stage_events[2] = replica.ffi.NULL
        replica._free.append(desc)  # (Replica.give, inline)
        self.desc = None
        event = self.event
        if event is not None:
            self.event = None
            if pool_event and self.slots == 1:  # the common case: one call for both
                self.slots = 0
                dev.give_run_event(event)
            elif pool_event:
                dev.give_event(event)
            else:
                dev.destroy_event(event)
        self.keep = None
        n = self.slots  # (_give_slots, inline)
        if n:
            self.slots = 0
            dev.events.give(n)

    def _give_slots(self) -> None:
        """The run's events go back to the device's budget (once), admitting waiting runs."""
        n, self.slots = self.slots, 0
        if n:
            self.replica.device.events.give(n)

    def complete(self, code: int, noticed_ns: int, on_loop: bool) -> None:
        """The run's event completed (code 0) or its stream faulted: read the outputs, give
        everything back, settle the counts, wake the task. Any thread; exactly once."""
        self.noticed_ns = noticed_ns
        desc = self.desc
        shapes = desc.shapes
        if on_loop and shapes is not None and not code and not self.abandoned and self.stages is None:
            # The common case, inline: outputs whose shapes the descriptor knows (its last run
            # had this signature), completed on the run's loop.
            run = desc.run
            result = None if run.dynamic else self._known_outputs(desc, shapes)
            if result is not None:
                self.result = result
                replica = self.replica
                replica.lib.aa_run_release(run)  # (_recycle's common case, inline)
                replica._free.append(desc)
                self.desc = self.keep = None
                event, self.event = self.event, None
                if self.slots == 1:
                    self.slots = 0
                    replica.device.give_run_event(event)
                else:
                    replica.device.give_event(event)
                    self._give_slots()
                self.pool.finished(replica.stream, 0)
                self.account(0, False)
                fut = self._fut  # (_wake and Waiter.set, inline: this is the loop's thread)
                if fut is not None:
                    self.fired = True
                    if not fut.done():  # (not cancelled meanwhile)
                        fut.set_result(None)
                else:
                    self.set()  # (trio's parked task, or a task not waiting yet)
                limiter = self.limiter
                if limiter is not None:
                    limiter.release()
                return
        try:
            if code:
                self.error = device_fault(code, "device stream", self._fault_text())
            elif not self.abandoned:
                self.result = self._read_outputs()
                if self.stages is not None:
                    self.timing = self.stages.read(self.event)
        except BaseException as exc:  # a read-back failure fails this run, not its collector
            self.error = exc
        self._recycle()
        self.pool.finished(self.replica.stream, code)
        self.account(code, self.abandoned)
        if on_loop:
            self._wake()
        else:
            self.bridge.call(self._wake)

    def _known_outputs(self, desc: Descriptor, shapes: list[tuple[tuple[int, ...], np.dtype[Any]]]) -> Any:
        """The outputs of a run whose shapes ``desc`` knows: host arrays with only the bytes
        read back, or DeviceTensors over GE's blocks. None where the general path must read
        them (a host byte count that disagrees; an offline model's device outputs)."""
        replica = self.replica
        names, outs, ffi = replica.names, desc.outputs, replica.ffi
        result: dict[str, Any] = {}
        if not self.to_device:
            memmove = ffi.memmove
            for j, (shape, dtype) in enumerate(shapes):
                io = outs[j]
                arr = _empty(shape, dtype)
                nbytes = io.nbytes
                if nbytes != arr.nbytes:
                    return None
                if nbytes:
                    memmove(arr, io.host_block, nbytes)
                result[names[j]] = arr
            return result
        if replica.is_model:
            return None
        dev, new, null = replica.device, ffi.new, ffi.NULL
        for j, (shape, dtype) in enumerate(shapes):
            src = outs[j].tensor
            t = new("aa_tensor*")
            t[0] = src
            src.owner = null  # the DeviceTensor owns GE's block now
            result[names[j]] = DeviceTensor.of_ge_output(dev, t, shape, dtype)
        return result

    def _fault_text(self) -> str:
        """The runtime's text for the fault that failed this run: the stream keeps failing its
        synchronize, and that call states why on this thread (the watcher saw it on its own)."""
        dev = self.replica.device
        dev.ensure_current()
        dev.backend.lib.aclrtSynchronizeStreamWithTimeout(self.replica.stream.handle, 0)
        return dev.backend.acl_message() or "device task failed"

    def fail(self, error: BaseException) -> None:
        """The watcher shut down or died before the run completed. Its blocks may still be in
        use on the device: they are given back when the session closes, after its streams
        drained. Its event is destroyed (ACL frees it once its work is done), never pooled."""
        self.error = error
        desc, self.desc = self.desc, None
        if desc is not None:
            lib = self.replica.device.backend.lib
            self.pool.orphan(lambda: lib.aa_run_release(desc.run))
        if self.event is not None:
            self.replica.device.destroy_event(self.event)
            self.event = None
        if self.stages is not None:
            self.stages.close()
        self.pool.finished(self.replica.stream, 0)
        self._give_slots()  # nothing more is admitted on a dead watcher: waiting runs learn so
        self.account(1, self.abandoned)  # a failure, not a cancellation
        self.bridge.call(self._wake)

    def _wake(self) -> None:
        """On the loop's thread."""
        self.set()
        if self.limiter is not None:
            self.limiter.release()

    def _read_outputs(self) -> dict[str, Any]:
        replica = self.replica
        dev = replica.device
        ffi = replica.ffi
        desc = self.desc
        run, outs = desc.run, desc.outputs
        names = replica.names
        if not self.to_device:
            shapes = desc.shapes
            if shapes is not None and not run.dynamic:
                # The signature of the last run on this descriptor, so its output shapes too:
                # only the bytes are read (a byte count that disagrees reads the shapes from C).
                result: dict[str, Any] = {}
                empty, memmove = np.empty, ffi.memmove
                for j, (shape, dtype) in enumerate(shapes):
                    io = outs[j]
                    arr = empty(shape, dtype)
                    nbytes = io.nbytes
                    if nbytes != arr.nbytes:
                        break
                    if nbytes:
                        memmove(arr, io.host_block, nbytes)
                    result[names[j]] = arr
                else:
                    return result
                desc.shapes = None
        if run.dynamic:
            # A graph whose output shapes depend on values: GE placed the outputs when the run
            # executed; take them from the slots and copy them to the host now.
            dev.ensure_current()
            if dev.backend.lib.aa_run_collect(run):
                api = ffi.string(run.failed_api).decode()
                if run.ge_status:  # GE had not described an output (aa_session_resolve_outputs)
                    raise dev.backend.ge_error(run.ge_status, api)
                raise dev.backend.acl_error(run.acl_error, api)
        result = {}
        seen: list[tuple[tuple[int, ...], np.dtype[Any]]] = []
        for j, name in enumerate(names):
            io = outs[j]
            src = io.tensor
            shape = tuple(src.dims[0 : src.ndim])
            dtype = GE_TO_NUMPY[src.dtype]
            seen.append((shape, dtype))
            if self.to_device and self.replica.is_model:
                # An offline model's output is a device-pool block: the DeviceTensor owns it now.
                result[name] = DeviceTensor(dev, io.dev_block, shape, dtype)
                io.dev_block = ffi.NULL
            elif self.to_device:
                t = ffi.new("aa_tensor*")
                t[0] = src
                src.owner = ffi.NULL  # the DeviceTensor owns the GE block now
                result[name] = DeviceTensor(dev, t.addr, shape, dtype, ge_tensor=t)
            else:
                arr = np.empty(shape, dtype)
                if io.nbytes:
                    ffi.memmove(arr, io.host_block, io.nbytes)
                result[name] = arr
        # Cached only for a graph whose output shapes follow from its input shapes: a
        # value-dependent run can come back with run.dynamic 0 (GE filled its slots before the
        # submit returned: the CANN shim waits for them, the sim's device can be that fast).
        if not run.dynamic and self.replica.static and None not in desc.signature:
            desc.shapes = seen
        return result


class CallbackRun:
    """One RunGraphAsync run: its slot and inputs live until GE called back; completed on the
    watcher thread, where the user's callback runs."""

    def __init__(
        self,
        device: Device,
        watcher: Watcher,
        names: Sequence[str],
        tin: Any,
        values: list[Any],
        callback: Callable[[dict[str, np.ndarray] | None, BaseException | None], object],
        account: Callable[[int, bool], None],
        read: Callable[[Any, int, Sequence[str]], dict[str, np.ndarray]],
    ) -> None:
        ffi = device.backend.ffi
        self.device = device
        self.names = names
        self.keep: Any = (tin, values)  # GE reads the inputs until it called back
        self.callback = callback
        self.account = account
        self.read = read
        self.outs = ffi.new("aa_tensor[]", max(len(names), 1))
        self.slot = slot = ffi.new("aa_cb_slot*")
        slot.watch = watcher.handle
        slot.capacity = len(names)
        slot.outputs = self.outs
        slot.token = self.token = watcher.token(0)

    def complete(self, code: int, noticed_ns: int, on_loop: bool) -> None:
        self.keep = None
        status = int(self.slot.status)
        out: dict[str, np.ndarray] | None = None
        error: BaseException | None = None
        try:
            if status:
                # GE's text came with the callback (it is per thread; this is not GE's thread).
                ffi = self.device.backend.ffi
                error = ge_error(status, "RunGraphAsync", ffi.string(self.slot.detail).decode(errors="replace"))
            else:
                out = self.read(self.outs, int(self.slot.n_outputs), self.names)
        except BaseException as exc:  # sizing or reading the outputs failed: this run fails, nothing else
            error = exc
        finally:
            # Settled before the callback runs: a close() inside it does not wait for this run.
            self.account(1 if error is not None else 0, False)
        self._call(out, error)

    def fail(self, error: BaseException) -> None:
        self.account(1, False)
        self._call(None, error)

    def _call(self, out: dict[str, np.ndarray] | None, error: BaseException | None) -> None:
        """The user's callback: whatever it raises, BaseException included, is reported and
        contained (the watcher thread serves every session on the device)."""
        try:
            self.callback(out, error)
        except BaseException as exc:
            report_ignored(exc, f"the run_with_callback callback {self.callback!r}")


# -- GE's RunGraph and RunGraphAsync: host tensors in, GE's host outputs back ----------------------


def describe_host_inputs(ffi: Any, lib: Any, values: Sequence[Any], tin: Any) -> None:
    """Describe ``values`` (numpy arrays, read in place, or DeviceTensors) in the ``aa_tensor``
    array ``tin`` for RunGraph / RunGraphAsync; the arrays must outlive GE's use of them."""
    for i, v in enumerate(values):
        t = tin[i]
        if isinstance(v, DeviceTensor):
            tin[i] = v.ge_input()
            continue
        t.addr = ffi.cast("void*", ffi.from_buffer(v)) if v.nbytes else ffi.NULL
        t.size = v.nbytes
        t.dtype = NUMPY_TO_GE[v.dtype]
        t.format = lib.AA_FORMAT_ND
        t.placement = lib.AA_PLACEMENT_HOST
        t.ndim = v.ndim
        for k, dim in enumerate(v.shape):
            t.dims[k] = dim


def read_host_outputs(ffi: Any, lib: Any, tout: Any, n: int, names: Sequence[str]) -> dict[str, np.ndarray]:
    """GE's ``n`` host outputs in ``tout`` copied into fresh arrays by name; every output block
    goes back to GE, even when sizing or copying one failed."""
    out: dict[str, np.ndarray] = {}
    try:
        for j, name in enumerate(names[:n]):
            t = tout[j]
            shape = tuple(int(t.dims[k]) for k in range(t.ndim))
            arr = np.empty(shape, GE_TO_NUMPY[t.dtype])
            if arr.nbytes:
                ffi.memmove(arr, t.addr, arr.nbytes)
            out[name] = arr
    finally:
        for j in range(n):
            lib.aa_tensor_release(tout + j)
    return out


# -- an offline model's run_sync and run_with_callback (aclmdlExecute / aclmdlExecuteAsync) --------


def model_run_sync(device: Device, model: OfflineModel, model_id: int, values: Sequence[Any]) -> dict[str, np.ndarray]:
    """aclmdlExecute on the model's own load (``model_id``, used by nothing else), blocking the
    calling thread: inputs copied to device blocks, outputs read back with their shapes."""
    b = device.backend
    ffi, lib = b.ffi, b.lib
    pool = device.device_pool
    blocks: list[Any] = []
    made: list[Any] = []
    device.ensure_current()

    def block(n: int) -> Any:
        p = device.alloc(pool, max(n, 1), "aclmdlExecute")
        blocks.append(p)
        return p

    ins = lib.aclmdlCreateDataset()
    outs = lib.aclmdlCreateDataset()
    try:
        k = 0
        for i in range(model.n_model_inputs):
            if i == model._gear_input:
                addr, size = block(model.gear_input_size), model.gear_input_size
            else:
                v = values[k]
                k += 1
                if isinstance(v, DeviceTensor):
                    addr, size = v.ge_input().addr, v.nbytes
                else:
                    addr, size = block(v.nbytes), v.nbytes
                    if v.nbytes:
                        b.check(
                            lib.aclrtMemcpy(
                                addr, v.nbytes, ffi.from_buffer(v), v.nbytes, lib.ACL_MEMCPY_HOST_TO_DEVICE
                            ),
                            "aclrtMemcpy",
                        )
            buf = lib.aclCreateDataBuffer(addr, size)
            made.append(buf)
            b.check(lib.aclmdlAddDatasetBuffer(ins, buf), "aclmdlAddDatasetBuffer")
        for size in model.output_sizes:
            buf = lib.aclCreateDataBuffer(block(size), size)
            made.append(buf)
            b.check(lib.aclmdlAddDatasetBuffer(outs, buf), "aclmdlAddDatasetBuffer")
        with model._sync_lock:  # threads sharing a modelId serialize the gear and the execute (acl_mdl.h)
            _set_gear(b, model, model_id, ins, model.gear_of(values))
            b.check(lib.aclmdlExecute(model_id, ins, outs), "aclmdlExecute")
            shapes = [_output_shape(b, model, model_id, outs, o) for o in range(len(model.outputs))]
        result: dict[str, np.ndarray] = {}
        for o, spec in enumerate(model.outputs):
            shape, dt = shapes[o]
            arr = np.empty(shape, GE_TO_NUMPY[dt])
            if arr.nbytes > model.output_sizes[o]:
                raise GraphError(f"{model.name}: output {spec.name!r} is larger than its buffer")
            if arr.nbytes:
                src = lib.aclGetDataBufferAddr(lib.aclmdlGetDatasetBuffer(outs, o))
                b.check(
                    lib.aclrtMemcpy(ffi.from_buffer(arr), arr.nbytes, src, arr.nbytes, lib.ACL_MEMCPY_DEVICE_TO_HOST),
                    "aclrtMemcpy",
                )
            result[spec.name] = arr
        return result
    finally:
        for buf in made:
            lib.aclDestroyDataBuffer(buf)
        lib.aclmdlDestroyDataset(ins)
        lib.aclmdlDestroyDataset(outs)
        for p in blocks:
            lib.aa_pool_free(pool, p)


def _set_gear(b: Any, model: OfflineModel, model_id: int, ins: Any, gear: tuple[int, ...] | None) -> None:
    if gear is None:
        return
    lib = b.lib
    gi = model._gear_input
    kind = model.gears.kind  # type: ignore[union-attr]
    if kind == "batch":
        b.check(lib.aclmdlSetDynamicBatchSize(model_id, ins, gi, gear[0]), "aclmdlSetDynamicBatchSize")
    elif kind == "hw":
        b.check(lib.aclmdlSetDynamicHWSize(model_id, ins, gi, *gear), "aclmdlSetDynamicHWSize")
    else:
        d = b.ffi.new("aclmdlIODims*")
        d.dimCount = len(gear)
        d.dims[0 : len(gear)] = gear
        b.check(lib.aclmdlSetInputDynamicDims(model_id, ins, gi, d), "aclmdlSetInputDynamicDims")


def _output_shape(b: Any, model: OfflineModel, model_id: int, outs: Any, o: int) -> tuple[tuple[int, ...], int]:
    """Output ``o``'s shape and ge::DataType after an aclmdlExecute: from the output dataset's
    tensor desc where the runtime described it (value-dependent shapes), else the shape of the
    gear just set (aclmdlGetCurOutputDims)."""
    ffi, lib = b.ffi, b.lib
    td = lib.aclmdlGetDatasetTensorDesc(outs, o)
    if td != ffi.NULL:
        n = int(lib.aclGetTensorDescNumDims(td))
        return tuple(_dim(b, td, d) for d in range(n)), int(lib.aclGetTensorDescType(td))
    desc = ffi.gc(lib.aclmdlCreateDesc(), lib.aclmdlDestroyDesc)
    b.check(lib.aclmdlGetDesc(desc, model_id), "aclmdlGetDesc")
    dims = ffi.new("aclmdlIODims*")
    b.check(lib.aclmdlGetCurOutputDims(desc, o, dims), "aclmdlGetCurOutputDims")
    shape = tuple(int(dims.dims[k]) for k in range(dims.dimCount))
    if any(v < 0 for v in shape):
        raise GraphError(f"{model.name}: output {model.outputs[o].name!r} has no shape after aclmdlExecute")
    return shape, int(lib.aclmdlGetOutputDataType(desc, o))


def _dim(b: Any, td: Any, d: int) -> int:
    v = b.ffi.new("int64_t*")
    b.check(b.lib.aclGetTensorDescDimV2(td, d, v), "aclGetTensorDescDimV2")
    return int(v[0])


class _CallbackBridge:
    """Where a callback run completes: on the watcher thread (channel 0), never on a loop."""

    trio = False
    _channels: dict[Any, int] = {}  # (never written: Run.submit finds no channel, asks channel())

    def channel(self, watcher: Watcher) -> int:
        return 0

    def call(self, fn: Any) -> None:
        fn()


class CallbackModelRun(Run):
    """An offline model's ``run_with_callback``: an ``aclmdlExecuteAsync`` run whose token the
    watcher completes itself; ``callback(outputs, error)`` runs there (errors it raises are
    reported as :class:`AscendWarning`, as for graphs)."""

    __slots__ = ("callback",)

    def __init__(self, replica: Replica, pool: Any, account: Any, callback: Any) -> None:
        super().__init__(replica, pool, account, _CallbackBridge(), False)  # type: ignore[arg-type]
        self.callback = callback

    def _wake(self) -> None:
        out, error = (None, self.error) if self.error is not None else (self.result, None)
        try:
            self.callback(out, error)
        except BaseException as exc:
            report_ignored(exc, f"the run_with_callback callback {self.callback!r}")
