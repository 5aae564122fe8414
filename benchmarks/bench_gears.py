"""Static gears against dynamic batching at c=64, with the sim's timing model set as an NPU's.

The sim's timing model (``aa_sim_set_timing``): every graph run lasts at least ``run_ms`` +
``row_ms`` x rows (rows = dim 0 of the run's first input, padding included: an NPU computes the
padded rows too). Default 2 ms + 0.1 ms/row, the small-CNN profile of bench_batching.py.

- **dynamic**: ``session.batcher(graph, max_batch_size=<largest gear>)`` over a bundled model (MLP
  by default: its compute on the sim is small beside the timing model) with its dynamic batch
  dim: each batch runs at exactly its rows.
- **gears**: the same graph added with ``gears={"x": [(g, *rest) for g in GEARS]}``; the batcher
  pads each batch to the smallest gear that holds it.

On an NPU a static graph also runs faster than the same graph at a dynamic shape (GE sinks a
static model to the device and tiles it at compile time); the sim knows nothing of that.
``--dynamic-penalty-ms P`` adds P ms to the fixed cost of the dynamic runs only, to model it: an
assumption, reported as such. Each configuration runs ``--repeats`` times in ABBA order.

    python benchmarks/bench_gears.py [--duration 3] [--repeats 2] [--dynamic-penalty-ms 0,0.5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.resources import files
from typing import Any

import numpy as np
from _common import environment_line
from bench_batching import closed_loop, run

import ascend_async as aa

MODELS = files("ascend_async.models")
SHAPES = {"cnn": (3, 32, 32), "mlp": (64,)}
GEARS = (1, 8, 16, 32, 64)


@contextmanager
def timing(run_ms: float, row_ms: float) -> Iterator[None]:
    from ascend_async._probe import sim

    _sim = sim()

    cfg = {"min_graph_us": round(run_ms * 1000), "per_sample_us": round(row_ms * 1000)}
    _sim.lib.aa_sim_set_timing(_sim.ffi.new("aa_sim_timing*", cfg))
    try:
        yield
    finally:
        _sim.lib.aa_sim_set_timing(_sim.ffi.new("aa_sim_timing*"))


def one(kind: str, model: str, gears: tuple[int, ...], conc: int, duration: float, delay_ms: float) -> dict[str, float]:
    tail = SHAPES[model]
    x = np.random.default_rng(0).standard_normal((1, *tail)).astype(np.float32)
    path = str(MODELS / f"{model}.onnx")
    out: dict[str, float] = {}

    async def main() -> None:
        async with aa.Session(streams=2, max_in_flight=1000) as s:
            if kind == "gears":
                g = s.add_graph(path, gears={"x": [(n, *tail) for n in gears]})
            else:
                g = s.add_graph(path)
            b = s.batcher(g, max_batch_size=gears[-1], max_delay_ms=delay_ms)
            await b.warmup()
            before = b.statistics()
            out.update(await closed_loop(lambda: b.run({"x": x}), conc, duration))
            st = b.statistics()
            batches = st.batches - before.batches
            rows = st.rows - before.rows
            out["mean_batch"] = rows / max(1, batches)
            out["padding"] = (st.padded_rows - before.padded_rows) / max(1, rows)
            out["batches_per_s"] = batches / duration

    run(main)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--run-ms", type=float, default=2.0)
    ap.add_argument("--row-ms", type=float, default=0.1)
    ap.add_argument("--delay-ms", type=float, default=2.0)
    ap.add_argument("--dynamic-penalty-ms", default="0", help="comma list: extra fixed ms for dynamic runs")
    ap.add_argument("--concurrency", type=int, default=64, help="clients, each with one one-row request in flight")
    ap.add_argument("--model", choices=sorted(SHAPES), default="mlp")
    ap.add_argument("--gears", default=",".join(map(str, GEARS)), help="gears of the batch dim; the last is max_batch")
    ap.add_argument("--json")
    args = ap.parse_args()
    gears = tuple(sorted(int(g) for g in args.gears.split(",")))
    print(environment_line())
    doc: dict[str, Any] = {"args": vars(args), "results": {}}
    for penalty in (float(p) for p in args.dynamic_penalty_ms.split(",")):
        runs: dict[str, list[dict[str, float]]] = {"dynamic": [], "gears": []}
        for i in range(args.repeats):
            for kind in ("dynamic", "gears") if i % 2 == 0 else ("gears", "dynamic"):
                fixed = args.run_ms + (penalty if kind == "dynamic" else 0.0)
                with timing(fixed, args.row_ms):
                    r = one(kind, args.model, gears, args.concurrency, args.duration, args.delay_ms)
                runs[kind].append(r)
                print(f"  penalty {penalty:g} ms, {kind}: {r}", file=sys.stderr)
        print(
            f"\n{args.model}, c={args.concurrency}, one-row requests, 2 streams, timing {args.run_ms:g} ms + "
            f"{args.row_ms:g} ms/row (dynamic runs +{penalty:g} ms), max_batch {gears[-1]}, "
            f"delay {args.delay_ms:g} ms, gears {gears}; "
            f"median of {args.repeats}"
        )
        print(f"{'batcher':<9} {'inf/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'mean batch':>11} {'padding':>8}")
        doc["results"][str(penalty)] = {}
        for kind, rs in runs.items():
            med = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
            doc["results"][str(penalty)][kind] = {"median": med, "runs": rs}
            print(
                f"{kind:<9} {med['inf_s']:>8.0f} {med['p50']:>8.2f} {med['p99']:>8.2f} {med['mean_batch']:>11.1f} "
                f"{med['padding']:>8.1%}"
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2)


if __name__ == "__main__":
    main()
