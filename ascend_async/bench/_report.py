"""Reports: the environment header, the result tables and their legend, the summary JSON, CSV and
the latency-throughput plot."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import platform
import sys
from collections.abc import Sequence
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from ._measure import LevelResult
from ._options import pct_key

__all__ = [
    "EXPLAIN",
    "check_plot",
    "environment",
    "legend",
    "main_table",
    "serving_lines",
    "stage_table",
    "summary_doc",
    "warnings_for",
    "write_csv",
    "write_json",
    "write_plot",
]

SCHEMA = "ascend-async-bench/2"


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


def header_lines(env: dict[str, Any], device: int | str) -> list[str]:
    backend = env.get("backend")
    tag = " (SIMULATED device: not hardware numbers)" if backend == "sim" else ""
    return [
        f"backend: {backend}{tag} - {env.get('backend_reason', '')}",
        f"device: {device}   {env['library']}   python {env['python']}   numpy {env['numpy']}",
        f"host: {env['cpu']} x{env['nproc']}",
    ]


def _ms(v: float | None, few: bool = False) -> str:
    if v is None:
        return "-"
    return f"{v:.3f}{'*' if few else ''}"


def _rate(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f}"


def _status(r: LevelResult) -> str:
    notes = []
    if r.error:
        notes.append("ERROR")
    if r.overloaded:
        notes.append("OVERLOAD")
    if r.load == "rate" and r.sent:
        notes.append(f"late {r.late_sends / r.sent:.0%}")
        if r.missed:
            share = r.missed / max(r.intended, 1)
            notes.append(f"missed {share:.1%}" if share < 0.1 else f"missed {share:.0%}")
    if r.stable is False:
        notes.append("unstable")
    if r.few_samples:
        notes.append("few samples*")
    return ", ".join(notes) or "ok"


def main_table(results: Sequence[LevelResult], pcts: Sequence[float], title: str) -> Table:
    """One row per level: runs, rates, the chosen latency percentiles, loop lag and a status."""
    batch = _batch_aware(results)
    rate = any(r.load == "rate" for r in results)
    t = Table(title=title, title_justify="left", header_style="bold", box=box.SIMPLE_HEAD)
    t.add_column("load", justify="right")
    t.add_column("runs", justify="right")
    t.add_column("runs/s", justify="right")
    if batch:
        t.add_column("inferences/s", justify="right")
    if rate:
        t.add_column("sent/s", justify="right")
    for p in pcts:
        t.add_column(f"{pct_key(p)} ms", justify="right")
    t.add_column("max ms", justify="right")
    t.add_column("loop lag p99 ms", justify="right")
    t.add_column("status")
    for r in results:
        row = [r.label, f"{r.runs:,}", _rate(r.throughput)]
        if batch:
            row.append(_rate(r.inferences_per_s))
        if rate:
            row.append(_rate(r.sent_per_s) if r.load == "rate" else "-")
        row += [_ms(r.latency_ms.get(pct_key(p)), pct_key(p) in r.few_samples) for p in pcts]
        row += [_ms(r.latency_ms.get("max")), _ms(r.loop_lag_ms.get("p99")), _status(r)]
        t.add_row(*row)
    return t


def _batch_aware(results: Sequence[LevelResult]) -> bool:
    """Show inferences/s: a run carries a batch, or requests go through a batcher."""
    return any(r.batch != 1 or r.batcher is not None for r in results)


def _histogram(sizes: dict[str, int], most: int = 4) -> str:
    top = sorted(sizes.items(), key=lambda kv: (-kv[1], -int(kv[0])))
    shown = " ".join(f"{k}:{v:,}" for k, v in top[:most])
    return shown + (f" +{len(top) - most} sizes" if len(top) > most else "")


def serving_lines(results: Sequence[LevelResult]) -> list[str]:
    """Under the table, one line per level: the batcher's batches (--batch-max) and the runs per
    device of a pool (--devices)."""
    out: list[str] = []
    for r in results:
        b = r.batcher
        if b is not None:
            q = b.get("queue_delay_ms", {})
            out.append(
                f"batcher {r.label}: {b['batches']:,} batches ({b['batches_per_s']:,.0f}/s), "
                f"mean {b['mean_batch']:.1f} rows of {b['max_batch_size']}, fill {b['fill_ratio']:.0%}; "
                f"sizes (rows:batches) {_histogram(b['batch_sizes']) or '-'}; "
                f"queue delay p50 {q.get('p50', 0.0):.3f} / p99 {q.get('p99', 0.0):.3f} ms"
                + (f"; {b['padded_rows']:,} zero rows padded" if b.get("padded_rows") else "")
            )
        if r.device_runs is not None:
            what = "batches" if b is not None else "runs"
            out.append(
                f"devices {r.label}: "
                + ", ".join(f"{d}: {n:,}" for d, n in r.device_runs.items())
                + f" {what} completed (measured window)"
            )
    return out


def _stage_pcts(pcts: Sequence[float]) -> tuple[float, float]:
    return 50.0, (99.0 if 99.0 in pcts or max(pcts) < 99.0 else max(pcts))


def stage_table(results: Sequence[LevelResult], pcts: Sequence[float]) -> Table | None:
    """Where a run's time goes, from device events on sampled runs; None when nothing was sampled."""
    if not any(r.stages_ms for r in results):
        return None
    lo, hi = _stage_pcts(pcts)
    t = Table(
        title=f"where a run's time goes, ms ({pct_key(lo)} / {pct_key(hi)}; device events on "
        + ("every measured run)" if any(getattr(r, "ais", None) for r in results) else "1 measured run in 16)"),
        title_justify="left",
        header_style="bold",
        box=box.SIMPLE_HEAD,
    )
    stages = ("submit", "queued", "h2d", "compute", "d2h")
    t.add_column("load", justify="right")
    t.add_column("sampled", justify="right")
    for s in stages:
        t.add_column(s, justify="right")
    t.add_column("device-bound/s", justify="right")
    for r in results:
        cells = []
        for s in stages:
            st = r.stages_ms.get(s)
            cells.append(f"{st[pct_key(lo)]:.3f} / {st[pct_key(hi)]:.3f}" if st else "-")
        t.add_row(r.label, f"{r.stage_samples:,}", *cells, _rate(r.device_bound_per_s))
    return t


