"""The load generator: closed-loop concurrency sweeps and open-loop (constant/Poisson) rates
over one Session, on asyncio, uvloop or trio, with event-loop lag and watcher CPU sampling."""

from __future__ import annotations

import os
import random
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import anyio
import numpy as np

__all__ = [
    "BenchConfig",
    "BenchError",
    "LevelResult",
    "make_inputs",
    "parse_shapes",
    "percentiles",
    "run_benchmark",
    "thread_cpu_s",
]

MODES = ("async", "thread", "sync", "callback")
LOOPS = ("asyncio", "uvloop", "trio")
_PCTS = (50.0, 90.0, 99.0, 99.9)
_LAG_PERIOD_S = 0.001


class BenchError(Exception):
    """A benchmark that cannot run as asked (bad flag, model that does not load...)."""


@dataclass
class BenchConfig:
    model: str
    concurrency: list[int] = field(default_factory=lambda: [1, 4, 16, 64])
    rate: float | None = None
    poisson: bool = False
    warmup: int = 20
    duration: float | None = 2.0
    count: int | None = None
    stable: bool = False
    tolerance: float = 0.10
    window: float = 1.0
    max_windows: int = 10
    shapes: dict[str, list[int]] = field(default_factory=dict)
    streams: int = 2
    mode: str = "async"
    loop: str = "asyncio"
    device: int = 0
    seed: int = 0
    progress: bool = False


@dataclass
class LevelResult:
    """One load level (a concurrency or a rate)."""

    load: str  # "concurrency" or "rate"
    value: float
    runs: int = 0
    errors: int = 0
    elapsed_s: float = 0.0
    throughput: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)
    loop_lag_ms: dict[str, float] = field(default_factory=dict)
    process_cpu_s: float = 0.0
    watcher_cpu_s: float | None = None
    watcher_cpu_us_per_run: float | None = None
    loop_wakeups_per_run: float | None = None
    stable: bool | None = None
    windows: list[float] = field(default_factory=list)
    late_sends: int = 0
    stages_ms: dict[str, float] = field(default_factory=dict)  # p50 per stage, sampled runs
    compute_only_throughput: float | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# -- inputs -------------------------------------------------------------------------------------


def parse_shapes(specs: list[str]) -> dict[str, list[int]]:
    """``["x:1,64", "y:2,3"]`` -> ``{"x": [1, 64], ...}``; raises BenchError on a bad spec."""
    out: dict[str, list[int]] = {}
    for spec in specs:
        name, sep, dims = spec.partition(":")
        if not sep or not name or not dims:
            raise BenchError(f"--shape {spec!r}: expected NAME:D0,D1,... (e.g. x:1,64)")
        try:
            values = [int(d) for d in dims.split(",")]
        except ValueError:
            raise BenchError(f"--shape {spec!r}: dims must be integers, e.g. {name}:1,64") from None
        if any(v < 0 for v in values):
            raise BenchError(f"--shape {spec!r}: dims must be >= 0")
        out[name] = values
    return out


