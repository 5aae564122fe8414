"""Run the whole suite in one process on one backend and print one table with the targets in
brackets: ``python benchmarks/run_all.py [--quick] [--json PATH] [--only overhead,wakeup,...]``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from typing import Any

import _common  # noqa: F401  (first: it puts this checkout's ascend_async first on sys.path)
import bench_engine
import bench_lag
import bench_offline
import bench_overhead
import bench_scaling
import bench_throughput
import bench_wakeup
from _common import Row, environment_line, print_rows

SECTIONS = ("overhead", "wakeup", "throughput", "devtime", "lag", "scaling", "floor", "engine", "offline")


def _floor_script(quick: bool) -> list[Row]:
    """benchmarks/floor.py (the C floor with one thread per stream, written separately), when
    present: its own table is printed as it runs."""
    try:
        import floor  # type: ignore[import-not-found]
    except ImportError:
        return []
    argv = ["--runs", "5000" if quick else "20000", "--streams", "1,2", "--window", "1,64"]
    try:
        rc = floor.main(argv)
    except BaseException as exc:  # it may SystemExit on a refused call
        return [Row("floor.py", f"benchmarks/floor.py {' '.join(argv)}", f"failed: {exc!r}")]
    return [Row("floor.py", f"benchmarks/floor.py {' '.join(argv)}", f"rc={rc} (its table is printed above)")]


def _engine(quick: bool) -> list[Row]:
    """The sim's engine against onnxruntime itself (benchmarks/bench_engine.py)."""
    return [
        Row("engine", f"{name}: onnxruntime / run_sync / await run ms", f"{o:.3f} / {s:.3f} / {a:.3f} ({s / o:.2f}x)")
        for name, o, s, a in bench_engine.compare(10 if quick else 50)
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="shorter runs (~1 min)")
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--only", default=",".join(SECTIONS), help=f"comma list of {','.join(SECTIONS)}")
    args = p.parse_args(argv)
    only = set(args.only.split(","))
    env = environment_line()
    print(env)
    print(
        "SIMULATED device numbers: host-side costs around a tiny graph, not Ascend hardware numbers"
        if "backend sim" in env
        else ""
    )
    rows: list[Row] = []
    extra: dict[str, Any] = {}
    t0 = time.perf_counter()
    steps = [
        ("overhead", lambda: bench_overhead.run(args.quick)),
        ("wakeup", lambda: bench_wakeup.run(args.quick)),
        ("throughput", lambda: _throughput(args.quick, extra)),
        ("devtime", lambda: _device_time(args.quick, extra)),
        ("lag", lambda: bench_lag.run(args.quick)),
        ("scaling", lambda: bench_scaling.run(args.quick)),
        ("floor", lambda: _floor_script(args.quick)),
        ("engine", lambda: _engine(args.quick)),
        ("offline", lambda: bench_offline.run(args.quick)),
    ]
    for name, fn in steps:
        if name not in only:
            continue
        t = time.perf_counter()
        print(f"... {name}", file=sys.stderr, flush=True)
        try:
            rows += fn()
        except Exception as exc:
            rows.append(Row(name, "failed", f"{type(exc).__name__}: {exc}"))
        print(f"    {name}: {time.perf_counter() - t:.1f} s", file=sys.stderr, flush=True)
    print()
    print_rows(rows)
    missed = [r for r in rows if r.verdict == "MISSED"]
    print(
        f"\n{len([r for r in rows if r.verdict == 'met'])} targets met, {len(missed)} missed; "
        f"total {time.perf_counter() - t0:.0f} s"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "environment": env,
                    "quick": args.quick,
                    "rows": [asdict(r) for r in rows],
                    "throughput": extra.get("series"),
                    "throughput_device_time": extra.get("device_time"),
                },
                f,
                indent=2,
                default=str,
            )
    return 0


def _throughput(quick: bool, extra: dict[str, Any]) -> list[Row]:
    rows, series = bench_throughput.run(quick)
    extra["series"] = {k: {str(c): v for c, v in vals.items()} for k, vals in series.items()}
    return rows


def _device_time(quick: bool, extra: dict[str, Any]) -> list[Row]:
    rows, series = bench_throughput.run_device_time(quick)
    extra["device_time"] = {k: {str(c): v for c, v in vals.items()} for k, vals in series.items()}
    return rows


if __name__ == "__main__":
    sys.exit(main())
