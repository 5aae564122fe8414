"""The load generator: closed-loop concurrency sweeps and open-loop (constant/Poisson) rate sweeps
over one Session (or a DevicePool, with or without a dynamic Batcher in front), on asyncio,
uvloop or trio, with event-loop lag and watcher CPU sampling.

Every level runs in three phases: **warm-up** (time or runs; excluded from every figure),
**measure** (a duration, a run count, or until throughput is stable) and **drain** (runs still
in flight finish; open loop only, at most ``max_in_flight`` of them).
"""

from __future__ import annotations

import functools
import gc
import os
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import anyio
import numpy as np

from .._loop import current_bridge
from ._inputs import Samples, load_samples, save_outputs
from ._options import DEFAULT_PERCENTILES, BenchError, Threshold, Warmup, pct_key

__all__ = [
    "BenchConfig",
    "BenchError",
    "LevelResult",
    "few_samples",
    "percentiles",
    "run_benchmark",
    "thread_cpu_s",
]

MODES = ("async", "thread", "sync", "callback")
LOOPS = ("asyncio", "uvloop", "trio")
#: Always computed (plots and ``bench compare`` use p50 and p99), besides the ones asked for.
BASE_PERCENTILES = (50.0, 90.0, 95.0, 99.0, 99.9)
#: A percentile is flagged as resting on too few samples when fewer runs than this lie beyond it.
MIN_TAIL = 10
#: A send more than this late (ns) counts as late.
LATE_NS = 1_000_000
_LAG_PERIOD_S = 0.001
#: An open-loop sender behind its schedule sends at most this many runs between checkpoints.
BURST = 4
#: A schedule point this overdue (ns) is missed: the sender resumes the schedule at the present,
#: so an overloaded host does not build a backlog that grows for the whole level.
BEHIND_NS = 10_000_000
#: In async mode one measured run in this many is profiled (device events between its stages).
PROFILE_EVERY = 16


@dataclass
class BenchConfig:
    """What to run: the model, the load levels, how long, with which inputs, on which loop."""

    model: str
    load: str = "concurrency"  # "concurrency" (closed loop) or "rate" (open loop)
    levels: list[float] = field(default_factory=lambda: [1.0, 4.0, 16.0, 64.0])
    poisson: bool = False
    warmup: Warmup = field(default_factory=lambda: Warmup(seconds=0.5))
    duration: float | None = 2.0
    count: int | None = None
    stable: bool = False
    tolerance: float = 0.10
    window: float = 1.0
    max_windows: int = 10
    percentiles: tuple[float, ...] = DEFAULT_PERCENTILES
    latency_threshold: Threshold | None = None
    max_in_flight: int = 128
    shapes: dict[str, list[int]] = field(default_factory=dict)
    inputs: list[str] = field(default_factory=list)
    batch_size: int | None = None
    save_outputs: str | None = None
    streams: int = 2
    mode: str = "async"
    loop: str = "asyncio"
    device: int = 0
    seed: int = 0
    progress: bool = False
    #: ``--batch-max``: requests go through ``batcher(graph, max_batch_size=...)``; None: no batcher
    batch_max: int | None = None
    batch_delay_ms: float = 1.0
    batch_preferred: list[int] = field(default_factory=list)
    #: ``--devices``: a DevicePool over these logical ids, or "all"; None: one Session on ``device``
    devices: list[int] | str | None = None
    #: ``--sim-timing``: (ms per run, ms per sample) for the sim's timing model; None: left as is
    sim_timing: tuple[float, float] | None = None
    #: ``--gears``: static gears of the batch dimension (add_graph(gears=...)); None: dynamic
    gears: list[int] | None = None
    #: ``--trace PATH``: a Chrome trace of the whole sweep; None: no trace
    trace: str | None = None
    #: ``--report ais``: every measured async run is profiled, for ais_bench's summary
    report: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """Every setting, JSON-ready (the ``config`` block of the summary JSON)."""
        d = asdict(self)
        d["warmup"] = {"seconds": self.warmup.seconds, "runs": self.warmup.runs}
        d["percentiles"] = list(self.percentiles)
        d["latency_threshold"] = (
            None
            if self.latency_threshold is None
            else {"ms": self.latency_threshold.ms, "percentile": self.latency_threshold.percentile}
        )
        d.pop("progress")
        d["sim_timing"] = None if self.sim_timing is None else list(self.sim_timing)
        return d


@dataclass
class LevelResult:
    """One load level (a concurrency or a rate). Times in ms unless the name says otherwise."""

    load: str  # "concurrency" or "rate"
    value: float
    runs: int = 0  # measured runs completed
    errors: int = 0
    elapsed_s: float = 0.0  # measured window: its start to the last measured completion
    warmup_s: float = 0.0
    warmup_runs: int = 0
    throughput: float = 0.0  # runs/s
    batch: int = 1
    inferences_per_s: float = 0.0  # runs/s x batch
    latency_ms: dict[str, float] = field(default_factory=dict)
    few_samples: list[str] = field(default_factory=list)  # percentile keys resting on < MIN_TAIL runs
    loop_lag_ms: dict[str, float] = field(default_factory=dict)
    process_cpu_s: float = 0.0
    watcher_cpu_s: float | None = None
    watcher_cpu_us_per_run: float | None = None
    loop_wakeups_per_run: float | None = None
    stable: bool | None = None
    windows: list[float] = field(default_factory=list)
    # open loop
    intended: int = 0  # sends scheduled in the measured window (= sent + missed)
    sent: int = 0
    late_sends: int = 0  # of which sent > 1 ms after their intended time
    missed: int = 0  # scheduled in the window but skipped: the sender was behind (cap full, loop busy)
    sent_per_s: float = 0.0
    max_in_flight: int | None = None
    overloaded: bool = False
    # device stages from run_profiled, one measured run in PROFILE_EVERY
    stages_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    stage_samples: int = 0
    device_bound_per_s: float | None = None  # streams / mean compute time
    # --batch-max: the batcher over the measured window (see batcher_figures)
    batcher: dict[str, Any] | None = None
    # --devices: runs completed per device id over the measured window (batches, with --batch-max)
    device_runs: dict[str, int] | None = None
    # --report ais: ais_bench's summary block (see ais_summary)
    ais: dict[str, Any] | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def label(self) -> str:
        """``c=4`` or ``500/s``."""
        return f"c={int(self.value)}" if self.load == "concurrency" else f"{self.value:g}/s"


