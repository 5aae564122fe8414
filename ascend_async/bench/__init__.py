"""The async benchmark runner: ``ascend-async bench`` / ``python -m ascend_async bench``."""

from __future__ import annotations

from ._cli import main
from ._runner import BenchConfig, BenchError, LevelResult, run_benchmark

__all__ = ["BenchConfig", "BenchError", "LevelResult", "main", "run_benchmark"]
