"""(9) Offline models: host time of ``await session.run`` on an offline model (aclmdlExecuteAsync,
common/mdl.c) against the same model added as a graph (RunGraphWithStreamAsync), interleaved in
blocks on each loop. Host CPU per run is the process's CPU minus the simulated device's threads
(on an NPU that work is not host CPU); wall time per run is the median of sequential awaits.

The offline model's extra host work per run is building nothing (its datasets are made once per
descriptor), one aclUpdateDataBuffer per buffer, the gear (none for a fixed-shape model) and
aclmdlGetCurOutputDims per output: the target is no more host CPU than the graph's (+10%).
"""

from __future__ import annotations

import sys
import time

import numpy as np
from _common import LOOPS, Row, X, have_loop, run_on, session, sim_device_cpu_s, tiny_model, verdict

import ascend_async as aa
from ascend_async._probe import build_container


def run(quick: bool = False) -> list[Row]:
    n, blocks = (500, 6) if quick else (2000, 10)
    rows: list[Row] = []
    onnx_bytes = tiny_model().SerializeToString()
    with session(streams=1) as s:
        graph = s.add_graph(aa.Graph(onnx_bytes))
        model = s.load_model(build_container(onnx_bytes), name="tiny.om")
        for loop in LOOPS:
            if not have_loop(loop):
                continue

            async def measure() -> dict[str, tuple[float, float]]:
                feeds = {"x": X}
                for target in (graph, model):  # warm: replicas loaded, descriptors and pools made
                    for _ in range(200):
                        await s.run(target, feeds)
                cpu: dict[str, list[float]] = {"graph": [], "offline": []}
                wall: dict[str, list[int]] = {"graph": [], "offline": []}
                for b in range(blocks):
                    order = (
                        ((graph, "graph"), (model, "offline")) if b % 2 == 0 else ((model, "offline"), (graph, "graph"))
                    )
                    for target, key in order:
                        c0, d0 = time.process_time(), sim_device_cpu_s()
                        for _ in range(n):
                            t = time.perf_counter_ns()
                            await s.run(target, feeds)
                            wall[key].append(time.perf_counter_ns() - t)
                        cpu[key].append(((time.process_time() - c0) - (sim_device_cpu_s() - d0)) / n)
                return {k: (float(np.median(cpu[k])), float(np.median(wall[k]))) for k in cpu}

            got = run_on(loop, measure)
            (g_cpu, g_wall), (o_cpu, o_wall) = got["graph"], got["offline"]
            ratio = o_cpu / g_cpu
            rows.append(
                Row(
                    "9 offline",
                    f"{loop}: host CPU per await run, offline model / graph",
                    f"{o_cpu * 1e6:.1f} / {g_cpu * 1e6:.1f} us = {ratio:.2f}x "
                    f"(wall p50 {o_wall / 1e3:.1f} / {g_wall / 1e3:.1f} us)",
                    "<= 1.10x",
                    verdict(ratio <= 1.10),
                )
            )
        s.remove_graph(model)
    return rows


if __name__ == "__main__":
    from _common import print_rows

    print_rows(run("--quick" in sys.argv))