def details_table(results: Sequence[LevelResult]) -> Table:
    """Host and loop costs per level (``--details``)."""
    t = Table(title="host and loop costs", title_justify="left", header_style="bold", box=box.SIMPLE_HEAD)
    for c in ("load", "warm-up", "host CPU s", "watcher CPU us/run", "loop wake-ups/run", "loop lag p50 / max ms"):
        t.add_column(c, justify="right")
    for r in results:
        lag = r.loop_lag_ms
        t.add_row(
            r.label,
            f"{r.warmup_s:.2f} s, {r.warmup_runs:,} runs",
            f"{r.process_cpu_s:.2f}",
            "-" if r.watcher_cpu_us_per_run is None else f"{r.watcher_cpu_us_per_run:.1f}",
            "-" if r.loop_wakeups_per_run is None else f"{r.loop_wakeups_per_run:.3f}",
            f"{_ms(lag.get('p50'))} / {_ms(lag.get('max'))}",
        )
    return t


def legend(results: Sequence[LevelResult], details: bool = False) -> list[str]:
    """Short definitions of the columns shown (``--explain`` has the long ones)."""
    rate = any(r.load == "rate" for r in results)
    lines = [
        "load: c=N keeps N runs in flight (closed loop); N/s sends N runs a second on a schedule (open loop)",
        "runs/s: measured runs completed per second; warm-up excluded",
    ]
    if any(r.batcher is not None for r in results):
        lines.append(
            "batcher: a run is one request of --batch-size rows (runs/s: requests/s); inferences/s counts rows; "
            "the batcher concatenates requests into device runs of up to --batch-max rows (the line above)"
        )
    elif _batch_aware(results):
        lines.append("inferences/s: runs/s x the batch size (the first dim of each input)")
    if rate:
        lines.append(
            "sent/s: runs sent per second; late: sent > 1 ms after their time; missed: schedule points "
            "passed while --max-in-flight runs were outstanding, or over 10 ms overdue; OVERLOAD: > 1% missed"
        )
    lines += [
        "pN ms: N% of measured runs took at most this long (nearest rank, the same in the progress line); "
        + ("open loop: from the intended send time" if rate else "from the call to its result"),
        "* : fewer than 10 runs lie beyond this percentile, so a few runs decide it: measure longer",
        "loop lag p99: how late a 1 ms timer fires on the event loop (p99): its responsiveness under this load",
    ]
    if any(r.stages_ms for r in results):
        lines.append(
            "stages: submit = host submit call; queued = submit to device start; h2d/compute/d2h = device "
            "events between the stages; device-bound/s = streams / mean compute (the device alone)"
        )
    if details:
        lines.append(
            "watcher CPU us/run: completion-watcher thread CPU per run; loop wake-ups/run: "
            "how often the watcher woke the loop per completed run"
        )
    lines.append("ascend-async bench --explain: every figure in full")
    return lines


