"""The live progress line (rich, on stderr): warm-up, measuring, draining, with the same
percentile definition as the final table."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import anyio
import numpy as np
from rich.console import Console
from rich.live import Live
from rich.text import Text

from ._measure import LevelState, few_samples, overloaded
from ._options import pct_key

__all__ = ["Progress"]


class Progress:
    """One level's progress display. On a terminal it redraws one line four times a second and
    leaves nothing behind; elsewhere (CI logs, pipes) it prints a line a second and one per phase.
    ``run(state)`` is the async refresher; ``update(state)`` draws once (the sync mode)."""

    def __init__(self, console: Console, label: str, pcts: Sequence[float]) -> None:
        self.console = console
        self.label = label
        self.pcts = tuple(pcts)
        self.live: Live | None = None
        if console.is_terminal:
            self.live = Live(console=console, auto_refresh=False, transient=True, redirect_stdout=False)
            self.live.start()
        self._buf = np.empty(0, np.int64)
        self._n = 0
        self._last_print = 0.0
        self._last_phase = ""
        self._state: LevelState | None = None

    def _latencies(self, lat: list[int]) -> np.ndarray:
        """The measured latencies so far, copied into a numpy buffer incrementally (cheap on the loop)."""
        n = len(lat)
        if n > self._n:
            if n > self._buf.size:
                grown = np.empty(max(n, 2 * self._buf.size, 1024), np.int64)
                grown[: self._n] = self._buf[: self._n]
                self._buf = grown
            self._buf[self._n : n] = lat[self._n : n]
            self._n = n
        return self._buf[: self._n]

    def line(self, state: LevelState, final: bool = False) -> str:
        """The text shown for ``state`` now (``final``: the level's summary line)."""
        cfg, res = state.cfg, state.res
        now = time.perf_counter_ns()
        head = f"{self.label:>8}"
        if state.phase == "warm-up":
            el = (now - state.t_start) / 1e9
            w = cfg.warmup
            target = f"{state.done}/{w.runs} runs" if w.runs is not None else f"{el:.1f}/{w.seconds:g} s"
            return f"{head} warming up {target} (not measured)"
        if state.phase == "drain" and not final:
            return f"{head} window closed; waiting for {state.in_flight} runs in flight"
        el = (now - state.t0) / 1e9
        if cfg.count is not None:
            target = f"{len(state.lat):,}/{cfg.count:,} runs"
        elif cfg.stable:
            target = f"{el:.1f} s, window {len(res.windows) + 1}/{cfg.max_windows}"
        else:
            target = f"{el:.1f}/{cfg.duration:g} s"
        lat = self._latencies(state.lat)
        n = lat.size
        verb = "measured" if final else "measuring"
        parts = [f"{head} {verb} {target}", f"{n:,} runs {n / el if el > 0 else 0:,.0f}/s"]
        if n:
            vals = np.percentile(lat, self.pcts, method="inverted_cdf") / 1e6
            few = set(few_samples(n, self.pcts))
            parts.append(
                " ".join(
                    f"{pct_key(p)} {v:.3f}{'*' if pct_key(p) in few else ''}"
                    for p, v in zip(self.pcts, vals, strict=True)
                )
                + " ms"
            )
        if res.load == "rate" and res.sent:
            late = res.late_sends / res.sent
            parts.append(f"sent {res.sent / el if el > 0 else 0:,.0f}/s of {res.value:g}/s late {late:.0%}")
            if overloaded(res.sent + res.missed, res.missed):
                parts.append("OVERLOAD")
        return " | ".join(parts)

    def update(self, state: LevelState) -> None:
        """Draw the line for ``state`` once."""
        self._state = state
        text = self.line(state)
        if self.live is not None:
            self.live.update(Text(text, no_wrap=True, overflow="ellipsis"), refresh=True)
            return
        mono = time.monotonic()
        changed = state.phase != self._last_phase
        if (changed and state.phase != "measure") or mono - self._last_print >= 1.0:
            self._last_print = mono
            self._last_phase = state.phase
            self.console.print(text, soft_wrap=True)

    async def run(self, state: LevelState) -> None:
        """Redraw until cancelled (the level's end)."""
        while True:
            self.update(state)
            await anyio.sleep(0.25)

    def close(self) -> None:
        """Remove the live line (terminal), or print the level's last line (elsewhere)."""
        if self.live is not None:
            self.live.stop()
            self.live = None
        elif self._state is not None and self._state.t0:
            self.console.print(self.line(self._state, final=True), soft_wrap=True)
            self._state = None


def progress_factory(console: Console, pcts: Sequence[float]) -> Any:
    """``factory(label) -> Progress`` for :func:`run_benchmark`."""

    def make(label: str) -> Progress:
        return Progress(console, label, pcts)

    return make
