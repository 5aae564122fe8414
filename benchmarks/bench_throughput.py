"""(3) Throughput vs concurrency 1..1024: the polling watcher, the report strategy,
to_thread(run_sync), naive polling on the loop (await sleep(0) between
aclrtQueryEventStatus; graph on device memory only) and the C floor (aa_floor_run, no Python
in the loop). At c=64, side by side, the library against naive pollers that do the same work.

(3b) The same comparison with realistic device time: the sim's timing model makes every graph
run occupy a device worker for ``min_graph_us`` (200 and 1000 us), and the C floor runs on the
same 2 streams as the sessions (one thread per stream). That is where the floor is a ceiling a
host-side async layer can reach, and where the thread pool blocks for the whole device time."""

from __future__ import annotations

import os
import sys
from typing import Any

import anyio
import numpy as np
from _common import Raw, Row, Thin, X, closed_loop, floor_lanes, run_on, session, sim_graph_time, tiny_model, verdict

import ascend_async as aa

LEVELS = (1, 4, 16, 64, 256, 1024)


def _library(strategy: str, levels: tuple[int, ...], dur: float, streams: int = 2) -> dict[int, float]:
    out: dict[int, float] = {}
    with session(strategy, streams=streams, max_in_flight=1000) as s:
        g = s.add_graph(aa.Graph(tiny_model()))

        async def main() -> None:
            await s.load(g)
            for c in levels:
                out[c] = (await closed_loop(lambda: s.run(g, {"x": X}), c, dur))["rate"]

        run_on("asyncio", main)
    return out


def _thread(levels: tuple[int, ...], dur: float, streams: int = 2) -> dict[int, float]:
    out: dict[int, float] = {}
    with session(streams=streams) as s:
        g = s.add_graph(aa.Graph(tiny_model()))

        async def main() -> None:
            for c in levels:
                lim = anyio.CapacityLimiter(c)

                async def one(lim: anyio.CapacityLimiter = lim) -> Any:
                    return await anyio.to_thread.run_sync(s.run_sync, g, {"x": X}, limiter=lim)

                out[c] = (await closed_loop(one, c, dur))["rate"]

        run_on("asyncio", main)
    return out


def _naive_and_floor(
    levels: tuple[int, ...], dur: float, n_floor: int
) -> tuple[dict[int, float], dict[int, float | None]]:
    naive: dict[int, float] = {}
    floor: dict[int, float | None] = {}
    with session(max_in_flight=1000) as s:
        g = s.add_graph(aa.Graph(tiny_model()))
        raw = Raw(s, g)
        try:
            for c in levels:
                floor[c] = raw.floor(n_floor, min(c, 1000))

            async def main() -> None:
                for c in levels:
                    naive[c] = (await closed_loop(raw.naive_run, c, dur))["rate"]

            run_on("asyncio", main)
        finally:
            raw.close()
    return naive, floor


def _side_by_side(dur: float, rounds: int) -> dict[str, float]:
    """The library against a naive loop poller at c=64, alternated ``rounds`` times in one
    process (so noise hits all alike), plus the C floor; medians of runs/s and process CPU per
    run. Two like-for-like pairs: numpy in and out (the poller stages, copies and reads back by
    hand), and device-resident tensors (the poller runs the graph on device memory only)."""
    rates: dict[str, list[float]] = {k: [] for k in ("library", "naive", "library_dev", "naive_dev", "thin")}
    lib_cpu: list[float] = []
    host_cpu: dict[str, list[float]] = {"library": [], "naive": []}
    with session(max_in_flight=1000) as s, session(max_in_flight=1000) as s2:
        g = s.add_graph(aa.Graph(tiny_model()))
        g2 = s2.add_graph(aa.Graph(tiny_model()))
        raw = Raw(s2, g2)
        try:
            floor = raw.floor(50000, 64)

            async def main() -> None:
                await s.load(g)
                x_dev = aa.DeviceTensor.from_numpy(s, X)
                thin = Thin(s2, g2) if hasattr(os, "eventfd") else None

                async def device_run() -> None:
                    out = await s.run(g, {"x": x_dev}, outputs="device")
                    out["y"].close()

                for _ in range(rounds):
                    r = await closed_loop(lambda: s.run(g, {"x": X}), 64, dur)
                    rates["library"].append(r["rate"])
                    lib_cpu.append(r["cpu_s"] / max(r["runs"], 1))
                    host_cpu["library"].append((r["cpu_s"] - r["device_cpu_s"]) / max(r["runs"], 1))
                    r = await closed_loop(raw.naive_run_host, 64, dur)
                    rates["naive"].append(r["rate"])
                    host_cpu["naive"].append((r["cpu_s"] - r["device_cpu_s"]) / max(r["runs"], 1))
                    rates["library_dev"].append((await closed_loop(device_run, 64, dur))["rate"])
                    rates["naive_dev"].append((await closed_loop(raw.naive_run, 64, dur))["rate"])
                    if thin is not None:
                        rates["thin"].append((await closed_loop(thin.run, 64, dur))["rate"])
                x_dev.close()
                if thin is not None:
                    thin.close()

            run_on("asyncio", main)
        finally:
            raw.close()
    out = {k: float(np.median(v)) if v else 0.0 for k, v in rates.items()}
    out["ratio"] = float(np.median([a / b for a, b in zip(rates["library"], rates["naive"], strict=True)]))
    out["ratio_dev"] = float(np.median([a / b for a, b in zip(rates["library_dev"], rates["naive_dev"], strict=True)]))
    out["floor"] = float(floor or 0.0)
    out["cpu_us"] = float(np.median(lib_cpu)) * 1e6
    out["host_cpu_us"] = float(np.median(host_cpu["library"])) * 1e6
    out["naive_host_cpu_us"] = float(np.median(host_cpu["naive"])) * 1e6
    return out