# -- measurements -------------------------------------------------------------------------------


def percentiles(
    values_ns: Sequence[int] | np.ndarray, pcts: Sequence[float] = BASE_PERCENTILES, scale: float = 1e-6
) -> dict[str, float]:
    """Nearest-rank percentiles (each is an observed value: the smallest sample with at least
    p% of all samples at or below it), plus ``max`` and ``mean``; ns samples, in ms by default.
    The progress line and the table both use this function."""
    if len(values_ns) == 0:
        return {}
    a = np.asarray(values_ns, dtype=np.float64) * scale
    qs = sorted(set(pcts))
    vals = np.percentile(a, qs, method="inverted_cdf")
    out = {pct_key(p): float(v) for p, v in zip(qs, vals, strict=True)}
    out["max"] = float(a.max())
    out["mean"] = float(a.mean())
    return out


def few_samples(n: int, pcts: Sequence[float]) -> list[str]:
    """The percentiles that fewer than ``MIN_TAIL`` of ``n`` samples lie beyond (p99 needs 1,000
    samples, p99.9 needs 10,000): such a figure is decided by a handful of runs."""
    return [pct_key(p) for p in pcts if n * (1 - p / 100) < MIN_TAIL]


def overloaded(intended: int, missed: int) -> bool:
    """An open-loop level is overloaded when more than 1% of its scheduled sends were missed:
    the in-flight cap stayed full, so the device (or the host) could not keep up. Late sends
    alone are jitter (a busy loop, a noisy machine), reported but not called overload."""
    return intended > 0 and missed > 0.01 * intended


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


def summarize_stages(
    profiles: Sequence[Any], streams: int, pcts: Sequence[float]
) -> tuple[dict[str, dict[str, float]], float | None]:
    """Percentiles of each stage over the sampled runs (``{"compute": {"p50": ..}}``), and the
    device-bound rate they imply: ``streams`` graphs computing at once, each taking the mean
    compute time (what the device alone would allow; host costs excluded)."""
    if not profiles:
        return {}, None
    stages: dict[str, dict[str, float]] = {}
    for key in ("queued_ms", "h2d_ms", "compute_ms", "d2h_ms", "submit_ms"):
        vals = [getattr(p, key) for p in profiles if getattr(p, key) is not None]
        if vals:
            stages[key.removesuffix("_ms")] = percentiles(vals, pcts, scale=1.0)
    mean_compute = float(np.mean([p.compute_ms for p in profiles]))
    return stages, (streams * 1000.0 / mean_compute if mean_compute > 0 else None)


# -- one level ----------------------------------------------------------------------------------


class LevelState:
    """Shared by a level's tasks and its progress display (all on the loop thread)."""

    def __init__(
        self,
        cfg: BenchConfig,
        res: LevelResult,
        on_measure: Callable[[], None] | None = None,
        watch: Sequence[int] | None = None,
    ) -> None:
        self.cfg = cfg
        self.res = res
        self.on_measure = on_measure  # called once, when the measured window opens
        self.watch = list(watch) if watch is not None else [cfg.device]  # devices whose watchers are timed
        self.phase = "warm-up"  # -> "measure" -> "drain"
        self.t_start = time.perf_counter_ns()
        self.t0 = 0  # start of the measured window (perf_counter ns)
        self.lat: list[int] = []
        self.ends: list[int] = []
        self.lag: list[int] = []
        self.profiles: list[Any] = []
        self.done = 0  # runs completed, warm-up included
        self.in_flight = 0
        self.stop = False
        self.first_error: BaseException | None = None
        self.sender_scope: anyio.CancelScope | None = None

    @property
    def measuring(self) -> bool:
        return self.phase == "measure"

    def start_measuring(self, t0: int) -> None:
        self.phase = "measure"
        self.t0 = t0
        self.res.warmup_s = (t0 - self.t_start) / 1e9
        self.res.warmup_runs = self.done
        if self.on_measure is not None:
            self.on_measure()

    def warmed_up(self, now: int) -> bool:
        w = self.cfg.warmup
        if w.runs is not None:
            return self.done >= w.runs
        return (now - self.t_start) / 1e9 >= (w.seconds or 0.0)

    def fail(self, exc: BaseException) -> None:
        self.res.errors += 1
        self.first_error = self.first_error or exc
        self.request_stop()

    def request_stop(self) -> None:
        self.stop = True
        if self.sender_scope is not None:
            self.sender_scope.cancel()

    def should_stop(self) -> bool:
        """After a measured completion: has the window got what it needs?"""
        cfg, res = self.cfg, self.res
        el = (time.perf_counter_ns() - self.t0) / 1e9
        if cfg.count is not None:
            return len(self.lat) >= cfg.count
        if cfg.stable:
            nwin = int(el / cfg.window)
            while len(res.windows) < nwin:
                lo = self.t0 + int(len(res.windows) * cfg.window * 1e9)
                hi = lo + int(cfg.window * 1e9)
                ends = np.asarray(self.ends, dtype=np.int64)
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


