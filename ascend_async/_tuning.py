"""What Ascend users tune, on top of a Session: static gears, warm-up, the data dump and a Chrome
trace. ``_session`` keeps small hooks into this module; the logic lives here.

Threads: a :class:`Trace` is appended to from loop threads (runs, batches) and worker threads
(warm-up's loads) under its own lock and written by whoever leaves ``session.trace()``. A
:class:`Dumper` writes on a worker thread (async runs) or the calling thread (``run_sync``); its
per-graph run counters live on the graph's state and are bumped under the dumper's lock.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ._errors import InputError
from ._ge_options import Gear, gears_to_options, parse_gears

if TYPE_CHECKING:
    from ._graph import Graph

__all__ = ["Dumper", "Gears", "Trace", "WarmupReport", "graph_gears"]


# -- static gears ---------------------------------------------------------------------------------


class Gears:
    """A graph's gears (GE's ``ge.inputShape`` + ``ge.dynamicDims``): the only input shapes its
    runs may have. Checked before a run is submitted, as GE refuses a shape outside them."""

    def __init__(self, graph: Graph, gears: list[Gear]) -> None:
        names = [s.name for s in graph.inputs]
        listed = set(gears[0])
        if listed != set(names):
            missing = [n for n in names if n not in listed]
            extra = sorted(listed - set(names))
            what = "; ".join(
                part
                for part in (
                    f"{extra} {'is not an input' if len(extra) == 1 else 'are not inputs'}" if extra else "",
                    f"input(s) {missing} not listed" if missing else "",
                )
                if part
            )
            raise ValueError(
                f"{graph.name}: gears (ge.inputShape) must list every input of the graph "
                f"({', '.join(map(str, graph.inputs))}): {what}"
            )
        for spec in graph.inputs:
            if spec.shape is None:
                continue
            for gear in gears:
                shape = gear[spec.name]
                if len(shape) != len(spec.shape) or any(
                    isinstance(w, int) and w != g for w, g in zip(spec.shape, shape, strict=False)
                ):
                    raise ValueError(f"{graph.name}: gear shape {shape} of input {spec.name!r} does not fit {spec}")
        self.names = names
        self.gears: list[Gear] = sorted(gears, key=lambda g: tuple(g[n] for n in names))
        self._ok = {tuple(g[n] for n in names) for g in self.gears}

    def check(self, graph: Graph, values: Sequence[Any]) -> None:
        """:raises InputError: the inputs' shapes are not one of the gears."""
        shapes = tuple(tuple(v.shape) for v in values)
        if shapes not in self._ok:
            got = ", ".join(f"{n} {s}" for n, s in zip(self.names, shapes, strict=True))
            raise InputError(
                f"{graph.name}: input shapes ({got}) are not one of the graph's gears "
                f"({self.describe()}); GE runs a geared graph only at its gears (pad to the next gear)"
            )

    def describe(self) -> str:
        return "; ".join(", ".join(f"{n} {g[n]}" for n in self.names) for g in self.gears)

    def as_dict(self) -> dict[str, list[tuple[int, ...]]]:
        """``{input: [shape per gear]}``, smallest gear first (the form ``add_graph(gears=)`` takes)."""
        return {n: [g[n] for g in self.gears] for n in self.names}

    def fit(self, rows: int, trailing: Sequence[tuple[int, ...]]) -> int | None:
        """The smallest gear's batch (dim 0) that holds ``rows`` rows whose inputs have these
        trailing dims; None when no gear does."""
        best: int | None = None
        for g in self.gears:
            shapes = [g[n] for n in self.names]
            if any(not s or s[1:] != t for s, t in zip(shapes, trailing, strict=True)):
                continue
            b = shapes[0][0]
            if b >= rows and all(s[0] == b for s in shapes) and (best is None or b < best):
                best = b
        return best


def graph_gears(
    graph: Graph, options: dict[str, str], gears: Mapping[str, object] | None
) -> tuple[dict[str, str], Gears | None]:
    """The AddGraph options with ``gears=`` turned into GE's, and the graph's Gears (None: none).

    :raises ValueError: ``gears=`` beside ``ge.inputShape``/``ge.dynamicDims``, or gears that do
        not fit the graph's inputs.
    """
    if gears is not None:
        if "ge.inputShape" in options or "ge.dynamicDims" in options:
            raise ValueError("give gears= or the options ge.inputShape/ge.dynamicDims, not both")
        options = {**options, **gears_to_options(gears)}
    if "ge.inputShape" not in options:
        return options, None
    return options, Gears(graph, parse_gears(options["ge.inputShape"], options["ge.dynamicDims"]))


# -- the data dump ----------------------------------------------------------------------------------


