"""Helpers shared by the test suite: the Add model, the sim's counters, gates on observable
state (for a loop and for a plain thread), holding streams, and the sim's timing model."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import anyio.lowlevel
import onnx
from onnx import TensorProto, helper

import ascend_async
from ascend_async._native import _sim

__all__ = [
    "LEAK_KEYS",
    "Gate",
    "add_model",
    "add_model_proto",
    "held",
    "sim_leaks",
    "sim_stats",
    "sim_timing",
    "wait_for",
    "wait_until",
]


def add_model_proto() -> onnx.ModelProto:
    """z = x + y, float32, with a symbolic batch dim shared by both inputs: [batch, 4]."""
    vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 4]) for n in ("x", "y", "z")]
    graph = helper.make_graph([helper.make_node("Add", ["x", "y"], ["z"], name="add")], "add", vi[:2], vi[2:])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def add_model(session: ascend_async.Session) -> ascend_async.Graph:
    """The Add model (:func:`add_model_proto`), added to ``session``."""
    return session.add_graph(add_model_proto())


def sim_stats() -> dict[str, int]:
    """The sim's counters (aa_sim_get_stats): leak counters, tasks submitted, graph runs..."""
    st = _sim.ffi.new("aa_sim_stats*")
    _sim.lib.aa_sim_get_stats(st)
    return {k: int(getattr(st, k)) for k in dir(st)}


#: The sim's counters of live objects: all zero once every session is closed.
LEAK_KEYS = (
    "device_allocations",
    "host_allocations",
    "contexts",
    "streams",
    "events",
    "sessions",
    "graphs",
    "models",
    "ge_outputs",
)


def sim_leaks() -> dict[str, int]:
    """The leak counters that are not zero (an empty dict: nothing leaked)."""
    st = sim_stats()
    return {k: st[k] for k in LEAK_KEYS if st[k]}


async def wait_for(predicate: Callable[[], bool], what: str = "") -> None:
    """Yield to the loop until ``predicate()`` holds (a gate on observable state, not a timer;
    10 s at most)."""
    with anyio.fail_after(10):
        while not predicate():
            await anyio.lowlevel.checkpoint()
    assert predicate(), what


def wait_until(predicate: Callable[[], bool], what: str = "", timeout: float = 30.0, poll: float = 0.002) -> None:
    """:func:`wait_for` for a plain thread (no loop): poll ``predicate()`` until it holds. The
    timeout only turns a hang into a failure naming ``what``; it asserts no speed (it counts
    polls rather than reading a clock: a loaded machine only makes the guard longer)."""
    pause = threading.Event()  # never set: wait(poll) sleeps
    waited = 0.0
    while not predicate():
        assert waited < timeout, f"never happened: {what}"
        pause.wait(poll)
        waited += poll


class Gate:
    """Streams held by :func:`held`; :meth:`release` lets their work run at a chosen point."""

    def __init__(self, lib: Any, handles: list[Any]) -> None:
        self._lib = lib
        self._held = handles

    def release(self) -> None:
        """Release every stream still held (once; the block's exit then touches none of them,
        so the block may go on to close the session that owns them)."""
        handles, self._held = self._held, []
        for h in handles:
            self._lib.aa_sim_stream_release(h)


@contextmanager
def held(*streams: ascend_async.Stream | Any, lib: Any = None) -> Iterator[Gate]:
    """Hold sim streams (their tasks wait) for the block; whatever happens, the ones still held
    are released on the way out. Each argument is a Stream or a raw aclrtStream handle; ``lib``
    is the sim library to call (default: the in-process sim; the CANN shim tests pass their
    stand-in's). Yields a :class:`Gate` whose ``release()`` lets the work run inside the block.

    A handle is checked, not kept alive: release (or leave the block) before the streams are
    destroyed."""
    lib = _sim.lib if lib is None else lib
    gate = Gate(lib, [])
    try:
        for s in streams:
            h = getattr(s, "handle", s)
            assert lib.aa_sim_stream_hold(h) == 0
            gate._held.append(h)
        yield gate
    finally:
        gate.release()


@contextmanager
def sim_timing(**fields: int) -> Iterator[None]:
    """Set the sim's timing model (``aa_sim_timing`` fields: ``min_graph_us``, ``per_sample_us``,
    ``load_us``, ...) for the block; every field back to zero on the way out."""
    timing = _sim.ffi.new("aa_sim_timing*", fields)
    _sim.lib.aa_sim_set_timing(timing)
    try:
        yield
    finally:
        _sim.lib.aa_sim_set_timing(_sim.ffi.new("aa_sim_timing*"))
