"""Reports: the environment header, the results table, JSON, CSV and an optional plot."""

from __future__ import annotations

import csv
import json
import os
import platform
import sys
from collections.abc import Sequence
from typing import Any

from ._runner import LevelResult

__all__ = ["environment", "format_table", "write_csv", "write_json", "write_plot"]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Backend, device, versions and flags: so simulated numbers never pass for hardware ones."""
    import numpy as np

    import ascend_async as aa

    env: dict[str, Any] = {
        "library": f"ascend_async {aa.__version__}",
        "python": platform.python_version(),
        "numpy": np.__version__,
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "nproc": os.cpu_count(),
        "argv": list(argv) if argv is not None else sys.argv[1:],
    }
    try:
        info = aa.backend_info()
        env["backend"] = info.get("backend")
        env["backend_reason"] = info.get("reason")
        env["devices"] = info.get("devices")
    except Exception as exc:
        env["backend"] = f"unavailable ({exc})"
    for mod in ("anyio", "trio", "uvloop"):
        try:
            env[mod] = __import__(mod).__version__
        except Exception:
            env[mod] = None
    return env


def header_lines(env: dict[str, Any], device: int) -> list[str]:
    backend = env.get("backend")
    tag = " (SIMULATED device: not hardware numbers)" if backend == "sim" else ""
    return [
        f"backend: {backend}{tag} - {env.get('backend_reason', '')}",
        f"device: {device}   {env['library']}   python {env['python']}   numpy {env['numpy']}",
        f"host: {env['cpu']} x{env['nproc']}",
        f"flags: {' '.join(env['argv'])}",
    ]


def _f(v: float | None, fmt: str = "{:.3f}") -> str:
    return "-" if v is None else fmt.format(v)


def format_table(results: Sequence[LevelResult]) -> str:
    cols = [
        "load",
        "runs",
        "runs/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "lag p99 ms",
        "lag max ms",
        "watcher us/run",
        "wake/run",
        "h2d/compute/d2h ms",
        "compute-only/s",
        "cpu s",
    ]
    rows: list[list[str]] = []
    for r in results:
        lat = r.latency_ms
        load = f"c={int(r.value)}" if r.load == "concurrency" else f"{r.value:g}/s"
        if r.stable is False:
            load += " (unstable)"
        if r.error:
            load += " ERROR"
        rows.append(
            [
                load,
                str(r.runs),
                f"{r.throughput:,.0f}",
                _f(lat.get("p50")),
                _f(lat.get("p90")),
                _f(lat.get("p99")),
                _f(lat.get("p99.9")),
                _f(lat.get("max")),
                _f(r.loop_lag_ms.get("p99")),
                _f(r.loop_lag_ms.get("max")),
                _f(r.watcher_cpu_us_per_run, "{:.1f}"),
                _f(r.loop_wakeups_per_run, "{:.3f}"),
                "/".join(_f(r.stages_ms.get(k)) for k in ("h2d", "compute", "d2h")) if r.stages_ms else "-",
                _f(r.compute_only_throughput, "{:,.0f}"),
                f"{r.process_cpu_s:.2f}",
            ]
        )
    widths = [max(len(c), *(len(row[i]) for row in rows)) if rows else len(c) for i, c in enumerate(cols)]
    out = ["  ".join(c.rjust(w) for c, w in zip(cols, widths, strict=False))]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(v.rjust(w) for v, w in zip(row, widths, strict=False)) for row in rows]
    return "\n".join(out)


def write_json(
    path: str, env: dict[str, Any], facts: dict[str, Any], results: Sequence[LevelResult], error: str | None
) -> None:
    doc = {"environment": env, "run": facts, "results": [r.as_dict() for r in results], "error": error}
    with open(path, "w") as f:
        json.dump(doc, f, indent=2, default=str)


_CSV = [
    "backend",
    "mode",
    "loop",
    "load",
    "value",
    "runs",
    "errors",
    "throughput",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "p99.9_ms",
    "max_ms",
    "mean_ms",
    "lag_p99_ms",
    "lag_max_ms",
    "watcher_cpu_us_per_run",
    "loop_wakeups_per_run",
    "h2d_ms_p50",
    "compute_ms_p50",
    "d2h_ms_p50",
    "submit_ms_p50",
    "queued_ms_p50",
    "compute_only_throughput",
    "process_cpu_s",
    "stable",
    "error",
]


def write_csv(path: str, env: dict[str, Any], facts: dict[str, Any], results: Sequence[LevelResult]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(_CSV)
        for r in results:
            lat = r.latency_ms
            w.writerow(
                [
                    env.get("backend"),
                    facts.get("mode"),
                    facts.get("loop"),
                    r.load,
                    r.value,
                    r.runs,
                    r.errors,
                    f"{r.throughput:.1f}",
                    lat.get("p50"),
                    lat.get("p90"),
                    lat.get("p99"),
                    lat.get("p99.9"),
                    lat.get("max"),
                    lat.get("mean"),
                    r.loop_lag_ms.get("p99"),
                    r.loop_lag_ms.get("max"),
                    r.watcher_cpu_us_per_run,
                    r.loop_wakeups_per_run,
                    r.stages_ms.get("h2d"),
                    r.stages_ms.get("compute"),
                    r.stages_ms.get("d2h"),
                    r.stages_ms.get("submit"),
                    r.stages_ms.get("queued"),
                    r.compute_only_throughput,
                    f"{r.process_cpu_s:.3f}",
                    r.stable,
                    r.error or "",
                ]
            )


def write_plot(path: str, env: dict[str, Any], results: Sequence[LevelResult]) -> str | None:
    """Throughput and p99 latency per load level; returns an error message when matplotlib
    is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "--plot needs matplotlib: pip install 'ascend-async[plot]' (or pip install matplotlib)"
    xs = [r.value for r in results]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(xs, [r.throughput for r in results], "o-", label="runs/s")
    ax.set_xscale("log", base=2)
    ax.set_xlabel(results[0].load if results else "load")
    ax.set_ylabel("runs/s")
    ax2 = ax.twinx()
    ax2.plot(xs, [r.latency_ms.get("p99", 0.0) for r in results], "s--", color="tab:red", label="p99 ms")
    ax2.set_ylabel("p99 latency (ms)")
    ax.set_title(f"ascend_async bench - backend {env.get('backend')}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return None
