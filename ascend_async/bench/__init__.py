"""The async benchmark runner: ``ascend-async bench`` / ``python -m ascend_async bench``."""

from __future__ import annotations

from ._cli import main
from ._options import BenchError, Threshold, Warmup
from ._runner import BenchConfig, LevelResult, run_benchmark

__all__ = ["BenchConfig", "BenchError", "LevelResult", "Threshold", "Warmup", "main", "run_benchmark"]
