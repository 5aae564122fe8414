"""Measurement: per-level state and results, percentiles, event-loop lag, CPU accounting
(process, watcher thread, the sim's device threads), device-event stages and ais_bench's summary."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import anyio
import numpy as np

from .._loop import current_bridge
from .._probe import thread_cpu_s
from ._config import BASE_PERCENTILES, LAG_PERIOD_S, MIN_TAIL, BenchConfig
from ._options import pct_key

__all__ = [
    "LevelResult",
    "LevelState",
    "RunFacts",
    "ais_summary",
    "batcher_figures",
    "device_runs",
    "few_samples",
    "overloaded",
    "percentiles",
    "summarize_stages",
    "thread_cpu_s",
]


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


def watcher_tid(device: int = 0) -> int | None:
    name = f"ascend-async-watcher-{device}"
    for t in threading.enumerate():
        if t.name == name:
            return t.native_id
    return None


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


async def lag_monitor(state: LevelState) -> None:
    period = int(LAG_PERIOD_S * 1e9)
    while True:
        t = time.perf_counter_ns()
        await anyio.sleep(LAG_PERIOD_S)
        if state.measuring:
            state.lag.append(max(0, time.perf_counter_ns() - t - period))


def finish_level(cfg: BenchConfig, state: LevelState) -> None:
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


def bridge_wakeups() -> int | None:
    """Wake-ups posted to the running loop by the watcher (LoopBridge.wakeups; internal)."""
    try:
        return int(current_bridge().wakeups)
    except Exception:
        return None