def run(quick: bool = False) -> tuple[list[Row], dict[str, dict[int, Any]]]:
    dur = 0.25 if quick else 0.6
    levels = LEVELS
    series: dict[str, dict[int, Any]] = {
        "poll watcher": _library("poll", levels, dur),
        "report watcher": _library("report", levels, dur),
        "to_thread(run_sync)": _thread(levels, dur),
    }
    naive, floor = _naive_and_floor(levels, dur, 20000 if quick else 50000)
    series["naive loop polling"] = naive
    series["C floor"] = floor
    rows: list[Row] = []
    for name, vals in series.items():
        cells = "  ".join(f"{c}:{'-' if v is None else f'{v:,.0f}'}" for c, v in vals.items())
        rows.append(Row("3 throughput", f"{name} (runs/s by concurrency)", cells))
    sbs = _side_by_side(dur, 3 if quick else 5)
    for what, lib, naive, ratio, want in (
        ("numpy in/out", "library", "naive", "ratio", 1.2),
        ("device tensors", "library_dev", "naive_dev", "ratio_dev", 1.0),
    ):
        rows.append(
            Row(
                "3 throughput",
                f"c=64 side by side (median ratio), {what}: library / naive loop polling, same work",
                f"{sbs[ratio]:.2f}x ({sbs[lib]:,.0f} vs {sbs[naive]:,.0f} runs/s)",
                f">= {want}x",
                verdict(sbs[ratio] >= want),
            )
        )
    if sbs["thin"]:
        rows.append(
            Row(
                "3 throughput",
                "c=64: the thinnest Python over the same C path (no checks, limits or counts) / naive",
                f"{sbs['thin'] / sbs['naive']:.2f}x ({sbs['thin']:,.0f} runs/s; the library: "
                f"{sbs['library'] / sbs['thin']:.0%} of it)",
            )
        )
    if sbs["floor"]:
        rows.append(
            Row(
                "3 throughput",
                "c=64 side by side: library / C floor",
                f"{sbs['library'] / sbs['floor']:.1%} ({sbs['floor']:,.0f} runs/s)",
                ">= 10%",
                verdict(sbs["library"] >= 0.1 * sbs["floor"]),
            )
        )
    rows.append(
        Row(
            "3 throughput",
            "c=64: process CPU per completion (library)",
            f"{sbs['cpu_us']:.1f} us, of which host {sbs['host_cpu_us']:.1f} us (sim device threads excluded)",
            "<= 25 us",
            verdict(sbs["cpu_us"] <= 25),
        )
    )
    rows.append(
        Row(
            "3 throughput",
            "c=64: host CPU per completion, library / naive loop polling, same work",
            f"{sbs['host_cpu_us']:.1f} / {sbs['naive_host_cpu_us']:.1f} us",
            "library <= poller",
            verdict(sbs["host_cpu_us"] <= sbs["naive_host_cpu_us"]),
        )
    )
    p64, t64, f64 = series["poll watcher"][64], series["to_thread(run_sync)"][64], floor[64]
    rows.append(
        Row(
            "3 throughput",
            "poll watcher / to_thread at c=64",
            f"{p64 / t64:.2f}x",
            ">= 3x",
            verdict(p64 / t64 >= 3),
        )
    )
    r64 = series["report watcher"][64]
    rows.append(
        Row(
            "3 throughput",
            "report watcher / to_thread at c=64",
            f"{r64 / t64:.2f}x",
            ">= 3x",
            verdict(r64 / t64 >= 3),
        )
    )
    if f64:
        rows.append(
            Row(
                "3 throughput",
                "poll watcher / C floor at c=64",
                f"{p64 / f64:.1%}",
                ">= 80%",
                verdict(p64 / f64 >= 0.8),
            )
        )
    return rows, series


