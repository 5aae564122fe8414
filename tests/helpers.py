"""Helpers shared by the test suite: the Add model, the sim's counters, a gate on observable
state, and holding a stream."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import anyio.lowlevel
import onnx
from onnx import TensorProto, helper

import ascend_async
from ascend_async._native import _sim

__all__ = ["LEAK_KEYS", "add_model", "add_model_proto", "held", "sim_leaks", "sim_stats", "wait_for"]


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


@contextmanager
def held(stream: ascend_async.Stream | Any) -> Iterator[None]:
    """Hold a sim stream (its tasks wait) for the block; released on the way out, whatever
    happens. Accepts a Stream or a raw aclrtStream handle."""
    handle = getattr(stream, "handle", stream)
    assert _sim.lib.aa_sim_stream_hold(handle) == 0
    try:
        yield
    finally:
        _sim.lib.aa_sim_stream_release(handle)