EXPLAIN = """\
How ascend-async bench measures

Each load level runs three phases: warm-up (--warmup: a time such as 2s, or a number of runs;
excluded from every figure), the measured window (--duration seconds, --count runs, or --stable
windows), then a drain (runs still in flight finish; they count when they started in the window).

load
  c=N      closed loop: N tasks each call the model, await the result, and call again.
  N/s      open loop: one sender issues runs on a schedule (constant gaps, or --poisson), and does
           not wait for results. At most --max-in-flight runs are outstanding.
runs, runs/s
  measured runs completed, and that count over the window (its start to the last completion).
inferences/s
  runs/s x batch size, shown when a run carries a batch (--batch-size, or input data whose first
  dim is a symbolic batch axis).
sent/s, late, missed, OVERLOAD  (open loop)
  sent/s is the achieved send rate, against the intended rate in the load column. A send more
  than 1 ms after its scheduled time is late; a sender behind schedule catches up (yielding to
  the loop every 4 sends). When --max-in-flight runs are outstanding the sender waits for one to
  finish; the schedule points that pass meanwhile are missed, not queued. Points more than 10 ms
  overdue are missed too (the host cannot send that fast). So the sender never builds a backlog,
  latency stays the latency of the runs that went out, and a level ends on time however
  overloaded. A level is OVERLOAD when > 1% of its sends were missed: the device (or the host)
  cannot sustain that rate, and a rate sweep stops there. Latency then includes the wait for a
  slot. Late sends alone are jitter (a busy loop, a noisy machine); more than 10% late gets a
  warning.
pN ms
  the nearest-rank percentile of the measured runs' latencies: the smallest observed latency with
  at least N% of runs at or below it. Closed loop: from the call to its result. Open loop: from
  the intended send time, so time spent waiting for a slot or a loaded device counts (no
  coordinated omission). The progress line uses the same definition on the runs so far.
  A * marks a percentile with fewer than 10 runs beyond it (p99 needs >= 1,000 runs, p99.9
  >= 10,000): a handful of runs decide it, so measure longer before trusting it.
max ms
  the slowest measured run.
loop lag p99 ms
  a task sleeps 1 ms in a loop on the same event loop; lag is how much later than asked it woke.
  p99 over the window. High lag means the loop is too busy to serve anything else promptly.
  Before the first level the runner freezes the heap built at startup (gc.freeze(), as
  latency-sensitive services do), so a full collection of it does not land in a level; what
  the runs allocate is still collected.
where a run's time goes  (async mode; 1 measured run in 16 is run with run_profiled)
  submit    host time of the submit call
  queued    from the end of submit until the device started the run (streams busy)
  h2d       host-to-device copy of the inputs, from device events
  compute   the graph on the device, from device events
  d2h       device-to-host copy of the outputs, from device events
  device-bound/s
            streams / mean compute time: the runs/s the device alone would allow. The gap to
            runs/s is host cost (Python, copies, the loop) or too little concurrency.
  On the simulated device these are the sim's host threads, not NPU timings.
batcher  (--batch-max N [--batch-delay MS] [--batch-preferred 8,16])
  every run is a request of --batch-size rows (default 1) sent to session.batcher (or
  pool.batcher) instead of Session.run; runs/s counts requests, inferences/s rows. The batcher
  sends a batch when it holds N rows, reaches a preferred size, or its oldest request has waited
  MS; at most one batch per stream is in flight. Under the table, per level: batches and
  batches/s (device runs), mean batch and fill (rows / N), the histogram of rows per batch (most
  frequent first), and queue delay p50/p99 (from the request to its batch's submission, over the
  batcher's last 4096 requests). No run is profiled, so there is no stage table.
devices  (--devices 0,1,2,3 | all)
  runs go through a DevicePool, one Session of --streams streams per device, each run to the
  least-loaded device; the line under the table gives runs completed per device. On the sim, the
  device count is ASCEND_ASYNC_SIM_DEVICES (read when it starts).
sim timing  (--sim-timing RUN_MS[,SAMPLE_MS], sim only)
  every graph run lasts at least RUN_MS + SAMPLE_MS x rows (first dim of the first input), on
  top of computing the result: a device whose time is the model's, not the host's CPU.
host and loop costs  (--details)
  host CPU s: process CPU time over the level; watcher CPU us/run: the completion watcher
  thread's CPU per completed run; loop wake-ups/run: watcher-to-loop wake-ups per completed run.

The summary JSON (--json PATH, or --json - for stdout) holds the full configuration, the model's
sha256, the environment and the exact command, enough to rerun it; `ascend-async bench compare
A.json B.json` shows the change level by level.
"""