DEVICE_US: tuple[int, ...] = (200, 1000)
DEVICE_LEVELS = (4, 16, 64, 256)
STREAMS = 2


def _floor_streams(levels: tuple[int, ...], min_graph_us: int, dur: float) -> dict[int, float | None]:
    out: dict[int, float | None] = {}
    with session(streams=STREAMS, max_in_flight=1000) as s:
        g = s.add_graph(aa.Graph(tiny_model()))
        lanes = [Raw(s, g, lane) for lane in range(STREAMS)]
        try:
            for c in levels:
                # Enough runs per stream for ~dur seconds of device time, and 4 windows at least.
                n = max(4 * max(1, c // STREAMS), int(dur * 1e6 / min_graph_us))
                out[c] = floor_lanes(lanes, n, c)
        finally:
            for lane in lanes:
                lane.close()
    return out


def run_device_time(quick: bool = False) -> tuple[list[Row], dict[str, dict[int, Any]]]:
    """(3b) Throughput with each graph run lasting ``min_graph_us`` on a sim device worker."""
    dur = 0.3 if quick else 0.6
    levels = DEVICE_LEVELS
    rows: list[Row] = []
    all_series: dict[str, dict[int, Any]] = {}
    for us in DEVICE_US:
        with sim_graph_time(us) as ok:
            if not ok:
                return [Row("3b device time", "skipped", "needs the sim backend (aa_sim_set_timing)")], {}
            series: dict[str, dict[int, Any]] = {
                "poll watcher": _library("poll", levels, dur, STREAMS),
                "report watcher": _library("report", levels, dur, STREAMS),
                "to_thread(run_sync)": _thread(levels, dur, STREAMS),
                f"C floor ({STREAMS} streams)": _floor_streams(levels, us, dur),
            }
        ideal = STREAMS * 1e6 / us
        for name, vals in series.items():
            cells = "  ".join(f"{c}:{'-' if v is None else f'{v:,.0f}'}" for c, v in vals.items())
            rows.append(Row("3b dev time", f"{us} us/run: {name} (runs/s by conc.)", cells))
            all_series[f"{us}us {name}"] = vals
        t64 = series["to_thread(run_sync)"][64]
        f64 = series[f"C floor ({STREAMS} streams)"][64]
        for name in ("poll watcher", "report watcher"):
            v = series[name][64]
            if f64:
                rows.append(
                    Row(
                        "3b dev time",
                        f"{us} us/run: {name} / C floor at c=64",
                        f"{v / f64:.1%} ({v:,.0f} vs {f64:,.0f}; device bound {ideal:,.0f})",
                        ">= 80%",
                        verdict(v / f64 >= 0.8),
                    )
                )
            rows.append(
                Row(
                    "3b dev time",
                    f"{us} us/run: {name} / to_thread at c=64",
                    f"{v / t64:.2f}x ({v:,.0f} vs {t64:,.0f})",
                    ">= 3x",
                    verdict(v / t64 >= 3),
                )
            )
    return rows, all_series


def main(argv: list[str] | None = None) -> int:
    global STREAMS, DEVICE_US
    import argparse

    p = argparse.ArgumentParser(description="(3) throughput and (3b) throughput with device time")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--device-time-only", action="store_true", help="only (3b)")
    p.add_argument("--streams", type=int, default=STREAMS, help="(3b) streams per session and for the floor")
    p.add_argument("--sim-workers", type=int, default=0, help="sim device workers (aa_sim_configure; default 2)")
    p.add_argument("--device-us", default=",".join(map(str, DEVICE_US)), help="(3b) comma list of min_graph_us")
    args = p.parse_args(argv)
    STREAMS = args.streams
    DEVICE_US = tuple(int(u) for u in args.device_us.split(",") if u)
    if args.sim_workers:
        # Only before the runtime starts (aclInit): nothing above has touched the device yet.
        from ascend_async._probe import sim

        _sim = sim()

        cfg = _sim.ffi.new("aa_sim_config*")
        _sim.lib.aa_sim_get_config(cfg)
        cfg.workers = args.sim_workers
        if _sim.lib.aa_sim_configure(cfg):
            raise SystemExit("aa_sim_configure refused (the sim runtime is already initialised)")
    from _common import print_rows

    if not args.device_time_only:
        print_rows(run(args.quick)[0])
    print_rows(run_device_time(args.quick)[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
