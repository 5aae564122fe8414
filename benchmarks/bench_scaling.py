"""(6) Host CPU cost per completion from 1 to 10,000 awaiting runs (the session keeps at most
max_in_flight=1000 on the device; the rest wait on its limiter, as an application's would)."""

from __future__ import annotations

import sys

from _common import Row, X, closed_loop, run_on, session, tiny_model, verdict

import ascend_async as aa

LEVELS = (1, 10, 100, 1000, 10000)


def run(quick: bool = False) -> list[Row]:
    dur = 0.4 if quick else 1.0
    costs: dict[int, float] = {}
    with session(max_in_flight=1000) as s:
        g = s.add_graph(aa.Graph(tiny_model()))

        async def main() -> None:
            await s.load(g)
            for c in LEVELS:
                r = await closed_loop(lambda: s.run(g, {"x": X}), c, dur, warmup=min(c, 1000))
                costs[c] = r["cpu_s"] * 1e6 / max(r["runs"], 1)

        run_on("asyncio", main)
    ref = costs[100]
    worst = max(abs(v / ref - 1) for v in costs.values())
    cells = "  ".join(f"{c}:{v:.0f}us" for c, v in costs.items())
    return [
        Row("6 scaling", "process CPU per completion by runs awaiting", cells),
        Row(
            "6 scaling",
            "worst deviation from the c=100 cost",
            f"{worst:.0%}",
            "flat +-25%",
            verdict(worst <= 0.25),
        ),
    ]


if __name__ == "__main__":
    from _common import print_rows

    print_rows(run("--quick" in sys.argv))
