"""What one benchmark run is asked to do (BenchConfig) and the constants the drivers and
the measurement share."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ._options import DEFAULT_PERCENTILES, Threshold, Warmup

__all__ = ["LOOPS", "MODES", "BenchConfig"]


MODES = ("async", "thread", "sync", "callback")


LOOPS = ("asyncio", "uvloop", "trio")


#: Always computed (plots and ``bench compare`` use p50 and p99), besides the ones asked for.
BASE_PERCENTILES = (50.0, 90.0, 95.0, 99.0, 99.9)


#: A percentile is flagged as resting on too few samples when fewer runs than this lie beyond it.
MIN_TAIL = 10


#: A send more than this late (ns) counts as late.
LATE_NS = 1_000_000


LAG_PERIOD_S = 0.001


#: An open-loop sender behind its schedule sends at most this many runs between checkpoints.
BURST = 4


#: A schedule point this overdue (ns) is missed: the sender resumes the schedule at the present,
#: so an overloaded host does not build a backlog that grows for the whole level.
BEHIND_NS = 10_000_000


#: In async mode one measured run in this many is profiled (device events between its stages).
PROFILE_EVERY = 16


@dataclass
class BenchConfig:
    """What to run: the model, the load levels, how long, with which inputs, on which loop."""

    model: str
    load: str = "concurrency"  # "concurrency" (closed loop) or "rate" (open loop)
    levels: list[float] = field(default_factory=lambda: [1.0, 4.0, 16.0, 64.0])
    poisson: bool = False
    warmup: Warmup = field(default_factory=lambda: Warmup(seconds=0.5))
    duration: float | None = 2.0
    count: int | None = None
    stable: bool = False
    tolerance: float = 0.10
    window: float = 1.0
    max_windows: int = 10
    percentiles: tuple[float, ...] = DEFAULT_PERCENTILES
    latency_threshold: Threshold | None = None
    max_in_flight: int = 128
    shapes: dict[str, list[int]] = field(default_factory=dict)
    inputs: list[str] = field(default_factory=list)
    batch_size: int | None = None
    save_outputs: str | None = None
    streams: int = 2
    mode: str = "async"
    loop: str = "asyncio"
    device: int = 0
    seed: int = 0
    progress: bool = False
    #: ``--batch-max``: requests go through ``batcher(graph, max_batch_size=...)``; None: no batcher
    batch_max: int | None = None
    batch_delay_ms: float = 1.0
    batch_preferred: list[int] = field(default_factory=list)
    #: ``--devices``: a DevicePool over these logical ids, or "all"; None: one Session on ``device``
    devices: list[int] | str | None = None
    #: ``--sim-timing``: (ms per run, ms per sample) for the sim's timing model; None: left as is
    sim_timing: tuple[float, float] | None = None
    #: ``--gears``: static gears of the batch dimension (add_graph(gears=...)); None: dynamic
    gears: list[int] | None = None
    #: ``--trace PATH``: a Chrome trace of the whole sweep; None: no trace
    trace: str | None = None
    #: ``--report ais``: every measured async run is profiled, for ais_bench's summary
    report: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """Every setting, JSON-ready (the ``config`` block of the summary JSON)."""
        d = asdict(self)
        d["warmup"] = {"seconds": self.warmup.seconds, "runs": self.warmup.runs}
        d["percentiles"] = list(self.percentiles)
        d["latency_threshold"] = (
            None
            if self.latency_threshold is None
            else {"ms": self.latency_threshold.ms, "percentile": self.latency_threshold.percentile}
        )
        d.pop("progress")
        d["sim_timing"] = None if self.sim_timing is None else list(self.sim_timing)
        return d