#: ``submit(state)`` runs once; ``state`` is the level's state for a measured run, else None.
Submit = Callable[[LevelState | None], Awaitable[Any]]


async def _lag_monitor(state: LevelState) -> None:
    period = int(_LAG_PERIOD_S * 1e9)
    while True:
        t = time.perf_counter_ns()
        await anyio.sleep(_LAG_PERIOD_S)
        if state.measuring:
            state.lag.append(max(0, time.perf_counter_ns() - t - period))


async def _closed_level(
    cfg: BenchConfig, submit: Submit, conc: int, res: LevelResult, show: Any, **state_kw: Any
) -> LevelState:
    state = LevelState(cfg, res, **state_kw)
    if cfg.warmup.runs == 0 or (cfg.warmup.runs is None and not cfg.warmup.seconds):
        state.start_measuring(state.t_start)

    async def worker() -> None:
        while not state.stop:
            s = time.perf_counter_ns()
            measured = state.measuring
            try:
                await submit(state if measured else None)
            except Exception as exc:  # a device fault: stop the level, keep what we have
                state.fail(exc)
                return
            e = time.perf_counter_ns()
            state.done += 1
            if measured and s >= state.t0:  # only runs started inside the window count
                state.lat.append(e - s)
                state.ends.append(e)
                if state.should_stop():
                    state.stop = True
            elif not state.measuring and state.warmed_up(e):
                state.start_measuring(e)

    await _drive(cfg, state, [worker] * conc, show)
    return state


