"""Prometheus metrics (optional ``prometheus_client``, extra ``[metrics]``).

The hooks: ``Session.run`` and the batcher call ``hook`` (a module global, ``None`` unless an
exporter is installed) once per finished run and once per batch. Off, a hook costs one global
load and a compare. On, a run costs a dict lookup for its (stream, graph) label children, a
histogram observation and a counter increment. Gauges (runs in flight, device memory, queued
requests) are not hooked at all: they are read from the sessions and batchers seen so far when
Prometheus scrapes.

Threads: hooks run on event-loop threads; prometheus_client's metrics lock internally. The
label-children cache and the sets of seen sessions and batchers are guarded by ``_lock``, taken
only on a cache miss and at scrape time.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._batcher import Batcher
    from ._graph import Graph
    from ._session import Session
    from ._watcher import Job

__all__ = ["PrometheusExporter", "hook"]

#: The installed exporter, or None. Read on every run; written only by install/uninstall.
hook: PrometheusExporter | None = None

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
_DELAY_BUCKETS = (0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


def _require() -> Any:
    try:
        import prometheus_client
    except ImportError as exc:
        raise ImportError(
            "the Prometheus exporter needs prometheus_client: pip install 'ascend-async[metrics]'"
        ) from exc
    return prometheus_client


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
        ns = namespace
        r = self.registry
        self._runs = pc.Counter(f"{ns}_runs", "Runs finished", ["graph", "stream", "device"], registry=r)
        self._failures = pc.Counter(
            f"{ns}_run_failures",
            "Runs that raised (device faults and other errors)",
            ["graph", "stream", "device"],
            registry=r,
        )
        self._latency = pc.Histogram(
            f"{ns}_run_latency_seconds",
            "From entering run() to its result",
            ["graph", "stream", "device"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self._batch_rows = pc.Histogram(
            f"{ns}_batch_size", "Rows per batch (before padding)", ["graph"], buckets=_BATCH_BUCKETS, registry=r
        )
        self._batch_padded = pc.Counter(f"{ns}_batch_padded_rows", "Zero rows added to batches", ["graph"], registry=r)
        self._queue_delay = pc.Histogram(
            f"{ns}_batch_queue_delay_seconds",
            "From batcher.run() to the submission of its batch",
            ["graph"],
            buckets=_DELAY_BUCKETS,
            registry=r,
        )
        self._lock = threading.Lock()
        self._children: weakref.WeakKeyDictionary[Any, dict[int, tuple[Any, Any, Any]]] = weakref.WeakKeyDictionary()
        self._sessions: weakref.WeakSet[Session] = weakref.WeakSet()
        self._batchers: weakref.WeakSet[Batcher] = weakref.WeakSet()
        r.register(_GaugeCollector(self, ns))
        self._server: Any = None

    # -- installation ---------------------------------------------------------------------------

    def install(self) -> PrometheusExporter:
        """Make this the process's exporter (replacing any other); returns self."""
        global hook
        hook = self
        return self

    def uninstall(self) -> None:
        """Stop counting (if this exporter is the installed one)."""
        global hook
        if hook is self:
            hook = None

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

    def run(self, session: Session, graph: Graph, job: Job, t_entry_ns: int) -> None:
        """One finished run (called by Session.run after its result or error arrived)."""
        lane = job.lane
        per_lane = self._children.get(lane)
        kids = per_lane.get(id(graph)) if per_lane is not None else None
        if kids is None:
            kids = self._children_for(session, graph, lane)
        runs, failures, latency = kids
        latency.observe((time.perf_counter_ns() - t_entry_ns) / 1e9)
        if job.error is not None:
            failures.inc()
        else:
            runs.inc()

    def _children_for(self, session: Session, graph: Graph, lane: Any) -> tuple[Any, Any, Any]:
        labels = (graph.name, str(lane.index), str(session._device.id))
        kids = (self._runs.labels(*labels), self._failures.labels(*labels), self._latency.labels(*labels))
        with self._lock:
            self._children.setdefault(lane, {})[id(graph)] = kids
            self._sessions.add(session)
        return kids

    def batch(self, batcher: Batcher, rows: int, run_rows: int, delays_ms: Sequence[float]) -> None:
        """One batch submitted by a batcher."""
        name = batcher.graph.name
        self._batch_rows.labels(name).observe(rows)
        if run_rows > rows:
            self._batch_padded.labels(name).inc(run_rows - rows)
        delay = self._queue_delay.labels(name)
        for d in delays_ms:
            delay.observe(d / 1000.0)
        if batcher not in self._batchers:
            with self._lock:
                self._batchers.add(batcher)


class _GaugeCollector:
    """Scrape-time gauges: runs in flight and device memory by device, queued requests by graph."""

    def __init__(self, exporter: PrometheusExporter, ns: str) -> None:
        self._exporter = weakref.ref(exporter)
        self._ns = ns

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        ns = self._ns
        in_flight = GaugeMetricFamily(f"{ns}_runs_in_flight", "Runs submitted and not finished", labels=["device"])
        memory = GaugeMetricFamily(
            f"{ns}_device_memory_bytes", "Device memory held by the caching pool", labels=["device", "state"]
        )
        queued = GaugeMetricFamily(f"{ns}_batcher_queued_requests", "Requests waiting in batchers", labels=["graph"])
        exporter = self._exporter()
        if exporter is not None:
            with exporter._lock:
                sessions = list(exporter._sessions)
                batchers = list(exporter._batchers)
            flights: dict[str, int] = {}
            pools: dict[str, dict[str, int]] = {}
            for s in sessions:
                try:
                    st = s.statistics()
                except Exception:  # closed meanwhile
                    continue
                dev = str(s._device.id) if s._device is not None else "?"
                flights[dev] = flights.get(dev, 0) + st.in_flight
                pools[dev] = dict(st.device_pool)
            for dev, n in sorted(flights.items()):
                in_flight.add_metric([dev], n)
            for dev, p in sorted(pools.items()):
                memory.add_metric([dev, "live"], p.get("live_bytes", 0))
                memory.add_metric([dev, "cached"], p.get("cached_bytes", 0))
            per_graph: dict[str, int] = {}
            for b in batchers:
                name = b.graph.name
                per_graph[name] = per_graph.get(name, 0) + b.statistics().queued
            for name, n in sorted(per_graph.items()):
                queued.add_metric([name], n)
        yield in_flight
        yield memory
        yield queued