def make_inputs(graph: Any, shapes: dict[str, list[int]], seed: int = 0) -> tuple[dict[str, np.ndarray], list[str]]:
    """Random inputs from the graph's signature; symbolic dims come from ``shapes`` (or 1,
    noted in the returned list)."""
    rng = np.random.default_rng(seed)
    names = {s.name for s in graph.inputs}
    unknown = sorted(set(shapes) - names)
    if unknown:
        raise BenchError(f"--shape names {', '.join(unknown)} but the model's inputs are {', '.join(sorted(names))}")
    notes: list[str] = []
    arrays: dict[str, np.ndarray] = {}
    for spec in graph.inputs:
        declared = spec.shape
        given = shapes.get(spec.name)
        if given is not None:
            if declared is not None:
                if len(given) != len(declared):
                    raise BenchError(
                        f"--shape {spec.name}: {len(given)} dims given, "
                        f"the model declares {spec} ({len(declared)} dims)"
                    )
                for g, d in zip(given, declared, strict=False):
                    if isinstance(d, int) and d != g:
                        raise BenchError(f"--shape {spec.name}:{','.join(map(str, given))} does not match {spec}")
            shape = tuple(given)
        else:
            if declared is None:
                raise BenchError(f"input {spec} has no declared rank: give it with --shape {spec.name}:D0,D1,...")
            dims = []
            for d in declared:
                if isinstance(d, int):
                    dims.append(d)
                else:
                    dims.append(1)
                    notes.append(f"{spec.name}: symbolic dim {d or '?'} set to 1 (use --shape)")
            shape = tuple(dims)
        dtype = np.dtype(spec.dtype)
        if dtype.kind == "f":
            arrays[spec.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind in "iu":
            arrays[spec.name] = rng.integers(0, 8, size=shape).astype(dtype)
        elif dtype.kind == "b":
            arrays[spec.name] = rng.integers(0, 2, size=shape).astype(dtype)
        else:
            arrays[spec.name] = np.zeros(shape, dtype)
    return arrays, notes


# -- measurements -------------------------------------------------------------------------------


def percentiles(values_ns: list[int] | np.ndarray, scale: float = 1e-6) -> dict[str, float]:
    """p50/p90/p99/p99.9/max/mean of ns samples, in ms by default."""
    if len(values_ns) == 0:
        return {}
    a = np.asarray(values_ns, dtype=np.float64) * scale
    out = {f"p{p:g}": float(np.percentile(a, p)) for p in _PCTS}
    out["max"] = float(a.max())
    out["mean"] = float(a.mean())
    return out


def _watcher_tid(device: int = 0) -> int | None:
    name = f"ascend-async-watcher-{device}"
    for t in threading.enumerate():
        if t.name == name:
            return t.native_id
    return None


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


class _Recorder:
    def __init__(self) -> None:
        self.lat: list[int] = []
        self.ends: list[int] = []
        self.errors = 0
        self.first_error: BaseException | None = None
        self.measuring = False
        self.done = 0

    def add(self, start_ns: int, end_ns: int) -> None:
        self.done += 1
        if self.measuring:
            self.lat.append(end_ns - start_ns)
            self.ends.append(end_ns)


def _loop_post() -> Callable[..., object]:
    """The running loop's thread-safe "call soon" (asyncio, uvloop or trio)."""
    import asyncio

    try:
        return asyncio.get_running_loop().call_soon_threadsafe
    except RuntimeError:
        import trio

        return trio.lowlevel.current_trio_token().run_sync_soon  # type: ignore[no-any-return]


#: In async mode one run in this many is profiled (device events between its stages).
PROFILE_EVERY = 16


def summarize_stages(profiles: list[Any], streams: int) -> tuple[dict[str, float], float | None]:
    """p50 of each stage over the sampled runs, and the compute-only throughput they imply
    (``streams`` graphs computing at once, each taking the mean compute time)."""
    if not profiles:
        return {}, None
    stages: dict[str, float] = {}
    for key in ("h2d_ms", "compute_ms", "d2h_ms", "submit_ms", "queued_ms"):
        vals = [getattr(p, key) for p in profiles if getattr(p, key) is not None]
        if vals:
            stages[key.removesuffix("_ms")] = float(np.median(vals))
    mean_compute = float(np.mean([p.compute_ms for p in profiles]))
    return stages, (streams * 1000.0 / mean_compute if mean_compute > 0 else None)


def _make_submit(
    session: Any,
    graph: Any,
    inputs: dict[str, np.ndarray],
    mode: str,
    limit: int,
    profiles: list[Any] | None = None,
) -> Callable[[], Awaitable[Any]]:
    if mode == "async":
        calls = [0]

        async def run_async() -> Any:
            calls[0] += 1
            if profiles is None or calls[0] % PROFILE_EVERY:
                return await session.run(graph, inputs)
            out, prof = await session.run_profiled(graph, inputs)
            profiles.append(prof)
            return out

        return run_async
    if mode == "thread":
        limiter = anyio.CapacityLimiter(max(limit, 1))

        async def run_thread() -> Any:
            return await anyio.to_thread.run_sync(session.run_sync, graph, inputs, limiter=limiter)

        return run_thread
    if mode == "callback":

        async def run_callback() -> Any:
            post = _loop_post()
            event = anyio.Event()
            box: list[Any] = [None, None]

            def cb(outputs: Any, error: BaseException | None) -> None:
                box[0], box[1] = outputs, error
                post(event.set)

            session.run_with_callback(graph, inputs, cb)
            await event.wait()
            if box[1] is not None:
                raise box[1]
            return box[0]

        return run_callback
    raise BenchError(f"--mode {mode!r}: choose one of {', '.join(MODES)}")


class _Stop:
    def __init__(self, cfg: BenchConfig) -> None:
        self.cfg = cfg
        self.flag = False


async def _lag_monitor(samples: list[int], stop: _Stop) -> None:
    period = int(_LAG_PERIOD_S * 1e9)
    while not stop.flag:
        t = time.perf_counter_ns()
        await anyio.sleep(_LAG_PERIOD_S)
        samples.append(max(0, time.perf_counter_ns() - t - period))


async def _progress(label: str, rec: _Recorder, stop: _Stop, t0: list[int]) -> None:
    tty = sys.stderr.isatty()
    last = 0.0
    while not stop.flag:
        await anyio.sleep(0.25 if tty else 1.0)
        el = (time.perf_counter_ns() - t0[0]) / 1e9 if t0[0] else 0.0
        n = len(rec.lat)
        rate = n / el if el > 0 else 0.0
        p50 = float(np.median(rec.lat[-2000:])) / 1e6 if n else 0.0
        line = f"{label}: {n} runs  {rate:,.0f}/s  p50 {p50:.3f} ms  {el:.1f} s"
        if tty:
            print(f"\r{line:<78}", end="", file=sys.stderr, flush=True)
        elif time.monotonic() - last >= 1.0:
            print(line, file=sys.stderr, flush=True)
            last = time.monotonic()
    if tty:
        print("\r" + " " * 78 + "\r", end="", file=sys.stderr, flush=True)


def _should_stop(cfg: BenchConfig, rec: _Recorder, t0: int, res: LevelResult) -> bool:
    now = time.perf_counter_ns()
    el = (now - t0) / 1e9
    if cfg.count is not None and len(rec.lat) >= cfg.count:
        return True
    if cfg.stable:
        nwin = int(el / cfg.window)
        while len(res.windows) < nwin:
            lo = t0 + int(len(res.windows) * cfg.window * 1e9)
            hi = lo + int(cfg.window * 1e9)
            ends = np.asarray(rec.ends, dtype=np.int64)
            res.windows.append(float(((ends >= lo) & (ends < hi)).sum()) / cfg.window)
            last = res.windows[-3:]
            if len(last) == 3 and min(last) > 0 and (max(last) - min(last)) / max(last) <= cfg.tolerance:
                res.stable = True
                return True
            if len(res.windows) >= cfg.max_windows:
                res.stable = False
                return True
        return False
    return cfg.duration is not None and el >= cfg.duration


async def _closed_level(
    cfg: BenchConfig, submit: Callable[[], Awaitable[Any]], conc: int, res: LevelResult
) -> _Recorder:
    rec = _Recorder()
    stop = _Stop(cfg)
    t0 = [0]

    async def worker() -> None:
        while not stop.flag:
            s = time.perf_counter_ns()
            try:
                await submit()
            except Exception as exc:  # a device fault: stop the level, keep what we have
                rec.errors += 1
                rec.first_error = rec.first_error or exc
                stop.flag = True
                return
            rec.add(s, time.perf_counter_ns())
            if not rec.measuring and rec.done >= cfg.warmup:
                rec.measuring = True
                t0[0] = time.perf_counter_ns()
            elif rec.measuring and _should_stop(cfg, rec, t0[0], res):
                stop.flag = True

    await _drive(cfg, rec, stop, t0, [worker] * conc, f"concurrency {conc}", res)
    return rec


async def _open_level(
    cfg: BenchConfig, submit: Callable[[], Awaitable[Any]], rate: float, res: LevelResult
) -> _Recorder:
    rec = _Recorder()
    stop = _Stop(cfg)
    t0 = [0]
    rng = random.Random(cfg.seed)

    async def one(intended: int, tg: Any) -> None:
        try:
            await submit()
        except Exception as exc:
            rec.errors += 1
            rec.first_error = rec.first_error or exc
            stop.flag = True
            return
        # Latency from the *intended* send time: no coordinated omission.
        rec.add(intended, time.perf_counter_ns())
        if rec.measuring and _should_stop(cfg, rec, t0[0], res):
            stop.flag = True

    async def sender() -> None:
        async with anyio.create_task_group() as tg:
            t = time.perf_counter_ns()
            sent = 0
            while not stop.flag:
                gap = rng.expovariate(rate) if cfg.poisson else 1.0 / rate
                t += int(gap * 1e9)
                now = time.perf_counter_ns()
                if t > now:
                    await anyio.sleep((t - now) / 1e9)
                elif now - t > 1_000_000:
                    res.late_sends += 1
                if stop.flag:
                    break
                sent += 1
                if not rec.measuring and sent > cfg.warmup:
                    rec.measuring = True
                    t0[0] = t
                tg.start_soon(one, t, tg)
                if rec.measuring and cfg.duration is not None and not cfg.stable and cfg.count is None:
                    if (time.perf_counter_ns() - t0[0]) / 1e9 >= cfg.duration:
                        stop.flag = True
                elif rec.measuring and _should_stop(cfg, rec, t0[0], res):
                    stop.flag = True

    await _drive(cfg, rec, stop, t0, [sender], f"rate {rate:g}/s", res)
    return rec


async def _drive(
    cfg: BenchConfig,
    rec: _Recorder,
    stop: _Stop,
    t0: list[int],
    tasks: list[Callable[[], Coroutine[Any, Any, None]]],
    label: str,
    res: LevelResult,
) -> None:
    lag: list[int] = []
    tid = _watcher_tid(cfg.device)
    w0 = thread_cpu_s(tid)
    c0 = time.process_time()
    async with anyio.create_task_group() as outer:
        outer.start_soon(_lag_monitor, lag, stop)
        if cfg.progress:
            outer.start_soon(_progress, label, rec, stop, t0)
        async with anyio.create_task_group() as tg:
            for fn in tasks:
                tg.start_soon(fn)
        stop.flag = True
        outer.cancel_scope.cancel()
    end = time.perf_counter_ns()
    res.process_cpu_s = time.process_time() - c0
    tid = tid or _watcher_tid(cfg.device)
    w1 = thread_cpu_s(tid)
    if w0 is None and w1 is not None:
        w0 = 0.0
    if w1 is not None and w0 is not None:
        res.watcher_cpu_s = w1 - w0
    res.runs = len(rec.lat)
    res.errors = rec.errors
    res.elapsed_s = (end - t0[0]) / 1e9 if t0[0] else 0.0
    if rec.ends and t0[0]:
        span = (max(rec.ends) - t0[0]) / 1e9
        res.elapsed_s = span
        res.throughput = res.runs / span if span > 0 else 0.0
    res.latency_ms = percentiles(rec.lat)
    lag_ms = percentiles(lag)
    res.loop_lag_ms = {k: lag_ms[k] for k in ("p50", "p99", "max")} if lag_ms else {}
    if res.watcher_cpu_s is not None and rec.done:
        res.watcher_cpu_us_per_run = res.watcher_cpu_s * 1e6 / rec.done
    if rec.first_error is not None:
        res.error = f"{type(rec.first_error).__name__}: {rec.first_error}"
    if cfg.stable and res.stable is None:
        res.stable = False


# -- the session ---------------------------------------------------------------------------------


def _sync_level(cfg: BenchConfig, session: Any, graph: Any, inputs: dict[str, np.ndarray], res: LevelResult) -> None:
    """Plain ``run_sync`` loop on this thread (concurrency 1 by construction)."""
    rec = _Recorder()
    for _ in range(cfg.warmup):
        session.run_sync(graph, inputs)
    tid = _watcher_tid(cfg.device)
    w0 = thread_cpu_s(tid)
    c0 = time.process_time()
    t0 = time.perf_counter_ns()
    rec.measuring = True
    last = t0
    tty = cfg.progress and sys.stderr.isatty()
    while True:
        s = time.perf_counter_ns()
        try:
            session.run_sync(graph, inputs)
        except Exception as exc:
            rec.errors += 1
            rec.first_error = exc
            break
        e = time.perf_counter_ns()
        rec.add(s, e)
        if cfg.progress and e - last > 500_000_000:
            last = e
            msg = f"sync: {len(rec.lat)} runs  {len(rec.lat) / ((e - t0) / 1e9):,.0f}/s"
            print(f"\r{msg:<78}" if tty else msg, end="" if tty else "\n", file=sys.stderr, flush=True)
        if _should_stop(cfg, rec, t0, res):
            break
    if tty:
        print("\r" + " " * 78 + "\r", end="", file=sys.stderr, flush=True)
    res.process_cpu_s = time.process_time() - c0
    w1 = thread_cpu_s(tid)
    if w0 is not None and w1 is not None:
        res.watcher_cpu_s = w1 - w0
    res.runs = len(rec.lat)
    res.errors = rec.errors
    span = (rec.ends[-1] - t0) / 1e9 if rec.ends else 0.0
    res.elapsed_s = span
    res.throughput = res.runs / span if span > 0 else 0.0
    res.latency_ms = percentiles(rec.lat)
    if rec.first_error is not None:
        res.error = f"{type(rec.first_error).__name__}: {rec.first_error}"
    if cfg.stable and res.stable is None:
        res.stable = False


def run_benchmark(
    cfg: BenchConfig, on_level: Callable[[LevelResult], None] | None = None
) -> tuple[list[LevelResult], dict[str, Any]]:
    """Run every load level of ``cfg``; returns the results (those so far on an error, the
    failing level carrying ``error``) and facts about the run (backend, input shapes...)."""
    import ascend_async as aa

    if cfg.mode not in MODES:
        raise BenchError(f"--mode {cfg.mode!r}: choose one of {', '.join(MODES)}")
    if cfg.loop not in LOOPS:
        raise BenchError(f"--loop {cfg.loop!r}: choose one of {', '.join(LOOPS)}")
    try:
        graph = aa.Graph(cfg.model)
    except Exception as exc:
        raise BenchError(f"cannot load model {cfg.model}: {exc}") from exc
    inputs, notes = make_inputs(graph, cfg.shapes, cfg.seed)
    facts: dict[str, Any] = {
        "inputs": {k: f"{v.dtype}{list(v.shape)}" for k, v in inputs.items()},
        "notes": notes,
    }
    levels = [float(r) for r in [cfg.rate]] if cfg.rate is not None else [float(c) for c in cfg.concurrency]
    results: list[LevelResult] = []
    peak = max(int(v) for v in levels) if cfg.rate is None else 4096
    try:
        session = aa.Session(cfg.device, streams=cfg.streams, max_in_flight=max(512, peak))
    except Exception as exc:
        raise BenchError(f"cannot open a session on device {cfg.device}: {exc}") from exc
    try:
        try:
            session.add_graph(graph)
        except Exception as exc:
            raise BenchError(f"cannot add model {cfg.model}: {exc}") from exc
        facts["backend"] = session.backend
        # Check the inputs and compile once, before any timing.
        try:
            if cfg.mode in ("sync", "thread"):
                session.run_sync(graph, inputs)
        except Exception as exc:
            raise BenchError(f"{cfg.model}: the first run failed: {exc}") from exc

        if cfg.mode == "sync":
            if cfg.rate is not None:
                raise BenchError("--mode sync is a closed loop of one; it takes no --rate")
            res = LevelResult("concurrency", 1)
            _sync_level(cfg, session, graph, inputs, res)
            results.append(res)
            if on_level:
                on_level(res)
            return results, facts

        async def main() -> None:
            if cfg.mode in ("async",):
                await session.load(graph)
                await session.run(graph, inputs)
            elif cfg.mode == "callback":
                submit0 = _make_submit(session, graph, inputs, "callback", 1)
                await submit0()
            bridge_wakeups = _bridge_wakeups
            for value in levels:
                load = "rate" if cfg.rate is not None else "concurrency"
                res = LevelResult(load, value)
                profiles: list[Any] = []
                submit = _make_submit(
                    session, graph, inputs, cfg.mode, int(value) if load == "concurrency" else 1024, profiles
                )
                w0 = bridge_wakeups()
                if load == "rate":
                    rec = await _open_level(cfg, submit, value, res)
                else:
                    rec = await _closed_level(cfg, submit, int(value), res)
                w1 = bridge_wakeups()
                if cfg.mode == "async" and w0 is not None and w1 is not None and rec.done:
                    res.loop_wakeups_per_run = (w1 - w0) / rec.done
                res.stages_ms, res.compute_only_throughput = summarize_stages(profiles, cfg.streams)
                results.append(res)
                if on_level:
                    on_level(res)
                if res.error:
                    return

        _run_loop(cfg.loop, main)
    finally:
        try:
            session.close()
        except Exception:  # a faulted session still closes as far as it can
            pass
    return results, facts


def _bridge_wakeups() -> int | None:
    """Wake-ups posted to the running loop by the watcher (LoopBridge.wakeups; internal)."""
    try:
        from ascend_async._watcher import current_bridge

        return int(current_bridge().wakeups)
    except Exception:
        return None


def _run_loop(loop: str, fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
    if loop == "trio":
        try:
            import trio  # noqa: F401
        except ImportError:
            raise BenchError("--loop trio: trio is not installed (pip install trio)") from None
        anyio.run(fn, backend="trio")
    elif loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            raise BenchError("--loop uvloop: uvloop is not installed (pip install uvloop)") from None
        anyio.run(fn, backend="asyncio", backend_options={"loop_factory": uvloop.new_event_loop})
    else:
        anyio.run(fn, backend="asyncio")
