"""Where the loop thread's time goes in ``await session.run`` at c=64 (issue 21 item 8):
cProfile over a closed loop on asyncio, numpy in/out or device tensors.

``python benchmarks/profile_run.py [--device] [--seconds 3] [--top 30]``
"""

from __future__ import annotations

import argparse
import cProfile
import pstats

import anyio
from _common import Raw, X, closed_loop, run_on, session, tiny_model

import ascend_async as aa


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--device", action="store_true", help="device tensors in and out")
    p.add_argument("--naive", action="store_true", help="the naive loop poller (benchmarks/_common.Raw) instead")
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--sort", default="tottime")
    args = p.parse_args(argv)
    prof = cProfile.Profile()
    with session(max_in_flight=1000) as s:
        g = s.add_graph(aa.Graph(tiny_model()))

        async def main() -> None:
            await s.load(g)
            x_dev = aa.DeviceTensor.from_numpy(s, X)

            async def device_run() -> None:
                out = await s.run(g, {"x": x_dev}, outputs="device")
                out["y"].close()

            async def host_run() -> None:
                await s.run(g, {"x": X})

            fn = device_run if args.device else host_run
            if args.naive:
                raw = Raw(s, g)
                fn = raw.naive_run if args.device else raw.naive_run_host
            await closed_loop(fn, 64, 0.3)
            prof.enable()
            r = await closed_loop(fn, 64, args.seconds)
            prof.disable()
            print(f"{r['rate']:,.0f} runs/s (under cProfile)")
            x_dev.close()
            if args.naive:
                raw.close()
            await anyio.lowlevel.checkpoint()

        run_on("asyncio", main)
    pstats.Stats(prof).sort_stats(args.sort).print_stats(args.top)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