class Schedule:
    """The send times of an open-loop level from ``start_ns``: constant gaps, or Poisson gaps
    drawn in blocks from a generator seeded with ``seed`` (the same schedule on every run).
    ``skip`` passes any number of points in O(blocks), so an overloaded sender never spends its
    loop's time counting the points it missed one by one."""

    BLOCK = 4096

    def __init__(self, start_ns: float, rate: float, poisson: bool, seed: int) -> None:
        self.gap = 1e9 / rate
        self.t = float(start_ns)  # the next point not yet sent or skipped
        self._rng = np.random.default_rng(seed) if poisson else None
        self._gaps = np.empty(0)
        self._i = 0

    def _block(self) -> np.ndarray:
        """The Poisson gaps not used yet (refilled when spent)."""
        assert self._rng is not None
        if self._i >= self._gaps.size:
            self._gaps = self._rng.exponential(self.gap, self.BLOCK)
            self._i = 0
        return self._gaps[self._i :]

    def advance(self) -> None:
        """Move past the current point (sent)."""
        if self._rng is None:
            self.t += self.gap
        else:
            self.t += float(self._block()[0])
            self._i += 1

    def skip(self, now: float, end: float | None = None) -> int:
        """Pass every point at or before ``now`` (and before ``end``); returns how many."""
        limit = now if end is None else min(now, float(np.nextafter(end, -np.inf)))
        if self.t > limit:
            return 0
        if self._rng is None:
            n = int((limit - self.t) // self.gap) + 1
            self.t += n * self.gap
            return n
        n = 0
        while self.t <= limit:
            gaps = self._block()
            after = self.t + np.cumsum(gaps)  # the points after the current one
            k = int(np.searchsorted(after, limit, side="right"))  # of them, how many are passed too
            n += 1 + min(k, gaps.size - 1)
            if k < gaps.size:
                self.t = float(after[k])
                self._i += k + 1
                return n
            self.t = float(after[-1])  # the whole block passed: its last point is current now
            self._i += gaps.size
        return n


async def _open_level(
    cfg: BenchConfig, submit: Submit, rate: float, res: LevelResult, show: Any, **state_kw: Any
) -> LevelState:
    """Sends on a fixed schedule: constant gaps, or Poisson gaps from a generator seeded with
    ``cfg.seed``, so every run of a level has the same schedule. The sender never blocks its
    loop: it sleeps until the next send or, when behind, catches up yielding every ``BURST``
    sends. A send more than 1 ms after its time is *late*. At most ``max_in_flight`` runs are in
    flight; when the sender had to wait for a slot, it resumes the schedule at the present and
    the points that fell due meanwhile are *missed*; so are points more than ``BEHIND_NS``
    overdue (a host that cannot send that fast). It never builds a backlog, and a level ends on
    time however overloaded.
    Latency counts from the intended send time, so waiting for a slot shows in the figures.

    The runs go to ``max_in_flight`` worker tasks started before the schedule begins, through an
    unbuffered stream: a send hands its time to an idle worker (no task is spawned per send,
    which would cost the loop more than the run's own submission), and "no worker idle" is the
    in-flight cap."""
    state = LevelState(cfg, res, **state_kw)
    res.max_in_flight = cfg.max_in_flight
    send, receive = anyio.create_memory_object_stream[tuple[int, bool]](0)

    async def one(intended: int, measured: bool) -> None:
        try:
            await submit(state if measured else None)
        except Exception as exc:
            state.fail(exc)
            return
        finally:
            state.in_flight -= 1
        e = time.perf_counter_ns()
        state.done += 1
        if measured:
            state.lat.append(e - intended)  # from the intended send time: no coordinated omission
            state.ends.append(e)
            if (cfg.count is not None or cfg.stable) and state.should_stop():
                state.request_stop()

    received = [0]  # the intended time of the last run a worker took

    async def worker() -> None:
        # Counted here, where a run is known to have gone out: a send cancelled at the
        # window's end may still have handed its item over.
        async for intended, measured in receive:
            received[0] = intended
            state.in_flight += 1
            if measured:
                res.sent += 1
                if time.perf_counter_ns() - intended > LATE_NS:
                    res.late_sends += 1
            await one(intended, measured)

    end_ns: float | None = None  # the window's end on the schedule (duration mode)
    timed = cfg.duration is not None and not cfg.stable and cfg.count is None
    schedule: Schedule | None = None

    async def sender() -> None:
        nonlocal end_ns, schedule
        state.t_start = time.perf_counter_ns()  # the workers are ready: the schedule starts now
        schedule = Schedule(state.t_start, rate, cfg.poisson, cfg.seed)
        skipped_last = False
        passed = burst = 0  # schedule points sent or missed: a warm-up in runs counts points,
        w = cfg.warmup  # so the measured window starts at the same point on every run
        while True:
            t = schedule.t
            if not state.measuring and (
                (w.runs is not None and passed >= w.runs)
                or (w.runs is None and t - state.t_start >= (w.seconds or 0.0) * 1e9)
            ):
                state.start_measuring(int(t))
                if timed:
                    assert cfg.duration is not None and state.sender_scope is not None
                    end_ns = t + cfg.duration * 1e9
                    # The window closes on the clock, wherever the sender waits then.
                    state.sender_scope.deadline = anyio.current_time() + (end_ns - time.perf_counter_ns()) / 1e9
            if end_ns is not None and t >= end_ns:
                return
            now = time.perf_counter_ns()
            if t > now:
                await anyio.sleep((t - now) / 1e9)
                burst = 0
            else:
                if burst >= BURST:
                    await anyio.lowlevel.checkpoint()  # behind schedule: catch up, but let the loop run
                    burst = 0
                    now = time.perf_counter_ns()
                if now - t > BEHIND_NS and not skipped_last:  # too far behind: the host cannot keep this rate
                    skipped = schedule.skip(now - BEHIND_NS, end_ns)
                    passed += skipped
                    if state.measuring:
                        res.missed += skipped
                    skipped_last = True  # the next point goes out whatever: a skip cannot chase the clock
                    continue
            skipped_last = False
            item = (int(t), state.measuring)
            try:
                send.send_nowait(item)
                waited = False
            except anyio.WouldBlock:  # every worker busy: max_in_flight reached, this send is late
                waited = True
                await send.send(item)
            s = time.perf_counter_ns()
            passed += 1
            burst += 1
            schedule.advance()
            if waited:  # the points that fell due while no slot was free are missed
                skipped = schedule.skip(s, end_ns)
                passed += skipped
                if state.measuring:
                    res.missed += skipped

    async def body() -> None:
        with receive:
            async with anyio.create_task_group() as tg:
                for _ in range(cfg.max_in_flight):
                    tg.start_soon(worker)
                await anyio.lowlevel.checkpoint()  # the workers wait for their first run
                with send, anyio.CancelScope() as scope:  # closing the stream lets the workers finish
                    state.sender_scope = scope
                    await sender()
                state.sender_scope = None
                if state.measuring:
                    state.phase = "drain"

    await _drive(cfg, state, [body], show)
    if end_ns is not None and schedule is not None:  # points the sender never reached: missed
        if int(schedule.t) == received[0]:  # its send was cancelled after a worker took it: sent
            schedule.advance()
        res.missed += schedule.skip(end_ns, end_ns)
    res.intended = res.sent + res.missed
    window_s = cfg.duration if end_ns is not None else res.elapsed_s
    res.sent_per_s = res.sent / window_s if window_s else 0.0
    res.overloaded = overloaded(res.intended, res.missed)
    return state


async def _drive(
    cfg: BenchConfig,
    state: LevelState,
    tasks: list[Callable[[], Coroutine[Any, Any, None]]],
    show: Any,
) -> None:
    res = state.res
    tids = [_watcher_tid(d) for d in state.watch]
    w0 = [thread_cpu_s(t) for t in tids]
    c0 = time.process_time()
    async with anyio.create_task_group() as outer:
        outer.start_soon(_lag_monitor, state)
        if show is not None:
            outer.start_soon(show.run, state)
        async with anyio.create_task_group() as tg:
            for fn in tasks:
                tg.start_soon(fn)
        state.stop = True
        outer.cancel_scope.cancel()
    res.process_cpu_s = time.process_time() - c0
    spent: list[float] = []
    for d, tid, a in zip(state.watch, tids, w0, strict=True):
        b = thread_cpu_s(tid or _watcher_tid(d))
        if b is not None:
            spent.append(b - (a or 0.0))
    if spent:
        res.watcher_cpu_s = sum(spent)
    _finish(cfg, state)


def _finish(cfg: BenchConfig, state: LevelState) -> None:
    """Fill ``state.res`` with the figures of the measured window."""
    res = state.res
    res.runs = len(state.lat)
    if state.ends and state.t0:
        span = (max(state.ends) - state.t0) / 1e9
        res.elapsed_s = span
        res.throughput = res.runs / span if span > 0 else 0.0
    res.inferences_per_s = res.throughput * res.batch
    pcts = sorted(set(BASE_PERCENTILES) | set(cfg.percentiles))
    res.latency_ms = percentiles(state.lat, pcts)
    res.few_samples = few_samples(res.runs, cfg.percentiles) if res.runs else []
    lag_ms = percentiles(state.lag, (50.0, 99.0))
    res.loop_lag_ms = {k: lag_ms[k] for k in ("p50", "p99", "max")} if lag_ms else {}
    if res.watcher_cpu_s is not None and state.done:
        res.watcher_cpu_us_per_run = res.watcher_cpu_s * 1e6 / state.done
    if state.first_error is not None:
        res.error = f"{type(state.first_error).__name__}: {state.first_error}"
    if cfg.stable and res.stable is None:
        res.stable = False
    res.stage_samples = len(state.profiles)
    res.stages_ms, res.device_bound_per_s = summarize_stages(
        state.profiles, cfg.streams, sorted({50.0, 99.0} | set(cfg.percentiles))
    )
    if cfg.report == "ais":
        res.ais = ais_summary(state.profiles, res.batch)


def _ais_stats(values: Sequence[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    return {
        "min": float(a.min()),
        "max": float(a.max()),
        "mean": float(a.mean()),
        "median": float(np.median(a)),
        "percentile(99%)": float(np.percentile(a, 99)),
    }


def ais_summary(profiles: Sequence[Any], batch: int) -> dict[str, Any] | None:
    """ais_bench's performance summary over profiled runs (:class:`RunProfile`), in its field
    names and definitions: ``NPU_compute_time`` (ms; the graph's execution between device events,
    without H2D and D2H), ``H2D_latency`` and ``D2H_latency`` (ms; the copies, device events),
    each with min, max, mean, median (numpy's) and percentile(99%) (numpy's linear percentile),
    and ``throughput`` = 1000 * batchsize / NPU_compute_time.mean. None without profiled runs."""
    if not profiles:
        return None
    compute = _ais_stats([p.compute_ms for p in profiles])
    return {
        "H2D_latency": _ais_stats([p.h2d_ms for p in profiles]),
        "NPU_compute_time": compute,
        "D2H_latency": _ais_stats([p.d2h_ms for p in profiles]),
        "batchsize": batch,
        "throughput": 1000.0 * batch / compute["mean"] if compute["mean"] > 0 else 0.0,
        "samples": len(profiles),
    }


def _make_submit(
    session: Any,
    graph: Any,
    samples: Samples,
    mode: str,
    limit: int,
    run: Callable[..., Awaitable[Any]] | None = None,
    every: int = PROFILE_EVERY,
) -> Submit:
    """``submit(state)`` runs the next input set once in ``mode``; in async mode one measured run
    in PROFILE_EVERY is profiled into ``state.profiles``. With ``run`` (a batcher's or a pool's
    ``run`` taking the inputs alone) each submit awaits it, unprofiled."""
    sets = samples.sets
    n = len(sets)
    calls = [0]

    def next_inputs() -> dict[str, np.ndarray]:
        calls[0] += 1
        return sets[calls[0] % n] if n > 1 else sets[0]

    if run is not None:

        async def run_target(state: LevelState | None) -> Any:
            return await run(next_inputs())

        return run_target
    if mode == "async":

        async def run_async(state: LevelState | None) -> Any:
            inputs = next_inputs()
            if state is None or calls[0] % every:
                return await session.run(graph, inputs)
            out, prof = await session.run_profiled(graph, inputs)
            if state.measuring:
                state.profiles.append(prof)
            return out

        return run_async
    if mode == "thread":
        limiter = anyio.CapacityLimiter(max(limit, 1))

        async def run_thread(state: LevelState | None) -> Any:
            return await anyio.to_thread.run_sync(session.run_sync, graph, next_inputs(), limiter=limiter)

        return run_thread
    if mode == "callback":

        async def run_callback(state: LevelState | None) -> Any:
            post = current_bridge().post
            event = anyio.Event()
            box: list[Any] = [None, None]

            def cb(outputs: Any, error: BaseException | None) -> None:
                box[0], box[1] = outputs, error
                post(event.set)

            session.run_with_callback(graph, next_inputs(), cb)
            await event.wait()
            if box[1] is not None:
                raise box[1]
            return box[0]

        return run_callback
    raise BenchError(f"--mode {mode!r}: choose one of {', '.join(MODES)}")


def _sync_level(cfg: BenchConfig, session: Any, graph: Any, samples: Samples, res: LevelResult, show: Any) -> None:
    """Plain ``run_sync`` loop on this thread (concurrency 1 by construction)."""
    state = LevelState(cfg, res)
    sets = samples.sets
    i = 0
    tid = _watcher_tid(cfg.device)
    w0 = thread_cpu_s(tid)
    c0 = time.process_time()
    last_show = state.t_start
    while True:
        s = time.perf_counter_ns()
        if not state.measuring and state.warmed_up(s):
            state.start_measuring(s)
        try:
            session.run_sync(graph, sets[i % len(sets)])
        except Exception as exc:
            state.fail(exc)
            break
        i += 1
        e = time.perf_counter_ns()
        state.done += 1
        if state.measuring:
            state.lat.append(e - s)
            state.ends.append(e)
            if state.should_stop():
                break
        if show is not None and e - last_show > 250_000_000:
            last_show = e
            show.update(state)
    res.process_cpu_s = time.process_time() - c0
    w1 = thread_cpu_s(tid)
    if w0 is not None and w1 is not None:
        res.watcher_cpu_s = w1 - w0
    _finish(cfg, state)


# -- the session ---------------------------------------------------------------------------------


@dataclass
class RunFacts:
    """What the runner learned besides the levels' figures."""

    backend: str | None = None
    inputs: dict[str, str] = field(default_factory=dict)
    input_source: str = "random"
    batch: int = 1
    notes: list[str] = field(default_factory=list)
    stopped: str | None = None  # why a sweep ended early
    saved_outputs: list[str] = field(default_factory=list)
    devices: list[int] | None = None  # --devices, resolved ("all" -> every visible id)
    batcher: dict[str, Any] | None = None  # --batch-max: the batcher's configuration
    sim_timing: dict[str, float] | None = None  # --sim-timing: the timing model in force
    gears: dict[str, list[list[int]]] | None = None  # --gears: the graph's gears
    warmup: dict[str, Any] | None = None  # what Session.warmup did before the levels
    trace: str | None = None  # --trace: the Chrome trace written


def batcher_figures(before: Any, after: Any, elapsed_s: float) -> dict[str, Any]:
    """A batcher's activity between two :class:`BatcherStatistics` snapshots (``before`` None:
    since it was made): batches, the batch-size histogram (requests' rows per batch, before
    padding), mean batch, fill ratio (rows / ``max_batch_size``), batches/s, padded rows and
    failures. Queue delay (``mean``, ``p50``, ``p99``, ``max``, ms from ``run`` to the batch's
    submission) is the batcher's own, over its last 4096 requests."""
    b0: dict[int, int] = dict(before.batch_sizes) if before is not None else {}
    sizes = {k: v - b0.get(k, 0) for k, v in after.batch_sizes.items() if v - b0.get(k, 0) > 0}
    batches = sum(sizes.values())
    rows = sum(k * v for k, v in sizes.items())
    cap = after.config.max_batch_size
    capacity = sum(max(k, cap) * v for k, v in sizes.items())

    def diff(name: str) -> int:
        return int(getattr(after, name) - (getattr(before, name) if before is not None else 0))

    return {
        "batches": batches,
        "batches_per_s": batches / elapsed_s if elapsed_s > 0 else 0.0,
        "batch_sizes": {str(k): v for k, v in sorted(sizes.items())},
        "mean_batch": rows / batches if batches else 0.0,
        "fill_ratio": rows / capacity if capacity else 0.0,
        "padded_rows": diff("padded_rows"),
        "queue_delay_ms": dict(after.queue_delay_ms),
        "requests": diff("requests"),
        "failed": diff("failed"),
        "timed_out": diff("timed_out"),
        "max_batch_size": cap,
        "max_delay_ms": after.config.max_delay_ms,
    }


def device_runs(before: Any, after: Any) -> dict[str, int]:
    """Runs completed per device of a pool between two :class:`PoolStatistics` snapshots."""
    b0 = {d.device_id: d.completed for d in before.devices} if before is not None else {}
    return {str(d.device_id): d.completed - b0.get(d.device_id, 0) for d in after.devices}


def _not_visible(bad: int, visible: int) -> str:
    ids = ", ".join(map(str, range(visible))) if visible else "none"
    msg = f"--devices: device {bad} is not visible; this process sees {visible} device(s): {ids}"
    env = os.environ.get("ASCEND_RT_VISIBLE_DEVICES")
    if env is not None:
        msg += f" (ASCEND_RT_VISIBLE_DEVICES={env!r})"
    try:
        from ascend_async._backend import get_backend

        sim = get_backend().is_sim
    except Exception:
        sim = False
    if sim:
        have = os.environ.get("ASCEND_ASYNC_SIM_DEVICES")
        msg += (
            f". The simulated device has ASCEND_ASYNC_SIM_DEVICES={have or 'unset (1)'} devices, read when it starts: "
            "set it in the environment, e.g. ASCEND_ASYNC_SIM_DEVICES=4 ascend-async bench --demo cnn --devices all"
        )
    return msg


def _set_sim_timing(run_ms: float, sample_ms: float) -> None:
    from ascend_async._backend import get_backend

    b = get_backend()
    if not b.is_sim:
        raise BenchError(f"--sim-timing sets the simulated device's timing model; this backend is {b.name}")
    t = b.ffi.new("aa_sim_timing*", {"min_graph_us": round(run_ms * 1000), "per_sample_us": round(sample_ms * 1000)})
    b.lib.aa_sim_set_timing(t)


def _reset_sim_timing() -> None:
    from ascend_async._backend import get_backend

    b = get_backend()
    b.lib.aa_sim_set_timing(b.ffi.new("aa_sim_timing*"))


def run_benchmark(
    cfg: BenchConfig,
    on_level: Callable[[LevelResult], None] | None = None,
    progress: Any = None,
) -> tuple[list[LevelResult], RunFacts]:
    """Run every load level of ``cfg`` in order; returns the results (those so far when a level
    fails, the failing level carrying ``error``) and :class:`RunFacts`. A sweep stops early after
    the first level above ``cfg.latency_threshold``, and in a rate sweep after the first level
    that overloads the device (``facts.stopped`` says why). ``progress`` is an optional
    ``(label) -> display`` factory (see ``_progress.Progress``).

    :raises BenchError: for a model, input data or setting that cannot run, before any timing.
    """
    import ascend_async as aa

    if cfg.mode not in MODES:
        raise BenchError(f"--mode {cfg.mode!r}: choose one of {', '.join(MODES)}")
    if cfg.loop not in LOOPS:
        raise BenchError(f"--loop {cfg.loop!r}: choose one of {', '.join(LOOPS)}")
    if cfg.mode == "sync" and cfg.load == "rate":
        raise BenchError("--mode sync is a closed loop of one; it takes no --rate")
    serving = "--batch-max" if cfg.batch_max is not None else "--devices" if cfg.devices is not None else None
    if serving and cfg.mode != "async":
        raise BenchError(f"{serving} runs requests with await (a batcher, a device pool): it needs --mode async")
    if cfg.batch_max is not None:
        big = [p for p in cfg.batch_preferred if p > cfg.batch_max]
        if big:
            raise BenchError(f"--batch-preferred {big[0]} is larger than --batch-max {cfg.batch_max}")
    try:
        graph = _offline_model(cfg.model) or aa.Graph(cfg.model)
    except Exception as exc:
        raise BenchError(f"cannot load model {cfg.model}: {exc}") from exc
    samples = load_samples(graph, cfg.inputs, cfg.shapes, cfg.batch_size, cfg.seed)
    facts = RunFacts(
        inputs=samples.describe(), input_source=samples.source, batch=samples.batch, notes=list(samples.notes)
    )
    check = graph.cann_check
    if isinstance(graph, aa.OfflineModel):  # compiled already: no ONNX for the parser check
        facts.notes.append(f"offline model: {graph.gears or 'fixed shapes'}")
    else:
        facts.notes.append(
            "CANN check: CANN's ONNX parser would accept this model" if check.ok else "CANN check: " + check.refusal()
        )
    if len(samples.sets) > 1:
        facts.notes.append(f"{len(samples.sets)} input sets, used in turn")
    if cfg.batch_max is not None:
        # A request's rows are the first dim of its inputs (a static one too): inferences/s counts them.
        rows = {int(next(iter(s.values())).shape[0]) if next(iter(s.values())).ndim else 1 for s in samples.sets}
        if len(rows) > 1:
            raise BenchError(
                f"--batch-max {cfg.batch_max}: the input sets carry different row counts ({sorted(rows)}); "
                "give sets of one size, so that inferences/s counts rows exactly"
            )
        samples.batch = facts.batch = rows.pop()
        if samples.batch > cfg.batch_max:
            raise BenchError(
                f"--batch-max {cfg.batch_max}: each request carries {samples.batch} rows (--batch-size, the input "
                "data or a static batch dim), more than a batch may hold; lower --batch-size or raise --batch-max"
            )
    gears = None
    if cfg.gears:
        # every input's batch dim at each gear; its other dims as the input sets have them
        first = samples.sets[0]
        gears = {s.name: [(g, *first[s.name].shape[1:]) for g in cfg.gears] for s in graph.inputs}
        bad = sorted({int(a.shape[0]) for s in samples.sets for a in s.values()} - set(cfg.gears))
        if cfg.batch_max is None and bad:
            raise BenchError(
                f"--gears {','.join(map(str, cfg.gears))}: the requests carry {bad[0]} rows, not a gear "
                "(set --batch-size to a gear, or batch with --batch-max, which pads to the next gear)"
            )
    if cfg.report == "ais" and (cfg.mode != "async" or cfg.batch_max is not None or cfg.devices is not None):
        raise BenchError(
            "--report ais reads device events of each run: it needs --mode async without --batch-max or --devices"
        )
    levels = [1.0] if cfg.mode == "sync" else list(cfg.levels)
    results: list[LevelResult] = []
    peak = max(int(v) for v in levels) if cfg.load == "concurrency" else cfg.max_in_flight
    # Runs past the device's event budget wait for events (on the loop) in any case: ask for no
    # more than it has (a larger max_in_flight is clamped with a warning).
    from .._backend import get_backend
    from .._device import event_limit

    peak = min(max(512, peak), event_limit(get_backend()))
    pool: Any = None
    session: Any = None
    if cfg.devices is not None:
        visible = aa.device_count()
        ids = list(range(visible)) if isinstance(cfg.devices, str) else [int(d) for d in cfg.devices]
        if not ids:
            raise BenchError(_not_visible(0, visible).replace("device 0 is not visible", "no device is visible"))
        bad = [d for d in ids if d >= visible]
        if bad:
            raise BenchError(_not_visible(bad[0], visible))
        try:
            pool = aa.DevicePool(ids, streams_per_device=cfg.streams, max_in_flight=peak)
        except Exception as exc:
            raise BenchError(f"cannot open a device pool on devices {ids}: {exc}") from exc
        facts.devices = list(pool.devices)
    else:
        try:
            session = aa.Session(cfg.device, streams=cfg.streams, max_in_flight=peak)
        except Exception as exc:
            raise BenchError(f"cannot open a session on device {cfg.device}: {exc}") from exc
    target: Any = pool if pool is not None else session
    watch = facts.devices if facts.devices is not None else [cfg.device]

    def record(res: LevelResult) -> bool:
        """Keep a finished level; False when the sweep should end here."""
        results.append(res)
        if on_level:
            on_level(res)
        if res.error:
            return False
        th = cfg.latency_threshold
        if th is not None:
            v = res.latency_ms.get(pct_key(th.percentile))
            if v is not None and v > th.ms:
                facts.stopped = f"{res.label}: {pct_key(th.percentile)} {v:.3f} ms > --latency-threshold {th.ms:g} ms"
                return False
        if res.overloaded and res.value != levels[-1]:
            facts.stopped = f"{res.label} is overloaded (> 1% of its sends missed); higher rates would only miss more"
            return False
        return True

    def check_outputs(outs: list[dict[str, Any]]) -> None:
        if cfg.save_outputs:
            facts.saved_outputs = save_outputs(cfg.save_outputs, samples.names, outs)

    timing_set = False
    try:
        try:
            target.add_graph(graph, gears=gears) if gears else target.add_graph(graph)
        except Exception as exc:
            raise BenchError(f"cannot add model {cfg.model}: {exc}") from exc
        facts.backend = (pool.sessions[0] if pool is not None else session).backend
        if gears:
            facts.gears = {n: [list(sh) for sh in v] for n, v in gears.items()}

        def make_batcher() -> Any:
            try:
                return target.batcher(
                    graph,
                    max_batch_size=cfg.batch_max,
                    max_delay_ms=cfg.batch_delay_ms,
                    preferred_batch_sizes=cfg.batch_preferred,
                )
            except (ValueError, aa.GraphError) as exc:
                raise BenchError(f"--batch-max {cfg.batch_max}: {exc}") from exc

        if cfg.batch_max is not None:
            c = make_batcher().config
            facts.batcher = {
                "max_batch_size": c.max_batch_size,
                "max_delay_ms": c.max_delay_ms,
                "preferred_batch_sizes": list(c.preferred_batch_sizes),
                "max_concurrent_batches": c.max_concurrent_batches,
            }
        if cfg.sim_timing is not None:
            _set_sim_timing(*cfg.sim_timing)
            timing_set = True
            facts.sim_timing = {"ms_per_run": cfg.sim_timing[0], "ms_per_sample": cfg.sim_timing[1]}
        if cfg.mode in ("sync", "thread"):
            # Check the inputs and compile once, before any timing (and keep the outputs).
            try:
                check_outputs([session.run_sync(graph, s) for s in samples.sets])
            except aa.AscendError as exc:
                raise BenchError(f"{cfg.model}: the first run failed: {exc}") from exc

        if cfg.mode == "sync":
            res = LevelResult("concurrency", 1, batch=samples.batch)
            show = progress(res.label) if progress else None
            try:
                _sync_level(cfg, session, graph, samples, res, show)
            finally:
                if show is not None:
                    show.close()
            record(res)
            return results, facts

        async def main() -> None:
            try:
                if cfg.mode == "async":
                    # compile, load and run each gear once on every stream (Session.warmup)
                    reports = await target.warmup(graph)
                    reports = reports if isinstance(reports, list) else [reports]
                    facts.warmup = {
                        "seconds": max(r.seconds for r in reports),
                        "runs": sum(r.runs for r in reports),
                        "shapes": [{k: list(v) for k, v in sh.items()} for sh in reports[0].shapes],
                        "streams": sum(r.streams for r in reports),
                    }
                    facts.notes.append(
                        f"warm-up: compiled and loaded on {facts.warmup['streams']} stream(s), "
                        f"{facts.warmup['runs']} zero run(s) at {len(reports[0].shapes)} shape(s), "
                        f"{facts.warmup['seconds'] * 1000:.1f} ms"
                    )
                    check_outputs([await target.run(graph, s) for s in samples.sets])
                    if cfg.batch_max is not None:  # the requests as the batcher will see them
                        first = make_batcher()
                        await first.run(samples.sets[0])
                        first.close()
                elif cfg.mode == "callback":
                    one = _make_submit(session, graph, samples, "callback", 1)
                    check_outputs([await one(None) for _ in samples.sets])
            except aa.AscendError as exc:
                raise BenchError(f"{cfg.model}: the first run failed: {exc}") from exc
            # The heap built so far (onnx, numpy, the model, the interpreter's own objects) is
            # frozen, as latency-sensitive services do after startup: a full collection of it
            # takes ~10 ms here and would land in some level's latencies and loop lag. What the
            # runs themselves allocate is still collected.
            gc.collect()
            gc.freeze()
            try:
                if cfg.trace:
                    with target.trace(cfg.trace):
                        await _levels()
                    facts.trace = cfg.trace
                else:
                    await _levels()
            finally:
                gc.unfreeze()

        async def _levels() -> None:
            for value in levels:
                res = LevelResult(cfg.load, value, batch=samples.batch)
                limit = int(value) if cfg.load == "concurrency" else cfg.max_in_flight
                batcher = make_batcher() if cfg.batch_max is not None else None
                run: Callable[..., Awaitable[Any]] | None = None
                if batcher is not None:
                    run = batcher.run
                elif pool is not None:
                    run = functools.partial(pool.run, graph)
                snap: dict[str, Any] = {}

                def on_measure(batcher: Any = batcher, snap: dict[str, Any] = snap) -> None:
                    snap["batcher"] = batcher.statistics() if batcher is not None else None
                    snap["pool"] = pool.statistics() if pool is not None else None

                every = 1 if cfg.report == "ais" else PROFILE_EVERY
                submit = _make_submit(session, graph, samples, cfg.mode, limit, run, every)
                show = progress(res.label) if progress else None
                w0 = _bridge_wakeups()
                kw = {"on_measure": on_measure, "watch": watch}
                try:
                    if cfg.load == "rate":
                        state = await _open_level(cfg, submit, value, res, show, **kw)
                    else:
                        state = await _closed_level(cfg, submit, int(value), res, show, **kw)
                finally:
                    if show is not None:
                        show.close()
                w1 = _bridge_wakeups()
                if cfg.mode == "async" and w0 is not None and w1 is not None and state.done:
                    res.loop_wakeups_per_run = (w1 - w0) / state.done
                if batcher is not None:
                    res.batcher = batcher_figures(snap.get("batcher"), batcher.statistics(), res.elapsed_s)
                    batcher.close()
                if pool is not None:
                    res.device_runs = device_runs(snap.get("pool"), pool.statistics())
                if not record(res):
                    return

        _run_loop(cfg.loop, main)
    finally:
        if timing_set:
            _reset_sim_timing()
        try:
            target.close()
        except Exception:  # a faulted session still closes as far as it can
            pass
    return results, facts


def _bridge_wakeups() -> int | None:
    """Wake-ups posted to the running loop by the watcher (LoopBridge.wakeups; internal)."""
    try:
        return int(current_bridge().wakeups)
    except Exception:
        return None


def _run_loop(loop: str, fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
    if loop == "trio":
        try:
            import trio  # noqa: F401
        except ImportError:
            raise BenchError("--loop trio: trio is not installed (pip install 'ascend-async[trio]')") from None
        anyio.run(fn, backend="trio")
    elif loop == "uvloop":
        try:
            import uvloop  # noqa: F401
        except ImportError:
            raise BenchError("--loop uvloop: uvloop is not installed (pip install 'ascend-async[uvloop]')") from None
        anyio.run(fn, backend="asyncio", backend_options={"use_uvloop": True})
    else:
        anyio.run(fn, backend="asyncio")


def _offline_model(path: str) -> Any:
    """An offline model (.om, or the sim's container) read for its signature by a short-lived
    session (each benchmarked session loads it again), or None for anything else."""
    from .._offline import OM_MAGIC, SIM_HEADER

    try:
        with open(path, "rb") as f:
            head = f.read(len(SIM_HEADER))
    except OSError:
        return None
    if not (head.startswith(OM_MAGIC) or head == SIM_HEADER or str(path).endswith(".om")):
        return None
    import ascend_async as aa

    with aa.Session(streams=1) as probe:
        return probe.load_model(path)
