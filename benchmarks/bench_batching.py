"""Serving at scale on the sim: the dynamic batcher, the device pool, and the metrics hooks.

(A) The sim's timing model set to a small-CNN NPU profile (every graph run lasts at least 2 ms +
0.1 ms per sample): one-sample requests at concurrency 1..64, unbatched ``session.run`` against
``session.batcher(...)``: inferences/s and p50/p99 latency per level, on the bundled CNN and MLP.
(B) The same with the timing model off: the device time is the sim's own compute.
(C) A pool of 4 devices against 1 when the device is the bottleneck (MLP, timing model on).
(D) The Prometheus hooks on and off (MLP, timing model off: host-bound, the hooks' worst case),
in ABBA order, and the hook's own cost per run measured in isolation.

    python benchmarks/bench_batching.py [--duration 3] [--only A] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import types
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from importlib.resources import files
from typing import Any

os.environ.setdefault("ASCEND_ASYNC_SIM_DEVICES", "4")  # before the sim runtime starts

import anyio
import numpy as np
from _common import Row, environment_line, print_rows, verdict

import ascend_async as aa

MODELS = files("ascend_async.models")
LEVELS = (1, 4, 16, 64)
Curve = dict[str, dict[int, dict[str, float]]]


@contextmanager
def timing(min_graph_us: int, per_sample_us: int) -> Iterator[None]:
    from ascend_async._probe import sim

    _sim = sim()

    cfg = {"min_graph_us": min_graph_us, "per_sample_us": per_sample_us}
    _sim.lib.aa_sim_set_timing(_sim.ffi.new("aa_sim_timing*", cfg))
    try:
        yield
    finally:
        _sim.lib.aa_sim_set_timing(_sim.ffi.new("aa_sim_timing*"))


async def closed_loop(submit: Callable[[], Coroutine[Any, Any, Any]], conc: int, duration: float) -> dict[str, float]:
    """``conc`` clients each awaiting ``submit`` (one sample) back to back; after a warm-up,
    ``duration`` s measured: inferences/s and request latency p50/p99 (ms)."""
    lat: list[int] = []
    measuring = [False]
    stop = [False]

    async def client() -> None:
        while not stop[0]:
            t = time.perf_counter_ns()
            await submit()
            if measuring[0]:
                lat.append(time.perf_counter_ns() - t)

    async with anyio.create_task_group() as tg:
        for _ in range(conc):
            tg.start_soon(client)
        await anyio.sleep(min(1.0, duration / 3))  # warm-up: loads, pools, batch sizes settle
        measuring[0] = True
        t0 = time.perf_counter()
        await anyio.sleep(duration)
        measuring[0] = False
        el = time.perf_counter() - t0
        n = len(lat)
        stop[0] = True
    ms = np.asarray(lat[:n], np.float64) / 1e6 if n else np.zeros(1)
    return {"inf_s": n / el, "p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99))}


def run(fn: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    try:
        import uvloop
    except ImportError:
        return anyio.run(fn)
    return anyio.run(fn, backend_options={"loop_factory": uvloop.new_event_loop})


def batching_curve(model: str, duration: float, max_batch: int, delay_ms: float) -> Curve:
    out: Curve = {"unbatched": {}, "batched": {}}
    shape = (1, 3, 32, 32) if model == "cnn" else (1, 64)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)

    async def main() -> None:
        async with aa.Session(streams=2, max_in_flight=1000) as s:
            g = s.add_graph(str(MODELS / f"{model}.onnx"))
            await s.load(g)
            for c in LEVELS:
                b = s.batcher(g, max_batch_size=max_batch, max_delay_ms=delay_ms)
                out["unbatched"][c] = await closed_loop(lambda: s.run(g, {"x": x}), c, duration)
                out["batched"][c] = r = await closed_loop(lambda b=b: b.run({"x": x}), c, duration)
                st = b.statistics()
                r["mean_batch"] = sum(k * v for k, v in st.batch_sizes.items()) / max(1, st.batches)
                print(f"  {model} c={c}: {out['unbatched'][c]} | batched {r}", file=sys.stderr)

    run(main)
    return out


def pool_scaling(duration: float) -> dict[int, float]:
    x = np.ones((1, 64), np.float32)
    out: dict[int, float] = {}
    for n in (1, 4):

        async def main(n: int = n) -> None:
            async with aa.DevicePool(list(range(n)), streams_per_device=2, max_in_flight=1000) as pool:
                g = pool.add_graph(str(MODELS / "mlp.onnx"))
                await pool.load(g)
                out[n] = (await closed_loop(lambda: pool.run(g, {"x": x}), 64, duration))["inf_s"]

        run(main)
    return out


def metrics_overhead(duration: float, repeats: int) -> tuple[float, float, float]:
    """Runs/s with the exporter installed and not, in ABBA order (the machine drifts), and the
    hook's own cost per run measured in isolation (us)."""
    x = np.ones((1, 64), np.float32)
    rates: dict[bool, list[float]] = {False: [], True: []}
    exporter = aa.PrometheusExporter()
    hook_us = [0.0]

    async def main() -> None:
        async with aa.Session(streams=2, max_in_flight=1000) as s:
            g = s.add_graph(str(MODELS / "mlp.onnx"))
            await s.load(g)
            await closed_loop(lambda: s.run(g, {"x": x}), 64, duration / 2)
            for i in range(repeats):
                for on in (False, True) if i % 2 == 0 else (True, False):
                    if on:
                        exporter.install()
                    try:
                        rates[on].append((await closed_loop(lambda: s.run(g, {"x": x}), 64, duration))["inf_s"])
                    finally:
                        exporter.uninstall()
            # The hook alone, on a finished run's stand-in: what it reads is the run's stream
            # (through its replica) and its error.
            done = types.SimpleNamespace(replica=types.SimpleNamespace(stream=s.streams[0]), error=None)
            n = 100_000
            t0 = time.perf_counter_ns()
            for _ in range(n):
                exporter.run(s, g, done, t0)  # type: ignore[arg-type]
            hook_us[0] = (time.perf_counter_ns() - t0) / n / 1000

    run(main)
    return statistics.median(rates[False]), statistics.median(rates[True]), hook_us[0]


