"""Prometheus metrics (optional ``prometheus_client``, extra ``[metrics]``).

The hooks: ``Session.run`` and the batcher call ``_hooks.metrics`` (``None`` unless an exporter
is installed: the core never imports this module) once per finished run and once per batch. Off, a hook costs one global
load and a compare. On, a run costs a dict lookup and a few integer increments into
accumulators owned by the calling thread: no lock, no prometheus_client call. Everything is
turned into Prometheus metrics when Prometheus scrapes: counters and histograms from the
accumulators, and gauges (runs in flight, device memory, queued requests) read from the sessions
and batchers seen so far.

Threads: each thread that runs hooks writes only its own accumulators (a ``threading.local``);
the scrape thread reads them all (plain int reads: a scrape may miss increments still being
made, never corrupts them). The list of per-thread accumulators and the sets of seen sessions
and batchers are guarded by ``_lock``, taken when a thread first reports and at scrape time.
"""

from __future__ import annotations

import bisect
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from . import _hooks

if TYPE_CHECKING:
    from ._batcher import Batcher
    from ._graph import Graph
    from ._session import Session
    from ._submit import Run

__all__ = ["PrometheusExporter", "installed"]


def installed() -> PrometheusExporter | None:
    """The installed exporter (the one ``Session.run`` reports to), or None."""
    hook = _hooks.metrics
    return hook if isinstance(hook, PrometheusExporter) else None