def _nice(v: float) -> float:
    """``v`` to two significant digits (at least 1): 1734.6 -> 1700."""
    if v < 1:
        return 1.0
    digits = len(str(int(v))) - 2
    return float(round(v, -digits)) if digits > 0 else float(round(v))


def warnings_for(results: Sequence[LevelResult], tolerance: float) -> list[str]:
    """One line per problem a reader must not miss: overload, unstable, late sends, few samples."""
    out: list[str] = []
    for r in results:
        if r.overloaded:
            step = _nice(r.throughput / 8)
            out.append(
                f"OVERLOAD at {r.label}: achieved {r.throughput:,.0f} runs/s against {r.value:g}/s intended; "
                f"{r.sent:,} of {r.intended:,} scheduled sends went out ({r.late_sends:,} late, {r.missed:,} missed). "
                "The device or the host cannot sustain this rate: lower --rate, or find the knee with "
                f"--rate {step:g}:{_nice(r.throughput * 1.25):g}:+{step:g}"
            )
        elif r.load == "rate" and (r.missed or (r.sent and r.late_sends > 0.10 * r.sent)):
            out.append(
                f"{r.label}: {r.late_sends:,} of {r.sent:,} sends went out > 1 ms late, {r.missed:,} missed "
                "(the loop was busy or the machine noisy; latency still counts from the intended time)"
            )
        if r.stable is False:
            out.append(
                f"{r.label} never became stable within {tolerance:.0%} after {len(r.windows)} windows: "
                + ", ".join(f"{w:,.0f}" for w in r.windows)
                + " runs/s"
            )
    few = [r for r in results if r.few_samples]
    if few:
        out.append(
            "few samples (marked *): "
            + "; ".join(f"{', '.join(r.few_samples)} at {r.label} ({r.runs:,} runs)" for r in few)
            + ". Fewer than 10 runs lie beyond these percentiles (p99 needs 1,000 runs, p99.9 10,000), "
            "so a handful of runs decide them: measure longer (--duration, --count) before trusting them"
        )
    return out


def _model_facts(model: str) -> dict[str, Any]:
    out: dict[str, Any] = {"path": os.path.abspath(model), "name": os.path.basename(model)}
    try:
        with open(model, "rb") as f:
            out["sha256"] = hashlib.sha256(f.read()).hexdigest()
    except OSError:
        out["sha256"] = None
    return out


