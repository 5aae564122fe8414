"""(3) Throughput vs concurrency 1..1024: the polling watcher, the report strategy,
to_thread(run_sync), naive polling on the loop (await sleep(0) between
aclrtQueryEventStatus) and the C floor (aa_floor_run, no Python in the loop)."""

from __future__ import annotations

import sys
from typing import Any

import anyio
from _common import Raw, Row, X, closed_loop, run_on, session, tiny_model, verdict

import ascend_async as aa

LEVELS = (1, 4, 16, 64, 256, 1024)


def _library(strategy: str, levels: tuple[int, ...], dur: float) -> dict[int, float]:
    out: dict[int, float] = {}
    with session(strategy, max_in_flight=1000) as s:
        g = s.add_graph(aa.Graph(tiny_model()))

        async def main() -> None:
            await s.load(g)
            for c in levels:
                out[c] = (await closed_loop(lambda: s.run(g, {"x": X}), c, dur))["rate"]

        run_on("asyncio", main)
    return out


def _thread(levels: tuple[int, ...], dur: float) -> dict[int, float]:
    out: dict[int, float] = {}
    with session() as s:
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


if __name__ == "__main__":
    from _common import print_rows

    print_rows(run("--quick" in sys.argv)[0])
