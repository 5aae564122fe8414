"""``ascend-async bench compare A.json B.json``: two summary JSONs, level by level."""

from __future__ import annotations

import json
from typing import Any

from rich import box
from rich.table import Table

from ._options import BenchError

__all__ = ["compare_docs", "load_doc"]

#: Settings that make two results incomparable (or comparable only with care) when they differ.
_CONFIG_KEYS = ("load", "mode", "loop", "streams", "batch_size", "inputs", "shapes", "poisson", "max_in_flight")


def load_doc(path: str) -> dict[str, Any]:
    """Read a summary JSON written by ``ascend-async bench --json``.

    :raises BenchError: if the file is missing, not JSON, or not a bench summary.
    """
    try:
        with open(path) as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise BenchError(f"compare: {path}: no such file") from None
    except (OSError, ValueError) as exc:
        raise BenchError(f"compare: {path}: not a JSON file ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("results"), list):
        raise BenchError(f"compare: {path}: not an ascend-async bench summary (no 'results'; write one with --json)")
    return doc


def _pct(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or a == 0:
        return None
    return (b - a) / a * 100


def _cell(a: float | None, b: float | None, fmt: str) -> str:
    if a is None and b is None:
        return "-"
    d = _pct(a, b)
    sa = "-" if a is None else fmt.format(a)
    sb = "-" if b is None else fmt.format(b)
    return f"{sa} -> {sb}" + ("" if d is None else f" ({d:+.1f}%)")


def _label(r: dict[str, Any]) -> str:
    return f"c={int(r['value'])}" if r["load"] == "concurrency" else f"{r['value']:g}/s"


def compare_docs(
    a: dict[str, Any], b: dict[str, Any], max_regression: float | None = None
) -> tuple[Table, list[str], list[str]]:
    """The comparison table (levels present in both), notes (setting differences, levels in one
    only) and regressions: levels where runs/s fell, or p99 rose, by more than
    ``max_regression`` percent (empty when it is None)."""
    notes: list[str] = []
    ca, cb = a.get("config", {}), b.get("config", {})
    ea, eb = a.get("environment", {}), b.get("environment", {})
    ma, mb = a.get("model", {}), b.get("model", {})
    if ma.get("sha256") and mb.get("sha256") and ma["sha256"] != mb["sha256"]:
        notes.append(
            f"different models: {ma.get('name')} ({ma['sha256'][:12]}) vs {mb.get('name')} ({mb['sha256'][:12]})"
        )
    notes += [f"{k}: {ca.get(k)!r} vs {cb.get(k)!r}" for k in _CONFIG_KEYS if ca.get(k) != cb.get(k)]
    for k in ("backend", "cpu", "nproc", "library"):
        if ea.get(k) != eb.get(k):
            notes.append(f"{k}: {ea.get(k)!r} vs {eb.get(k)!r}")
    ra = {(r["load"], r["value"]): r for r in a["results"]}
    rb = {(r["load"], r["value"]): r for r in b["results"]}
    only_a = [_label(r) for k, r in ra.items() if k not in rb]
    only_b = [_label(r) for k, r in rb.items() if k not in ra]
    if only_a:
        notes.append("only in A: " + ", ".join(only_a))
    if only_b:
        notes.append("only in B: " + ", ".join(only_b))
    t = Table(title="A -> B (change)", title_justify="left", header_style="bold", box=box.SIMPLE_HEAD)
    for c in ("load", "runs/s", "p50 ms", "p99 ms", "loop lag p99 ms"):
        t.add_column(c, justify="right")
    regressions: list[str] = []
    for key in [k for k in ra if k in rb]:
        x, y = ra[key], rb[key]
        la, lb = x.get("latency_ms", {}), y.get("latency_ms", {})
        t.add_row(
            _label(x),
            _cell(x.get("throughput"), y.get("throughput"), "{:,.0f}"),
            _cell(la.get("p50"), lb.get("p50"), "{:.3f}"),
            _cell(la.get("p99"), lb.get("p99"), "{:.3f}"),
            _cell(x.get("loop_lag_ms", {}).get("p99"), y.get("loop_lag_ms", {}).get("p99"), "{:.3f}"),
        )
        if max_regression is not None:
            dt = _pct(x.get("throughput"), y.get("throughput"))
            dp = _pct(la.get("p99"), lb.get("p99"))
            if dt is not None and dt < -max_regression:
                regressions.append(f"{_label(x)}: runs/s {dt:+.1f}%")
            if dp is not None and dp > max_regression:
                regressions.append(f"{_label(x)}: p99 {dp:+.1f}%")
    if not any(k in rb for k in ra):
        notes.append("no load level in common: nothing to compare")
    return t, notes, regressions
