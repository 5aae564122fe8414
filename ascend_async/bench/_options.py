"""Parsers for the runner's option values: ranges, warm-up, percentiles, thresholds.

Each parser takes the text a user typed and returns a value or raises :class:`BenchError` with a
message that names the option, repeats what was given, and shows a valid example.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

__all__ = [
    "DEFAULT_PERCENTILES",
    "Threshold",
    "Warmup",
    "parse_devices",
    "parse_int_list",
    "parse_levels",
    "parse_percentiles",
    "parse_sim_timing",
    "parse_threshold",
    "parse_warmup",
    "pct_key",
]

DEFAULT_PERCENTILES = (50.0, 90.0, 99.0)
#: Sweeps longer than this are refused: a typo such as ``1:100000:+1`` would otherwise run for days.
MAX_LEVELS = 200


class BenchError(Exception):
    """A benchmark that cannot run as asked (bad flag, missing file, model that does not load...)."""


def pct_key(p: float) -> str:
    """The key a percentile has in results and JSON: ``50 -> "p50"``, ``99.9 -> "p99.9"``."""
    return f"p{p:g}"


def _number(text: str, integer: bool, what: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise BenchError(f"{what}: {text!r} is not a number") from None
    if not math.isfinite(v):
        raise BenchError(f"{what}: {text!r} is not a finite number")
    if integer and v != int(v):
        raise BenchError(f"{what}: {text!r} is not a whole number")
    return v


def parse_levels(text: str, *, integer: bool, option: str) -> list[float]:
    """Levels to sweep, from a comma list whose items are numbers or ranges.

    A range is ``START:END:STEP`` (END included when the steps land on it): ``1:64:x2`` is
    1, 2, 4, ..., 64 (multiply), ``100:500:+100`` is 100, 200, ..., 500 (add; a bare ``100``
    step adds too). ``START:END`` steps by +1. Items combine: ``1,2,8:32:x2``. Returns the
    levels in the order given, duplicates dropped; every level > 0.

    :raises BenchError: on bad syntax, a level <= 0, a step that never advances, an END below
        START, or more than 200 levels.
    """
    example = "1:64:x2 or 1,4,16" if integer else "100:2000:+100 or 500,1000"
    what = f"{option} {text!r}"
    out: list[float] = []
    items = [t.strip() for t in text.split(",")]
    if not text.strip() or any(not t for t in items):
        raise BenchError(f"{what}: expected numbers or START:END:STEP ranges, e.g. {option} {example}")
    for item in items:
        parts = item.split(":")
        if len(parts) == 1:
            out.append(_number(parts[0], integer, what))
            continue
        if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
            raise BenchError(f"{what}: a range is START:END:STEP, e.g. {option} {example}")
        start = _number(parts[0], integer, what)
        end = _number(parts[1], integer, what)
        step = parts[2].strip() if len(parts) == 3 else "+1"
        m = re.fullmatch(r"([x*+]?)\s*([0-9.eE+-]+)", step)
        if not m:
            raise BenchError(f"{what}: step {step!r}: use xN to multiply or +N to add, e.g. {option} {example}")
        kind, size = m.group(1) or "+", _number(m.group(2), False, what)
        if end < start:
            raise BenchError(f"{what}: END {parts[1]} is below START {parts[0]}")
        if start <= 0:
            raise BenchError(f"{what}: levels must be > 0")
        if (kind in "x*" and size <= 1) or (kind == "+" and size <= 0):
            raise BenchError(f"{what}: step {step!r} never reaches END; use x2 (double) or +N with N > 0")
        v = start
        while v <= end * (1 + 1e-9):
            out.append(round(v) if integer else round(v, 9))
            if len(out) > MAX_LEVELS:
                raise BenchError(f"{what}: more than {MAX_LEVELS} levels; use a larger step")
            v = v * size if kind in "x*" else v + size
    if any(v <= 0 for v in out):
        raise BenchError(f"{what}: levels must be > 0")
    if len(out) > MAX_LEVELS:
        raise BenchError(f"{what}: more than {MAX_LEVELS} levels; use a larger step")
    return list(dict.fromkeys(float(v) for v in out))


@dataclass(frozen=True)
class Warmup:
    """Warm-up per load level: ``seconds`` of running, or ``runs`` completed runs (one of them)."""

    seconds: float | None = None
    runs: int | None = None

    def __str__(self) -> str:
        if self.runs is not None:
            return f"{self.runs} runs"
        return f"{self.seconds:g} s"


def parse_warmup(text: str) -> Warmup:
    """``"2s"``, ``"500ms"``, ``"1.5s"`` (time) or ``"20"`` (runs); ``"0"`` disables warm-up.

    :raises BenchError: on anything else, or a negative value.
    """
    t = text.strip().lower()
    m = re.fullmatch(r"([0-9]*\.?[0-9]+)\s*(ms|s|runs?)?", t)
    if not m:
        raise BenchError(f"--warmup {text!r}: give a time (2s, 500ms) or a number of runs (20)")
    value, unit = float(m.group(1)), m.group(2)
    if unit == "ms":
        return Warmup(seconds=value / 1000)
    if unit == "s":
        return Warmup(seconds=value)
    if value != int(value):
        raise BenchError(f"--warmup {text!r}: a number of runs is whole; for time add a unit (1.5s)")
    return Warmup(runs=int(value))


def parse_percentiles(text: str) -> tuple[float, ...]:
    """``"50,95,99"`` (a leading ``p`` is allowed: ``p50,p99.9``) -> sorted unique floats in (0, 100).

    :raises BenchError: on a non-number or a value outside (0, 100).
    """
    out: list[float] = []
    for item in text.split(","):
        s = item.strip().lower().removeprefix("p")
        try:
            v = float(s)
        except ValueError:
            raise BenchError(f"--percentiles {text!r}: expected numbers like 50,95,99") from None
        if not 0 < v < 100:
            raise BenchError(f"--percentiles {text!r}: each must be above 0 and below 100 (use max for the worst run)")
        out.append(v)
    return tuple(sorted(set(out)))


@dataclass(frozen=True)
class Threshold:
    """Stop a sweep after the first level whose ``percentile`` latency exceeds ``ms``."""

    ms: float
    percentile: float = 99.0

    def __str__(self) -> str:
        return f"{pct_key(self.percentile)} > {self.ms:g} ms"


def parse_threshold(text: str) -> Threshold:
    """``"10"`` (p99 above 10 ms stops the sweep) or ``"p95:10"`` (p95 above 10 ms).

    :raises BenchError: on bad syntax, a threshold <= 0 or a percentile outside (0, 100).
    """
    pct, sep, ms = text.strip().lower().rpartition(":")
    try:
        value = float(ms)
        p = float(pct.removeprefix("p")) if sep else 99.0
    except ValueError:
        raise BenchError(f"--latency-threshold {text!r}: give milliseconds (10) or PERCENTILE:MS (p95:10)") from None
    if value <= 0 or not 0 < p < 100:
        raise BenchError(f"--latency-threshold {text!r}: the time must be > 0 ms and the percentile in (0, 100)")
    return Threshold(value, p)


def parse_int_list(text: str, option: str) -> list[int]:
    """``"8,16"`` -> ``[8, 16]``: positive whole numbers, ascending, no duplicates.

    :raises BenchError: on an item that is not a whole number > 0.
    """
    out: set[int] = set()
    for item in text.split(","):
        v = _number(item.strip(), True, f"{option} {text!r}")
        if v < 1:
            raise BenchError(f"{option} {text!r}: every item must be >= 1 (e.g. 8,16)")
        out.add(int(v))
    return sorted(out)


def parse_devices(text: str) -> list[int] | None:
    """``--devices``: ``"all"`` (None: every visible device) or logical ids ``"0,1,2,3"``.

    :raises BenchError: on an id that is not a whole number >= 0, or an id given twice.
    """
    if text.strip().lower() == "all":
        return None
    ids: list[int] = []
    for item in text.split(","):
        v = _number(item.strip(), True, f"--devices {text!r}")
        if v < 0:
            raise BenchError(f"--devices {text!r}: device ids are >= 0 (e.g. 0,1 or all)")
        if int(v) in ids:
            raise BenchError(f"--devices {text!r}: device {int(v)} is named twice")
        ids.append(int(v))
    return ids


def parse_sim_timing(text: str) -> tuple[float, float]:
    """``--sim-timing RUN_MS[,SAMPLE_MS]``: every graph run on the sim lasts at least
    ``RUN_MS + SAMPLE_MS x rows`` (``"2,0.1"``: 2 ms per run plus 0.1 ms per sample).

    :raises BenchError: on bad syntax or a negative time.
    """
    parts = text.split(",")
    if len(parts) > 2:
        raise BenchError(f"--sim-timing {text!r}: give RUN_MS or RUN_MS,SAMPLE_MS (e.g. 2,0.1)")
    vals = [_number(p.strip(), False, f"--sim-timing {text!r}") for p in parts]
    if any(v < 0 for v in vals) or any(v > 60_000 for v in vals):
        raise BenchError(f"--sim-timing {text!r}: times are ms in 0..60000 (e.g. 2,0.1)")
    return vals[0], (vals[1] if len(vals) > 1 else 0.0)