def curve_rows(rows: list[Row], section: str, curve: Curve, target: bool) -> None:
    for c in LEVELS:
        u, b = curve["unbatched"][c], curve["batched"][c]
        gain = b["inf_s"] / u["inf_s"]
        rows.append(
            Row(
                section,
                f"c={c} inf/s (mean batch)",
                f"{u['inf_s']:.0f} -> {b['inf_s']:.0f} ({gain:.2f}x, {b['mean_batch']:.1f})",
            )
        )
        rows.append(
            Row(section, f"c={c} p50/p99 ms", f"{u['p50']:.2f}/{u['p99']:.2f} -> {b['p50']:.2f}/{b['p99']:.2f}")
        )
    u, b = curve["unbatched"][64], curve["batched"][64]
    ok = b["inf_s"] >= 3 * u["inf_s"] and b["p99"] <= u["p99"]
    value = f"{b['inf_s'] / u['inf_s']:.2f}x, p99 {b['p99']:.2f} vs {u['p99']:.2f} ms"
    rows.append(
        Row(
            section, "c=64 batched vs unbatched", value, ">=3x, <= p99" if target else "", verdict(ok) if target else ""
        )
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="serving at scale: batcher, device pool, metrics hooks")
    p.add_argument("--duration", type=float, default=3.0, help="seconds measured per point")
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--delay-ms", type=float, default=0.0, help="max_delay_ms (0: send whenever a lane is free)")
    p.add_argument("--repeats", type=int, default=6, help="on/off pairs for the metrics overhead")
    p.add_argument("--only", choices=("A", "B", "C", "D"), action="append")
    p.add_argument("--json", help="write the raw figures here")
    a = p.parse_args(argv)
    only = set(a.only or "ABCD")
    print(environment_line(), file=sys.stderr)
    rows: list[Row] = []
    raw: dict[str, Any] = {}
    if "A" in only:
        for model in ("cnn", "mlp"):
            with timing(2000, 100):
                raw[f"A-{model}"] = curve = batching_curve(model, a.duration, a.max_batch, a.delay_ms)
            curve_rows(rows, f"A {model}, 2ms+0.1ms/sample", curve, True)
    if "B" in only:
        for model in ("cnn", "mlp"):
            raw[f"B-{model}"] = curve = batching_curve(model, a.duration, a.max_batch, a.delay_ms)
            curve_rows(rows, f"B {model}, timing off", curve, False)
    if "C" in only:
        with timing(2000, 100):
            raw["C"] = pool = pool_scaling(a.duration)
        ratio = pool[4] / pool[1]
        value = f"{pool[1]:.0f} -> {pool[4]:.0f} ({ratio:.2f}x)"
        rows.append(
            Row("C pool (mlp, 2ms+0.1ms)", "runs/s 1 -> 4 devices, c=64", value, ">=3.5x", verdict(ratio >= 3.5))
        )
    if "D" in only:
        off, on, hook_us = metrics_overhead(a.duration, a.repeats)
        raw["D"] = {"off": off, "on": on, "hook_us": hook_us}
        cost = (off - on) / off * 100
        share = hook_us * off / 1e6 * 100  # the hooks' CPU time per second at this run rate
        rows.append(
            Row("D metrics (mlp)", "runs/s off -> on, c=64 (median, ABBA)", f"{off:.0f} -> {on:.0f} ({cost:+.1f}%)")
        )
        value = f"{hook_us:.2f} us x {off:.0f}/s = {share:.2f}%"
        rows.append(Row("D metrics (mlp)", "hook cost per run x runs/s", value, "<2%", verdict(share < 2)))
    print_rows(rows)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(raw, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