def _rounded(v: Any) -> Any:
    if isinstance(v, float):
        return round(v, 6)
    if isinstance(v, dict):
        return {k: _rounded(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_rounded(x) for x in v]
    return v


def summary_doc(
    command: str,
    config: dict[str, Any],
    env: dict[str, Any],
    facts: dict[str, Any],
    results: Sequence[LevelResult],
    error: str | None,
) -> dict[str, Any]:
    """The summary JSON: enough to rerun (``command``, ``config``, the model's sha256) and to compare."""
    doc: dict[str, Any] = _rounded(
        {
            "schema": SCHEMA,
            "command": command,
            "config": config,
            "model": _model_facts(config["model"]),
            "run": facts,
            "environment": env,
            "results": [r.as_dict() for r in results],
            "error": error,
        }
    )
    return doc


def write_json(path: str, doc: dict[str, Any]) -> None:
    """Write ``doc`` to ``path``; ``-`` means stdout."""
    if path == "-":
        json.dump(doc, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
        sys.stdout.flush()
        return
    with open(path, "w") as f:
        json.dump(doc, f, indent=2, default=str)
        f.write("\n")


def _csv_columns(pcts: Sequence[float]) -> list[str]:
    lat = [f"{pct_key(p)}_ms" for p in pcts]
    stages = [f"{s}_{k}_ms" for s in ("submit", "queued", "h2d", "compute", "d2h") for k in ("p50", "p99")]
    return [
        "backend",
        "mode",
        "loop",
        "load",
        "value",
        "runs",
        "errors",
        "runs_per_s",
        "batch",
        "inferences_per_s",
        "sent_per_s",
        "intended",
        "sent",
        "late_sends",
        "missed",
        "overloaded",
        *lat,
        "max_ms",
        "mean_ms",
        "few_samples",
        "lag_p99_ms",
        "lag_max_ms",
        "watcher_cpu_us_per_run",
        "loop_wakeups_per_run",
        *stages,
        "device_bound_per_s",
        "process_cpu_s",
        "stable",
        "error",
    ]


def write_csv(
    path: str, backend: str | None, facts: dict[str, Any], results: Sequence[LevelResult], pcts: Sequence[float]
) -> None:
    """One row per level; times in ms to the microsecond, rates to 0.1/s."""

    def r3(v: float | None) -> str:
        return "" if v is None else f"{v:.3f}"

    def r1(v: float | None) -> str:
        return "" if v is None else f"{v:.1f}"

    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(_csv_columns(pcts))
        for r in results:
            lat = r.latency_ms
            stages = []
            for s in ("submit", "queued", "h2d", "compute", "d2h"):
                st = r.stages_ms.get(s, {})
                stages += [r3(st.get("p50")), r3(st.get("p99"))]
            w.writerow(
                [
                    backend,
                    facts.get("mode"),
                    facts.get("loop"),
                    r.load,
                    f"{r.value:g}",
                    r.runs,
                    r.errors,
                    r1(r.throughput),
                    r.batch,
                    r1(r.inferences_per_s),
                    r1(r.sent_per_s) if r.load == "rate" else "",
                    r.intended if r.load == "rate" else "",
                    r.sent if r.load == "rate" else "",
                    r.late_sends if r.load == "rate" else "",
                    r.missed if r.load == "rate" else "",
                    r.overloaded,
                    *(r3(lat.get(pct_key(p))) for p in pcts),
                    r3(lat.get("max")),
                    r3(lat.get("mean")),
                    " ".join(r.few_samples),
                    r3(r.loop_lag_ms.get("p99")),
                    r3(r.loop_lag_ms.get("max")),
                    r1(r.watcher_cpu_us_per_run),
                    "" if r.loop_wakeups_per_run is None else f"{r.loop_wakeups_per_run:.4f}",
                    *stages,
                    r1(r.device_bound_per_s),
                    f"{r.process_cpu_s:.3f}",
                    "" if r.stable is None else r.stable,
                    r.error or "",
                ]
            )


PLOT_SIZE_IN = (8.0, 5.0)
PLOT_DPI = 100


def check_plot() -> str | None:
    """None when ``--plot`` can work (matplotlib imports), else the message saying how to get it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot
    except ImportError:
        return "--plot needs matplotlib: pip install 'ascend-async[plot]' (or pip install matplotlib)"
    return None


def write_plot(path: str, results: Sequence[LevelResult], meta: dict[str, Any]) -> dict[str, Any]:
    """The latency-throughput curve: p50 and p99 latency (y) against achieved throughput (x), one
    point per level, both axes from zero, labelled with the model, backend and run settings.
    Saves an 800x500 PNG whose ``Description`` text chunk holds the plotted series as JSON, and
    returns those series."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batch = _batch_aware(results)
    pts = [r for r in results if r.runs]
    xs = [r.inferences_per_s if batch else r.throughput for r in pts]
    p50 = [r.latency_ms.get("p50", 0.0) for r in pts]
    p99 = [r.latency_ms.get("p99", 0.0) for r in pts]
    series: dict[str, Any] = {"x": xs, "labels": [r.label for r in pts], "p50": p50, "p99": p99}
    fig, ax = plt.subplots(figsize=PLOT_SIZE_IN, dpi=PLOT_DPI)
    ax.plot(xs, p50, "o-", color="tab:blue", label="p50 latency")
    ax.plot(xs, p99, "s--", color="tab:red", label="p99 latency")
    for x, y, r in zip(xs, p99, pts, strict=True):
        label = r.label + (" OVERLOAD" if r.overloaded else "")
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 6), fontsize=8, color="dimgray")
    ax.set_xlim(0, max([*xs, 1.0]) * 1.12)
    ax.set_ylim(0, max([*p99, *p50, 1e-3]) * 1.18)
    ax.set_xlabel("achieved throughput (" + ("inferences/s" if batch else "runs/s") + ")")
    ax.set_ylabel("latency (ms)")
    backend = meta.get("backend")
    sim = backend == "sim"
    ax.set_title(
        f"{meta.get('model')}  -  backend {backend}{' (simulated device)' if sim else ''}\n"
        f"mode {meta.get('mode')}, loop {meta.get('loop')}, {meta.get('streams')} streams, "
        f"batch {meta.get('batch', 1)}, {'closed loop' if pts and pts[0].load == 'concurrency' else 'open loop'}",
        fontsize=10,
    )
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left")
    fig.tight_layout(rect=(0, 0.04, 1, 1) if sim else (0, 0, 1, 1))
    if sim:  # in the margin, where no data point can hide it
        fig.text(
            0.99, 0.01, "SIMULATED DEVICE - not hardware numbers", ha="right", va="bottom", fontsize=8, color="darkred"
        )
    fig.savefig(path, dpi=PLOT_DPI, metadata={"Description": json.dumps(series), "Software": "ascend-async bench"})
    plt.close(fig)
    return series


