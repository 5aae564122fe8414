"""The seams between the core and the serving storey above it (a leaf: imports nothing of ours).

The core (sessions, runs, streams, the loop) never imports the serving layer (batcher, device
pool, metrics, Ray Serve). Where the core must reach up, it calls through a slot here that the
serving layer fills when it is imported:

- ``metrics``: the installed Prometheus exporter, or ``None``. ``Session.run`` calls
  ``metrics.run(...)`` once per finished run and the batcher ``metrics.batch(...)`` once per
  batch. Read on every run (one global load and a compare when off); written only by
  ``PrometheusExporter.install``/``uninstall``.
- ``make_batcher``: the :class:`~ascend_async.Batcher` constructor behind ``Session.batcher``,
  set once when ``_batcher`` is imported (``import ascend_async`` does).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import Sequence


class MetricsHook(Protocol):
    """What the core and the batcher report to (``_metrics.PrometheusExporter``)."""

    def run(self, session: Any, graph: Any, run: Any, t_entry_ns: int) -> None: ...

    def batch(self, batcher: Any, rows: int, run_rows: int, delays_ms: Sequence[float]) -> None: ...


#: The installed exporter, or None.
metrics: MetricsHook | None = None

#: ``Batcher(session, graph, **params)``, filled by ``_batcher`` at import.
make_batcher: Any = None
