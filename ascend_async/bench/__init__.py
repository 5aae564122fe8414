"""The async benchmark runner: ``ascend-async bench`` / ``python -m ascend_async bench``."""

from __future__ import annotations

from ._cli import main
from ._config import BenchConfig
from ._measure import LevelResult
from ._options import BenchError, Threshold, Warmup
from ._runner import run_benchmark

__all__ = ["BenchConfig", "BenchError", "LevelResult", "Threshold", "Warmup", "main", "run_benchmark"]