_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
_DELAY_BUCKETS = (0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


def _require() -> Any:
    try:
        import prometheus_client
    except ImportError as exc:
        raise ImportError(
            "the Prometheus exporter needs prometheus_client: pip install prometheus_client (the [metrics] extra; "
            "from a clone: pip install '.[metrics]')"
        ) from exc
    return prometheus_client


class _Hist:
    """A histogram accumulator written by one thread: per-bucket counts (not cumulative), sum."""

    __slots__ = ("counts", "sum")

    def __init__(self, n_buckets: int) -> None:
        self.counts = [0] * (n_buckets + 1)  # the last one is +Inf
        self.sum = 0.0


class _RunAcc:
    """One thread's runs under one (graph, stream, device)."""

    __slots__ = ("failures", "latency", "runs", "session_id")

    def __init__(self) -> None:
        self.runs = 0
        self.failures = 0
        self.latency = _Hist(len(_LATENCY_BUCKETS))
        self.session_id = 0


class _BatchAcc:
    """One thread's batches of one graph."""

    __slots__ = ("delay", "padded", "rows")

    def __init__(self) -> None:
        self.rows = _Hist(len(_BATCH_BUCKETS))
        self.delay = _Hist(len(_DELAY_BUCKETS))
        self.padded = 0


class _ThreadAcc:
    __slots__ = ("batches", "runs")

    def __init__(self) -> None:
        self.runs: dict[tuple[str, int, int], _RunAcc] = {}
        self.batches: dict[str, _BatchAcc] = {}


class PrometheusExporter:
    """Exports ascend_async's activity as Prometheus metrics.

    Runs and failures (counters), run latency (histogram from entering ``run`` to its result,
    by graph, stream and device), runs in flight and device memory in use (live and cached
    pool bytes, by device), and for batchers the batch sizes, queue delay and queued requests
    (by graph). Only what happens while the exporter is installed is counted.

    .. code-block:: python

        exporter = ascend_async.PrometheusExporter().install()
        exporter.start_http_server(9400)          # or use exporter.registry in your own app

    :param registry: the prometheus_client ``CollectorRegistry`` to register in (a new one by
        default; pass ``prometheus_client.REGISTRY`` to share the process-wide one).
    :raises ImportError: prometheus_client is not installed (``pip install 'ascend-async[metrics]'``).
    """

    def __init__(self, registry: Any = None, *, namespace: str = "ascend_async") -> None:
        pc = _require()
        self.registry = registry if registry is not None else pc.CollectorRegistry(auto_describe=True)
        self.namespace = namespace
        self._lock = threading.Lock()
        self._local = threading.local()
        self._threads: list[_ThreadAcc] = []
        self._sessions: weakref.WeakSet[Session] = weakref.WeakSet()
        self._batchers: weakref.WeakSet[Batcher] = weakref.WeakSet()
        self.registry.register(_Collector(self))
        self._server: Any = None

    # -- installation ---------------------------------------------------------------------------

    def install(self) -> PrometheusExporter:
        """Make this the process's exporter (replacing any other); returns self."""
        _hooks.metrics = self
        return self

    def uninstall(self) -> None:
        """Stop counting (if this exporter is the installed one)."""
        if _hooks.metrics is self:
            _hooks.metrics = None

    def __enter__(self) -> PrometheusExporter:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.uninstall()

    def start_http_server(self, port: int, addr: str = "0.0.0.0") -> Any:
        """Serve ``/metrics`` on a prometheus_client thread; returns (server, thread)."""
        self._server = _require().start_http_server(port, addr=addr, registry=self.registry)
        return self._server

    def generate_latest(self) -> bytes:
        """The current metrics in Prometheus' text format."""
        return bytes(_require().generate_latest(self.registry))

    # -- hooks (event-loop threads) -------------------------------------------------------------

    def _mine(self) -> _ThreadAcc:
        acc: _ThreadAcc | None = getattr(self._local, "acc", None)
        if acc is None:
            acc = self._local.acc = _ThreadAcc()
            with self._lock:
                self._threads.append(acc)
        return acc

    def run(self, session: Session, graph: Graph, run: Run, t_entry_ns: int) -> None:
        """One finished run (called by Session.run after its result or error arrived)."""
        seconds = (time.perf_counter_ns() - t_entry_ns) / 1e9
        key = (graph.name, run.replica.stream.index, session._device.id)
        runs = self._mine().runs
        acc = runs.get(key)
        if acc is None:
            acc = runs[key] = _RunAcc()
        if acc.session_id != id(session):  # a session not seen under these labels: remember it
            acc.session_id = id(session)
            with self._lock:
                self._sessions.add(session)
        if run.error is not None:
            acc.failures += 1
        else:
            acc.runs += 1
        lat = acc.latency
        lat.counts[bisect.bisect_left(_LATENCY_BUCKETS, seconds)] += 1
        lat.sum += seconds

    def batch(self, batcher: Batcher, rows: int, run_rows: int, delays_ms: Sequence[float]) -> None:
        """One batch submitted by a batcher."""
        batches = self._mine().batches
        name = batcher.graph.name
        acc = batches.get(name)
        if acc is None:
            acc = batches[name] = _BatchAcc()
        acc.rows.counts[bisect.bisect_left(_BATCH_BUCKETS, rows)] += 1
        acc.rows.sum += rows
        acc.padded += run_rows - rows
        d = acc.delay
        for ms in delays_ms:
            d.counts[bisect.bisect_left(_DELAY_BUCKETS, ms / 1000.0)] += 1
            d.sum += ms / 1000.0
        if batcher not in self._batchers:
            with self._lock:
                self._batchers.add(batcher)


def _merge(into: _Hist | None, h: _Hist) -> _Hist:
    if into is None:
        into = _Hist(len(h.counts) - 1)
    for i, c in enumerate(h.counts):
        into.counts[i] += c
    into.sum += h.sum
    return into


def _buckets(h: _Hist, bounds: Sequence[float]) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    acc = 0.0
    for b, c in zip((*bounds, float("inf")), h.counts, strict=True):
        acc += c
        out.append(("+Inf" if b == float("inf") else repr(float(b)), acc))
    return out


class _Collector:
    """Builds every metric at scrape time from the exporter's accumulators and live objects."""

    def __init__(self, exporter: PrometheusExporter) -> None:
        self._exporter = weakref.ref(exporter)

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        exporter = self._exporter()
        if exporter is None:
            return
        ns = exporter.namespace
        with exporter._lock:
            threads = list(exporter._threads)
            sessions = list(exporter._sessions)
            batchers = list(exporter._batchers)
        run_labels = ["graph", "stream", "device"]
        runs = CounterMetricFamily(f"{ns}_runs", "Runs finished", labels=run_labels)
        failures = CounterMetricFamily(
            f"{ns}_run_failures", "Runs that raised (device faults and others)", labels=run_labels
        )
        latency = HistogramMetricFamily(
            f"{ns}_run_latency_seconds", "From entering run() to its result", labels=run_labels
        )
        merged: dict[tuple[str, int, int], tuple[int, int, _Hist | None]] = {}
        for t in threads:
            for key, a in list(t.runs.items()):
                n, f, h = merged.get(key, (0, 0, None))
                merged[key] = (n + a.runs, f + a.failures, _merge(h, a.latency))
        for (graph, stream, device), (n, f, h) in sorted(merged.items()):
            labels = [graph, str(stream), str(device)]
            runs.add_metric(labels, n)
            failures.add_metric(labels, f)
            assert h is not None
            latency.add_metric(labels, _buckets(h, _LATENCY_BUCKETS), h.sum)
        yield runs
        yield failures
        yield latency

        sizes = HistogramMetricFamily(f"{ns}_batch_size", "Rows per batch (before padding)", labels=["graph"])
        delay = HistogramMetricFamily(
            f"{ns}_batch_queue_delay_seconds", "From batcher.run() to the submission of its batch", labels=["graph"]
        )
        padded = CounterMetricFamily(f"{ns}_batch_padded_rows", "Zero rows added to batches", labels=["graph"])
        per_graph: dict[str, tuple[_Hist | None, _Hist | None, int]] = {}
        for t in threads:
            for name, b in list(t.batches.items()):
                r, d, p = per_graph.get(name, (None, None, 0))
                per_graph[name] = (_merge(r, b.rows), _merge(d, b.delay), p + b.padded)
        for name, (r, d, p) in sorted(per_graph.items()):
            assert r is not None and d is not None
            sizes.add_metric([name], _buckets(r, _BATCH_BUCKETS), r.sum)
            delay.add_metric([name], _buckets(d, _DELAY_BUCKETS), d.sum)
            padded.add_metric([name], p)
        yield sizes
        yield delay
        yield padded

        in_flight = GaugeMetricFamily(f"{ns}_runs_in_flight", "Runs submitted and not finished", labels=["device"])
        memory = GaugeMetricFamily(
            f"{ns}_device_memory_bytes", "Device memory held by the caching pool", labels=["device", "state"]
        )
        queued = GaugeMetricFamily(f"{ns}_batcher_queued_requests", "Requests waiting in batchers", labels=["graph"])
        flights: dict[str, int] = {}
        pools: dict[str, dict[str, int]] = {}
        for s in sessions:
            try:
                dev = str(s._device.id)
                st = s.statistics()
            except Exception:  # closed meanwhile
                continue
            flights[dev] = flights.get(dev, 0) + st.in_flight
            pools[dev] = dict(st.device_pool)
        for dev, n in sorted(flights.items()):
            in_flight.add_metric([dev], n)
        for dev, pool in sorted(pools.items()):
            memory.add_metric([dev, "live"], pool.get("live_bytes", 0))
            memory.add_metric([dev, "cached"], pool.get("cached_bytes", 0))
        waiting: dict[str, int] = {}
        for bt in batchers:
            waiting[bt.graph.name] = waiting.get(bt.graph.name, 0) + bt.statistics().queued
        for name, n in sorted(waiting.items()):
            queued.add_metric([name], n)
        yield in_flight
        yield memory
        yield queued
