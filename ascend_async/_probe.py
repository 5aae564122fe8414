"""The one internal seam of ``benchmarks/`` (not public API; it changes with the library).

The benchmarks compare the library with hand-written baselines that drive the C ABI directly
(a naive event poller, the C floor) and look inside a run (when its device event completed,
how long ``Run.complete`` took, how often the watcher woke a loop). Everything they need from
inside the package comes from here, so that a refactor of the core breaks this module's test
(``tests/test_probe.py``), not a benchmark silently.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ._engine import open_engine
from ._graph import Graph
from ._loop import LoopBridge, current_bridge
from ._offline import build_container
from ._session import Session
from ._submit import Run

__all__ = [
    "RawGraph",
    "build_container",
    "live_bridges",
    "loop_wakeups",
    "open_engine",
    "raw_graph",
    "run_hooks",
    "sim",
    "thread_cpu_s",
]


def sim() -> Any:
    """The simulated device's cffi module (``.ffi``, ``.lib``: the shared C ABI plus sim.h)."""
    from ._native import _sim  # type: ignore[attr-defined]

    return _sim


def loop_wakeups() -> int:
    """Wake-ups the watcher posted to the running loop so far (it had no collection queued)."""
    return int(current_bridge().wakeups)


def live_bridges() -> int:
    """Loop bridges alive in the process (one per event loop that ran something, until the loop
    is gone)."""
    import gc

    return sum(isinstance(o, LoopBridge) for o in gc.get_objects())


def thread_cpu_s(tid: int | None) -> float | None:
    """CPU time (user+sys) of one thread of this process, from /proc (Linux); None elsewhere."""
    if tid is None:
        return None
    try:
        with open(f"/proc/self/task/{tid}/stat") as f:
            raw = f.read()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


@dataclass(frozen=True)
class RawGraph:
    """A graph loaded for RunGraphWithStreamAsync on one stream of a session, for a baseline
    that submits it through the C ABI itself. ``device`` is the library's device object: a
    baseline uses its ``alloc``/``device_pool``/``host_pool``, ``take_event``/``give_event``
    and ``ensure_current`` only."""

    ffi: Any
    lib: Any
    device: Any
    session_handle: Any
    graph_id: int
    stream_handle: Any


def raw_graph(session: Session, graph: Graph, stream: int = 0) -> RawGraph:
    """Bind ``graph`` to the stream mode and load it on ``session.streams[stream]``."""
    dev = session._device
    state = session._state(graph)
    session._bind_mode(state, "stream")
    st = session.streams[stream]
    gid = session._ensure_loaded(state, st)
    assert gid is not None
    return RawGraph(dev.backend.ffi, dev.backend.lib, dev, session._handle, gid, st.handle)


@contextmanager
def run_hooks(
    on_submit: Callable[[Run], None] | None = None,
    on_complete: Callable[[Run, Callable[[], None]], None] | None = None,
) -> Iterator[None]:
    """While the block runs, ``on_submit(run)`` is called after every ``await session.run``'s
    submission, and ``on_complete(run, complete)`` instead of its completion (it must call
    ``complete()``; the run's device event is still ``run.event`` until then). One block at a
    time, in one thread's benchmark (it patches ``Run``)."""
    if not _hooks_lock.acquire(blocking=False):
        raise RuntimeError("run_hooks is already active")
    orig_submit, orig_complete = Run.submit, Run.complete

    def submit(self: Run, values: list[Any], watcher: Any, profile: bool, started: bool = False) -> None:
        orig_submit(self, values, watcher, profile, started)
        if on_submit is not None:
            on_submit(self)

    def complete(self: Run, code: int, noticed_ns: int, on_loop: bool) -> None:
        if on_complete is None:
            orig_complete(self, code, noticed_ns, on_loop)
        else:
            on_complete(self, lambda: orig_complete(self, code, noticed_ns, on_loop))

    Run.submit = submit  # type: ignore[method-assign]
    Run.complete = complete  # type: ignore[method-assign]
    try:
        yield
    finally:
        Run.submit = orig_submit  # type: ignore[method-assign]
        Run.complete = orig_complete  # type: ignore[method-assign]
        _hooks_lock.release()


_hooks_lock = threading.Lock()