def results_console(to_stderr: bool) -> Console:
    """The console tables go to: stdout, or stderr when stdout carries the JSON. Off a terminal it
    is wide enough that tables never wrap."""
    stream = sys.stderr if to_stderr else sys.stdout
    tty = stream.isatty()
    return Console(
        file=stream,
        width=None if tty else 200,
        markup=False,
        highlight=False,
        emoji=False,
        soft_wrap=False,
        force_terminal=None if tty else False,
    )


def ais_lines(results: Sequence[Any]) -> list[str]:
    """ais_bench's performance summary per level, in its field names (``--report ais``)."""
    out: list[str] = []
    for r in results:
        ais = r.ais
        out.append(f"-----------------Performance Summary ({r.label}, ais_bench fields)------------------")
        if not ais:
            out.append("no profiled runs at this level")
            continue
        for key in ("H2D_latency", "NPU_compute_time", "D2H_latency"):
            v = ais[key]
            out.append(
                f"{key} (ms): min = {v['min']:.6g}, max = {v['max']:.6g}, mean = {v['mean']:.6g}, "
                f"median = {v['median']:.6g}, percentile(99%) = {v['percentile(99%)']:.6g}"
            )
        mean = ais["NPU_compute_time"]["mean"]
        out.append(
            f"throughput 1000*batchsize.mean({ais['batchsize']})/NPU_compute_time.mean({mean:.6g}): "
            f"{ais['throughput']:.6g}"
        )
    return out