def _steps(text: str) -> list[tuple[int, int]] | None:
    if text == "None":
        return None
    out = []
    for part in text.split("|"):
        lo, _, hi = part.partition("-")
        out.append((int(lo), int(hi or lo)))
    return out


class Dumper:
    """GE's data dump, per run (``ge.exec.enableDump=1``): each dumped run's inputs and/or outputs
    (``ge.exec.dumpMode``: input, output (default), all) as ``<dumpPath>/<graph>/<run>.npz``, one
    folder per graph of the session, runs counted from 0 per graph; ``ge.exec.dumpStep`` picks
    the runs. On an NPU GE dumps every op's tensors; the sim dumps the graph's."""

    def __init__(self, options: Mapping[str, str]) -> None:
        self.root = os.path.abspath(options["ge.exec.dumpPath"])
        self.mode = options.get("ge.exec.dumpMode", "output")
        self.steps = _steps(options.get("ge.exec.dumpStep", "None"))
        self._lock = threading.Lock()
        self._counts: dict[int, int] = {}
        self._folders: dict[int, str] = {}
        self._taken: set[str] = set()

    def take(self, graph: Graph) -> tuple[str, int] | None:
        """The file this run of ``graph`` dumps to, or None (not a dumped step). Any thread."""
        with self._lock:
            index = self._counts.get(id(graph), 0)
            self._counts[id(graph)] = index + 1
            folder = self._folders.get(id(graph))
            if folder is None:
                base = re.sub(r"[^A-Za-z0-9_.-]", "_", graph.name) or "graph"
                folder, n = base, 1
                while folder in self._taken:
                    n += 1
                    folder = f"{base}_{n}"
                self._taken.add(folder)
                self._folders[id(graph)] = folder
        if self.steps is not None and not any(lo <= index <= hi for lo, hi in self.steps):
            return None
        return os.path.join(self.root, folder, f"{index}.npz"), index

    def write(self, path: str, graph: Graph, inputs: Sequence[Any], outputs: Mapping[str, Any]) -> None:
        arrays: dict[str, np.ndarray] = {}
        if self.mode in ("input", "all"):
            for spec, v in zip(graph.inputs, inputs, strict=True):
                arrays[f"input.{spec.name}"] = v.to_numpy() if hasattr(v, "to_numpy") else np.asarray(v)
        if self.mode in ("output", "all"):
            for name, v in outputs.items():
                arrays[f"output.{name}"] = v.to_numpy() if hasattr(v, "to_numpy") else np.asarray(v)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        np.savez(path, **arrays)  # type: ignore[arg-type]


# -- warm-up ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WarmupReport:
    """What :meth:`Session.warmup` did: the streams it compiled and loaded the graph on, the
    shapes it ran (one run of each per stream, zeros), the runs, and the seconds it took."""

    graph: str
    streams: int
    shapes: tuple[dict[str, tuple[int, ...]], ...]
    runs: int
    seconds: float
    load_seconds: float
    notes: tuple[str, ...] = ()


def zeros_for(graph: Graph, shape: Mapping[str, Sequence[int]]) -> dict[str, np.ndarray]:
    """Zero inputs of these shapes (every input named), in the graph's dtypes."""
    missing = [s.name for s in graph.inputs if s.name not in shape]
    if missing:
        raise ValueError(f"{graph.name}: warm-up shape {dict(shape)} does not name input(s) {missing}")
    return {s.name: np.zeros(tuple(int(d) for d in shape[s.name]), s.dtype) for s in graph.inputs}


def static_shape(graph: Graph) -> dict[str, tuple[int, ...]] | None:
    """Every input's shape when all are fixed in the model; None otherwise."""
    out = {}
    for s in graph.inputs:
        if s.shape is None or not all(isinstance(d, int) for d in s.shape):
            return None
        out[s.name] = tuple(int(d) for d in s.shape)  # type: ignore[arg-type]
    return out


# -- the Chrome trace -------------------------------------------------------------------------------


