"""The Prometheus exporter: runs, failures and latency by graph/stream/device, batch sizes and
queue delay, scrape-time gauges, installation, and the error when prometheus_client is missing."""

from __future__ import annotations

import sys

import anyio
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import ascend_async as aa
from ascend_async import _metrics
from ascend_async._native import _sim

pytestmark = pytest.mark.anyio

prometheus_client = pytest.importorskip("prometheus_client")  # in the test extra; CI has it
X = np.ones((2, 4), np.float32)


def add_model() -> onnx.ModelProto:
    vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 4]) for n in ("x", "y")]
    graph = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "add", vi[:1], vi[1:])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def value(exporter: aa.PrometheusExporter, name: str, **labels: str) -> float | None:
    v = exporter.registry.get_sample_value(name, labels)
    return None if v is None else float(v)


async def test_exporter_counts_runs_failures_latency_and_batches() -> None:
    with aa.PrometheusExporter() as exporter:
        assert _metrics.installed() is exporter
        async with aa.Session(streams=1) as s:
            g = s.add_graph(add_model())
            await s.load(g)
            for _ in range(3):
                await s.run(g, [X])
            assert _sim.lib.aa_sim_inject_fault(s.streams[0].handle, 1, 507015) == 0
            with pytest.raises(aa.DeviceError):
                await s.run(g, [X])
            lab = {"graph": "add", "stream": "0", "device": "0"}
            assert value(exporter, "ascend_async_runs_total", **lab) == 3
            assert value(exporter, "ascend_async_run_failures_total", **lab) == 1
            assert value(exporter, "ascend_async_run_latency_seconds_count", **lab) == 4
            assert (value(exporter, "ascend_async_run_latency_seconds_sum", **lab) or 0) > 0

            b = s.batcher(g, max_batch_size=4, max_delay_ms=60_000)
            async with anyio.create_task_group() as tg:
                for _ in range(4):
                    tg.start_soon(b.run, {"x": X[:1]})
            assert value(exporter, "ascend_async_batch_size_count", graph="add") == 1
            assert value(exporter, "ascend_async_batch_size_sum", graph="add") == 4
            assert value(exporter, "ascend_async_batch_queue_delay_seconds_count", graph="add") == 4
            assert value(exporter, "ascend_async_batcher_queued_requests", graph="add") == 0
            assert value(exporter, "ascend_async_runs_in_flight", device="0") == 0
            assert (value(exporter, "ascend_async_device_memory_bytes", device="0", state="cached") or 0) > 0
            text = exporter.generate_latest().decode()
            assert 'ascend_async_runs_total{device="0",graph="add",stream="0"} 4.0' in text  # + the batch
            assert 'ascend_async_batch_size_bucket{graph="add",le="4.0"} 1.0' in text
    assert _metrics.installed() is None


async def test_uninstalled_exporter_counts_nothing() -> None:
    exporter = aa.PrometheusExporter().install()
    exporter.uninstall()
    async with aa.Session() as s:
        g = s.add_graph(add_model())
        await s.run(g, [X])
    assert value(exporter, "ascend_async_runs_total", graph="add", stream="0", device="0") is None


def test_missing_prometheus_client_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(ImportError, match=r"pip install prometheus_client .*from a clone: pip install '\.\[metrics\]'"):
        aa.PrometheusExporter()