@dataclass
class Trace:
    """A Chrome trace (the JSON Perfetto and chrome://tracing open) being recorded: complete
    events ("X", µs) and instants ("i") on named tracks; process = device, thread = track. Slices
    on one track never overlap (viewers refuse slices that do not nest): a run's resume is an
    instant carrying its wait, and batches in flight together take lanes of their own. Any thread
    may add."""

    path: str | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _tracks: dict[tuple[int, str], int] = field(default_factory=dict)
    t0_ns: int = field(default_factory=time.perf_counter_ns)
    runs: int = 0
    _lanes: dict[int, list[float]] = field(default_factory=dict)  # per device: each batcher lane's last end

    def _tid(self, pid: int, track: str) -> int:
        key = (pid, track)
        tid = self._tracks.get(key)
        if tid is None:
            if not any(p == pid for p, _ in self._tracks):
                self.events.append({"ph": "M", "name": "process_name", "pid": pid, "args": {"name": f"device {pid}"}})
            tid = self._tracks[key] = len(self._tracks) + 1
            self.events.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": {"name": track}})
            order = 0 if track.startswith("loop") else 1 if track.startswith("batcher") else 2
            self.events.append(
                {
                    "ph": "M",
                    "name": "thread_sort_index",
                    "pid": pid,
                    "tid": tid,
                    "args": {"sort_index": order * 100 + tid},
                }
            )
        return tid

    def span(self, pid: int, track: str, name: str, start_ns: float, end_ns: float, args: dict[str, Any]) -> None:
        """One complete event; times are ``time.perf_counter_ns()`` values (CLOCK_MONOTONIC on
        Linux, the sim's event clock)."""
        with self._lock:
            self.events.append(
                {
                    "ph": "X",
                    "name": name,
                    "pid": pid,
                    "tid": self._tid(pid, track),
                    "ts": (start_ns - self.t0_ns) / 1000.0,
                    "dur": max(0.0, (end_ns - start_ns) / 1000.0),
                    "args": args,
                }
            )

    def run(
        self,
        device: int,
        stream: int,
        graph: str,
        t_submit: int,
        submit_ns: int,
        timing: tuple[float, float, float, float | None],
        t_resumed: int,
        exact: bool,
        t_queued_from: int | None = None,
    ) -> None:
        """One profiled run: submit and resume on the loop's track, H2D/compute/D2H on its
        stream's. ``exact``: the device clock is the host's (the sim), so the stages sit where
        they ran (``t_queued_from``: the instant the run's queued time counts from); otherwise
        (CANN) they are placed to end when the loop resumed."""
        h2d, compute, d2h, queued = timing
        with self._lock:
            self.runs += 1
            rid = self.runs
        loop = f"loop {threading.current_thread().name}"
        args = {"run": rid, "graph": graph, "stream": stream}
        self.span(device, loop, "submit", t_submit, t_submit + submit_ns, args)
        total_ns = (h2d + compute + d2h) * 1e6
        if exact and queued is not None:
            start = (t_queued_from if t_queued_from is not None else t_submit) + queued * 1e6
        else:
            start = t_resumed - total_ns
        track = f"stream {stream}"
        a = start + h2d * 1e6
        b = a + compute * 1e6
        self.span(device, track, "H2D", start, a, args)
        self.span(device, track, "compute", a, b, args)
        self.span(device, track, "D2H", b, b + d2h * 1e6, args)
        done = b + d2h * 1e6  # the device finished the run: the loop resumes its task later
        wait = {**args, "after_device_ms": round(max(0.0, t_resumed - done) / 1e6, 6)} if exact else args
        self.instant(device, loop, "resume", t_resumed, wait)

    def instant(self, pid: int, track: str, name: str, at_ns: float, args: dict[str, Any]) -> None:
        """One instant event on a track (thread scope)."""
        with self._lock:
            self.events.append(
                {
                    "ph": "i",
                    "s": "t",
                    "name": name,
                    "pid": pid,
                    "tid": self._tid(pid, track),
                    "ts": (at_ns - self.t0_ns) / 1000.0,
                    "args": args,
                }
            )

    def batch(self, device: int, start_ns: int, end_ns: int, rows: int, run_rows: int, requests: int) -> None:
        """One batch, on the first batcher lane free at its start."""
        with self._lock:
            lanes = self._lanes.setdefault(device, [])
            lane = next((i for i, end in enumerate(lanes) if end <= start_ns), len(lanes))
            if lane == len(lanes):
                lanes.append(end_ns)
            lanes[lane] = end_ns
        self.span(
            device,
            f"batcher {lane}",
            f"batch {rows}->{run_rows}" if run_rows != rows else f"batch {rows}",
            start_ns,
            end_ns,
            {"rows": rows, "run_rows": run_rows, "padding": run_rows - rows, "requests": requests},
        )

    def document(self) -> dict[str, Any]:
        with self._lock:
            return {"traceEvents": list(self.events), "displayTimeUnit": "ms", "otherData": {"runs": self.runs}}

    def write(self, path: str | os.PathLike[str] | None = None) -> str:
        target = os.fspath(path if path is not None else self.path or "trace.json")
        folder = os.path.dirname(os.path.abspath(target))
        os.makedirs(folder, exist_ok=True)
        with open(target, "w") as f:
            json.dump(self.document(), f)
        return target
